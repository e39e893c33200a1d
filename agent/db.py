"""Opening the database (the SQLite file, or a PostgreSQL server) and bringing its schema
up to date.

The models, migrations and queries are the same on both. What differs lives here: how a
transaction begins, how rows are locked for the rest of one, and the named locks several
agent processes on one PostgreSQL server use to take turns (docs/postgresql.md).
"""
from __future__ import annotations

import hashlib
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from peewee import PostgresqlDatabase, SqliteDatabase

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

# Seconds a PostgreSQL statement may wait for a row or table lock another process holds
# before it fails (and the writer's caller gets a 503) instead of hanging a POS.
PG_LOCK_TIMEOUT_MS = 10_000


class SchemaTooNew(RuntimeError):
    pass


class _Sqlite(SqliteDatabase):
    """Every transaction begins IMMEDIATE: it takes the write lock first, waiting up to
    busy_timeout for it. A deferred transaction reads, then asks for the lock, and when
    another process (`ticket-agent global-invoice` beside `serve`) committed in between,
    SQLite refuses at once with "database is locked" instead of waiting: a sale answered
    500. Only the writer and the migrations open transactions; reads need none."""

    kind = "sqlite"

    def begin(self, lock_type=None):
        super().begin(lock_type or "IMMEDIATE")

    def locked(self, query, *, skip_locked: bool = False):
        # The IMMEDIATE transaction already holds the only write lock there is.
        return query

    @contextmanager
    def session_lock(self, name: str):
        yield  # one process at a time writes a SQLite file anyway

    def stream(self, sql: str, params) -> Iterator[tuple]:
        """The rows of a query as they are read: a SQLite cursor steps through them."""
        return iter(self.execute_sql(sql, params))


class _Postgres(PostgresqlDatabase):
    """Several agent processes may write at once: each transaction of the writer is READ
    COMMITTED, and a change that depends on what it read either locks those rows first
    (`locked`) or writes only rows still in the state it expects (a guarded UPDATE); a
    ticket another process inserted first, a deadlock or a lock timeout makes it run
    again (agent/writer.py)."""

    kind = "postgresql"

    def _connect(self):
        conn = super()._connect()
        with conn.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {PG_LOCK_TIMEOUT_MS}")
        return conn

    def cursor(self, *args, **kwargs):
        # A connection the server dropped (a restart, a fail-over) is replaced at this
        # thread's next statement outside a transaction, instead of failing every request
        # that thread serves from then on.
        if not self.is_closed() and not self.in_transaction() and not self.is_connection_usable():
            try:
                self.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                self._state.reset()
        return super().cursor(*args, **kwargs)

    def locked(self, query, *, skip_locked: bool = False):
        """The query's rows locked until the transaction ends; with skip_locked, rows
        another transaction holds are left out instead of waited for."""
        return query.for_update("FOR UPDATE SKIP LOCKED" if skip_locked else True)

    def stream(self, sql: str, params) -> Iterator[tuple]:
        """The rows of a query a batch at a time, through a server-side cursor: a client
        cursor would fetch a company's 100,000-row history into memory at once."""
        with self.cursor() as probe:  # connects, or replaces a dropped connection
            conn = probe.connection
        with conn.cursor(name=f"stream_{uuid.uuid4().hex}", withhold=True) as cursor:
            cursor.itersize = 2_000
            cursor.execute(sql, params)
            yield from cursor

    @contextmanager
    def session_lock(self, name: str):
        """Hold a named lock on this thread's connection while the block runs: agent
        processes starting at once migrate one after the other."""
        key = lock_key(name)
        self.execute_sql("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            self.execute_sql("SELECT pg_advisory_unlock(%s)", (key,))


def locked(query, *, skip_locked: bool = False):
    """The query's rows locked for the rest of the writer's transaction (PostgreSQL; a
    SQLite transaction holds the one write lock already)."""
    return database.locked(query, skip_locked=skip_locked)


def lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit number) for a name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def postgres_url(url: str) -> str:
    """psycopg and peewee both take postgresql://; postgres:// is the same thing."""
    return "postgresql://" + url.split("://", 1)[1] if url.startswith("postgres://") else url


