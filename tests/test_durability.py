"""kill -9 of a real `ticket-agent serve` process loses no ticket it answered 200 for.

A 200 "se guardo correctamente" promises the ticket is committed (WAL, synchronous=FULL,
group commit). Several POS-like clients PUT unique tickets over keep-alive connections as
fast as they can; the server is killed with SIGKILL while requests are in flight, three
times, restarting each time on the same data directory. A last restart must show every
acknowledged ticket exactly once, through the HTTP API and in the SQLite file itself.

SIGKILL kills the process, not the machine: the page cache survives, so this proves the
agent answers 200 only after the commit reached SQLite's WAL, and that recovery on the
next start keeps it. (Power-loss durability is what synchronous=FULL adds on top.)
"""
from __future__ import annotations

import pytest

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter

from helpers import (
    BRANCH_A,
    KEY_A,
    basic,
    dumps,
    free_port,
    start_server,
    stop_server,
    ticket_body,
    write_config,
)

pytestmark = pytest.mark.both_databases  # tests/postgres.py

SAVED = "se guardo correctamente"
TICKETS_URL = f"/{KEY_A}/tickets"
PUT_HEADERS = {**basic(), "Content-Type": "application/json"}
CLIENTS = 8
# Acknowledged tickets to wait for before each kill: at least 300, different each time
# so the kill lands at different points of the writer's group commits.
KILL_AFTER = (400, 650, 520)
TOTALS = ("12.36", "1.00", "99.99", "453.00", "1234.56", "0.58", "7.77")
CYCLE_DEADLINE = 15.0  # seconds to reach KILL_AFTER acknowledgements in one cycle


