"""Three `ticket-agent serve` processes on one PostgreSQL database: sales sent to all of
them at once, the process that runs the scheduled sweeps killed with SIGKILL in the
middle of the traffic, and the survivors take over: nothing acknowledged is lost or
stored twice, and every closed period gets exactly one global CFDI.

The three processes share one data directory and one database; their configurations
differ only in the port. POS lanes (three per process) and a "twins" driver (the same
ticket PUT to two or three processes at the same instant, as two POS retrying at once
would) send, through real HTTP:

1. sales of both companies and all three branches dated days in the past (company A: 1,
   2 and 5 days ago, a period each; company B: last month and the month before), past
   their self-invoicing window, with today's sales and identical re-sends mixed in;
2. once every past sale was acknowledged, only today's sales (an open period) and
   identical re-sends of acknowledged tickets, past ones included: the process holding
   the sweeps is killed with SIGKILL in the middle of this, the requests it never
   answered are sent again to a survivor (as a POS does), and the traffic goes on to the
   survivors while one of them takes over the sweeps (TAKE_OVER_EVERY) and runs them.
   The second test then kills that survivor too, half-way through its global-invoice
   sweep, and the last process must finish the runs it left reserved.

New past-dated sales stop before the kill on purpose: the sweeps run once when a process
takes them over, and then every five minutes, so a past sale stored a moment after the
survivor's sweep would rightly wait five minutes for its global CFDI.

Then the database must show: every acknowledged ticket stored exactly once, with the body
acknowledged, and nothing stored that was never sent; each Centro ticket with one sale
slip; every past ticket GLOBAL in exactly one global CFDI, of its own period; for each
(company, branch, period) exactly one run per part, stamped, each with its own CFDI and
UUID; no ticket in two CFDIs; today's tickets still open. Each process's output is kept
in its test directory (agentN.log).

PostgreSQL only: it needs tests/postgres.py's database (TICKET_AGENT_TEST_POSTGRES).
"""
from __future__ import annotations

import http.client
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

import postgres
from helpers import (
    BRANCH_A,
    BRANCH_A2,
    BRANCH_B,
    KEY_A,
    KEY_B,
    REPO,
    ServerOutput,
    basic,
    dumps,
    free_port,
    stop_server,
    ticket_body,
    wait_for_port,
    write_config,
)

from agent.config import load_config
from agent.periods import Period, expires_at, period_of
from agent.requests_in import body_hash
from service.scheduler import TAKE_OVER_EVERY

SEED = int(os.environ.get("PG_PROCESSES_SEED", "20261122"))
PROCESSES = 3
LANES_PER_PROCESS = 3
SERVER_THREADS = 12  # waitress threads of each agent (the test config says 16): lanes + 3
PAST_PER_GROUP = 24  # lane sales per (company, branch, past day)
TWINS_PER_GROUP = 3  # of those groups' sales, sent to several processes at the same instant
ACKS_BEFORE_KILL = 60  # today's sales and re-sends acknowledged after the past ones, before the kill
ACKS_AFTER_KILL = 60  # acknowledged by the survivors before the test stops sending

SAVED = "se guardo correctamente"
JSON = {"Content-Type": "application/json"}
HEADERS = {KEY_A: {**basic(), **JSON}, KEY_B: {**basic("otra", "otra-clave"), **JSON}}
COMPANY_NAME = {KEY_A: "A", KEY_B: "B"}
BRANCH_NAME = {BRANCH_A: "Centro", BRANCH_A2: "Norte", BRANCH_B: "Unica"}
TOTALS = ("12.36", "1.00", "99.99", "453.00", "1234.56", "0.58", "7.77", "116.00")
HOLDS = "this agent process runs the scheduled jobs"
WAITS = "another agent process holds"
SWEEP_RAN = "scheduled job global-invoice ran"
SWEEP_FAILED = "scheduled job global-invoice failed"
RUN_FAILED = "failed (try"  # sync/global_invoice.py: "global invoice FG-1 failed (try 1, ...)"


