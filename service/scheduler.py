"""The scheduled work of the agent, wired to APScheduler in one place.

Each job is a plain function with its own tests (sync/expiry.py, sync/global_invoice.py);
here they only get a timetable. Jobs run as sweeps: every run looks at the database for
what is due (overdue tickets, closed periods with tickets waiting, failed runs whose
retry time came), so a run missed while the agent was off, or a clock that jumped, is
simply caught up by the next sweep, and a sweep that runs twice finds nothing left to do.

Only one agent process on a data directory runs them: a lock file decides which.
"""
from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler

try:
    import fcntl
except ImportError:  # Windows: the same exclusive, non-blocking lock through msvcrt
    fcntl = None
    import msvcrt

log = logging.getLogger(__name__)

LOCK_FILE = "scheduler.lock"


class JobLock:
    """An advisory lock on a file in the data directory, held while the process lives."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _lock(fd)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


# On Windows the lock covers one byte far past the pid the file holds, so writing the pid
# is not blocked by the lock itself. The OS drops either lock when the process dies.
_WINDOWS_LOCK_OFFSET = 1 << 20


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # OSError when another process holds it
        os.lseek(fd, 0, os.SEEK_SET)


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class Scheduler:
    def __init__(self, data_dir: Path, jobs: dict[str, tuple[Callable[[], object], int]]):
        """jobs: name -> (function, seconds between sweeps)."""
        self.jobs = jobs
        self.lock = JobLock(data_dir)
        self._scheduler = BackgroundScheduler(timezone=timezone.utc)
        self.last_run: dict[str, datetime] = {}
        self.last_error: dict[str, str] = {}

    def start(self) -> None:
        self._scheduler.start()
        if not self._take_jobs():
            log.warning("another agent process holds %s: it runs the scheduled jobs; this one checks "
                        "every minute whether to take over", self.lock.path)
            self._scheduler.add_job(self._take_jobs, "interval", seconds=60, id="take-over",
                                    max_instances=1, coalesce=True)

    def _take_jobs(self) -> bool:
        if not self.lock.acquire():
            return False
        if self._scheduler.get_job("take-over"):
            self._scheduler.remove_job("take-over")
        now = datetime.now(timezone.utc)
        for name, (function, seconds) in self.jobs.items():
            # next_run_time=now: whatever was missed while the agent was off runs at start.
            self._scheduler.add_job(self._runner(name, function), "interval", seconds=seconds, id=name,
                                    next_run_time=now, max_instances=1, coalesce=True, misfire_grace_time=None)
        return True

    def _runner(self, name: str, function: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            started = time.monotonic()
            try:
                function()
            except Exception as exc:  # a job that fails is logged and runs again next sweep
                log.exception("scheduled job %s failed after %.2f s", name, time.monotonic() - started)
                self.last_error[name] = str(exc)
            else:
                # One line per run: the log shows the sweeps are alive and how long they take.
                log.info("scheduled job %s ran in %.2f s", name, time.monotonic() - started)
                self.last_error.pop(name, None)
            self.last_run[name] = datetime.now(timezone.utc)

        return run

    @property
    def running_jobs(self) -> bool:
        return self.lock.held

    def stop(self) -> None:
        """Let a job in progress finish, then release the lock."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        self.lock.release()