def open_database(data_dir: Path, url: str = ""):
    """Open the store's database and migrate it: the SQLite file in data_dir (created if
    needed), or the PostgreSQL database at url."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if url:
        db = _Postgres(postgres_url(url), prefer_psycopg3=True)
    else:
        db = _Sqlite(str(data_dir / DB_FILENAME), pragmas=PRAGMAS, check_same_thread=False, returning_clause=True)
    database.initialize(db)
    db.connect(reuse_if_open=True)
    with db.session_lock("pos-ticket-agent:migrate"):
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


class LocalPresence:
    """On SQLite: one `serve` per data directory prints and runs the sweeps, so the only
    live claims are this process's own; a file lock (service/scheduler.py) picks the
    process that runs the sweeps."""

    kind = "sqlite"

    def __init__(self, instance: str):
        self.instance = instance

    def alive(self, instance: str) -> bool:
        return instance == self.instance

    def close(self) -> None:
        pass


class PgPresence:
    """This process, as the other agent processes on the PostgreSQL database see it: a
    connection of its own that holds an advisory lock named after the process while it
    lives, and the lease on the scheduled sweeps while it holds them. The server drops
    both the moment the process dies (its socket closes), which is how the others know
    its print claims are in doubt and that the sweeps need a new holder.

    A lease belongs to the connection that took it: once that connection is gone, so is
    the lease, even after a new connection is made. Every method runs under one lock, so
    a check cannot read a lease on one connection and confirm it on the next."""

    kind = "postgresql"

    def __init__(self, url: str, instance: str):
        self.instance = instance
        self._url = postgres_url(url)
        self._mutex = threading.RLock()
        self._leases: dict[str, object] = {}  # name -> the connection holding it
        self._conn = self._connect()

    def _connect(self):
        import psycopg

        conn = psycopg.connect(self._url, autocommit=True)
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_key("instance:" + self.instance),))
        return conn

    def _one(self, sql: str, params: tuple = ()):
        with self._mutex:
            try:
                return self._conn.execute(sql, params).fetchone()
            except Exception:
                # The connection is gone (a server restart), and its locks with it: the
                # next call starts on a new one.
                self._leases.clear()
                self._reconnect()
                raise

    def alive(self, instance: str) -> bool:
        """Whether that process still holds its lock (is connected); this one always is."""
        if instance == self.instance:
            return True
        key = lock_key("instance:" + instance)
        with self._mutex:
            (free,) = self._one("SELECT pg_try_advisory_lock(%s)", (key,))
            if free:
                self._one("SELECT pg_advisory_unlock(%s)", (key,))
        return not free

    def try_lease(self, name: str) -> bool:
        """Take the named lease if no live process holds it."""
        with self._mutex:
            (taken,) = self._one("SELECT pg_try_advisory_lock(%s)", (lock_key("lease:" + name),))
            if taken:
                self._leases[name] = self._conn
            return bool(taken)

    def holds(self, name: str) -> bool:
        return name in self._leases

    def still_holds(self, name: str) -> bool:
        """False once the connection that took the lease is gone (a server restart): the
        lease may be someone else's by now. A session's advisory locks last as long as
        the session, so a connection that still answers still holds them."""
        with self._mutex:
            if self._leases.get(name) is not self._conn:
                return False
            try:
                self._one("SELECT 1")
            except Exception:  # noqa: BLE001 - no connection, no lease
                return False
            return True

    def _reconnect(self) -> None:
        with self._mutex:
            try:
                self._conn.close()
                self._conn = self._connect()
            except Exception:  # noqa: BLE001 - the next check tries again
                pass

    def release(self, name: str) -> None:
        with self._mutex:
            conn = self._leases.pop(name, None)
            if conn is not None:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key("lease:" + name),))
                except Exception:  # noqa: BLE001 - a closed connection released it already
                    pass

    def close(self) -> None:
        with self._mutex:
            self._leases.clear()
            self._conn.close()


def presence(url: str, instance: str):
    return PgPresence(url, instance) if url else LocalPresence(instance)
