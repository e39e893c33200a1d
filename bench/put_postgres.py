"""PUT /tickets throughput: the agent on its SQLite file, and 1, 2 and 3 agent processes
sharing one PostgreSQL database, side by side in one run. Figures only: this is not a test.

    python bench/put_postgres.py [--seconds 15] [--clients 16] [--threads 16]
                                 [--postgres URL] [--json PATH] [--warmup 2] [--tool auto|wrk|python]

The ticket body, the load generators (wrk, else Python processes) and the server helpers
are bench/put_tickets.py's. Each scenario starts N real `ticket-agent serve` processes whose
configurations differ only in their `listen` port (same data_dir, same [database] url),
spreads --clients over their ports, and afterwards reads the database: every ticket answered
200 must be there, and no (company, branch, number) twice. The PostgreSQL database named by
--postgres is DROPPED and created again before each PostgreSQL scenario.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import put_tickets as pt  # bench/ is not a package: imported from its folder
from put_tickets import HOST, BenchError, log

DEFAULT_POSTGRES = "postgresql://agent:agent@127.0.0.1:5432/ticket_agent_bench"
POSTGRES_ENV = "TICKET_AGENT_BENCH_POSTGRES"
# (backend, agent processes), in the order they run and are printed.
SCENARIOS = [("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 3)]
MAINTENANCE_DBS = {"postgres", "template0", "template1"}
START_TIMEOUT = 60.0  # seconds; three agents importing at once on 2 cores take a while


# --- PostgreSQL ---------------------------------------------------------------------------

class Postgres:
    """The benchmark's database on the --postgres server, and that server's `postgres`
    database for dropping and creating it."""

    def __init__(self, url: str):
        import psycopg  # only this script needs it; put_tickets.py does not
        from psycopg import sql

        self.psycopg, self.sql = psycopg, sql
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise BenchError(f"--postgres must be a postgresql:// URL, got {url!r}")
        self.url = "postgresql://" + url.split("://", 1)[1]
        self.name = unquote(parts.path.lstrip("/"))
        if not self.name or self.name in MAINTENANCE_DBS:
            raise BenchError(f"--postgres must name the benchmark's own database (it is dropped "
                             f"and created again), not {self.name or 'none'!r}")
        self.maintenance = urlsplit(self.url)._replace(path="/postgres").geturl()
        netloc = parts.netloc.rsplit("@", 1)
        self.shown = parts._replace(netloc=netloc[-1]).geturl()  # no user or password

    def _admin(self):
        try:
            return self.psycopg.connect(self.maintenance, autocommit=True, connect_timeout=10)
        except self.psycopg.Error as exc:
            raise BenchError(f"cannot connect to PostgreSQL at {self.shown} (database "
                             f"`postgres`): {exc}".strip()) from exc

    def version(self) -> str:
        with self._admin() as conn:
            return conn.execute("SHOW server_version").fetchone()[0]

    def recreate(self) -> None:
        ident = self.sql.Identifier(self.name)
        with self._admin() as conn:
            try:
                conn.execute(self.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
                conn.execute(self.sql.SQL("CREATE DATABASE {}").format(ident))
            except self.psycopg.Error as exc:
                raise BenchError(f"cannot drop and create database {self.name}: {exc}") from exc

    def drop(self) -> None:
        with self._admin() as conn:
            try:
                conn.execute(self.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                             .format(self.sql.Identifier(self.name)))
            except self.psycopg.Error as exc:
                raise BenchError(str(exc)) from exc

    def counts(self) -> tuple[int, int, str]:
        """(rows in ticket, (company, branch, number) stored more than once, where)."""
        try:
            with self.psycopg.connect(self.url, connect_timeout=10) as conn:
                rows = conn.execute("SELECT count(*) FROM ticket").fetchone()[0]
                dups = conn.execute(DUPLICATES).fetchone()[0]
        except self.psycopg.Error as exc:
            raise BenchError(f"cannot count the tickets in {self.name}: {exc}") from exc
        return rows, dups, f"table ticket of database {self.name}"


DUPLICATES = ("SELECT count(*) FROM (SELECT company, branch, number FROM ticket "
              "GROUP BY company, branch, number HAVING count(*) > 1) AS twice")


def sqlite_counts(data_dir: Path) -> tuple[int, int, str]:
    path = data_dir / "tickets.db"
    if not path.is_file():
        raise BenchError(f"no tickets.db in {data_dir} after the SQLite run")
    # Read-write on purpose, as put_tickets.py does: the agent has exited, and SQLite replays
    # a WAL it left behind, which is what it promised was durable.
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT count(*) FROM ticket").fetchone()[0]
        dups = db.execute(DUPLICATES).fetchone()[0]
    finally:
        db.close()
    return rows, dups, "tickets.db"


# --- one scenario -------------------------------------------------------------------------

def wait_answers(name: str, proc, port: int, logfile: Path) -> int:
    """Listening is not enough: wait until GET /healthz answers (any status)."""
    pt.wait_listening(name, proc, port, logfile, timeout=START_TIMEOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode} while starting; its "
                             f"last output:\n{pt.tail(logfile)}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
            conn.close()
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise BenchError(f"{name} never answered GET /healthz on {HOST}:{port}; its "
                                 f"last output:\n{pt.tail(logfile)}") from None
            time.sleep(0.1)
            continue
        if resp.status != 200:
            log(f"{name}: GET /healthz answered {resp.status}: {body[:500]}")
        return resp.status


def split(total: int, parts: int) -> list[int]:
    """total clients over parts ports, as evenly as possible (16 over 3: 6, 5, 5)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def load_all(load, ports: list[int], clients: list[int], seconds: float, phase: str,
             tmp: Path) -> list[dict]:
    """One load generator per agent process, all at once. Ticket numbers stay unique across
    them all: phase + process number + "p" + the generator's own client/thread id and count
    (B2p1-17 is the 17th ticket of wrk thread 1 on process 2)."""
    # wrk: the CPUs shared out among the N generators (one wrk of 2 threads for 1 process,
    # one thread each for 2 and 3), instead of N x one thread per CPU.
    wrk_threads = max(1, (os.cpu_count() or 1) // len(ports))

    def one(i: int) -> dict:
        prefix = f"{phase}{i + 1}p"
        if load is pt.load_wrk:
            return pt.load_wrk(ports[i], seconds, clients[i], prefix, tmp, wrk_threads=wrk_threads)
        return load(ports[i], seconds, clients[i], prefix, tmp)

    with ThreadPoolExecutor(len(ports)) as pool:
        return list(pool.map(one, range(len(ports))))


def combine(parts: list[dict]) -> dict:
    """Requests/s and counts add up. Latency percentiles cannot be merged from the
    generators' summaries, so with several processes p50/p99 are the highest of them
    (the slowest process's)."""
    return {"ok": sum(p["ok"] for p in parts), "errors": sum(p["errors"] for p in parts),
            "rps": round(sum(p["rps"] for p in parts), 1),
            "p50_ms": max(p["p50_ms"] for p in parts),
            "p99_ms": max(p["p99_ms"] for p in parts),
            "error_samples": list(dict.fromkeys(s for p in parts for s in p["error_samples"]))[:3]}


def log_problems(logfile: Path, limit: int = 5) -> tuple[int, list[str]]:
    """Lines of an agent's log that report an error or a traceback."""
    lines = [l for l in logfile.read_text(errors="replace").splitlines()
             if "ERROR" in l or "Traceback" in l or "CRITICAL" in l]
    return len(lines), lines[:limit]


def run_scenario(backend: str, n: int, args, tmp: Path, load, pg: Postgres | None) -> dict:
    label = f"{backend} x{n}"
    data_dir = tmp / "data"  # the same for all N processes
    url = ""
    if backend == "postgresql":
        log(f"{label}: fresh database {pg.name}")
        pg.recreate()
        url = pg.url
    ports: list[int] = []
    while len(ports) < n:
        port = pt.free_port()
        if port not in ports:
            ports.append(port)
    procs, logs = [], []
    try:
        for i, port in enumerate(ports):
            config = tmp / f"agent{i + 1}.toml"
            # Only `listen` differs from one process's file to the next.
            config.write_text(pt.agent_config(port, data_dir, args.threads)
                              + f"\n[database]\nurl = {json.dumps(url)}\n")
            logs.append(tmp / f"agent{i + 1}.log")
            procs.append(pt.spawn(pt.agent_cmd(config), logs[-1]))
        log(f"{label}: starting {n} agent process(es) on "
            + ", ".join(f"{HOST}:{p}" for p in ports))
        health = [wait_answers(f"{label} process {i + 1}", proc, port, logs[i])
                  for i, (proc, port) in enumerate(zip(procs, ports))]
        clients = split(args.clients, n)
        acked = errors = 0
        if args.warmup > 0:
            log(f"{label}: warm-up {args.warmup:g} s")
            warm = load_all(load, ports, clients, args.warmup, "W", tmp)
            acked += sum(p["ok"] for p in warm)
            errors += sum(p["errors"] for p in warm)
        log(f"{label}: load {args.seconds:g} s, {args.clients} clients ({'+'.join(map(str, clients))})")
        parts = load_all(load, ports, clients, args.seconds, "B", tmp)
        acked += sum(p["ok"] for p in parts)
        errors += sum(p["errors"] for p in parts)
        died = [f"process {i + 1} exited with code {p.returncode} during the load"
                for i, p in enumerate(procs) if p.poll() is not None]
    finally:
        stops = [pt.stop(p) for p in procs]
    log(f"{label}: " + "; ".join(stops))

    stored, dups, where = sqlite_counts(data_dir) if backend == "sqlite" else pg.counts()
    # A request the load generator cut off when its time was up (at most one per connection
    # and load phase), or one that timed out, may be stored without a 200 being counted.
    in_flight = args.clients * (2 if args.warmup > 0 else 1) + errors
    problems = list(died)
    if stored < acked:
        problems.append(f"TICKETS LOST: {acked - stored} acknowledged tickets are not stored")
    if dups:
        problems.append(f"DUPLICATES: {dups} (company, branch, number) stored more than once")
    if stored > acked + in_flight:
        problems.append(f"MORE STORED THAN SENT: {stored - acked} beyond the 200s, at most "
                        f"{in_flight} could be in flight")
    bad_stops = [f"process {i + 1} {s}" for i, s in enumerate(stops) if not s.endswith("exit code 0")]
    log_errors = [log_problems(f) for f in logs]
    result = combine(parts)
    result.update({
        "label": label, "backend": backend, "processes": n, "ports": ports,
        "clients_per_process": clients, "healthz": health,
        "per_process": parts if n > 1 else [],
        "stops": stops, "bad_stops": bad_stops,
        "log_errors": [{"count": c, "first": first} for c, first in log_errors],
        "check": {"acked": acked, "stored": stored, "duplicates": dups, "where": where,
                  "in_flight_max": in_flight, "problems": problems, "ok": not problems},
    })
    return result


# --- report -------------------------------------------------------------------------------

def report(args, tool: str, version: str, pg: Postgres, results: list[dict],
           failures: dict) -> None:
    print(f"\nPUT /tickets: {args.clients} clients in all (spread over the processes), "
          f"{args.seconds:g} s each after {args.warmup:g} s warm-up, {args.threads} server "
          f"threads per process, load by {tool}")
    print(f"machine: {os.cpu_count()} CPUs; PostgreSQL {version} at {pg.shown}")
    base = next((r["rps"] for r in results if r["backend"] == "sqlite"), None)
    print(f"{'scenario':<16}{'requests/s':>12}{'vs sqlite':>11}{'p50 ms':>10}{'p99 ms':>10}"
          f"{'errors':>9}{'stored':>9}  check")
    for r in results:
        ratio = f"{r['rps'] / base:.2f}x" if base else "-"
        c = r["check"]
        print(f"{r['label']:<16}{r['rps']:>12.1f}{ratio:>11}{r['p50_ms']:>10.2f}"
              f"{r['p99_ms']:>10.2f}{r['errors']:>9}{c['stored']:>9}  "
              f"{'OK' if c['ok'] else 'FAILED'}")
    for label in failures:
        print(f"{label:<16}  did not run (see below)")
    if any(r["processes"] > 1 for r in results):
        print("(with several processes: requests/s is their sum, p50/p99 the highest of them)")

    print()
    for r in results:
        c = r["check"]
        extra = c["stored"] - c["acked"]
        note = ("" if extra <= 0 else f" ({extra} stored beyond the 200s: answers cut off when the "
                f"load stopped, at most {c['in_flight_max']})")
        verdict = "OK" if c["ok"] else "; ".join(c["problems"])
        print(f"check {r['label']}: {c['acked']} acknowledged (200), {c['stored']} stored in "
              f"{c['where']}, {c['duplicates']} (company, branch, number) twice: {verdict}{note}")
    for r in results:
        if r["per_process"]:
            print(f"\n{r['label']} per process:")
            for i, p in enumerate(r["per_process"]):
                print(f"    process {i + 1} ({r['clients_per_process'][i]} clients): "
                      f"{p['rps']:.1f} requests/s, p50 {p['p50_ms']:.2f} ms, p99 "
                      f"{p['p99_ms']:.2f} ms, {p['errors']} errors")
    for r in results:
        if r["error_samples"]:
            print(f"\n{r['label']}: first distinct errors:")
            for s in r["error_samples"]:
                print(f"    {s}")
        if any(e["count"] for e in r["log_errors"]) or r["bad_stops"] or any(
                h != 200 for h in r["healthz"]):
            print(f"\n{r['label']}: what the agents said:")
            for i, e in enumerate(r["log_errors"]):
                if e["count"]:
                    print(f"    process {i + 1}: {e['count']} log lines with ERROR/Traceback, first:")
                    for line in e["first"]:
                        print(f"        {line[:400]}")
            for s in r["bad_stops"]:
                print(f"    {s}")
            for i, h in enumerate(r["healthz"]):
                if h != 200:
                    print(f"    process {i + 1}: GET /healthz answered {h} at start")
    for label, msg in failures.items():
        print(f"\n{label} did not run: {msg}")
    if any(not r["check"]["ok"] for r in results):
        print("\n*** TICKETS LOST OR STORED TWICE: see the check lines above ***")


def main() -> int:
    parser = argparse.ArgumentParser(description="PUT /tickets: 1 agent on SQLite against 1, 2 "
                                                 "and 3 agents on one PostgreSQL database")
    parser.add_argument("--seconds", type=float, default=15, help="measured load per scenario")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured load before it")
    parser.add_argument("--clients", type=int, default=16,
                        help="concurrent keep-alive clients in all, spread over the processes")
    parser.add_argument("--threads", type=int, default=16, help="waitress threads per agent process")
    parser.add_argument("--postgres", default=os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES),
                        help=f"the benchmark's database, DROPPED and created again for each "
                             f"scenario (default: ${POSTGRES_ENV}, else {DEFAULT_POSTGRES})")
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto",
                        help="load generator (auto: wrk if installed, else Python processes)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()
    most = max(n for _, n in SCENARIOS)
    if args.clients < most:
        parser.error(f"--clients must be at least {most}, one per agent process")

    try:
        tool, load = pt.choose_load(args.tool, args.clients)
        pg = Postgres(args.postgres)
        version = pg.version()
    except BenchError as exc:
        log(f"error: {exc}")
        return 2

    results: list[dict] = []
    failures: dict = {}
    for backend, n in SCENARIOS:
        label = f"{backend} x{n}"
        with tempfile.TemporaryDirectory(prefix=f"bench-{backend}{n}-") as tmp:
            try:
                results.append(run_scenario(backend, n, args, Path(tmp), load, pg))
            except BenchError as exc:
                log(f"{label}: failed, see the report")
                failures[label] = str(exc)

    report(args, tool, version, pg, results, failures)
    lost = any(not r["check"]["ok"] for r in results)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "tool": tool, "cpu_count": os.cpu_count(), "postgres_version": version,
            "postgres": pg.shown, "clients": args.clients, "seconds": args.seconds,
            "warmup": args.warmup, "threads": args.threads, "results": results,
            "failures": failures}, indent=2) + "\n")
    if lost or failures:
        log(f"keeping database {pg.name} for a look")
    else:
        try:
            pg.drop()
        except BenchError as exc:
            log(f"could not drop {pg.name}: {exc}")
    return 1 if failures or lost else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
