"""`ticket-agent backup PATH`: a consistent, checked copy of the store while sales go on,
that an agent can be restored from."""
from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from helpers import AUTH_A, BRANCH_A, KEY_A, put_json, ticket_body, write_config

from agent.app import create_app
from agent.config import load_config
from service.cli import cli

SAVED = b"se guardo correctamente"


def run_backup(runner, config_path, *args):
    return runner.invoke(cli, ["backup", "--config", str(config_path), *map(str, args)], prog_name="ticket-agent")


def open_copy(path):
    return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)


class Seller:
    """A POS selling through the agent as fast as it can, on its own thread."""

    def __init__(self, client):
        self.client = client
        self.acknowledged: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sell, daemon=True)

    def _sell(self):
        n = 0
        while not self._stop.is_set():
            number = f"B{n}"
            response = put_json(self.client, f"/{KEY_A}/tickets", ticket_body(number))
            if (response.status_code, response.data) == (200, SAVED):
                self.acknowledged.append(number)
            else:
                self.failures.append(f"{number}: {response.status_code} {response.data!r}")
            n += 1

    def __enter__(self):
        self._thread.start()
        return self

    def wait_for(self, count: int, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count:
            assert not self.failures, self.failures[:3]
            assert time.monotonic() < deadline, f"only {len(self.acknowledged)} tickets sold in {timeout} s"
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def test_a_backup_taken_while_selling_is_consistent_and_restores(runner, app, client, config_path, tmp_path):
    target = tmp_path / "backups" / "tickets-2026-11-22.db"
    target.parent.mkdir()
    with Seller(client) as pos:
        pos.wait_for(50)
        before = len(pos.acknowledged)
        result = run_backup(runner, config_path, target)
        # Selling went on during the copy and goes on after it.
        pos.wait_for(len(pos.acknowledged) + 20)
    assert result.exit_code == 0, result.output
    assert not pos.failures, pos.failures[:3]

    db = open_copy(target)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        numbers = {n for (n,) in db.execute("SELECT number FROM ticket")}
        # One moment of the store: each ticket came with its slip in one transaction, so a
        # copy of a single snapshot has exactly one print job per ticket.
        jobs = db.execute("SELECT COUNT(*) FROM print_job").fetchone()[0]
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        db.close()
    assert set(pos.acknowledged[:before]) <= numbers  # everything answered before the backup started
    assert numbers <= set(pos.acknowledged) | {f"B{len(pos.acknowledged)}"}  # nothing invented
    assert jobs == len(numbers)
    assert journal == "delete"  # one self-contained file, no -wal to forget beside it
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    size = target.stat().st_size
    assert f"Backup written to {target}: " in result.output
    assert f", {len(numbers)} tickets, integrity check: ok." in result.output
    assert f"{size / 1024:.1f} KB" in result.output or f"{size / 1024**2:.1f} MB" in result.output
    assert "back up" in result.output and "cfdi" in result.output  # the CFDI files are not in it: it says so

    # Restore: the copy becomes tickets.db of a new data directory; the agent serves from it.
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "data").mkdir()
    (restored / "data" / "tickets.db").write_bytes(target.read_bytes())
    app2 = create_app(load_config(write_config(restored)))
    try:
        some = sorted(numbers)[0]
        answer = app2.test_client().get(f"/{KEY_A}/cfdis?ticket={some}&sucursal={BRANCH_A}", headers=AUTH_A)
        assert (answer.status_code, answer.get_data(as_text=True)) == (
            400, f"Ticket numero:{some} , sucursal: {BRANCH_A}, aun no genera cfdi")
    finally:
        app2.config["AGENT"].close()


def test_an_existing_backup_is_kept_unless_forced(runner, client, config_path, tmp_path):
    target = tmp_path / "backup.db"
    target.write_bytes(b"last week's backup")
    result = run_backup(runner, config_path, target)
    assert result.exit_code == 1
    assert f"{target} already exists; use --force to overwrite it." in result.output
    assert target.read_bytes() == b"last week's backup"

    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("K1")).status_code == 200
    result = run_backup(runner, config_path, "--force", target)
    assert result.exit_code == 0, result.output
    assert ", 1 ticket, integrity check: ok." in result.output
    db = open_copy(target)
    try:
        assert db.execute("SELECT number FROM ticket").fetchall() == [("K1",)]
    finally:
        db.close()


def test_with_files_copies_the_cfdi_files_beside_the_database(runner, client, agent, config_path, tmp_path):
    from service.background import global_invoicing
    from sync.expiry import expire_overdue

    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("W1", fecha="2026-11-20T12:00:00")).status_code == 200
    close = datetime(2026, 11, 21, 0, 5, tzinfo=ZoneInfo("America/Mexico_City"))
    invoicing = global_invoicing(agent)
    invoicing.clock = lambda: close
    expire_overdue(agent.store, agent.config, close)
    [run] = [r for r in invoicing.run() if r.branch == BRANCH_A]
    assert run.state == "stamped"

    target = tmp_path / "backup.db"
    result = run_backup(runner, config_path, "--with-files", target)
    assert result.exit_code == 0, result.output
    files = tmp_path / "backup.db.cfdi"
    assert f"CFDI files: 2 copied to {files}." in result.output
    db = open_copy(target)
    try:
        xml, pdf = db.execute("SELECT xml_file, pdf_file FROM cfdi").fetchone()
    finally:
        db.close()
    # The paths the database keeps (cfdi/<key>/<id>.xml) are found under the copied folder.
    for name in (xml, pdf):
        copied = files / name.split("/", 1)[1]
        assert copied.read_bytes() == (agent.data_dir / name).read_bytes()

    again = run_backup(runner, config_path, "--with-files", "--force", target)
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("where, message", [
    ("missing-folder/backup.db", "does not exist; create it first."),
    (".", "is a folder; give the path of the backup file"),
])  # fmt: skip
def test_a_bad_path_is_a_clear_error(runner, client, config_path, tmp_path, where, message):
    result = run_backup(runner, config_path, tmp_path / where)
    assert result.exit_code == 1
    assert result.output.startswith("Backup failed: ") and message in result.output
    assert not list(tmp_path.glob("**/*.partial"))


def test_no_database_yet_is_a_clear_error(runner, tmp_path):
    config_path = write_config(tmp_path)  # the agent never ran: no data directory
    result = run_backup(runner, config_path, tmp_path / "backup.db")
    assert result.exit_code == 1
    assert f"No database at {tmp_path / 'data' / 'tickets.db'}" in result.output


def test_on_postgresql_the_backup_says_to_use_the_servers_tools(runner, tmp_path):
    config_path = write_config(tmp_path, database_url="postgresql://agent:secret@db.example.com:5432/tickets")
    result = run_backup(runner, config_path, tmp_path / "backup.db")
    assert result.exit_code == 2
    assert "The tickets are on PostgreSQL (postgresql://agent:***@db.example.com:5432/tickets)" in result.output
    assert "pg_dump" in result.output and str(tmp_path / "data" / "cfdi") in result.output
    assert not (tmp_path / "backup.db").exists()
