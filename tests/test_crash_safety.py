"""Crash safety: a real `ticket-agent serve` killed with SIGKILL at random moments under
mixed load, and restarted, many times on one data directory, loses and doubles nothing.

Each cycle starts the agent (branch Centro printing on a FakePrinter over real TCP) and
drives, at once: POS lanes that PUT tickets dated today (an open period) or in closed
periods past their self-invoicing window (yesterday; now and then two and nine days
ago), so that the expiry and global-invoice sweeps the agent runs at every start, and
the `ticket-agent global-invoice` command run as a second process on the same data
directory, always have work; a POS that sends PUT /expired; a POS that asks for
reprints; customers who self-invoice today's tickets on the sandbox page. Then the server
(and the command, when one runs) is killed with SIGKILL at a moment a seeded plan
chooses: in a ticket burst, during the start-up sweeps (before or after a global CFDI is
recorded), while the command issues a global CFDI, or while slips print. On the next
start each POS first sends again what was cut off, as a real POS does.

After every kill, a copy of the file exactly as the kill left it is checked (the next
start recovers the original itself), and after the last cycle the agent starts cleanly,
its sweeps finish, every slip prints, it stops with SIGTERM and the file is checked
again: `PRAGMA integrity_check`; every acknowledged ticket once, with the body
acknowledged; no ticket number twice in a branch; no ticket in two CFDIs, and tickets,
CFDIs, their files and the global runs agree; folios without gaps; acknowledged expiries
and customer CFDIs kept; at the end every run stamped and every ticket of a closed
period in exactly one CFDI; every print job printed at most once, and none lost but the
one slip per kill a printer was being sent (docs/printing.md).

The plan is fixed by a seed (printed, and named in every failure): CRASH_SEED=<n>
replays another plan, CRASH_CYCLES=<n> sets the number of kills. The moments inside a
cycle still depend on timing: a replay repeats the plan, not the exact interleaving.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from fake_printer import FakePrinter, read_escpos
from helpers import (
    BRANCH_A,
    BRANCH_A2,
    KEY_A,
    REPO,
    basic,
    dumps,
    free_port,
    start_server,
    stop_server,
    ticket_body,
    write_config,
)
from lxml import etree

from agent.print_queue import INTERRUPTED
from agent.requests_in import body_hash

SEED = int(os.environ.get("CRASH_SEED", "20261122"))
CYCLES = int(os.environ.get("CRASH_CYCLES", "10"))
MEXICO = ZoneInfo("America/Mexico_City")  # both branches of company A
SAVED = "se guardo correctamente"
PUT_HEADERS = {**basic(), "Content-Type": "application/json"}
POS_CLIENTS = 4
TOTALS = ("12.36", "1.00", "99.99", "453.00", "1234.56", "0.58", "7.77", "116.00")
CUSTOMER = {"rfc": "GODE561231GR8", "nombre": "Juan Perez Gomez", "codigo_postal": "06600", "regimen": "612",
            "uso": "G03"}  # fmt: skip
MODES = ("tickets", "sweep", "command", "print")
CYCLE_DEADLINE = 5.0  # seconds a cycle may wait for its kill moment
SLIP_END = b"\x1dV\x01\x10\x04\x01"  # partial cut, then the status request the agent sends after a slip
CFDI_NS = {"cfdi": "http://www.sat.gob.mx/cfd/4", "tfd": "http://www.sat.gob.mx/TimbreFiscalDigital"}


def _replay() -> str:
    return f"crash test seed {SEED}, {CYCLES} cycles (replay: CRASH_SEED={SEED} CRASH_CYCLES={CYCLES})"


@dataclass(frozen=True)
class Plan:
    mode: str  # where the kill lands: MODES
    threshold: int  # tickets: acknowledged; print: slips sent; sweep: global CFDIs recorded; command: 1 = it ended
    delay: float  # sweep: seconds after start (threshold 0) or after that stamp; command: after it started
    command: bool  # `ticket-agent global-invoice` runs too: started with the server, or in command mode once it is up
    command_branch: str
    command_day: int  # index into Days.closed


def make_plans(rng: random.Random, cycles: int) -> list[Plan]:
    modes = [MODES[i % len(MODES)] for i in range(max(0, cycles - 1))]
    rng.shuffle(modes)
    modes = ["tickets", *modes][:cycles]  # the first start has nothing to sweep yet
    plans = []
    for number, mode in enumerate(modes):
        plans.append(Plan(
            mode=mode,
            threshold={"tickets": rng.randint(10, 35), "print": rng.randint(1, 8), "sweep": rng.choice((0, 0, 1)),
                       "command": rng.choice((0, 1))}[mode],
            delay=rng.uniform(0.0, 1.0) if mode == "sweep" else rng.uniform(1.5, 4.0),
            command=mode == "command" or (number > 0 and rng.random() < 0.3),  # the first start makes the file
            command_branch=rng.choice((BRANCH_A, BRANCH_A, BRANCH_A2)),
            command_day=rng.choice((0, 0, 0, 1, 2)),  # mostly yesterday
        ))  # fmt: skip
    return plans


@dataclass(frozen=True)
class Days:
    """Sale days in the branches' calendar: today's period is open, the others closed."""

    today: date
    closed: tuple[date, date, date]  # yesterday, two days ago, nine days ago (past any window)

    @classmethod
    def now(cls) -> Days:
        today = datetime.now(MEXICO).date()
        return cls(today, (today - timedelta(days=1), today - timedelta(days=2), today - timedelta(days=9)))

    def fecha(self, rng: random.Random, cycle: int, branch: str) -> str:
        """Today (open) or yesterday (closed, the window over), and in every fourth cycle a
        few late tickets of older closed days; Norte sells on closed days in a third of
        the cycles. Each start so has about one new global CFDI to issue (each costs
        about half a second here), a late part now and then."""
        if branch == BRANCH_A2 and cycle % 3 != 1:
            day = self.today
        else:
            day = rng.choices((self.today, *self.closed), weights=(45, 45, 5, 5) if cycle % 4 == 2 else (45, 55, 0, 0))[0]
        if day == self.today:
            now = datetime.now(MEXICO)
            seconds = rng.randrange(max(1, now.hour * 3600 + now.minute * 60 + now.second - 60))
        else:
            seconds = rng.randrange(86_400)
        return f"{day.isoformat()}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class Ledger:
    """What the POS side knows, over every cycle: what it sent and what was acknowledged."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[tuple[str, str], str] = field(default_factory=dict)  # (branch, number) -> body answered 200
    acked_list: list[tuple[str, str]] = field(default_factory=list)
    sent: dict[tuple[str, str], str] = field(default_factory=dict)  # every ticket sent: its body
    resend: dict[int, list[tuple[str, str, str]]] = field(default_factory=dict)  # POS -> cut-off (branch, number, body)
    expiries_sent: set[tuple[str, str]] = field(default_factory=set)
    expired: set[tuple[str, str]] = field(default_factory=set)  # PUT /expired answered 200
    expiry_refused: set[tuple[str, str]] = field(default_factory=set)  # 409: invoiced by its customer
    reprints_sent: Counter = field(default_factory=Counter)  # number -> reprint requests sent
    reprinted: Counter = field(default_factory=Counter)  # number -> answered 202
    invoices_sent: set[tuple[str, str]] = field(default_factory=set)
    invoiced: dict[tuple[str, str], str] = field(default_factory=dict)  # customer CFDI shown: its UUID
    problems: list[str] = field(default_factory=list)  # answers no cycle may give before its kill


