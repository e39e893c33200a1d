"""Is the agent well? Plain checks that GET /healthz, the manager's panel and `status` share.

Each check reads what the agent already keeps (the database, the scheduler's last runs,
the print queue, the sync notes, the CSD) and never calls the network, so asking is
cheap and answers the same when the internet is down. Results name a company by its RFC
and a branch by its id: a check's text never carries a company key, a password, a
Facturapi key or the path of a key file, because /healthz answers without credentials.

No Flask here: `checks(agent)` takes the running `agent.app.Agent`.
"""
from __future__ import annotations

import re
import shutil
import time
import weakref
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable

from peewee import fn

from agent.models import JOB_FAILED, JOB_PENDING, PrintJob, Ticket

OK, WARN, FAIL = "ok", "warn", "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}

# Free space on the data directory's disk. Under 100 MB SQLite may soon answer "database
# or disk is full" and every sale gets a 503; under 1 GB there are days, not months, left.
DISK_FAIL_BYTES = 100 * 1024**2
# Less than a few SQLite pages: the next commit that needs the disk to grow fails.
DISK_FULL_BYTES = 64 * 1024
DISK_WARN_BYTES = 1024**3
# The write-ahead log is reset at each checkpoint and normally stays at a few MB; a large
# one means checkpoints cannot finish (a reader that never lets go, such as a stuck copy).
WAL_WARN_BYTES = 256 * 1024**2
# A CSD this close to its end needs a new one from SAT now: getting it takes days.
CSD_WARN_DAYS = 30
# Print jobs given up within this window are reported.
FAILED_PRINTS_WINDOW = timedelta(hours=24)

_SECRET_KEY = re.compile(r"sk_(?:test|live)_[A-Za-z0-9]+")


@dataclass(frozen=True)
class Check:
    name: str  # database | scheduler | printer | upstream | csd
    status: str  # ok | warn | fail
    detail: str  # one line for a person
    company: str | None = None  # the company's RFC
    branch: str | None = None  # the branch id

    def as_dict(self) -> dict:
        return asdict(self)


def overall(results: Iterable[Check]) -> str:
    """The worst status among the checks (ok when there are none)."""
    return max((c.status for c in results), key=_RANK.__getitem__, default=OK)


def checks(agent, now: datetime | None = None) -> list[Check]:
    """Every check, in a stable order. A check that breaks is itself reported as a
    failure instead of hiding the others."""
    now = now or datetime.now(timezone.utc)
    results: list[Check] = []
    for name, check in _CHECKS:
        try:
            results.extend(check(agent, now))
        except Exception as exc:  # noqa: BLE001 - a broken check is a finding, not a crash
            results.append(Check(name, FAIL, f"cannot check: {redact(agent, _describe(exc))}"))
    return [Check(c.name, c.status, redact(agent, c.detail), c.company, c.branch) for c in results]


# -- database ---------------------------------------------------------------------------


def database(agent, now: datetime) -> list[Check]:
    from agent.db import DB_FILENAME

    out: list[Check] = []
    started = time.perf_counter()
    try:
        agent.db.execute_sql("SELECT 1").fetchone()
    except Exception as exc:  # noqa: BLE001 - a locked, missing or corrupt file is the finding
        out.append(Check("database", FAIL, f"cannot read the database: {_describe(exc)}"))
    else:
        status, parts = OK, [f"read ok in {(time.perf_counter() - started) * 1000:.1f} ms"]
        writer = agent.writer
        if not writer.running:
            status, parts = FAIL, parts + ["the writer is stopping: tickets are refused"]
        elif writer.last_error:
            # Cleared by the next commit that works: while set, every sale answers 503.
            status, parts = FAIL, parts + [f"the last commit failed: {writer.last_error}"]
        out.append(Check("database", status, "; ".join(parts)))

    free = shutil.disk_usage(agent.data_dir).free
    if free < DISK_FULL_BYTES:
        status, advice = FAIL, ": the disk is full, sales are refused until space is freed"
    elif free < DISK_FAIL_BYTES:
        status, advice = FAIL, ": sales will soon be refused; free space now"
    elif free < DISK_WARN_BYTES:
        status, advice = WARN, ": free some space"
    else:
        status, advice = OK, ""
    out.append(Check("disk", status, f"{human_bytes(free)} free on the data directory's disk{advice}"))

    if agent.db.kind == "postgresql":
        out.append(_postgresql_durability(agent))
        return out
    wal = agent.data_dir / f"{DB_FILENAME}-wal"
    size = wal.stat().st_size if wal.exists() else 0
    if size > WAL_WARN_BYTES:
        out.append(Check("wal", WARN, f"write-ahead log is {human_bytes(size)}: checkpoints are not keeping up "
                                      "(a long-running reader or copy holds the database open?)"))
    else:
        out.append(Check("wal", OK, f"write-ahead log {human_bytes(size)}"))
    return out