@pytest.fixture
def pg_url() -> str:
    """An emptied PostgreSQL database: skips without one (fails under CI)."""
    return postgres.fresh_url()


# -- the sales -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sale:
    company: str
    branch: str
    number: str
    fecha: str
    total: str
    past: bool  # sold in a closed period, past its self-invoicing window

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.company, self.branch, self.number)

    @property
    def day(self) -> date:
        return date.fromisoformat(self.fecha[:10])

    @property
    def body(self) -> str:
        return dumps(ticket_body(self.number, self.total, branch=self.branch, fecha=self.fecha))

    @property
    def hash(self) -> str:
        insumo = ticket_body(self.number, self.total, fecha=self.fecha)["insumo"]
        return body_hash(self.fecha, Decimal(self.total), insumo)

    def __str__(self) -> str:
        return (f"ticket {self.number} of company {COMPANY_NAME[self.company]} branch {BRANCH_NAME[self.branch]} "
                f"sold {self.fecha} ({'past' if self.past else 'today'})")  # fmt: skip


def _fecha(day: date, seconds: int) -> str:
    return f"{day.isoformat()}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class Calendar:
    """The sale days, each in its branch's zone, and the periods they fall in."""

    config: object  # agent.config.Config
    today: dict[str, date] = field(default_factory=dict)  # branch -> local date at the start
    past_days: dict[tuple[str, str], list[date]] = field(default_factory=dict)  # (company, branch) -> days

    @classmethod
    def now(cls, config) -> Calendar:
        cal = cls(config)
        for company in config.companies:
            for branch in company.branches:
                today = datetime.now(branch.zone).date()
                cal.today[branch.id] = today
                if company.periodicity == "day":
                    days = [today - timedelta(days=n) for n in (1, 2, 5)]
                else:  # month (company B): the 10th of last month, the 20th of the month before
                    last_month = today.replace(day=1) - timedelta(days=1)
                    before = last_month.replace(day=1) - timedelta(days=1)
                    days = [last_month.replace(day=10), before.replace(day=20)]
                cal.past_days[(company.key, branch.id)] = days
        cal.check()
        return cal

    def check(self) -> None:
        """The past days really are past their window and their period closed, by the
        agent's own rules: otherwise this test would expect the wrong thing."""
        for (key, branch_id), days in self.past_days.items():
            company = self.config.company(key)
            branch = company.branch(branch_id)
            now = datetime.now(branch.zone)
            for day in days:
                sold = datetime.combine(day, datetime.min.time())
                assert expires_at(sold, company.periodicity, company.self_invoice_days, branch.zone) <= now, day
                assert period_of(day, company.periodicity).closes_at(branch.zone) <= now, day
            assert len({period_of(d, company.periodicity) for d in days}) == len(days), days

    def period(self, sale: Sale) -> Period:
        return period_of(sale.day, self.config.company(sale.company).periodicity)

    def today_fecha(self, branch: str, rng: random.Random) -> str:
        """A moment of today, at least a minute ago, in the branch's zone."""
        zone = self.config.company(KEY_B if branch == BRANCH_B else KEY_A).branch(branch).zone
        now = datetime.now(zone) - timedelta(minutes=1)
        if now.date() != self.today[branch]:
            now = datetime.combine(self.today[branch], datetime.min.time())
        seconds = now.hour * 3600 + now.minute * 60 + now.second
        return _fecha(self.today[branch], rng.randrange(seconds + 1))

    def day_changed(self) -> bool:
        return any(datetime.now(self.config.company(KEY_B if b == BRANCH_B else KEY_A).branch(b).zone).date() != d
                   for b, d in self.today.items())  # fmt: skip


