"""Opening the SQLite file and bringing its schema up to date."""
from __future__ import annotations

from pathlib import Path

from peewee import SqliteDatabase

from agent import migrations
from agent.models import SchemaVersion, database

DB_FILENAME = "tickets.db"

# WAL lets the POS queries read while the writer commits; synchronous=FULL makes every
# commit wait for fsync of the WAL, which is what lets a 200 promise the ticket is on
# disk. The writer groups many tickets per commit, so the fsync is paid once per group.
PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": 2,  # FULL
    "foreign_keys": 1,
    "busy_timeout": 10_000,
    # Per connection, and there is one per waitress thread plus the workers': at 16 MB the
    # caches grew with the file to hundreds of MB (bench/soak.py). SQLite's own default;
    # the OS page cache keeps the file warm anyway.
    "cache_size": -2_000,  # 2 MB
}


class SchemaTooNew(RuntimeError):
    pass


class _Database(SqliteDatabase):
    """Every transaction begins IMMEDIATE: it takes the write lock first, waiting up to
    busy_timeout for it. A deferred transaction reads, then asks for the lock, and when
    another process (`ticket-agent global-invoice` beside `serve`) committed in between,
    SQLite refuses at once with "database is locked" instead of waiting: a sale answered
    500. Only the writer and the migrations open transactions; reads need none."""

    def begin(self, lock_type=None):
        super().begin(lock_type or "IMMEDIATE")


def open_database(data_dir: Path) -> SqliteDatabase:
    """Open (creating if needed) the store's SQLite file and migrate it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = _Database(
        str(data_dir / DB_FILENAME), pragmas=PRAGMAS, check_same_thread=False, returning_clause=True
    )
    database.initialize(db)
    db.connect(reuse_if_open=True)
    migrate(db)
    return db


def schema_version(db) -> int:
    if not db.table_exists(SchemaVersion._meta.table_name):
        return 0
    row = SchemaVersion.select().first()
    return row.version if row else 0


def migrate(db) -> int:
    """Apply, in order and each in its own transaction, the migrations not yet applied."""
    with db.atomic():
        db.create_tables([SchemaVersion], safe=True)
        if not SchemaVersion.select().exists():
            SchemaVersion.create(version=0)
    current = schema_version(db)
    latest = len(migrations.STEPS)
    if current > latest:
        raise SchemaTooNew(
            f"the database was written by a newer agent (schema {current}, this agent knows "
            f"up to {latest}); install the newer version or restore a backup"
        )
    for number, step in enumerate(migrations.STEPS[current:], start=current + 1):
        with db.atomic():
            step(db)
            SchemaVersion.update(version=number).execute()
    return latest