def _postgresql_durability(agent) -> Check:
    """A 200 promises the ticket is on disk: on PostgreSQL only while every commit waits
    for the server's log to reach its disk, which the server's settings decide."""
    try:
        settings = {name: agent.db.execute_sql(f"SHOW {name}").fetchone()[0] for name in ("fsync", "synchronous_commit")}
    except Exception as exc:  # noqa: BLE001 - the read check above reports the cause
        return Check("wal", FAIL, f"cannot read the server's settings: {_describe(exc)}")
    off = [f"{name} = {value}" for name, value in settings.items() if value == "off"]
    where = f"PostgreSQL at {agent.config.database.shown}"
    if off:
        return Check("wal", WARN, f"{where}: {', '.join(off)}: a sale answered 200 may be lost if the server "
                                  "crashes; set it back to on")
    return Check("wal", OK, f"{where}: each commit waits for the server's log (fsync and synchronous_commit on)")


# -- scheduler --------------------------------------------------------------------------


def scheduler(agent, now: datetime) -> list[Check]:
    background = agent.background
    if background is None:
        return [Check("scheduler", OK, "no background work in this process (a one-off command)")]
    sched = background.scheduler
    if not sched.running_jobs:
        # Two agents on one data directory or one database: the other one sweeps; this one
        # takes over if it stops.
        where = "database" if agent.db.kind == "postgresql" else "data directory"
        return [Check("scheduler", OK, f"another agent process on this {where} holds the job lock and "
                                       "runs the scheduled jobs; this one takes over if it stops")]
    out = []
    for name, (_function, every) in sched.jobs.items():
        last = sched.last_run.get(name)
        error = sched.last_error.get(name)
        if last is None:
            out.append(Check("scheduler", OK, f"job {name}: not run yet (starting)"))
        elif error:
            out.append(Check("scheduler", WARN, f"job {name}: last run {_when(last)} failed: {error}; retried every "
                                                f"{every} s"))
        elif now - last > timedelta(seconds=3 * every + 60):
            # Runs are never skipped for long: a job this late is stuck in its previous run.
            out.append(Check("scheduler", WARN, f"job {name}: no run since {_when(last)} although it runs every "
                                                f"{every} s; is a run stuck?"))
        else:
            out.append(Check("scheduler", OK, f"job {name}: last run {_when(last)} ok"))
    for when, seconds in sched.clock_jumps:
        if abs(now - when) < timedelta(days=1):
            # The sweeps cope; a clock that keeps jumping dates sales wrongly, a person should know.
            out.append(Check("scheduler", WARN, f"the system clock jumped {'back' if seconds < 0 else 'forward'} "
                                                f"{abs(seconds):.0f} s at {_when(when)}; check the computer's time "
                                                "settings (NTP)"))
    return out


# -- printers ---------------------------------------------------------------------------


def printers(agent, now: datetime) -> list[Check]:
    since = _naive(now) - FAILED_PRINTS_WINDOW
    # One grouped query over the jobs that matter (the state index narrows it), then the
    # latest error of each branch that has any.
    rows = (
        PrintJob.select(Ticket.company, Ticket.branch, PrintJob.state, fn.COUNT(PrintJob.id), fn.MAX(PrintJob.id))
        .join(Ticket)
        .where(((PrintJob.state == JOB_PENDING) & PrintJob.last_error.is_null(False))
               | ((PrintJob.state == JOB_FAILED) & (PrintJob.created_at >= since)))
        .group_by(Ticket.company, Ticket.branch, PrintJob.state)
        .tuples()
    )  # fmt: skip
    found = {(company, branch, state): (count, last_id) for company, branch, state, count, last_id in rows}
    out = []
    for company in agent.config.companies:
        for branch in company.branches:
            problems = []
            waiting = found.get((company.key, branch.id, JOB_PENDING))
            if waiting:
                problems.append(f"{waiting[0]} slip{'s' if waiting[0] != 1 else ''} waiting for the printer, last "
                                f"error: {_job_error(waiting[1])}")
            failed = found.get((company.key, branch.id, JOB_FAILED))
            if failed:
                problems.append(f"{failed[0]} slip{'s' if failed[0] != 1 else ''} not printed in the last 24 h "
                                f"(given up; reprint them from the panel), last error: {_job_error(failed[1])}")
            if problems:
                out.append(Check("printer", WARN, "; ".join(problems), company.rfc, branch.id))
            elif branch.printer == "none" and not branch.printers:
                out.append(Check("printer", OK, "this branch does not print", company.rfc, branch.id))
            else:
                out.append(Check("printer", OK, "no printing errors", company.rfc, branch.id))
    return out


