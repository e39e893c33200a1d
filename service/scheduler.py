"""The scheduled work of the agent, wired to APScheduler in one place.

Each job is a plain function with its own tests (sync/expiry.py, sync/global_invoice.py);
here they only get a timetable. Jobs run as sweeps: every run looks at the database for
what is due (overdue tickets, closed periods with tickets waiting, failed runs whose
retry time came), so a run missed while the agent was off, or a clock that jumped, is
simply caught up by the next sweep, and a sweep that runs twice finds nothing left to do.

Only one agent process runs them at a time: a lock file in the data directory decides
which, or, for agents sharing a PostgreSQL database, a lease (an advisory lock the server
drops when its holder dies). The others check every few seconds whether to take over.

APScheduler times its jobs by the wall clock. A clock set back an hour would leave every
sweep waiting that extra hour (a day forward is harmless: the missed runs coalesce into
one). A watch compares the wall clock with the monotonic one and, when they part by more
than a few seconds, logs the jump and runs the sweeps at once; the sweeps themselves make
a second run harmless.
"""
from __future__ import annotations

import logging
import os
import threading
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
# Seconds between two checks, by a process not running the sweeps, of whether the one
# that did is gone: how long the sweeps may go without a holder after it dies.
TAKE_OVER_EVERY = 10
CLOCK_CHECK_EVERY = 30.0
# More disagreement than this between the wall clock and the time that passed is a jump
# (an NTP slew moves the clock by milliseconds a second, never seconds).
CLOCK_JUMP_SECONDS = 5.0


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def clock_jump(wall_before: datetime, mono_before: float, wall_now: datetime, mono_now: float) -> float:
    """Seconds the wall clock moved beyond the time that really passed (negative: back)."""
    return (wall_now - wall_before).total_seconds() - (mono_now - mono_before)


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

    def verify(self) -> bool:
        return True  # nothing takes a file lock away while the process lives


class Lease:
    """The same, for agents sharing a PostgreSQL database: a named lease on the process's
    own connection to the server (agent.db.PgPresence)."""

    def __init__(self, presence, name: str = "scheduler"):
        self.presence = presence
        self.name = name
        self.path = f"the lease {name!r} on the database"

    def acquire(self) -> bool:
        return self.held or self.presence.try_lease(self.name)

    def release(self) -> None:
        self.presence.release(self.name)

    @property
    def held(self) -> bool:
        return self.presence.holds(self.name)

    def verify(self) -> bool:
        """Before each sweep: a lease lost with the connection (a server restart) may be
        another process's by now."""
        return self.presence.still_holds(self.name)


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
    def __init__(self, data_dir: Path, jobs: dict[str, tuple[Callable[[], object], int]], *,
                 clock: Callable[[], datetime] = _utcnow, clock_check_every: float = CLOCK_CHECK_EVERY,
                 lock: JobLock | Lease | None = None, take_over_every: float = TAKE_OVER_EVERY):  # fmt: skip
        """jobs: name -> (function, seconds between sweeps)."""
        self.jobs = jobs
        self.lock = lock or JobLock(data_dir)
        self.take_over_every = take_over_every
        self._standing_down = False
        self._scheduler = BackgroundScheduler(timezone=timezone.utc)
        self.last_run: dict[str, datetime] = {}
        self.last_error: dict[str, str] = {}
        self.clock = clock
        self.clock_check_every = clock_check_every
        self.clock_jumps: list[tuple[datetime, float]] = []  # (when, seconds), for status pages
        self._watching = threading.Event()
        self._watch = threading.Thread(target=self._watch_clock, name="clock-watch", daemon=True)

    def start(self) -> None:
        self._scheduler.start()
        self._watch.start()
        # Always there, and a no-op while this process holds the jobs: a job thread that
        # finds the lease lost then changes nothing in APScheduler (doing so while the
        # scheduler shuts down deadlocks it), it only stops running the sweeps.
        self._scheduler.add_job(self._take_jobs, "interval", seconds=self.take_over_every, id="take-over",
                                max_instances=1, coalesce=True)
        if not self._take_jobs():
            log.warning("another agent process holds %s: it runs the scheduled jobs; this one checks "
                        "every %g seconds whether to take over", self.lock.path, self.take_over_every)

    def stand_down(self) -> None:
        """The process is stopping: it no longer takes the jobs over from another."""
        self._standing_down = True

    def _take_jobs(self) -> bool:
        if self._standing_down:
            return False
        if self.lock.held:
            return True
        try:
            taken = self.lock.acquire()
        except Exception:  # noqa: BLE001 - the database is unreachable: try again later
            log.exception("cannot tell whether to run the scheduled jobs")
            return False
        if not taken:
            return False
        log.info("this agent process runs the scheduled jobs (%s)", self.lock.path)
        now = self.clock()
        for name, (function, seconds) in self.jobs.items():
            if self._scheduler.get_job(name):  # held before, lost, taken again
                self._scheduler.modify_job(name, next_run_time=now)
                continue
            # next_run_time=now: whatever was missed while the agent was off runs at start.
            self._scheduler.add_job(self._runner(name, function), "interval", seconds=seconds, id=name,
                                    next_run_time=now, max_instances=1, coalesce=True, misfire_grace_time=None)
        return True

    def _runner(self, name: str, function: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            if not self.lock.held:
                return  # lost: the take-over check runs them again once this process holds them
            if not self.lock.verify():
                log.error("lost %s (the database connection dropped); the scheduled jobs stop here until this "
                          "process takes them again", self.lock.path)
                return
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

    def _watch_clock(self) -> None:
        wall, mono = self.clock(), time.monotonic()
        while not self._watching.wait(self.clock_check_every):
            wall_now, mono_now = self.clock(), time.monotonic()
            jump = clock_jump(wall, mono, wall_now, mono_now)
            wall, mono = wall_now, mono_now
            if abs(jump) > CLOCK_JUMP_SECONDS:
                self.clock_jumps = [*self.clock_jumps[-9:], (wall_now, jump)]
                log.warning("the system clock jumped %s by %.0f s; running the scheduled sweeps now",
                            "back" if jump < 0 else "forward", abs(jump))
                self.run_now()

    def run_now(self) -> None:
        """Run every sweep this process holds now, and time the next ones from now."""
        if not self.lock.held:
            return
        now = self.clock()
        for name in self.jobs:
            if self._scheduler.get_job(name):
                self._scheduler.modify_job(name, next_run_time=now)

    @property
    def running_jobs(self) -> bool:
        return self.lock.held

    def stop(self) -> None:
        """Let a job in progress finish, then release the lock."""
        self._watching.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        self.lock.release()
