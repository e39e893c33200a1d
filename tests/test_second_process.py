"""A second process writing the same SQLite file (`ticket-agent global-invoice` run by hand
beside `serve`) makes neither the sales nor the command fail: each waits its turn for the
write lock instead of being told "database is locked"."""
from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from helpers import (BRANCH_A, KEY_A, REPO, basic, dumps, free_port, start_server, stop_server, ticket_body,
                     write_config)

LANES = 4
COMMANDS = 3


def test_sales_and_a_global_invoice_command_at_once_all_succeed(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port=port)
    proc = start_server(["--config", str(config)], cwd=tmp_path, port=port)
    yesterday = (datetime.now(ZoneInfo("America/Mexico_City")) - timedelta(days=1)).date().isoformat()
    stop = threading.Event()
    answers: Counter = Counter()
    failures: list[str] = []

    def lane(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while not stop.is_set():
            # Yesterday's sales: the command is issuing the global CFDI of that very day.
            body = dumps(ticket_body(f"L{k}N{n}", "116.00", fecha=f"{yesterday}T10:00:00"))
            conn.request("PUT", f"/{KEY_A}/tickets", body=body, headers={**basic(), "Content-Type": "application/json"})
            response = conn.getresponse()
            text = response.read().decode()
            answers[response.status] += 1
            if response.status != 200:
                failures.append(f"{response.status} {text}")
            n += 1

    lanes = [threading.Thread(target=lane, args=(k,), daemon=True) for k in range(LANES)]
    commands = []
    try:
        for thread in lanes:
            thread.start()
        for _ in range(COMMANDS):
            commands.append(subprocess.run(
                [sys.executable, "-m", "service.cli", "global-invoice", "--config", str(config), "--branch", BRANCH_A,
                 "--period", yesterday],
                env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True, text=True, timeout=120,
            ))
    finally:
        stop.set()
        for thread in lanes:
            thread.join(30)
        stop_server(proc)
    assert failures == [], f"{len(failures)} of {sum(answers.values())} sales failed, e.g. {failures[:3]}"
    assert answers[200] > 100
    assert [c.returncode for c in commands] == [0] * COMMANDS, [c.stderr[-500:] for c in commands]
    assert all("stamped" in c.stdout for c in commands)
    assert "database is locked" not in proc.output.text()