def _job_error(job_id: int) -> str:
    return PrintJob.select(PrintJob.last_error).where(PrintJob.id == job_id).scalar() or "none recorded"


# -- upstream ---------------------------------------------------------------------------


def upstream(agent, now: datetime) -> list[Check]:
    out = []
    for company in agent.config.companies:
        if not agent.uses_facturapi(company.key):
            out.append(Check("upstream", OK, "sandbox (no network)", company.rfc))
            continue
        try:
            mode = "live key" if agent.facturapi(company.key).livemode else "test key (invoices without fiscal value)"
        except ValueError:
            out.append(Check("upstream", FAIL, "facturapi: the secret key cannot be read (ticket-agent status says "
                                               "why)", company.rfc))
            continue
        for b in agent.receipts.backlog(company.key, [branch.id for branch in company.branches]):
            status = OK
            parts = [f"facturapi ({mode}): {b.unsent} unsent, {b.retrying} retrying, {b.stopped} stopped",
                     f"last push {_when(b.last_push_at)}", f"last poll {_when(b.last_poll_at)}"]
            last_ok = max((t for t in (b.last_push_at, b.last_poll_at) if t is not None), default=None)
            if b.last_error and (last_ok is None or (b.last_error_at and b.last_error_at > last_ok)):
                status = WARN
                since = f"since {_when(last_ok)}" if last_ok else "since start"
                parts.insert(0, f"sync failing {since}: last error {_when(b.last_error_at)}: {b.last_error}")
            if b.stopped:
                status = WARN
                parts.insert(0, f"{b.stopped} ticket{'s' if b.stopped != 1 else ''} stopped: a person must look "
                                "(ticket-agent status lists them)")
            out.append(Check("upstream", status, "; ".join(parts), company.rfc, b.branch))
    return out


# -- CSD --------------------------------------------------------------------------------

_signers_of: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _signers(agent):
    """The running agent's signers, else one kept per agent: loading a CSD decrypts its key."""
    if agent.background is not None:
        return agent.background.signers
    signers = _signers_of.get(agent)
    if signers is None:
        from sync.signing import Signers

        signers = _signers_of[agent] = Signers(agent.config, agent.data_dir, agent.upstream.kind)
    return signers


def csd(agent, now: datetime) -> list[Check]:
    from sync.csd import CsdError

    out = []
    signers = _signers(agent)
    for company in agent.config.companies:
        if agent.uses_facturapi(company.key):
            continue  # Facturapi signs with the CSD uploaded there
        try:
            certificate = signers(company)
        except CsdError as exc:
            out.append(Check("csd", FAIL, f"cannot sign global invoices: {exc}", company.rfc))
            continue
        source = "sandbox test certificate" if company.csd is None else "CSD"
        until = certificate.not_after
        left = until - now
        if left < timedelta(days=CSD_WARN_DAYS):
            out.append(Check("csd", WARN, f"{source} No. {certificate.certificate_number} expires on {until:%Y-%m-%d} "
                                          f"({max(0, left.days)} days left): ask SAT for a new one and configure it",
                             company.rfc))  # fmt: skip
        else:
            out.append(Check("csd", OK, f"{source} No. {certificate.certificate_number}, valid until {until:%Y-%m-%d}",
                             company.rfc))
    return out


_CHECKS: list[tuple[str, Callable[..., list[Check]]]] = [
    ("database", database),
    ("scheduler", scheduler),
    ("printer", printers),
    ("upstream", upstream),
    ("csd", csd),
]


# -- helpers ----------------------------------------------------------------------------


def redact(agent, text: str) -> str:
    """What may leave the agent without credentials: no Facturapi key, no company key, no
    path of a key or password file, no data directory path. (Passwords never reach a
    check's text in the first place.)"""
    config = agent.config
    paths: list[tuple[str, str]] = []
    for company in config.companies:
        if company.csd is not None:
            paths += [(company.csd.cer, "the .cer file"), (company.csd.key, "the .key file")]
            if company.csd.password_file:
                paths.append((company.csd.password_file, "the password file"))
        if company.facturapi is not None and company.facturapi.api_key_file:
            paths.append((company.facturapi.api_key_file, "the Facturapi key file"))
    if config.source is not None:
        paths.append((str(config.source), "the configuration file"))
    paths.append((str(agent.data_dir), "<data_dir>"))
    # Longest first, so a file inside the data directory is named by what it is.
    for path, name in sorted(paths, key=lambda p: -len(p[0])):
        if path:
            text = text.replace(path, name)
    for company in config.companies:
        text = text.replace(company.key, f"{company.key[:8]}...")
    return _SECRET_KEY.sub(lambda m: m.group(0)[:8] + "***", text)


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _naive(moment: datetime) -> datetime:
    """The database's form: naive UTC."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    return f"{_naive(moment):%Y-%m-%d %H:%M:%S} UTC"
