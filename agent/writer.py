"""The single database writer, with group commit.

SQLite takes one writer at a time, and with synchronous=FULL every commit costs an fsync.
Request threads that each open their own transaction queue up on the write lock and pay
one fsync per ticket. Instead every change goes through this one thread: it takes all the
changes waiting, applies them in one transaction, commits once, and only then answers
each waiting request. A request therefore hears "stored" only after its ticket is durable,
and under load many tickets share one fsync.
"""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

# A batch operation takes the payloads of several requests of the same kind and returns
# one result per payload, in order. It runs inside the writer's transaction and may
# return an exception instance for a payload it refuses; raising aborts only its group.
BatchOp = Callable[[Sequence[Any]], Sequence[Any]]


class StorageUnavailable(RuntimeError):
    """The change could not be made durable (disk full, read-only, I/O error, stopped)."""


@dataclass
class _Job:
    op: BatchOp
    payload: Any
    future: Future


_STOP = object()


class Writer:
    def __init__(self, db, *, max_batch: int = 512, wait_seconds: float = 30.0):
        self.db = db
        self.max_batch = max_batch
        self.wait_seconds = wait_seconds
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.last_error: str | None = None
        self.commits = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="db-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish every change already submitted, then stop."""
        if self._thread is None:
            return
        self._stopping = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, op: BatchOp, payload: Any) -> Any:
        """Apply op to payload in the next group commit and return its result once durable."""
        if self._stopping or not self.running:
            raise StorageUnavailable("the agent is stopping")
        future: Future = Future()
        self._queue.put(_Job(op, payload, future))
        try:
            result = future.result(timeout=self.wait_seconds)
        except TimeoutError:
            raise StorageUnavailable("the database did not answer in time") from None
        if isinstance(result, BaseException):
            raise result
        return result

    def _run(self) -> None:
        self.db.connect(reuse_if_open=True)
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    break
                jobs, stop = self._drain(first)
                self._commit_group(jobs)
                if stop:
                    break
        finally:
            # Anything submitted after the stop marker still gets an answer.
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not _STOP:
                    job.future.set_result(StorageUnavailable("the agent is stopping"))
            self.db.close()

    def _drain(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs = [first]
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _commit_group(self, jobs: list[_Job]) -> None:
        results: list[Any] = []
        try:
            with self.db.atomic():
                # Consecutive jobs of the same kind run as one batch; order is kept so
                # a ticket stored and then expired in the same group ends up expired.
                for op, group in groupby(jobs, key=lambda job: job.op):
                    results.extend(self._apply(op, [job.payload for job in group]))
        except Exception as exc:  # the commit itself failed: nothing of the group is stored
            log.error("database commit failed for %d changes: %s", len(jobs), exc)
            self.last_error = str(exc)
            failure = StorageUnavailable(f"the database refused the write: {exc}")
            for job in jobs:
                job.future.set_result(failure)
            return
        self.commits += 1
        self.last_error = None
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    def _apply(self, op: BatchOp, payloads: list[Any]) -> list[Any]:
        try:
            with self.db.atomic():  # savepoint: a failing batch leaves no partial rows
                return _checked(op(payloads), payloads)
        except Exception as exc:
            if _is_storage_failure(exc):
                raise
            if len(payloads) == 1:
                log.exception("write refused")
                return [exc]
        # One payload broke the batch; retry one by one so the others still get stored.
        return [result for payload in payloads for result in self._apply(op, [payload])]


def _checked(results: Sequence[Any], payloads: Sequence[Any]) -> list[Any]:
    results = list(results)
    if len(results) != len(payloads):
        raise RuntimeError(f"batch op returned {len(results)} results for {len(payloads)} payloads")
    return results


def _is_storage_failure(exc: Exception) -> bool:
    # Disk full, read-only file, I/O error: retrying payload by payload cannot help.
    text = str(exc).lower()
    return any(
        marker in text
        for marker in ("disk is full", "database or disk is full", "readonly", "read-only", "disk i/o error")
    )
