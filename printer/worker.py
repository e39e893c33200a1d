"""The print worker: takes due jobs from a queue, prints them, reports back.

It knows nothing of Flask or of the database: the queue and the rendering of a job are
handed to it (service/ wires the agent's print queue and slip builder in). A sale never
waits on it; it only ever waits on printers, with short timeouts, one connection per job.
"""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Protocol, Sequence

from printer.connections import PrinterError, parse_printer, send

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOutcome:
    job_id: int
    printed_at: datetime | None = None  # set: printed
    error: str | None = None
    retry_at: datetime | None = None  # with an error: try again then; None: give up


@dataclass(frozen=True)
class RenderedJob:
    printer: str  # connection string
    data: bytes  # ESC/POS
    preview: bytes | None  # PNG, kept by folder printers
    name: str  # file name stem for folder printers


class JobQueue(Protocol):
    def claim_due(self, now: datetime, limit: int = 50) -> Sequence[Any]: ...

    def finish(self, outcomes: Sequence[JobOutcome]) -> None: ...


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def backoff(attempts: int) -> timedelta:
    """2, 4, 8 ... seconds, at most a minute: a printer back from a paper change prints
    its queue within a minute, and a dead one is asked once a minute, not hammered."""
    return timedelta(seconds=min(60, 2 ** max(1, attempts)))


class PrintWorker:
    def __init__(
        self,
        queue: JobQueue,
        render: Callable[[Any], RenderedJob | None],
        *,
        timeout: float = 5.0,
        max_age: timedelta = timedelta(hours=1),
        printers_at_once: int = 4,
        poll_seconds: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.queue = queue
        self.render = render
        self.timeout = timeout
        self.max_age = max_age
        self.poll_seconds = poll_seconds
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=printers_at_once, thread_name_prefix="printer")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._unrecorded: list[JobOutcome] = []  # outcomes a failed commit could not record yet
        self.last_error: dict[str, str] = {}  # printer -> last error, for status pages

    # -- one round, a plain function: tests and `ticket-agent` call it directly ---------

    def run_once(self, limit: int = 50) -> int:
        """Claim the due jobs, print them (printers in parallel, each printer's jobs in
        order) and record the outcomes. Returns how many jobs were handled.

        Each slip's outcome is recorded before the next slip of its printer leaves, so
        after a crash only the slip each printer was sending can have left unrecorded:
        the queue's recovery fails that one and gives the others back
        (agent/print_queue.py)."""
        with self._lock:
            unrecorded, self._unrecorded = self._unrecorded, []
        if unrecorded:
            # Outcomes a commit failed to record, recorded before anything new is claimed
            # (if it fails again, so would the claim): the recovery reads each printer's
            # first unfinished job as the one in flight.
            try:
                self.queue.finish(unrecorded)
            except BaseException:
                with self._lock:
                    self._unrecorded[:0] = unrecorded
                raise
        jobs = self.queue.claim_due(self.clock(), limit)
        if not jobs:
            return 0
        by_printer: dict[str, list[tuple[Any, RenderedJob]]] = defaultdict(list)
        outcomes: list[JobOutcome] = []
        for job in jobs:
            try:
                rendered = self.render(job)
            except Exception as exc:  # a ticket or config the slip cannot be made from
                log.exception("print job %s: cannot render the slip", job.id)
                outcomes.append(JobOutcome(job.id, error=f"cannot render the slip: {exc}"))
                continue
            if rendered is None:  # the printer is "none": nothing to print, nothing owed
                outcomes.append(JobOutcome(job.id, printed_at=self.clock()))
                continue
            by_printer[rendered.printer].append((job, rendered))
        if outcomes:  # nothing leaves for these: recorded before any slip does
            self._record(outcomes)
        for _ in self._pool.map(self._print_all, by_printer.values()):
            pass
        return len(jobs)

    def _print_all(self, jobs: list[tuple[Any, RenderedJob]]) -> None:
        """One printer's jobs, in order, each outcome recorded before the next slip leaves."""
        for index, (job, rendered) in enumerate(jobs):
            rest = jobs[index + 1 :]
            try:
                send(parse_printer(rendered.printer), rendered.data, name=rendered.name,
                     preview=rendered.preview, timeout=self.timeout)
            except (PrinterError, OSError, ValueError) as exc:
                failure = str(exc)
                self.last_error[rendered.printer] = f"{self.clock():%Y-%m-%d %H:%M:%S} UTC {failure}"
                log.warning("print job %s on %s failed: %s", job.id, rendered.printer, failure)
                # Once a printer failed, its other jobs wait for the next try instead of each
                # spending a timeout on a printer known to be down.
                self._record([self._failed(other, failure) for other, _ in jobs[index:]])
                return
            except Exception as exc:  # a bug: this slip may have left, so it is never sent again
                log.exception("print job %s on %s: unexpected error", job.id, rendered.printer)
                failure = f"unexpected error while printing: {exc!r}"
                self._record([JobOutcome(job.id, error=failure), *(self._failed(other, failure) for other, _ in rest)])
                return
            self.last_error.pop(rendered.printer, None)
            log.info("print job %s printed on %s", job.id, rendered.printer)
            if not self._record([JobOutcome(job.id, printed_at=self.clock())], rest):
                return

    def _record(self, outcomes: list[JobOutcome], rest: Sequence[tuple[Any, RenderedJob]] = ()) -> bool:
        """Record outcomes now; when the commit fails, keep them (and give the printer's
        jobs not sent yet back, due at once) for the next round. False if it failed."""
        try:
            self.queue.finish(outcomes)
            return True
        except Exception:  # the database refused the write: the round stops for this printer
            log.exception("print jobs %s: cannot record the outcome; recorded before the next round",
                          ", ".join(str(o.job_id) for o in outcomes))
            now = self.clock()
            with self._lock:
                self._unrecorded.extend(outcomes)
                self._unrecorded.extend(
                    JobOutcome(job.id, error="not sent: the outcome of the slip before could not be recorded",
                               retry_at=now)
                    for job, _ in rest
                )  # fmt: skip
            return False

    def _failed(self, job: Any, error: str) -> JobOutcome:
        now = self.clock()
        if now - job.created_at >= self.max_age:
            return JobOutcome(job.id, error=f"{error}; not printed within {self.max_age}, given up")
        return JobOutcome(job.id, error=error, retry_at=now + backoff(job.attempts))

    # -- the background thread ----------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="print-worker", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """A new job is waiting: print it now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Finish the round in progress (its outcomes are recorded), then stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._pool.shutdown(wait=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                handled = self.run_once()
            except Exception:  # the database is busy or gone: keep the worker alive
                log.exception("print worker round failed")
                handled = 0
            if not handled:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
