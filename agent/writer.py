"""The database writer: one writer at a time, group commit.

SQLite takes one writer at a time, and with synchronous=FULL every commit costs an fsync.
Request threads that each open their own transaction queue up on SQLite's write lock,
back off and pay one fsync per ticket. Instead every change is queued here. The first
thread to find no writer at work becomes the leader: it takes every change waiting (its
own included), applies them in one transaction, commits once, hands each waiting thread
its result, and passes the lead to the next waiting thread, if any. A caller therefore
hears "stored" only once its change is durable, and under load many changes share one
fsync. The leader is a request thread, not a dedicated one, because under the GIL every
hand-over between threads costs a context switch the POS pays for in latency.
"""
from __future__ import annotations

import logging
import threading
from itertools import groupby
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

# A batch operation takes the payloads of several requests of the same kind and returns
# one result per payload, in order. It runs inside the writer's transaction and may
# return an exception instance for a payload it refuses; raising aborts only its group.
BatchOp = Callable[[Sequence[Any]], Sequence[Any]]


class StorageUnavailable(RuntimeError):
    """The change could not be made durable (disk full, read-only, I/O error, stopped)."""


class Conflict(Exception):
    """Raised by a batch op when a row it read changed before its write (another agent
    process on the same PostgreSQL database got there first): the op runs again, reading
    afresh. SQLite never raises it: its transactions take the write lock first."""


# Times an op is run again after a Conflict, a unique key another process inserted first,
# or a PostgreSQL deadlock or lock timeout, before its caller hears the database is busy.
RETRIES = 8


class _Slot:
    __slots__ = ("op", "payload", "result", "done", "abandoned", "wake")

    def __init__(self, op: BatchOp, payload: Any):
        self.op = op
        self.payload = payload
        self.result: Any = None
        self.done = False
        self.abandoned = False  # its caller stopped waiting; it is still written
        self.wake = threading.Lock()
        self.wake.acquire()  # released once: when done, or when handed the lead


