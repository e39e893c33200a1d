"""Three agent processes on one PostgreSQL database, one network printer: every slip is
printed once, whichever process's print worker takes it (FOR UPDATE SKIP LOCKED)."""
from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

import postgres
from fake_printer import FakePrinter, read_escpos
from helpers import AUTH_A, BRANCH_A, KEY_A, dumps, free_port, start_server, stop_server, ticket_body, write_config

TICKETS = 120


@pytest.fixture
def printer():
    with FakePrinter() as fake:
        yield fake


def test_each_slip_is_printed_by_exactly_one_of_three_processes(tmp_path, printer):
    url = postgres.fresh_url()
    ports = [free_port() for _ in range(3)]
    servers = []
    try:
        for n, port in enumerate(ports):
            folder = tmp_path / f"p{n}"
            folder.mkdir()
            config = write_config(folder, port=port, database_url=url)
            text = config.read_text(encoding="utf-8")
            text = text.replace('printer = "file:prints/"', f'printer = "{printer.url}"')
            text = text.replace((folder / "data").as_posix(), (tmp_path / "data").as_posix())
            config.write_text(text, encoding="utf-8")
            servers.append(start_server(["--config", str(config)], folder, port))
            # The banner names the database, never its password.
            servers[-1].output.wait_for(f"tickets kept on PostgreSQL at postgresql://{urlsplit(url).username}:***@")

        def sell(i: int) -> int:
            port = ports[i % 3]
            response = requests.put(f"http://127.0.0.1:{port}/{KEY_A}/tickets", data=dumps(ticket_body(f"S{i}")),
                                    headers={**AUTH_A, "Content-Type": "application/json"}, timeout=30)
            return response.status_code

        with ThreadPoolExecutor(12) as pool:
            assert list(pool.map(sell, range(TICKETS))) == [200] * TICKETS

        jobs = printer.wait_for_jobs(TICKETS, timeout=60)
        with postgres.connect(url) as db:
            deadline = time.monotonic() + 30
            while db.execute("SELECT count(*) FROM print_job WHERE state <> 'printed'").fetchone()[0]:
                assert time.monotonic() < deadline, "slips still not printed after 30 s"
                time.sleep(0.05)
            claimers = db.execute("SELECT count(DISTINCT claimed_by) FROM print_job").fetchone()[0]
        # Every job is recorded printed, so every byte that will ever be sent has been.
        slips = [read_escpos(job).qr_data.decode().rsplit("/", 1)[-1] for job in printer.jobs]
        assert len(jobs) <= len(slips) == TICKETS, f"{len(slips)} slips for {TICKETS} tickets"
        assert sorted(slips) == sorted(f"S{i}" for i in range(TICKETS))
        assert claimers >= 2, "one process printed everything: the test did not make them compete"
        # One process runs the sweeps; the health pages of the other two say who does.
        details = [[c["detail"] for c in requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["checks"]
                    if c["name"] == "scheduler"] for port in ports]  # fmt: skip
        waiting = [d for d in details if d == ["another agent process on this database holds the job lock and runs "
                                               "the scheduled jobs; this one takes over if it stops"]]  # fmt: skip
        assert len(waiting) == 2, details
    finally:
        for server in servers:
            stop_server(server)
    for server in servers:
        assert server.returncode == 0, server.output.tail()
    # The data directory is shared: each process rotates a log file of its own.
    logs = sorted(p.name for p in (tmp_path / "data" / "logs").iterdir())
    assert logs == sorted(f"ticket-agent-{socket.gethostname()}-{port}.log" for port in ports)
