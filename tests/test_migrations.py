"""The schema is versioned: a new agent migrates an old file; an old agent refuses a new one."""
from __future__ import annotations

import sqlite3

import pytest

from agent import db as dbmodule
from agent import migrations


def test_a_new_database_is_at_the_latest_version(tmp_path):
    db = dbmodule.open_database(tmp_path)
    try:
        assert dbmodule.schema_version(db) == len(migrations.STEPS)
        tables = set(db.get_tables())
        assert {"ticket", "cfdi", "ticket_event", "ticket_cfdi", "schema_version"} <= tables
    finally:
        db.close()


def test_reopening_applies_nothing_twice(tmp_path):
    dbmodule.open_database(tmp_path).close()
    db = dbmodule.open_database(tmp_path)
    try:
        assert db.execute_sql("SELECT count(*) FROM schema_version").fetchone()[0] == 1
    finally:
        db.close()


def test_pending_steps_run_in_order(tmp_path, monkeypatch):
    dbmodule.open_database(tmp_path).close()
    ran = []

    def add_note_table(db):
        ran.append("notes")
        db.execute_sql("CREATE TABLE note (id INTEGER PRIMARY KEY, text TEXT)")

    monkeypatch.setattr(migrations, "STEPS", [*migrations.STEPS, add_note_table])
    db = dbmodule.open_database(tmp_path)
    try:
        assert ran == ["notes"]
        assert "note" in db.get_tables()
        assert dbmodule.schema_version(db) == len(migrations.STEPS)
    finally:
        db.close()


def test_a_failing_step_leaves_the_version_unchanged(tmp_path, monkeypatch):
    dbmodule.open_database(tmp_path).close()

    def broken(db):
        db.execute_sql("CREATE TABLE half (id INTEGER)")
        raise RuntimeError("step failed")

    monkeypatch.setattr(migrations, "STEPS", [*migrations.STEPS, broken])
    with pytest.raises(RuntimeError):
        dbmodule.open_database(tmp_path)
    dbmodule.database.obj.close()
    raw = sqlite3.connect(tmp_path / dbmodule.DB_FILENAME)
    assert raw.execute("SELECT version FROM schema_version").fetchone()[0] == len(migrations.STEPS) - 1
    assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0
    raw.close()


def test_a_database_from_a_newer_agent_is_refused(tmp_path):
    dbmodule.open_database(tmp_path).close()
    raw = sqlite3.connect(tmp_path / dbmodule.DB_FILENAME)
    raw.execute("UPDATE schema_version SET version = 99")
    raw.commit()
    raw.close()
    with pytest.raises(dbmodule.SchemaTooNew, match="newer agent"):
        dbmodule.open_database(tmp_path)


def test_a_database_of_the_previous_version_gets_the_global_invoice_tables(tmp_path):
    # Make the file a version-2 store, as agents before the factura global wrote it.
    dbmodule.open_database(tmp_path).close()
    raw = sqlite3.connect(tmp_path / dbmodule.DB_FILENAME)
    raw.execute("INSERT INTO ticket (company, branch, number, sold_at, total, subtotal, discount, taxes, iva, ieps, "
                "payment_form, environment, insumo, body_hash, status, created_at, updated_at, version) VALUES "
                "('k', 'b', 'OLD1', '2026-11-20 10:00:00', 1, 1, 0, 0, 0, 0, '01', 'QA', '-', '-', 'EXPIRADO', "
                "'2026-11-20 10:00:00', '2026-11-20 10:00:00', 1)")
    for index in [row[0] for row in raw.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '%global_invoice%' AND tbl_name = 'ticket'")]:
        raw.execute(f'DROP INDEX "{index}"')
    raw.execute("ALTER TABLE ticket DROP COLUMN global_invoice")
    raw.execute("DROP TABLE global_invoice")
    raw.execute("UPDATE schema_version SET version = 2")
    raw.commit()
    raw.close()

    db = dbmodule.open_database(tmp_path)
    try:
        assert dbmodule.schema_version(db) == len(migrations.STEPS)
        assert "global_invoice" in db.get_tables()
        assert "global_invoice" in {c.name for c in db.get_columns("ticket")}
        assert db.execute_sql("SELECT number, global_invoice FROM ticket").fetchall() == [("OLD1", None)]
    finally:
        db.close()