def past_sales(cal: Calendar, rng: random.Random) -> tuple[list[Sale], list[Sale]]:
    """(the lanes' past sales, the twins' past sales), shuffled."""
    lanes, twins = [], []
    for (company, branch), days in cal.past_days.items():
        for day in days:
            prefix = f"P{BRANCH_NAME[branch][0]}{day:%y%m%d}"
            for n in range(PAST_PER_GROUP + TWINS_PER_GROUP):
                sale = Sale(company, branch, f"{prefix}N{n}", _fecha(day, rng.randrange(86_400)), rng.choice(TOTALS),
                            past=True)  # fmt: skip
                (twins if n < TWINS_PER_GROUP else lanes).append(sale)
    rng.shuffle(lanes)
    rng.shuffle(twins)
    return lanes, twins


BRANCHES = ((KEY_A, BRANCH_A), (KEY_A, BRANCH_A2), (KEY_B, BRANCH_B))


def today_sale(cal: Calendar, rng: random.Random, number: str) -> Sale:
    company, branch = rng.choice(BRANCHES)
    return Sale(company, branch, number, cal.today_fecha(branch, rng), rng.choice(TOTALS), past=False)


# -- the processes -------------------------------------------------------------------------


class Fleet:
    """The three agent processes and which of them was killed."""

    def __init__(self, tmp_path: Path, url: str):
        self.ports = [free_port() for _ in range(PROCESSES)]
        while len(set(self.ports)) < PROCESSES:
            self.ports = [free_port() for _ in range(PROCESSES)]
        first = write_config(tmp_path, port=self.ports[0], database_url=url)  # data in tmp_path/data
        text = first.read_text(encoding="utf-8")
        listen = f'listen = "127.0.0.1:{self.ports[0]}"'
        assert text.count(listen) == 1 and text.count("threads = 16") == 1, text
        # A PostgreSQL connection per server thread that served a request: three agents at
        # 16 threads held some 60 of the server's default 100, too many beside other tests
        # on a shared server. SERVER_THREADS still serves every lane and twin at once when
        # all of them go to the last process left.
        text = text.replace("threads = 16", f"threads = {SERVER_THREADS}")
        self.configs = []
        for number, port in enumerate(self.ports, start=1):
            path = tmp_path / f"agent{number}.toml"
            path.write_text(text.replace(listen, f'listen = "127.0.0.1:{port}"'), encoding="utf-8")
            self.configs.append(path)
        self.config = load_config(first)
        self.tmp_path = tmp_path
        self.procs: dict[int, subprocess.Popen] = {}
        self.killed: list[int] = []  # the ports of the processes killed, in order

    def name(self, port: int) -> str:
        return f"agent {self.ports.index(port) + 1} (port {port})"

    def start(self) -> None:
        """All three at once (they migrate the empty database one after the other). As
        helpers.start_server does, but a process that does not come up is still ours
        to stop."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("TICKET_AGENT_CONFIG", None)
        for port, config in zip(self.ports, self.configs):
            proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
                                    cwd=self.tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)  # fmt: skip
            proc.output = ServerOutput(proc)
            self.procs[port] = proc
        for port, proc in self.procs.items():
            try:
                wait_for_port(port, proc, timeout=30)
            except (RuntimeError, TimeoutError) as exc:
                raise AssertionError(f"{self.name(port)} did not start: {exc}\n{self.tails()}") from None

    def holder(self, timeout: float = 20.0) -> int:
        """The port of the one process that says it runs the scheduled jobs, once every
        process said whether it does."""
        deadline = time.monotonic() + timeout
        while True:
            said = {port: proc.output.text() for port, proc in self.procs.items()}
            holders = [port for port, text in said.items() if HOLDS in text]
            if all(HOLDS in text or WAITS in text for text in said.values()):
                assert len(holders) == 1, f"{len(holders)} processes say they run the scheduled jobs:\n{self.tails()}"
                return holders[0]
            for port, proc in self.procs.items():
                assert proc.poll() is None, f"{self.name(port)} exited with {proc.returncode}:\n{proc.output.tail(60)}"
            assert time.monotonic() < deadline, f"not every process said whether it runs the sweeps:\n{self.tails()}"
            time.sleep(0.05)

    def kill(self, port: int) -> None:
        self.killed.append(port)  # first: from here on, a request cut off there is expected
        proc = self.procs[port]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def survivors(self) -> list[int]:
        return [port for port in self.ports if port not in self.killed]

    def route(self, home: int, n: int) -> int:
        """Where a POS whose agent is home sends: home, or a survivor once home was killed."""
        if home not in self.killed:
            return home
        survivors = self.survivors()
        return survivors[n % len(survivors)]

    def tails(self, n: int = 40) -> str:
        return "\n".join(f"--- {self.name(port)}{' (killed)' if port in self.killed else ''}, last lines:\n"
                         f"{proc.output.tail(n)}" for port, proc in self.procs.items())  # fmt: skip

    def stop(self) -> None:
        """SIGTERM to the survivors; every process's whole output is kept beside its
        configuration (agentN.log), for a failure to be looked into."""
        for port, proc in self.procs.items():
            stop_server(proc)
            (self.tmp_path / f"agent{self.ports.index(port) + 1}.log").write_text(proc.output.text(), encoding="utf-8")


# -- the POS side ------------------------------------------------------------------------


@dataclass
class Pos:
    """What the POS side sent and what was acknowledged, over every lane."""

    fleet: Fleet
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[tuple, Sale] = field(default_factory=dict)
    acked: dict[tuple, Sale] = field(default_factory=dict)
    acked_list: list[Sale] = field(default_factory=list)
    past_waiting: set[tuple] = field(default_factory=set)  # past sales not acknowledged yet
    past_done: threading.Event = field(default_factory=threading.Event)
    acks: int = 0  # 200 answers, re-sends included
    counts: Counter = field(default_factory=Counter)
    cut_off: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def expect_past(self, sales: list[Sale]) -> None:
        self.past_waiting.update(s.key for s in sales)

    def pick_acked(self, rng: random.Random, past: bool | None = None) -> Sale | None:
        with self.lock:
            if not self.acked_list:
                return None
            for _ in range(20):
                sale = rng.choice(self.acked_list)
                if past is None or sale.past == past:
                    return sale
        return None

    def send(self, sale: Sale, port: int, what: str, conns: dict, n: int = 0) -> bool:
        """PUT the sale; a request the killed process never answered is sent again to a
        survivor, as a POS does. True once answered 200."""
        while True:
            with self.lock:
                if sale.key in self.sent and self.sent[sale.key] != sale:
                    self.problems.append(f"test bug: two bodies for {sale}")
                self.sent[sale.key] = sale
            try:
                conn = conns.get(port)
                if conn is None:
                    conn = conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("PUT", f"/{sale.company}/tickets", body=sale.body, headers=HEADERS[sale.company])
                response = conn.getresponse()
                status, text = response.status, response.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException) as exc:
                conn = conns.pop(port, None)
                if conn is not None:
                    conn.close()
                if port in self.fleet.killed:
                    survivor = self.fleet.route(port, n)
                    with self.lock:
                        self.cut_off.append(f"{what} {sale} to {self.fleet.name(port)}: {exc!r}")
                        self.counts["sent again after the kill"] += 1
                    port = survivor
                    continue
                with self.lock:
                    self.problems.append(f"{what} {sale} to {self.fleet.name(port)}, which was not killed: {exc!r}")
                return False
            if status == 200 and text == SAVED:
                with self.lock:
                    if sale.key not in self.acked:
                        self.acked[sale.key] = sale
                        self.acked_list.append(sale)
                    self.acks += 1
                    self.counts[f"{what}: 200"] += 1
                    if self.fleet.killed:
                        self.counts["200 after the kill"] += 1
                    self.past_waiting.discard(sale.key)
                    if not self.past_waiting:
                        self.past_done.set()
                return True
            with self.lock:
                self.problems.append(f"{what} {sale} to {self.fleet.name(port)}: answered {status} {text[:300]!r}")
            return False


def lane(pos: Pos, cal: Calendar, number: int, home: int, past: list[Sale], stop: threading.Event) -> None:
    """One POS lane of home's agent: its share of the past sales first (with today's
    sales and identical re-sends mixed in), then today's sales and re-sends."""
    rng = random.Random(f"{SEED}-lane-{number}")
    queue = deque(past)
    conns: dict = {}
    i = 0
    try:
        while not stop.is_set():
            port = pos.fleet.route(home, number)
            roll = rng.random()
            if queue and roll < 0.75:
                sale, what = queue.popleft(), "new past sale"
            elif roll < 0.9 and (again := pos.pick_acked(rng)) is not None:
                sale, what = again, "identical re-send"
            else:
                sale, what = today_sale(cal, rng, f"T{number}N{i}"), "new sale of today"
                i += 1
            pos.send(sale, port, what, conns, number)
    finally:
        for conn in conns.values():
            conn.close()