class Writer:
    def __init__(self, db, *, max_batch: int = 512, wait_seconds: float = 30.0):
        self.db = db
        self.max_batch = max_batch
        self.wait_seconds = wait_seconds
        self._mutex = threading.Lock()
        self._idle = threading.Condition(self._mutex)
        self._pending: list[_Slot] = []
        self._leader: _Slot | None = None
        self._stopping = False
        self.last_error: str | None = None
        self.commits = 0

    def start(self) -> None:
        with self._mutex:
            self._stopping = False

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new changes and wait until the ones already queued are written."""
        with self._mutex:
            self._stopping = True
            self._idle.wait_for(lambda: self._leader is None and not self._pending, timeout)

    @property
    def running(self) -> bool:
        return not self._stopping

    def submit(self, op: BatchOp, payload: Any) -> Any:
        """Apply op to payload in the next group commit and return its result once durable."""
        slot = _Slot(op, payload)
        with self._mutex:
            if self._stopping:
                raise StorageUnavailable("the agent is stopping")
            self._pending.append(slot)
            leading = self._leader is None
            if leading:
                self._leader = slot
        if not leading:
            woken = slot.wake.acquire(timeout=self.wait_seconds)
            with self._mutex:
                leading = not slot.done and self._leader is slot
                if not (slot.done or leading or woken):
                    slot.abandoned = True
                    raise StorageUnavailable("the database did not answer in time")
        if leading:
            self._lead(slot)
        if isinstance(slot.result, BaseException):
            raise slot.result
        return slot.result

    def _lead(self, own: _Slot) -> None:
        while True:
            with self._mutex:
                batch = self._pending[: self.max_batch]
                del self._pending[: len(batch)]
            if batch:
                self._commit_group(batch)
                for slot in batch:
                    if slot is not own:
                        slot.wake.release()
            with self._mutex:
                if own.done:
                    # Abandoned slots cannot lead: nobody waits on them.
                    successor = next((s for s in self._pending if not s.abandoned), None)
                    if successor is not None or not self._pending:
                        self._leader = successor
                        if successor is not None:
                            successor.wake.release()
                        else:
                            self._idle.notify_all()
                        return

    def _commit_group(self, slots: list[_Slot]) -> None:
        results: list[Any] = []
        try:
            with self.db.atomic():
                # Consecutive changes of the same kind run as one batch; order is kept so
                # a ticket stored and then expired in the same group ends up expired.
                for op, group in groupby(slots, key=lambda slot: slot.op):
                    results.extend(self._apply(op, [slot.payload for slot in group]))
        except Exception as exc:  # the commit itself failed: nothing of the group is stored
            reason = _first_cause(exc)
            log.error("database commit failed for %d changes: %s", len(slots), reason)
            self.last_error = reason
            results = [StorageUnavailable(f"the database refused the write: {reason}")] * len(slots)
        else:
            self.commits += 1
            self.last_error = None
        for slot, result in zip(slots, results):
            slot.result = result
            slot.done = True

    def _apply(self, op: BatchOp, payloads: list[Any]) -> list[Any]:
        for attempt in range(RETRIES + 1):
            try:
                with self.db.atomic():  # savepoint: a failing batch leaves no partial rows
                    return _checked(op(payloads), payloads)
            except Exception as exc:
                if is_storage_failure(exc):
                    raise
                if _is_contention(exc):
                    if attempt < RETRIES:
                        continue  # rolled back to the savepoint: read afresh and try again
                    log.warning("gave up a write after %d tries: %s", RETRIES + 1, exc)
                    return [StorageUnavailable(f"the database stayed busy: {exc}")] * len(payloads)
                if len(payloads) == 1:
                    log.exception("write refused")
                    return [exc]
                break
        # One payload broke the batch; retry one by one so the others still get stored.
        return [result for payload in payloads for result in self._apply(op, [payload])]


def _checked(results: Sequence[Any], payloads: Sequence[Any]) -> list[Any]:
    results = list(results)
    if len(results) != len(payloads):
        raise RuntimeError(f"batch op returned {len(results)} results for {len(payloads)} payloads")
    return results


def _first_cause(exc: BaseException) -> str:
    """The error that started it. A commit that fails on a full disk makes SQLite roll the
    transaction back itself; peewee's own rollback then fails with "no transaction is
    active", and that second error would hide the one a person needs to read."""
    first = exc
    while first.__context__ is not None and isinstance(first.__context__, Exception):
        first = first.__context__
    return str(first) if first is exc or is_storage_failure(first) else str(exc)


def is_storage_failure(exc: Exception) -> bool:
    # Disk full, read-only file, I/O error, the server gone: retrying payload by payload
    # cannot help.
    driver = driver_error(exc)
    if driver is not None and type(driver).__module__.startswith("psycopg"):
        state = getattr(driver, "sqlstate", None)
        if state is None:  # no answer from the server at all: the connection is gone
            return type(driver).__name__ in ("OperationalError", "InterfaceError")
        # Connection lost (08), out of space or memory (53), shut down or cancelled
        # (57), system I/O error (58), a read-only server (25006).
        return state[:2] in ("08", "53", "57", "58") or state == "25006"
    text = str(exc).lower()
    return any(
        marker in text
        for marker in ("disk is full", "database or disk is full", "readonly", "read-only", "disk i/o error")
    )


def _is_contention(exc: Exception) -> bool:
    """Another writer got there first: the op read rows that changed (Conflict), inserted
    a key another process inserted first (unique violation), or waited on another's
    locks in vain (PostgreSQL deadlock, lock timeout, serialization failure)."""
    if isinstance(exc, Conflict):
        return True
    state = sqlstate(exc)
    return state in ("23505", "40P01", "40001", "55P03")


def sqlstate(exc: BaseException) -> str | None:
    """PostgreSQL's error code; None for SQLite's errors, which have none."""
    driver = driver_error(exc)
    return getattr(driver, "sqlstate", None) if driver is not None else None


def driver_error(exc: BaseException) -> BaseException | None:
    """The database driver's own exception that peewee wrapped, or that started it."""
    seen: set[int] = set()
    stack: list = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if type(current).__module__.split(".")[0] in ("psycopg", "psycopg2", "sqlite3"):
            return current
        stack.extend([current.__cause__, current.__context__])
        stack.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
    return None