class Cycle:
    """The clients of one server lifetime."""

    def __init__(self, ledger: Ledger, days: Days, port: int, cycle: int, burst: bool = False):
        self.ledger, self.days, self.port, self.cycle = ledger, days, port, cycle
        self.burst = burst  # the lanes send back to back instead of at a busy store's pace
        self.killing = threading.Event()
        self.stop = threading.Event()
        self.acks = 0  # tickets acknowledged in this cycle
        self.cut_off = 0  # requests that failed once the kill was decided
        self.counts: Counter = Counter()
        targets = [(self._pos, k) for k in range(POS_CLIENTS)]
        targets += [(self._expirer, None), (self._reprinter, None), (self._customer, None)]
        self.threads = [threading.Thread(target=target, args=(() if arg is None else (arg,)), daemon=True)
                        for target, arg in targets]  # fmt: skip

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "a client thread did not finish"

    def _rng(self, name: str) -> random.Random:
        return random.Random(f"{SEED}-{self.cycle}-{name}")

    def _request(self, conn, method: str, path: str, body: str | None, headers: dict) -> tuple[int, str] | None:
        """(status, text), or None when the request failed because the server was killed."""
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8")
        except (OSError, http.client.HTTPException) as exc:
            if self.killing.is_set():
                with self.ledger.lock:
                    self.cut_off += 1
                return None
            self._problem(f"{method} {path}: {exc!r} before the kill")
            return None

    def _problem(self, text: str) -> None:
        with self.ledger.lock:
            if not self.killing.is_set():
                self.ledger.problems.append(f"cycle {self.cycle}: {text}")

    def _pick(self, rng: random.Random, *, branch: str | None = None, day: date | None = None):
        with self.ledger.lock:
            if not self.ledger.acked_list:
                return None
            for _ in range(20):
                key = rng.choice(self.ledger.acked_list)
                if branch is not None and key[0] != branch:
                    continue
                if day is not None and not json.loads(self.ledger.acked[key])["fecha"].startswith(day.isoformat()):
                    continue
                return key
        return None

    # -- the clients -----------------------------------------------------------------------

    def _pos(self, k: int) -> None:
        """A POS lane: first what the last kill cut off, then new tickets."""
        rng = self._rng(f"pos{k}")
        ledger = self.ledger
        with ledger.lock:
            queue = ledger.resend.pop(k, [])
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        i = 0
        try:
            while not self.stop.is_set():
                if queue:
                    branch, number, body = queue[0]
                else:
                    branch = BRANCH_A if rng.random() < 0.3 else BRANCH_A2  # Norte prints no slips
                    number = f"C{self.cycle}P{k}N{i}"
                    i += 1
                    fecha = self.days.fecha(rng, self.cycle, branch)
                    body = dumps(ticket_body(number, rng.choice(TOTALS), branch=branch, fecha=fecha))
                    queue.append((branch, number, body))
                with ledger.lock:
                    ledger.sent[(branch, number)] = body
                answer = self._request(conn, "PUT", f"/{KEY_A}/tickets", body, PUT_HEADERS)
                if answer == (200, SAVED):
                    queue.pop(0)
                    with ledger.lock:
                        if (branch, number) not in ledger.acked:
                            ledger.acked_list.append((branch, number))
                        ledger.acked[(branch, number)] = body
                        self.acks += 1
                    if not self.burst:  # a busy lane, not a benchmark: the sweeps get their share
                        self.stop.wait(rng.uniform(0.03, 0.12))
                    continue
                if answer is not None and not self.killing.is_set():
                    self._problem(f"PUT ticket {branch}/{number}: {answer[0]} {answer[1]!r}")
                return
        finally:
            with ledger.lock:
                if queue:
                    ledger.resend[k] = queue  # sent again first on the next start
            conn.close()

    def _expirer(self) -> None:
        rng = self._rng("expire")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            while not self.stop.is_set():
                key = self._pick(rng)
                if key is None:
                    self.stop.wait(0.02)
                    continue
                branch, number = key
                with self.ledger.lock:
                    self.ledger.expiries_sent.add(key)
                body = dumps({"noTicket": number, "sucursal": branch})
                answer = self._request(conn, "PUT", f"/{KEY_A}/expired", body, PUT_HEADERS)
                if answer is None:
                    return
                if answer == (200, f"Se expiro no_ticket: {number} sucursal : {branch}"):
                    with self.ledger.lock:
                        self.ledger.expired.add(key)
                    self.counts["expired"] += 1
                elif answer[0] == 409:
                    with self.ledger.lock:
                        self.ledger.expiry_refused.add(key)
                elif not self.killing.is_set():
                    self._problem(f"PUT /expired {branch}/{number}: {answer[0]} {answer[1]!r}")
                    return
                self.stop.wait(rng.uniform(0.03, 0.1))
        finally:
            conn.close()

    def _reprinter(self) -> None:
        rng = self._rng("reprint")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            while not self.stop.is_set():
                key = self._pick(rng, branch=BRANCH_A)
                if key is None:
                    self.stop.wait(0.02)
                    continue
                number = key[1]
                with self.ledger.lock:
                    self.ledger.reprints_sent[number] += 1
                answer = self._request(conn, "POST", f"/{KEY_A}/tickets/{BRANCH_A}/{number}/reimprimir", None, basic())
                if answer is None:
                    return
                if answer == (202, f"Se reimprimira el ticket {number} de la sucursal {BRANCH_A}"):
                    with self.ledger.lock:
                        self.ledger.reprinted[number] += 1
                    self.counts["reprinted"] += 1
                elif not self.killing.is_set():
                    self._problem(f"reprint {number}: {answer[0]} {answer[1]!r}")
                    return
                self.stop.wait(rng.uniform(0.15, 0.4))
        finally:
            conn.close()

    def _customer(self) -> None:
        """Customers self-invoicing today's tickets on the sandbox page, as their slips say."""
        rng = self._rng("customer")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            while not self.stop.is_set():
                key = self._pick(rng, day=self.days.today)
                if key is None or key in self.ledger.invoices_sent:
                    self.stop.wait(0.05)
                    continue
                branch, number = key
                with self.ledger.lock:
                    self.ledger.invoices_sent.add(key)
                    total = json.loads(self.ledger.acked[key])["monto"]
                form = urllib.parse.urlencode({**CUSTOMER, "monto": f"{total:.2f}"})
                answer = self._request(conn, "POST", f"/autofactura/{KEY_A}/{branch}/{number}", form,
                                       {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
                if answer is None:
                    return
                status, page = answer
                if status == 200:
                    found = re.search(r'id="uuid">([0-9A-F-]{36})<', page)
                    if found is None:
                        self._problem(f"self-invoice {branch}/{number}: 200 without a UUID")
                        return
                    with self.ledger.lock:
                        self.ledger.invoiced[key] = found.group(1)
                    self.counts["invoiced"] += 1
                elif status not in (409, 410) and not self.killing.is_set():
                    # 409: invoiced already, 410: expired or in the global CFDI meanwhile.
                    self._problem(f"self-invoice {branch}/{number}: {status} {page[:300]!r}")
                    return
                self.stop.wait(rng.uniform(0.15, 0.4))
        finally:
            conn.close()


# -- processes ---------------------------------------------------------------------------


def _config(tmp_path: Path, port: int, printer_url: str) -> Path:
    path = write_config(tmp_path, port=port)  # same tmp_path -> same data dir every time
    text = path.read_text(encoding="utf-8")
    assert 'printer = "file:prints/"' in text
    path.write_text(text.replace('printer = "file:prints/"', f'printer = "{printer_url}"', 1), encoding="utf-8")
    return path


def _command(tmp_path: Path, config: Path, branch: str, day: date, name: str) -> subprocess.Popen:
    """`ticket-agent global-invoice` as a second process on the same data directory."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TICKET_AGENT_CONFIG", None)
    log = tmp_path / f"{name}.out"
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "global-invoice", "--config", str(config), "--branch", branch,
             "--period", day.isoformat()],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    proc.log = log
    return proc


def _kill(proc: subprocess.Popen | None) -> bool:
    """SIGKILL; True if it was still running."""
    if proc is None or proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    return True


def _wait_for_sweeps(proc, timeout: float = 60.0) -> None:
    """Until the start-up expiry and global-invoice sweeps of this start have finished."""
    deadline = time.monotonic() + timeout
    names = ("expire", "global-invoice")
    while True:
        text = proc.output.text()
        failed = [n for n in names if f"scheduled job {n} failed" in text]
        assert not failed, f"the start-up sweep {failed} failed:\n{proc.output.tail(60)}"
        if all(f"scheduled job {n} ran" in text for n in names):
            return
        assert proc.poll() is None, f"server died (rc {proc.returncode}):\n{proc.output.tail(60)}"
        assert time.monotonic() < deadline, f"the start-up sweeps did not finish in {timeout}s:\n{proc.output.tail()}"
        time.sleep(0.02)


class _Stamps:
    """How many global CFDIs a server has recorded so far, as its log says."""

    def __init__(self, proc):
        self.lines, self.seen, self.count = proc.output.lines, 0, 0

    def __call__(self) -> int:
        end = len(self.lines)
        self.count += sum(" stamped: UUID " in line for line in self.lines[self.seen : end])
        self.seen = end
        return self.count


def _db_query(db_path: Path, sql: str, args=()) -> list:
    db = sqlite3.connect(db_path, timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _wait_until(check, what: str, timeout: float = 30.0, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None:
            assert proc.poll() is None, f"server died (rc {proc.returncode}) waiting for {what}:\n{proc.output.tail()}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s" + (
            f"\n{proc.output.tail()}" if proc is not None else "")
        time.sleep(0.02)


def _sigterm(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    finally:
        stop_server(proc)
    assert proc.returncode == 0, f"SIGTERM exit code {proc.returncode}:\n{proc.output.tail()}"


# -- the test ----------------------------------------------------------------------------


def test_sigkill_at_random_moments_under_mixed_load_keeps_every_promise(tmp_path):
    print(f"\n{_replay()}")
    try:
        _crash_test(tmp_path)
    except AssertionError as exc:
        raise AssertionError(f"{_replay()}: {exc}") from exc


def _crash_test(tmp_path: Path) -> None:
    started = time.monotonic()
    plans = make_plans(random.Random(SEED), CYCLES)
    print("plan: " + ", ".join(f"{p.mode}{'+command' if p.command else ''}" for p in plans))
    days = Days.now()
    ledger = Ledger()
    commands: list[tuple[int, str, str]] = []  # (cycle, how it ended, output)
    db_path = tmp_path / "data" / "tickets.db"
    with FakePrinter() as printer:
        runs = [0, 0]
        for number, plan in enumerate(plans):
            print(_run_and_kill(tmp_path, printer, ledger, days, number, plan, commands, runs))
        assert not ledger.problems, ledger.problems[:5]
        assert len(ledger.acked) >= 10 * CYCLES, f"only {len(ledger.acked)} tickets acknowledged"

        # A clean start: its sweeps finish, every slip prints, GET /cfdis agrees, SIGTERM.
        # (What the last kill cut off stays unacknowledged: that POS never came back.)
        begun = time.monotonic()
        port = free_port()
        closed_before = datetime.now(MEXICO).date()  # the periods before this day closed before this start
        proc = start_server(["--config", str(_config(tmp_path, port, printer.url))], cwd=tmp_path, port=port)
        try:
            _wait_for_sweeps(proc)
            _wait_until(lambda: _db_query(db_path, "SELECT COUNT(*) FROM print_job WHERE state IN "
                                                   "('pending', 'printing')")[0][0] == 0,
                        "every slip printed", timeout=60, proc=proc)  # fmt: skip
            _check_through_the_api(port, ledger)
        finally:
            if proc.poll() is None:
                _sigterm(proc)
            else:
                stop_server(proc)
        print(f"clean start: sweeps done, every slip printed, stopped in {time.monotonic() - begun:.1f}s")
        slips = printer.jobs
    elapsed = time.monotonic() - started
    print(f"{CYCLES} kills, {len(ledger.acked)} tickets, {len(ledger.expired)} expiries, "
          f"{sum(ledger.reprinted.values())} reprints, {len(ledger.invoiced)} customer CFDIs acknowledged; "
          f"{len(slips)} printer connections; {len(commands)} global-invoice commands "
          f"({dict(Counter(how for _, how, _ in commands))}); {elapsed:.1f}s before the checks")  # fmt: skip
    _check_end(db_path, tmp_path / "data", ledger, closed_before)
    _check_slips(db_path, slips, ledger, CYCLES)
    print(f"checked in {time.monotonic() - started - elapsed:.1f}s")


def _run_and_kill(tmp_path, printer, ledger, days, number, plan: Plan, commands, runs: list[int]) -> str:
    """One server lifetime: start, load, SIGKILL at the plan's moment. `runs`: global runs
    reserved and recorded before, updated. The file itself is only read through a copy:
    opening it would recover it before the next start could."""
    port = free_port()
    config = _config(tmp_path, port, printer.url)
    connections = printer.connections
    db_path = tmp_path / "data" / "tickets.db"
    begun = time.monotonic()
    command = None
    if plan.command and plan.mode != "command":  # its imports overlap the server's start, then it works beside it
        command = _command(tmp_path, config, plan.command_branch, days.closed[plan.command_day], f"command-{number}")
    proc = None
    clients = None
    try:
        proc = start_server(["--config", str(config)], cwd=tmp_path, port=port)
        up = time.monotonic()
        stamps = _Stamps(proc)
        stamped_at = None
        clients = Cycle(ledger, days, port, number, burst=plan.mode == "command")  # a rush while it runs
        clients.start()
        deadline = up + CYCLE_DEADLINE
        if plan.mode == "command":
            command = _command(tmp_path, config, plan.command_branch, days.closed[plan.command_day],
                               f"command-{number}")  # fmt: skip
            spawned = time.monotonic()
            deadline += 5.0  # it takes a while
        while True:
            now = time.monotonic()
            assert proc.poll() is None, f"cycle {number}: server died on its own (rc {proc.returncode}):\n" \
                                        f"{proc.output.tail()}"  # fmt: skip
            with ledger.lock:
                assert not ledger.problems, f"failures before the kill: {ledger.problems[:5]}\n{proc.output.tail()}"
            if plan.mode == "tickets" and clients.acks >= plan.threshold:
                break
            if plan.mode == "sweep":
                if not plan.threshold:
                    if now - up >= plan.delay:
                        break  # in the start-up sweeps, before a global CFDI is recorded
                elif stamped_at is None:
                    if stamps() >= plan.threshold:
                        stamped_at = now
                elif now - stamped_at >= plan.delay / 4:
                    break  # after a recorded one: between two, or in the next one
            if plan.mode == "command":
                if plan.threshold == 0 and (command.poll() is not None or now - spawned >= plan.delay):
                    break  # past its imports (a second or two here): expiring, reserving, stamping; or done
                if plan.threshold == 1 and command.poll() is not None:
                    break  # it issued its period beside the rush; now the server
            if plan.mode == "print" and printer.connections - connections >= plan.threshold:
                break
            if now >= deadline:
                break  # the moment never came (nothing to print, a slow machine): kill now
            time.sleep(0.002 if plan.mode == "print" else 0.005)
        sweep_done = "scheduled job global-invoice ran" in proc.output.text()
        clients.killing.set()
        os.kill(proc.pid, signal.SIGKILL)
        command_killed = _kill(command)
        proc.wait(timeout=10)
        killed_at = time.monotonic() - up
        assert proc.returncode == -signal.SIGKILL, f"cycle {number}: exit code {proc.returncode}"
        clients.join()
    finally:
        if clients is not None:
            clients.killing.set()  # after a failure above, what the clients see next is no news
            clients.stop.set()
        _kill(command)
        if proc is not None:
            _kill(proc)
            stop_server(proc)
    snap = _check_after_kill(db_path, tmp_path / "data", ledger, number)
    if command is not None:
        output = command.log.read_text(encoding="utf-8")
        how = "killed" if command_killed else f"rc {command.returncode}"
        commands.append((number, how, output))
        if not command_killed:
            # Finished before the kill: it issued its period, or found it done.
            assert command.returncode == 0 and ("stamped" in output or "Nothing to invoice" in output), (
                f"cycle {number}: global-invoice command {how}:\n{output}")
    runs_before = runs[:]
    runs[:] = [len(snap.runs), sum(1 for run in snap.runs if run["cfdi"])]
    reserved, stamped = (after - before for after, before in zip(runs, runs_before))
    return (f"cycle {number:2d} {plan.mode:8s} up in {up - begun:4.2f}s, killed at {killed_at:4.2f}s: "
            f"{clients.acks:3d} tickets, "
            f"{clients.counts['expired']} expiries, {clients.counts['reprinted']} reprints, "
            f"{clients.counts['invoiced']} self-invoices, {printer.connections - connections} slips sent, "
            f"{clients.cut_off} requests cut off, global runs {reserved} reserved and {stamped} recorded, "
            f"start-up sweep {'done' if sweep_done else 'running'}"
            + (f", command {commands[-1][1]}" if command is not None else ""))


# -- the checks --------------------------------------------------------------------------


def _check_through_the_api(port: int, ledger: Ledger) -> None:
    """A sample of acknowledged tickets through GET /cfdis: known, in at most one CFDI."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        for branch, number in random.Random(SEED).sample(sorted(ledger.acked), 40):
            conn.request("GET", f"/{KEY_A}/cfdis?ticket={number}&sucursal={branch}", headers=basic())
            response = conn.getresponse()
            status, text = response.status, response.read().decode("utf-8")
            if status == 400:
                assert text == f"Ticket numero:{number} , sucursal: {branch}, aun no genera cfdi"
            else:
                assert status == 200, (number, status, text)
                assert [r["noTicket"] for r in json.loads(text)["cfdis"]] == [number]
    finally:
        conn.close()


@dataclass
class Snapshot:
    """The rows of a database file that the checks look at."""

    tickets: list
    cfdis: dict
    runs: list

    @classmethod
    def read(cls, db_path: Path) -> Snapshot:
        db = sqlite3.connect(db_path)
        db.row_factory = sqlite3.Row
        try:
            assert db.execute("PRAGMA integrity_check").fetchall()[0][0] == "ok", "PRAGMA integrity_check failed"
            assert db.execute("PRAGMA foreign_key_check").fetchall() == [], "PRAGMA foreign_key_check failed"
            tickets = db.execute("SELECT * FROM ticket").fetchall()
            cfdis = {row["id"]: row for row in db.execute("SELECT * FROM cfdi")}
            links = db.execute("SELECT ticket_id, cfdi_id FROM ticket_cfdi").fetchall()
            runs = db.execute("SELECT * FROM global_invoice ORDER BY id").fetchall()
        finally:
            db.close()
        by_ticket: dict[int, list[str]] = {}
        for ticket_id, cfdi_id in links:
            by_ticket.setdefault(ticket_id, []).append(cfdi_id)
        doubled = {t: c for t, c in by_ticket.items() if len(c) > 1}
        assert not doubled, f"tickets in two CFDIs (nothing was cancelled): {list(doubled.items())[:5]}"
        for row in tickets:  # the ticket's own CFDI is the one it is linked to
            linked = by_ticket.get(row["id"], [])
            assert linked == ([row["cfdi_id"]] if row["cfdi_id"] else []), f"ticket {row['number']}: links {linked}"
        return cls(tickets, cfdis, runs)


def _check_after_kill(db_path: Path, data_dir: Path, ledger: Ledger, number: int) -> Snapshot:
    """The file exactly as a SIGKILL left it (a copy is opened, so that the next start
    recovers the original itself): every promise made so far is on disk."""
    copy = data_dir.parent / "after-kill"
    copy.mkdir(exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{db_path}{suffix}")
        target = copy / f"tickets.db{suffix}"
        target.unlink(missing_ok=True)
        if source.exists():
            target.write_bytes(source.read_bytes())
    try:
        snap = Snapshot.read(copy / "tickets.db")
        _check_promises(snap, data_dir, ledger, datetime.now(MEXICO).date())
    except AssertionError as exc:
        raise AssertionError(f"after the kill of cycle {number}: {exc}") from exc
    return snap


def _check_promises(snap: Snapshot, data_dir: Path, ledger: Ledger, today: date) -> dict:
    """What holds at any moment, even right after a kill. Returns the stored tickets."""
    # Every acknowledged ticket exactly once, as acknowledged; nothing nobody sent.
    keys = Counter((row["company"], row["branch"], row["number"]) for row in snap.tickets)
    assert [k for k, n in keys.items() if n > 1] == [], "a ticket number is stored twice in one branch"
    assert {company for company, _, _ in keys} <= {KEY_A}
    stored = {(row["branch"], row["number"]): row for row in snap.tickets}
    missing = sorted(set(ledger.acked) - set(stored))
    assert not missing, f"{len(missing)} acknowledged tickets lost: {missing[:10]}"
    assert set(stored) <= set(ledger.sent), f"tickets nobody sent: {sorted(set(stored) - set(ledger.sent))[:10]}"
    # A cut-off ticket is sent again at the next start until acknowledged: only those the
    # last kill cut off can be stored without a 200.
    to_send = {(branch, number) for queue in ledger.resend.values() for branch, number, _ in queue}
    unacknowledged = set(stored) - set(ledger.acked)
    assert unacknowledged <= to_send, f"stored, never acknowledged: {sorted(unacknowledged - to_send)[:10]}"
    for key, row in stored.items():  # as acknowledged; a ticket cut off, as sent
        sent = json.loads(ledger.acked.get(key, ledger.sent[key]))
        total = Decimal(str(sent["monto"]))
        assert (row["insumo"], row["sold_at"], Decimal(row["total"]).scaleb(-6)) == (
            sent["insumo"], sent["fecha"].replace("T", " "), total), f"ticket {key} differs from its 200"
        assert row["body_hash"] == body_hash(sent["fecha"], total, sent["insumo"]), f"ticket {key}: body hash"
        assert row["version"] == 1 or row["status"] != "ALMACENADO", f"an identical re-send changed ticket {key}"

    # No ticket in two CFDIs (Snapshot.read), and the ticket, its CFDI and its run agree.
    runs = {run["id"]: run for run in snap.runs}
    members: dict[str, set[int]] = {}
    reserved: Counter = Counter()
    for row in snap.tickets:
        name = f"ticket {row['branch']}/{row['number']} ({row['status']})"
        if row["cfdi_id"]:
            members.setdefault(row["cfdi_id"], set()).add(row["id"])
            cfdi = snap.cfdis[row["cfdi_id"]]
            assert (cfdi["status"], cfdi["branch"]) == ("ALMACENADO", row["branch"]), f"{name}: CFDI {cfdi['uuid']}"
            assert row["status"] == {"customer": "FACTURADO", "global": "GLOBAL"}[cfdi["kind"]], f"{name} in a " \
                                                                                                 f"{cfdi['kind']} CFDI"
        else:
            assert row["status"] in ("ALMACENADO", "EXPIRADO"), f"{name} without a CFDI"
        if row["global_invoice"] is None:
            assert not row["cfdi_id"] or snap.cfdis[row["cfdi_id"]]["kind"] == "customer", f"{name}: global, no run"
            continue
        run = runs[row["global_invoice"]]
        reserved[run["id"]] += 1
        assert run["branch"] == row["branch"] and run["period_first"] <= row["sold_at"][:10] <= run["period_last"], (
            f"{name} reserved by run {run['id']} of {run['branch']} {run['period_first']}")
        assert row["cfdi_id"] == run["cfdi"], f"{name} reserved by run {run['id']} ({run['state']}), in {row['cfdi_id']}"
    for run in snap.runs:  # a run keeps the tickets it reserved, and its CFDI holds exactly them
        assert reserved[run["id"]] == run["tickets"], f"run {run['id']}: {reserved[run['id']]} of {run['tickets']}"
        assert (run["state"] == "stamped") == (run["cfdi"] is not None), f"run {run['id']}: {run['state']}"
        if run["cfdi"] is not None:
            assert snap.cfdis[run["cfdi"]]["kind"] == "global" and len(members[run["cfdi"]]) == run["tickets"]
    assert len({run["cfdi"] for run in snap.runs if run["cfdi"]}) == sum(1 for r in snap.runs if r["cfdi"])
    assert {i for i, c in snap.cfdis.items() if c["kind"] == "global"} == {r["cfdi"] for r in snap.runs if r["cfdi"]}
    # Folios of each series and parts of each period: 1..n, none skipped, none twice.
    for series in {run["series"] for run in snap.runs}:
        folios = sorted(run["folio"] for run in snap.runs if run["series"] == series)
        assert folios == list(range(1, len(folios) + 1)), f"series {series}: folios {folios}"
    for period in {(run["branch"], run["period_first"]) for run in snap.runs}:
        parts = sorted(run["part"] for run in snap.runs if (run["branch"], run["period_first"]) == period)
        assert parts == list(range(1, len(parts) + 1)), f"period {period}: parts {parts}"

    # The files behind every recorded CFDI (written before its row): stamped with the
    # recorded UUID; a global one names exactly the tickets recorded in it.
    numbers = {row["id"]: row["number"] for row in snap.tickets}
    for cfdi_id, cfdi in snap.cfdis.items():
        xml = etree.parse(str(data_dir / cfdi["xml_file"])).getroot()
        assert (data_dir / cfdi["pdf_file"]).is_file(), f"CFDI {cfdi['uuid']}: no PDF"
        [uuid] = xml.xpath("//tfd:TimbreFiscalDigital/@UUID", namespaces=CFDI_NS)
        assert uuid.upper() == cfdi["uuid"], f"CFDI {cfdi['uuid']}: the file is stamped {uuid}"
        if cfdi["kind"] == "global":
            named = xml.xpath("cfdi:Conceptos/cfdi:Concepto/@NoIdentificacion", namespaces=CFDI_NS)
            assert sorted(named) == sorted(numbers[t] for t in members[cfdi_id]), f"CFDI {cfdi['uuid']}: tickets"
        else:
            assert len(members[cfdi_id]) == 1, f"customer CFDI {cfdi['uuid']}: {len(members[cfdi_id])} tickets"

    # What the POS and the customers were told.
    for key in ledger.expired:
        assert stored[key]["status"] in ("EXPIRADO", "GLOBAL"), f"expiry of {key} acknowledged: {stored[key]['status']}"
    for key in ledger.expiry_refused:
        assert stored[key]["status"] == "FACTURADO", f"expiry of {key} refused, yet {stored[key]['status']}"
    for key, uuid in ledger.invoiced.items():
        row = stored[key]
        assert row["status"] == "FACTURADO" and snap.cfdis[row["cfdi_id"]]["uuid"] == uuid, f"customer CFDI of {key}"
    for key, row in stored.items():
        if row["status"] == "FACTURADO":
            assert key in ledger.invoices_sent, f"{key} invoiced, but no customer asked"
        if row["expired_at"] is not None and row["sold_at"][:10] >= today.isoformat():
            assert key in ledger.expiries_sent, f"{key} expired in its open period without PUT /expired"
    return stored


def _check_end(db_path: Path, data_dir: Path, ledger: Ledger, closed_before: date) -> None:
    """After the clean start: the promises, every run finished, every closed period in
    exactly one global CFDI."""
    snap = Snapshot.read(db_path)
    stored = _check_promises(snap, data_dir, ledger, datetime.now(MEXICO).date())
    stuck = [(run["id"], run["state"], run["last_error"]) for run in snap.runs if run["state"] != "stamped"]
    assert not stuck, f"global runs not finished after a clean start: {stuck}"
    waiting = sorted(key for key, row in stored.items()
                     if row["sold_at"][:10] < closed_before.isoformat() and row["cfdi_id"] is None)  # fmt: skip
    assert not waiting, f"{len(waiting)} tickets of closed periods in no CFDI after a clean start: {waiting[:10]}"


def _slip_number(data: bytes) -> str | None:
    found = re.search(rb"Ticket: ([A-Za-z0-9_-]+)\n", data)
    return found.group(1).decode() if found else None


def _check_slips(db_path: Path, slips: list[bytes], ledger: Ledger, kills: int) -> None:
    """docs/printing.md: a slip is printed at most once per job; the job a kill cut off
    while it was being sent is not sent again (failed, interrupted); no other is lost."""
    rows = _db_query(db_path, "SELECT t.branch, t.number, j.reason, j.state, j.last_error FROM print_job j "
                              "JOIN ticket t ON t.id = j.ticket_id")  # fmt: skip
    tickets = _db_query(db_path, "SELECT number FROM ticket WHERE branch = ?", (BRANCH_A,))
    assert {branch for branch, *_ in rows} <= {BRANCH_A}, "a branch without a printer has print jobs"
    sales = Counter(number for _, number, reason, _, _ in rows if reason == "sale")
    assert sales == Counter(number for (number,) in tickets), "not exactly one sale slip per ticket of Centro"
    assert {reason for _, _, reason, _, _ in rows} <= {"sale", "reprint"}
    reprints = Counter(number for _, number, reason, _, _ in rows if reason == "reprint")
    for number in set(reprints) | set(ledger.reprinted):
        assert ledger.reprinted[number] <= reprints[number] <= ledger.reprints_sent[number], (
            f"ticket {number}: {reprints[number]} reprint jobs, {ledger.reprinted[number]} acknowledged")
    other = [(n, state, error) for _, n, _, state, error in rows
             if state != "printed" and not (state == "failed" and error == INTERRUPTED)]  # fmt: skip
    assert not other, f"jobs neither printed nor interrupted by a kill: {other[:5]}"
    printed = Counter(number for _, number, _, state, _ in rows if state == "printed")
    interrupted = Counter(number for _, number, _, state, _ in rows if state == "failed")

    whole, partial = Counter(), Counter()
    for data in slips:
        complete = data.endswith(SLIP_END)
        if complete:
            reading = read_escpos(data)
            complete = bool(reading.cuts) and reading.status_requests[-1:] == [1]
        number = _slip_number(data)
        assert number is not None or not complete, f"a whole slip without a ticket number: {data[:200]!r}"
        (whole if complete else partial)[number] += 1
    assert sum(partial.values()) <= kills, f"{sum(partial.values())} slips cut off by {kills} kills"
    doubled = {n: (whole[n], printed[n], interrupted[n]) for n in whole if whole[n] > printed[n] + interrupted[n]}
    assert not doubled, f"slips printed more often than they had jobs (whole, printed, interrupted): {doubled}"
    unproven = {n: (whole[n], printed[n]) for n in printed if whole[n] < printed[n]}
    assert not unproven, f"jobs marked printed without a whole slip at the printer: {unproven}"
    lost = {n: interrupted[n] - (whole[n] - printed[n]) for n in interrupted if whole[n] - printed[n] < interrupted[n]}
    # One printer prints one slip at a time: a kill can cut off one slip, no more.
    assert sum(lost.values()) <= kills, (
        f"{sum(lost.values())} jobs marked interrupted were never printed ({kills} kills, one slip in flight "
        f"each at most): {sorted(lost.items())[:10]}")
    print(f"slips: {sum(whole.values())} whole, {sum(partial.values())} cut off; jobs: {sum(printed.values())} "
          f"printed, {sum(interrupted.values())} interrupted ({sum(lost.values())} of them never printed)")