def twins(pos: Pos, cal: Calendar, past: list[Sale], stop: threading.Event) -> None:
    """One ticket PUT to two or three processes at the same instant, round after round:
    new past sales first, then new sales of today and re-sends of acknowledged ones."""
    rng = random.Random(f"{SEED}-twins")
    queue = deque(past)
    rounds = 0
    while not stop.is_set():
        if queue:
            sale, what = queue.popleft(), "twin new past sale"
        elif rng.random() < 0.5 and (again := pos.pick_acked(rng, past=rng.random() < 0.6)) is not None:
            sale, what = again, "twin identical re-send"
        else:
            sale, what = today_sale(cal, rng, f"W{rounds}"), "twin new sale of today"
        live = pos.fleet.survivors()
        # Two or three processes; after the second kill, the last one twice at once.
        targets = live * 2 if len(live) == 1 else live if len(live) == 2 else rng.sample(live, rng.choice((2, 3)))
        barrier = threading.Barrier(len(targets))
        threads = [threading.Thread(target=_put_together, args=(pos, sale, what, port, n, barrier), daemon=True)
                   for n, port in enumerate(targets)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        rounds += 1


def _put_together(pos: Pos, sale: Sale, what: str, port: int, n: int, barrier: threading.Barrier) -> None:
    """One of a twins round: connected first, then the PUTs of the round leave together."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        try:
            conn.connect()
        except OSError:
            pass  # a killed process: send() sends it to a survivor
        try:
            barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        pos.send(sale, port, what, {port: conn}, n)
    finally:
        conn.close()


# -- the test ------------------------------------------------------------------------------


def _wait(condition, timeout: float, what: str, fleet: Fleet, pos: Pos, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        with pos.lock:
            problems = list(pos.problems)
        assert not problems, f"{len(problems)} requests went wrong while waiting for {what}, e.g.:\n" + "\n".join(
            problems[:10]) + f"\n{fleet.tails()}"  # fmt: skip
        for port in fleet.survivors():
            proc = fleet.procs[port]
            assert proc.poll() is None, f"{fleet.name(port)} exited with {proc.returncode}:\n{proc.output.tail(60)}"
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f} s\n{fleet.tails()}"
        time.sleep(every)


def test_three_processes_one_killed_mid_traffic_lose_and_double_nothing(tmp_path, pg_url):
    """The process running the sweeps killed while the POS lanes send to all three; a
    survivor takes over and issues every closed period's global CFDI."""
    scenario(tmp_path, pg_url, kill_successor_mid_sweep=False)


def test_a_global_invoice_sweep_killed_half_way_is_finished_by_the_last_process(tmp_path, pg_url):
    """The same, and then the survivor that took over is killed too, in the middle of its
    global-invoice sweep (after its second CFDI was stamped, the other runs reserved):
    the last process takes over and stamps each run left behind exactly once."""
    scenario(tmp_path, pg_url, kill_successor_mid_sweep=True)


def scenario(tmp_path: Path, pg_url: str, *, kill_successor_mid_sweep: bool) -> None:
    started = time.monotonic()
    fleet = Fleet(tmp_path, pg_url)
    cal = Calendar.now(fleet.config)
    rng = random.Random(SEED)
    lane_past, twin_past = past_sales(cal, rng)
    pos = Pos(fleet)
    pos.expect_past(lane_past + twin_past)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    timings: dict[str, float] = {}

    def mark(name: str) -> None:
        timings[name] = round(time.monotonic() - started, 1)

    def new_holder():
        """The live process that says it runs the sweeps (none of them did before)."""
        found = [p for p in fleet.survivors() if any(HOLDS in line for line in list(fleet.procs[p].output.lines))]
        return found[0] if found else None

    try:
        fleet.start()
        holder = fleet.holder()
        # Its start-up sweeps found an empty database; the next ones are minutes away.
        fleet.procs[holder].output.wait_for(SWEEP_RAN, timeout=20)
        mark("started")

        lanes_total = PROCESSES * LANES_PER_PROCESS
        for number in range(lanes_total):
            home = fleet.ports[number % PROCESSES]
            share = lane_past[number::lanes_total]
            threads.append(threading.Thread(target=lane, args=(pos, cal, number, home, share, stop), daemon=True))
        threads.append(threading.Thread(target=twins, args=(pos, cal, twin_past, stop), daemon=True))
        for thread in threads:
            thread.start()

        # 1. Every past sale acknowledged (lanes and twins), by all three processes.
        _wait(pos.past_done.is_set, 30, "every past sale acknowledged", fleet, pos)
        mark("past sales in")
        # 2. Today's sales and re-sends go on to all three; the holder is killed among them.
        acks = pos.acks
        _wait(lambda: pos.acks >= acks + ACKS_BEFORE_KILL, 20, "traffic after the past sales", fleet, pos)
        fleet.kill(holder)
        mark(f"killed {fleet.name(holder)}")
        acks_at_kill = pos.acks

        # A survivor takes the sweeps over (within TAKE_OVER_EVERY) and runs them.
        successor = _wait(new_holder, TAKE_OVER_EVERY + 10, "a survivor taking over the scheduled jobs", fleet, pos)
        mark(f"{fleet.name(successor)} took over")
        if kill_successor_mid_sweep:
            output = fleet.procs[successor].output

            def second_stamp() -> bool:
                text = output.text()
                assert SWEEP_RAN not in text, f"the sweep ended before it could be killed:\n{output.tail(40)}"
                return text.count(" stamped: UUID ") >= 2

            _wait(second_stamp, 30, f"{fleet.name(successor)} stamping its second global CFDI", fleet, pos, every=0.01)
            fleet.kill(successor)
            mark(f"killed {fleet.name(successor)}")
            successor = _wait(new_holder, TAKE_OVER_EVERY + 10, "the last process taking over the scheduled jobs",
                              fleet, pos)  # fmt: skip
            mark(f"{fleet.name(successor)} took over")
        output = fleet.procs[successor].output

        def sweep_done() -> bool:
            text = output.text()
            assert SWEEP_FAILED not in text and RUN_FAILED not in text, (
                f"the global-invoice sweep of {fleet.name(successor)} failed:\n{output.tail(80)}")  # fmt: skip
            return SWEEP_RAN in text

        _wait(sweep_done, 40, f"the global-invoice sweep of {fleet.name(successor)}", fleet, pos)
        mark("its sweep ran")
        # Every period that had tickets has its global CFDI (the checks below name any
        # ticket or period that has not).
        past_keys = {key for key, sale in pos.acked.items() if sale.past}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with postgres.connect(pg_url) as conn:
                rows = conn.execute("SELECT company, branch, number FROM ticket WHERE status = 'GLOBAL'").fetchall()
            if past_keys <= set(rows):
                break
            time.sleep(0.25)
        _wait(lambda: pos.acks >= acks_at_kill + ACKS_AFTER_KILL, 20, "the survivors answering after the kill",
              fleet, pos)  # fmt: skip
        # Before the survivors stop: one stopping hands the lease to another.
        takers = [p for p in fleet.survivors() if HOLDS in fleet.procs[p].output.text()]
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        stuck = [t.name for t in threads if t.is_alive()]
        fleet.stop()
    assert not stuck, f"client threads did not finish: {stuck}"
    mark("stopped")
    print(f"timings (s): {timings}; {len(pos.acked)} tickets acknowledged ({len(past_keys)} past), {pos.acks} "
          f"answers 200, {len(pos.cut_off)} requests cut off by the kills; {dict(pos.counts)}")  # fmt: skip

    assert not pos.problems, f"{len(pos.problems)} requests went wrong, e.g.:\n" + "\n".join(pos.problems[:20])
    for port in fleet.survivors():
        text = fleet.procs[port].output.text()
        assert "Traceback" not in text, f"{fleet.name(port)} logged a traceback:\n{text[-6000:]}"
    assert takers == [successor], f"{len(takers)} live processes took over the scheduled jobs:\n{fleet.tails()}"
    check_database(pg_url, pos, cal)


# -- the database --------------------------------------------------------------------------


def _where(company: str, branch: str) -> str:
    return f"company {COMPANY_NAME.get(company, company)} branch {BRANCH_NAME.get(branch, branch)}"


def check_database(url: str, pos: Pos, cal: Calendar) -> None:
    with postgres.connect(url) as conn:
        tickets = conn.execute(
            "SELECT id, company, branch, number, sold_at, status, cfdi_id, global_invoice, body_hash, total FROM ticket"
        ).fetchall()
        runs = conn.execute(
            "SELECT id, company, branch, periodicity, period_first, period_last, part, series, folio, state, tickets,"
            " cfdi, last_error FROM global_invoice"
        ).fetchall()
        cfdis = conn.execute("SELECT id, company, branch, kind, uuid, total FROM cfdi").fetchall()
        links = conn.execute("SELECT ticket_id, cfdi_id FROM ticket_cfdi").fetchall()
        slips = conn.execute(
            "SELECT ticket_id, count(*) FROM print_job WHERE reason = 'sale' GROUP BY ticket_id"
        ).fetchall()
    problems: list[str] = []

    # Every acknowledged ticket stored once, with the body acknowledged; nothing never sent.
    stored = Counter((c, b, n) for _, c, b, n, *_ in tickets)
    for key, times in stored.items():
        if times > 1:
            problems.append(f"{pos.sent.get(key, key)} is stored {times} times")
    by_key = {(c, b, n): row for row in tickets for (_, c, b, n) in [row[:4]]}
    for key, sale in pos.acked.items():
        row = by_key.get(key)
        if row is None:
            problems.append(f"{sale} was acknowledged with 200 but is not in the database")
        elif row[8] != sale.hash:
            problems.append(f"{sale} is stored with another body than the one acknowledged")
    for key in by_key.keys() - pos.acked.keys():
        sale = pos.sent.get(key)
        problems.append(f"{sale} is stored but was never acknowledged" if sale else f"ticket {key} was never sent")
    slip_count = dict(slips)
    for key, sale in pos.acked.items():
        if sale.branch == BRANCH_A and key in by_key and slip_count.get(by_key[key][0], 0) != 1:
            problems.append(f"{sale} has {slip_count.get(by_key[key][0], 0)} sale slips queued, not 1")

    # No ticket in two CFDIs; every global CFDI once, each UUID once.
    cfdi_by_id = {row[0]: row for row in cfdis}
    in_cfdis: dict[int, list[str]] = defaultdict(list)
    for ticket_id, cfdi_id in links:
        in_cfdis[ticket_id].append(cfdi_id)
    sale_by_id = {row[0]: pos.sent.get((row[1], row[2], row[3]), row[1:4]) for row in tickets}
    for ticket_id, ids in in_cfdis.items():
        if len(ids) > 1:
            problems.append(f"{sale_by_id.get(ticket_id, ticket_id)} is in {len(ids)} CFDIs: {ids}")
    for uuid, times in Counter(row[4] for row in cfdis).items():
        if times > 1:
            problems.append(f"CFDI UUID {uuid} is recorded {times} times")

    # Runs: for each (company, branch, period) one run per part, 1..n, each stamped with
    # its own global CFDI.
    parts: dict[tuple, list] = defaultdict(list)
    run_by_id = {}
    for run in runs:
        run_id, company, branch, _, first, last, part, series, folio, state, count, cfdi_id, error = run
        run_by_id[run_id] = run
        where = f"{_where(company, branch)} period {first}..{last}"
        parts[(company, branch, first)].append(part)
        if state != "stamped" or cfdi_id is None:
            problems.append(f"global invoice {series}-{folio} part {part} of {where} is {state!r}, not stamped: "
                            f"{error}")  # fmt: skip
        elif cfdi_id not in cfdi_by_id:
            problems.append(f"global invoice {series}-{folio} of {where} names CFDI {cfdi_id}, which is not recorded")
        elif cfdi_by_id[cfdi_id][3] != "global" or cfdi_by_id[cfdi_id][1:3] != (company, branch):
            problems.append(f"global invoice {series}-{folio} of {where} names CFDI {cfdi_by_id[cfdi_id][:4]}")
        members = [row for row in tickets if row[7] == run_id]
        if len(members) != count:
            problems.append(f"global invoice {series}-{folio} of {where} says {count} tickets, {len(members)} carry it")
    for (company, branch, first), numbers in parts.items():
        where = f"{_where(company, branch)} period from {first}"
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            problems.append(f"{where} has the parts {sorted(numbers)}")
        elif len(numbers) != 1:
            problems.append(f"{where} has {len(numbers)} parts; all its tickets were in before any sweep, so 1")
    for cfdi_id, times in Counter(run[11] for run in runs if run[11] is not None).items():
        if times > 1:
            problems.append(f"CFDI {cfdi_id} closes {times} global invoice runs")
    global_cfdis = {row[0] for row in cfdis if row[3] == "global"}
    run_cfdis = {run[11] for run in runs}
    for cfdi_id in global_cfdis - run_cfdis:
        problems.append(f"global CFDI {cfdi_by_id[cfdi_id][4]} belongs to no global invoice run")

    # Every period with past tickets has its global CFDI; no other period has one
    # (today's, unless the day ended while the test ran).
    expected = {(s.company, s.branch, cal.period(s).first) for s in pos.acked.values() if s.past}
    for company, branch, first in sorted(expected - parts.keys()):
        problems.append(f"{_where(company, branch)} period from {first} had past tickets but has no global invoice")
    day_changed = cal.day_changed()
    for company, branch, first in sorted(parts.keys() - expected):
        if not day_changed:
            problems.append(f"{_where(company, branch)} period from {first} has a global invoice but no past tickets")

    # Every past ticket GLOBAL in exactly one global CFDI, of its own period; today's open.
    for key, sale in pos.acked.items():
        row = by_key.get(key)
        if row is None:
            continue
        ticket_id, _, _, _, _, status, cfdi_id, run_id, _, _ = row
        if sale.past:
            period = cal.period(sale)
            if status != "GLOBAL" or cfdi_id is None or run_id is None:
                problems.append(f"{sale} (period {period}) is {status}, cfdi {cfdi_id}, run {run_id}: not in a "
                                f"global CFDI")  # fmt: skip
                continue
            if in_cfdis.get(ticket_id) != [cfdi_id]:
                problems.append(f"{sale} points at CFDI {cfdi_id} but ticket_cfdi lists {in_cfdis.get(ticket_id)}")
            run = run_by_id.get(run_id)
            if run is None or run[11] != cfdi_id:
                problems.append(f"{sale}: its run {run_id} is not the one that issued its CFDI {cfdi_id}")
            elif (run[1], run[2], run[4], run[5]) != (sale.company, sale.branch, period.first, period.last):
                problems.append(f"{sale} (period {period}) is in the global invoice of {run[1:6]}")
        elif not day_changed and (status != "ALMACENADO" or cfdi_id or run_id or ticket_id in in_cfdis):
            problems.append(f"{sale} is {status}, cfdi {cfdi_id}, run {run_id}: today's ticket must stay open")

    assert not problems, f"{len(problems)} problems in the database, e.g.:\n" + "\n".join(problems[:40])
    assert expected and len(parts) >= len(expected)