class _Cycle:
    """The clients of one server lifetime."""

    def __init__(self, port: int, cycle: int):
        self.port = port
        self.cycle = cycle
        self.lock = threading.Lock()
        self.killing = threading.Event()
        self.stop = threading.Event()
        self.acked: dict[str, str] = {}  # number -> the exact body answered 200
        self.sent: set[str] = set()  # every number whose PUT was (possibly) sent
        self.problems: list[str] = []  # anything but a 200 before the kill
        self.cut_off = 0  # clients whose request failed once the kill was decided
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(CLIENTS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def acknowledged(self) -> int:
        with self.lock:
            return len(self.acked)

    def _client(self, k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        i = 0
        try:
            while not self.stop.is_set():
                number = f"K{self.cycle}C{k}N{i}"
                body = dumps(ticket_body(number, TOTALS[i % len(TOTALS)]))
                i += 1
                with self.lock:
                    self.sent.add(number)
                try:
                    conn.request("PUT", TICKETS_URL, body=body, headers=PUT_HEADERS)
                    response = conn.getresponse()
                    status, text = response.status, response.read().decode("utf-8")
                except (OSError, http.client.HTTPException) as exc:
                    with self.lock:
                        if self.killing.is_set():
                            self.cut_off += 1
                        else:
                            self.problems.append(f"{number}: {exc!r} before the kill")
                    return
                if status == 200 and text == SAVED:
                    with self.lock:
                        self.acked[number] = body
                else:
                    with self.lock:
                        if self.killing.is_set():
                            self.cut_off += 1
                        else:
                            self.problems.append(f"{number}: {status} {text!r} before the kill")
                    return
        finally:
            conn.close()

    def join(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "a client thread did not finish after the kill"


def _run_and_kill(tmp_path, cycle: int, kill_after: int) -> _Cycle:
    port = free_port()
    cfg = write_config(tmp_path, port=port)  # same tmp_path -> same data dir every time
    proc = start_server(["--config", str(cfg)], cwd=tmp_path, port=port)
    output = proc.output
    clients = _Cycle(port, cycle)
    try:
        clients.start()
        deadline = time.monotonic() + CYCLE_DEADLINE
        while clients.acknowledged() < kill_after:
            assert proc.poll() is None, f"server died on its own (rc {proc.returncode}):\n{output.tail()}"
            with clients.lock:
                assert not clients.problems, f"failures before the kill: {clients.problems[:5]}\n{output.tail()}"
            assert time.monotonic() < deadline, (
                f"only {clients.acknowledged()} tickets acknowledged in {CYCLE_DEADLINE}s\n{output.tail()}"
            )
            time.sleep(0.005)
        alive = sum(t.is_alive() for t in clients.threads)
        clients.killing.set()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        assert alive == CLIENTS, f"a client stopped before the kill: {clients.problems[:5]}"
        clients.join()
    finally:
        clients.stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        output.join()
        stop_server(proc)  # closes the pipes
    assert not clients.problems, clients.problems[:5]
    assert clients.acknowledged() >= kill_after
    # Every client was still sending when the process died.
    assert clients.cut_off == CLIENTS
    return clients


def _each(port: int, items: list, work) -> list[str]:
    """Run work(conn, item) for every item over CLIENTS keep-alive connections; return
    the failures it reported."""
    failures: list[str] = []
    lock = threading.Lock()

    def run(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for item in chunk:
                problem = work(conn, item)
                if problem:
                    with lock:
                        failures.append(problem)
        except Exception as exc:  # noqa: BLE001 - reported as a failure of the test
            with lock:
                failures.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(items[k::CLIENTS],), daemon=True) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "HTTP verification did not finish in time"
    return failures


def _cfdis_lookup(conn, number: str) -> tuple[int, str]:
    conn.request("GET", f"/{KEY_A}/cfdis?ticket={number}&sucursal={BRANCH_A}", headers=basic())
    response = conn.getresponse()
    return response.status, response.read().decode("utf-8")


def test_sigkill_mid_flight_loses_no_acknowledged_ticket(tmp_path):
    acked: dict[str, str] = {}
    sent: set[str] = set()
    for cycle, kill_after in enumerate(KILL_AFTER):
        clients = _run_and_kill(tmp_path, cycle, kill_after)
        acked.update(clients.acked)
        sent |= clients.sent
    assert len(acked) >= sum(KILL_AFTER)
    db_path = tmp_path / "data" / "tickets.db"
    assert db_path.is_file()

    # Restart once more on the same data dir; the API must know every acknowledged ticket.
    port = free_port()
    cfg = write_config(tmp_path, port=port)
    proc = start_server(["--config", str(cfg)], cwd=tmp_path, port=port)
    output = proc.output
    try:
        present = f"Ticket numero:{{}} , sucursal: {BRANCH_A}, aun no genera cfdi"

        def stored(conn, number):
            # Known either without a CFDI yet, or already in a global CFDI: the restarted
            # agent's sweep may expire yesterday's tickets and issue their global meanwhile.
            status, text = _cfdis_lookup(conn, number)
            if (status, text) == (400, present.format(number)):
                return None
            if status == 200 and [r["noTicket"] for r in json.loads(text)["cfdis"]] == [number]:
                return None
            return f"GET /cfdis for acknowledged ticket {number}: {status} {text!r}"

        failures = _each(port, sorted(acked), stored)
        assert not failures, f"{len(failures)} acknowledged tickets missing through the API: {failures[:5]}"

        # The lookup tells a missing ticket apart: one never sent answers 204.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            assert _cfdis_lookup(conn, "NEVERSENT1")[0] == 204
        finally:
            conn.close()

        # Re-sending an acknowledged ticket (a POS retry) answers 200 and stores nothing new.
        def resend(conn, number):
            conn.request("PUT", TICKETS_URL, body=acked[number], headers=PUT_HEADERS)
            response = conn.getresponse()
            status, text = response.status, response.read().decode("utf-8")
            if (status, text) != (200, SAVED):
                return f"re-PUT of {number}: {status} {text!r}"
            return None

        failures = _each(port, sorted(acked), resend)
        assert not failures, failures[:5]
        failures = _each(port, sorted(acked)[:50], stored)
        assert not failures, failures[:5]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        output.join()
        stop_server(proc)
    assert proc.returncode == 0, f"SIGTERM exit code {proc.returncode}:\n{output.tail()}"

    # And the file itself: intact, every acknowledged ticket exactly once, nothing invented.
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = db.execute("SELECT company, branch, number, insumo FROM ticket").fetchall()
        duplicated = db.execute(
            "SELECT company, branch, number, COUNT(*) FROM ticket GROUP BY company, branch, number HAVING COUNT(*) > 1"
        ).fetchall()
        replaced = db.execute("SELECT COUNT(*) FROM ticket_event WHERE kind = 'replaced'").fetchone()[0]
    finally:
        db.close()
    assert duplicated == []
    counts = Counter(number for _company, _branch, number, _insumo in rows)
    assert [n for n, c in counts.items() if c > 1] == []
    assert {(company, branch) for company, branch, _n, _i in rows} == {(KEY_A, BRANCH_A)}
    missing = sorted(set(acked) - set(counts))
    assert not missing, f"{len(missing)} acknowledged tickets lost by kill -9: {missing[:10]}"
    assert set(counts) <= sent, "the database holds tickets nobody sent"
    insumos = {number: insumo for _c, _b, number, insumo in rows}
    changed = [n for n in acked if insumos[n] != json.loads(acked[n])["insumo"]]
    assert not changed, f"stored insumo differs from the acknowledged one: {changed[:5]}"
    assert replaced == 0, "an identical re-PUT replaced a ticket"
