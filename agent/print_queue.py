"""The persisted print queue: one job per slip to print, kept in the ticket database.

A job is written in the same transaction as its ticket, so a stored ticket always has
its slip waiting; the print worker (printer/worker.py) claims due jobs, prints them and
reports back. Claiming marks a job PRINTING before any byte leaves, so after a crash the
agent knows which slips may have been half printed and does not print them again.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Sequence

from peewee import JOIN

from agent.db import locked
from agent.models import JOB_FAILED, JOB_PENDING, JOB_PRINTED, JOB_PRINTING, PUSH_SYNCED, PrintJob, Receipt, Ticket
from agent.writer import Writer
from printer.worker import JobOutcome

INTERRUPTED = "interrupted while printing (the agent stopped); not printed again automatically to avoid a second slip"


@dataclass(frozen=True)
class DueJob:
    """A claimed job with what the slip needs from its ticket."""

    id: int
    attempts: int
    printer: str
    reason: str
    created_at: datetime
    company: str
    branch: str
    number: str
    sold_at: datetime
    total: Decimal
    link: str | None = None  # the upstream's self-invoice URL, when it has arrived


def insert_jobs(jobs: Sequence[tuple[int, str, str, datetime]], now: datetime) -> None:
    """(ticket id, printer name, reason, due at) rows, inside the caller's transaction."""
    if jobs:
        PrintJob.insert_many(
            [(ticket_id, printer, reason, JOB_PENDING, 0, due, now) for ticket_id, printer, reason, due in jobs],
            fields=[
                PrintJob.ticket, PrintJob.printer, PrintJob.reason, PrintJob.state,
                PrintJob.attempts, PrintJob.next_attempt_at, PrintJob.created_at,
            ],
        ).execute()  # fmt: skip


class PrintQueue:
    def __init__(self, writer: Writer, presence):
        self.writer = writer
        self.presence = presence  # agent.db: this process, and which others are alive

    def enqueue(self, ticket_id: int, printer: str = "", reason: str = "reprint", now: datetime | None = None) -> None:
        from agent.store import utcnow

        self.writer.submit(_enqueue, (ticket_id, printer, reason, now or utcnow()))

    def claim_due(self, now: datetime, limit: int = 50) -> list[DueJob]:
        # The worker asks every second; a read first keeps an idle agent from writing
        # (and fsyncing) once a second for nothing.
        due = PrintJob.select().where((PrintJob.state == JOB_PENDING) & (PrintJob.next_attempt_at <= now)).exists()
        return self.writer.submit(_claim, (now, limit, self.presence.instance)) if due else []

    def finish(self, outcomes: Sequence[JobOutcome]) -> None:
        if outcomes:
            self.writer.submit(_finish, tuple(outcomes))

    def recover_interrupted(self) -> int:
        """The claims of agent processes that are gone (this one's before a crash, or
        another's on the same PostgreSQL database): the job each of their printers was
        sending becomes FAILED (at most one slip); the jobs claimed with it that never
        left are due again. Returns how many failed."""
        claimers = [
            claimer
            for (claimer,) in PrintJob.select(PrintJob.claimed_by).where(PrintJob.state == JOB_PRINTING).distinct().tuples()
        ]
        gone = tuple(claimer for claimer in claimers if claimer is None or not self.presence.alive(claimer))
        return self.writer.submit(_recover, gone) if gone else 0


def _enqueue(batch):
    for ticket_id, printer, reason, now in batch:
        insert_jobs([(ticket_id, printer, reason, now)], now)
    return [None] * len(batch)


def _claim(batch):
    results = []
    for now, limit, instance in batch:
        # Skipping jobs another agent process on the same database is claiming: each
        # job goes to exactly one print worker.
        ids = [
            job_id
            for (job_id,) in locked(
                PrintJob.select(PrintJob.id)
                .where((PrintJob.state == JOB_PENDING) & (PrintJob.next_attempt_at <= now))
                .order_by(PrintJob.next_attempt_at, PrintJob.id)
                .limit(limit),
                skip_locked=True,
            ).tuples()
        ]
        if not ids:
            results.append([])
            continue
        PrintJob.update(state=JOB_PRINTING, attempts=PrintJob.attempts + 1, claimed_by=instance).where(
            PrintJob.id.in_(ids)
        ).execute()
        rows = (
            PrintJob.select(
                PrintJob.id, PrintJob.attempts, PrintJob.printer, PrintJob.reason, PrintJob.created_at,
                Ticket.company, Ticket.branch, Ticket.number, Ticket.sold_at, Ticket.total, Receipt.self_invoice_url,
            )
            .join(Ticket, on=(PrintJob.ticket == Ticket.id))
            .join(Receipt, JOIN.LEFT_OUTER, on=((Receipt.ticket == Ticket.id) & (Receipt.state == PUSH_SYNCED)))
            .where(PrintJob.id.in_(ids))
            .order_by(PrintJob.next_attempt_at, PrintJob.id)
            .tuples()
        )  # fmt: skip
        results.append([DueJob(*row) for row in rows])
    return results


def _finish(batch):
    for outcomes in batch:
        for outcome in outcomes:
            if outcome.printed_at is not None:
                changes = dict(state=JOB_PRINTED, printed_at=outcome.printed_at, last_error=None)
            elif outcome.retry_at is not None:
                changes = dict(state=JOB_PENDING, next_attempt_at=outcome.retry_at, last_error=outcome.error)
            else:
                changes = dict(state=JOB_FAILED, last_error=outcome.error)
            PrintJob.update(**changes).where(
                (PrintJob.id == outcome.job_id) & (PrintJob.state == JOB_PRINTING)
            ).execute()
    return [None] * len(batch)


def _recover(batch):
    # The worker sends a printer's claimed jobs in claim order and records each outcome
    # before the next one leaves (printer/worker.py), so of the jobs a crash left
    # PRINTING only the first of each printer may have reached it. Grouped by the process
    # that claimed them, then company, branch and printer name: two names for one printer
    # only make the recovery fail one more. Claims from before claimed_by existed are None.
    gone = {claimer for claimers in batch for claimer in claimers}
    owner = PrintJob.claimed_by.in_(sorted(gone - {None}))
    if None in gone:
        owner |= PrintJob.claimed_by.is_null()
    claimed = (
        PrintJob.select(PrintJob.id, PrintJob.claimed_by, Ticket.company, Ticket.branch, PrintJob.printer)
        .join(Ticket, on=(PrintJob.ticket == Ticket.id))
        .where((PrintJob.state == JOB_PRINTING) & owner)
        .order_by(PrintJob.next_attempt_at, PrintJob.id)
        .tuples()
    )
    in_flight: dict[tuple, int] = {}
    never_sent = []
    for job_id, *printer in claimed:
        if in_flight.setdefault(tuple(printer), job_id) != job_id:
            never_sent.append(job_id)
    count = 0
    for chunk in _chunks(list(in_flight.values())):
        count += PrintJob.update(state=JOB_FAILED, last_error=INTERRUPTED).where(
            PrintJob.id.in_(chunk) & (PrintJob.state == JOB_PRINTING)
        ).execute()
    for chunk in _chunks(never_sent):  # that try did not happen
        PrintJob.update(state=JOB_PENDING, attempts=PrintJob.attempts - 1).where(
            PrintJob.id.in_(chunk) & (PrintJob.state == JOB_PRINTING)
        ).execute()
    return [count] + [0] * (len(batch) - 1)


def _chunks(values: list, size: int = 500):
    for start in range(0, len(values), size):
        yield values[start : start + size]
