"""The store side of the upstream sync: the receipt outbox and what the cloud reported.

The ticket table is the outbox. A ticket with no `synced_at` has not been offered to the
upstream; `claim` marks a batch synced and gives each a Receipt row in one transaction,
before any byte leaves, so a ticket is never replaced after the upstream may have seen
it, and after a crash the push simply repeats with the same idempotency key. See
docs/sync.md.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Iterable, Sequence

from peewee import fn

from agent.db import locked
from agent.models import (
    EXPIRED,
    JOB_PENDING,
    PUSH_PENDING,
    PUSH_STOPPED,
    PUSH_SYNCED,
    RUN_STAMPED,
    RUN_VOID,
    STORED,
    GlobalInvoice,
    PrintJob,
    Receipt,
    SyncStatus,
    Ticket,
    TicketEvent,
)
from agent.store import _chunks, utcnow
from agent.writer import Writer


def idempotency_key(company: str, branch: str, number: str) -> str:
    """Stable per company, branch and ticket, and opaque: the company key is a secret of
    the POS URLs and has no business in the cloud."""
    digest = hashlib.sha256(f"{company}\x1f{branch}\x1f{number}".encode("utf-8")).hexdigest()
    return f"ticket-{digest[:40]}"


@dataclass(frozen=True)
class Outgoing:
    """A claimed ticket, with what its receipt needs."""

    ticket_id: int
    company: str
    branch: str
    number: str
    sold_at: datetime
    total: Decimal
    insumo: str
    idempotency_key: str
    attempts: int


@dataclass(frozen=True)
class Pushed:
    upstream_id: str
    key: str | None
    self_invoice_url: str | None
    expires_at: datetime | None
    status: str | None
    total: Decimal | None


@dataclass(frozen=True)
class Backlog:
    """What `status` and `sync --once` show for one branch."""

    company: str
    branch: str
    unsent: int  # stored, not yet claimed
    retrying: int  # claimed, waiting for a retry
    stopped: int  # needs a person
    last_push_at: datetime | None
    last_poll_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


class Receipts:
    def __init__(self, writer: Writer):
        self.writer = writer

    # -- up -----------------------------------------------------------------------------

    def has_unsent(self, companies: Sequence[str]) -> bool:
        return bool(companies) and Ticket.select().where(
            Ticket.synced_at.is_null() & Ticket.company.in_(list(companies))
        ).exists()

    def claim(self, companies: Sequence[str], now: datetime, limit: int = 200) -> int:
        """Give the oldest unsent tickets of these companies their outbox row."""
        if not self.has_unsent(companies):
            return 0
        return self.writer.submit(_claim, (tuple(companies), now, limit))

    def due(self, companies: Sequence[str], now: datetime, limit: int = 200) -> list[Outgoing]:
        rows = (
            Receipt.select(
                Ticket.id, Ticket.company, Ticket.branch, Ticket.number, Ticket.sold_at, Ticket.total, Ticket.insumo,
                Receipt.idempotency_key, Receipt.attempts,
            )
            .join(Ticket, on=(Receipt.ticket == Ticket.id))
            .where((Receipt.state == PUSH_PENDING) & (Receipt.next_attempt_at <= now)
                   & Receipt.company.in_(list(companies)))
            .order_by(Receipt.next_attempt_at, Receipt.ticket)
            .limit(limit)
            .tuples()
        )  # fmt: skip
        return [Outgoing(*row) for row in rows] if companies else []

    def next_due(self, companies: Sequence[str]) -> datetime | None:
        if not companies:
            return None
        return (
            Receipt.select(fn.MIN(Receipt.next_attempt_at))
            .where((Receipt.state == PUSH_PENDING) & Receipt.company.in_(list(companies)))
            .scalar()
        )

    def pushed(self, ticket_id: int, answer: Pushed, now: datetime) -> bool:
        """Keep the receipt; True when a slip still waiting for this link was nudged."""
        return self.writer.submit(_pushed, (ticket_id, answer, now))

    def retry(self, ticket_id: int, error: str, at: datetime) -> None:
        self.writer.submit(_retry, (ticket_id, error, at))

    def stop(self, ticket_id: int, error: str, answer: Pushed | None = None) -> None:
        self.writer.submit(_stop, (ticket_id, error, answer))

    def refused(self, ticket_id: int, error: str) -> None:
        """The upstream refused the receipt and created nothing: stop it, and give the
        ticket back to the POS, which may correct it with a new PUT."""
        self.writer.submit(_refused, (ticket_id, error))

    # -- what the cloud reports ----------------------------------------------------------

    def link_of(self, ticket_id: int) -> str | None:
        return (
            Receipt.select(Receipt.self_invoice_url)
            .where((Receipt.ticket == ticket_id) & (Receipt.state == PUSH_SYNCED))
            .scalar()
        )

    def to_watch(self, company: str) -> list[Receipt]:
        """Synced receipts whose ticket may still be invoiced by a customer in the cloud."""
        return list(
            Receipt.select(Receipt, Ticket)
            .join(Ticket, on=(Receipt.ticket == Ticket.id))
            .where((Receipt.company == company) & (Receipt.state == PUSH_SYNCED)
                   & Ticket.status.in_([STORED, EXPIRED]) & Ticket.cfdi.is_null())
            .order_by(Ticket.sold_at)
        )  # fmt: skip

    def seen_many(self, updates: Iterable[tuple[int, str, str | None, datetime]]) -> None:
        updates = tuple(updates)
        if updates:
            self.writer.submit(_seen, updates)

    def of_tickets(self, ticket_ids: Sequence[int]) -> dict[int, Receipt]:
        return {r.ticket_id: r for chunk in _chunks(list(ticket_ids)) for r in Receipt.select().where(Receipt.ticket.in_(chunk))}

    def release_from_run(self, ticket_ids: Sequence[int]) -> None:
        """Take tickets out of a global run not stamped yet (a customer invoiced them in
        the cloud first); a run left with no ticket becomes VOID."""
        if ticket_ids:
            self.writer.submit(_release, tuple(ticket_ids))

    # -- status --------------------------------------------------------------------------

    def note(self, company: str, branch: str, *, pushed: datetime | None = None, polled: datetime | None = None,
             error: str | None = None, at: datetime | None = None) -> None:  # fmt: skip
        self.writer.submit(_note, (company, branch, pushed, polled, error, at))

    def backlog(self, company: str, branches: Sequence[str]) -> list[Backlog]:
        unsent = dict(
            Ticket.select(Ticket.branch, fn.COUNT(Ticket.id))
            .where((Ticket.company == company) & Ticket.synced_at.is_null())
            .group_by(Ticket.branch)
            .tuples()
        )
        states: dict[tuple[str, str], int] = {
            (branch, state): count
            for branch, state, count in Receipt.select(Receipt.branch, Receipt.state, fn.COUNT(Receipt.ticket))
            .where((Receipt.company == company) & (Receipt.state != PUSH_SYNCED))
            .group_by(Receipt.branch, Receipt.state)
            .tuples()
        }
        notes = {s.branch: s for s in SyncStatus.select().where(SyncStatus.company == company)}
        out = []
        for branch in branches:
            note = notes.get(branch)
            out.append(Backlog(
                company, branch, unsent.get(branch, 0), states.get((branch, PUSH_PENDING), 0),
                states.get((branch, PUSH_STOPPED), 0),
                note.last_push_at if note else None, note.last_poll_at if note else None,
                note.last_error if note else None, note.last_error_at if note else None,
            ))  # fmt: skip
        return out

    def stopped(self, company: str) -> list[tuple[str, str, str]]:
        """(branch, ticket number, error) of the company's stopped receipts."""
        return list(
            Receipt.select(Receipt.branch, Ticket.number, Receipt.last_error)
            .join(Ticket, on=(Receipt.ticket == Ticket.id))
            .where((Receipt.company == company) & (Receipt.state == PUSH_STOPPED))
            .order_by(Receipt.updated_at)
            .tuples()
        )


# -- batch operations, run by the writer inside its transaction ----------------------------


def _claim(batch):
    results = []
    for companies, now, limit in batch:
        # Skipping the rows another agent process is claiming (or replacing) right now:
        # each ticket gets one outbox row, however many pushers share the database.
        rows = list(
            locked(
                Ticket.select(Ticket.id, Ticket.company, Ticket.branch, Ticket.number)
                .where(Ticket.synced_at.is_null() & Ticket.company.in_(list(companies)))
                .order_by(Ticket.id)
                .limit(limit),
                skip_locked=True,
            ).tuples()
        )
        if rows:
            ids = [row[0] for row in rows]
            Ticket.update(synced_at=now).where(Ticket.id.in_(ids) & Ticket.synced_at.is_null()).execute()
            Receipt.insert_many(
                [(tid, company, branch, idempotency_key(company, branch, number), PUSH_PENDING, 0, now, now, now)
                 for tid, company, branch, number in rows],
                fields=[Receipt.ticket, Receipt.company, Receipt.branch, Receipt.idempotency_key, Receipt.state,
                        Receipt.attempts, Receipt.next_attempt_at, Receipt.created_at, Receipt.updated_at],
            ).on_conflict(
                # A ticket refused before and corrected since by the POS goes out afresh.
                conflict_target=[Receipt.ticket],
                preserve=[Receipt.state, Receipt.next_attempt_at, Receipt.updated_at],
                update={Receipt.attempts: 0, Receipt.last_error: None},
            ).execute()  # fmt: skip
        results.append(len(rows))
    return results


def _pushed(batch):
    results = []
    for ticket_id, answer, now in batch:
        Receipt.update(
            state=PUSH_SYNCED, attempts=Receipt.attempts + 1, last_error=None, upstream_id=answer.upstream_id,
            key=answer.key, self_invoice_url=answer.self_invoice_url, expires_at=answer.expires_at,
            upstream_status=answer.status, upstream_total=answer.total, synced_at=now, updated_at=now,
        ).where(Receipt.ticket == ticket_id).execute()  # fmt: skip
        TicketEvent.create(ticket=ticket_id, at=now, kind="synced", detail=f"receipt {answer.upstream_id}")
        # A slip that waited for this link prints now instead of at the end of its wait.
        nudged = PrintJob.update(next_attempt_at=now).where(
            (PrintJob.ticket == ticket_id) & (PrintJob.state == JOB_PENDING) & (PrintJob.attempts == 0)
            & (PrintJob.next_attempt_at > now)
        ).execute()  # fmt: skip
        results.append(bool(nudged))
    return results


def _retry(batch):
    now = utcnow()
    for ticket_id, error, at in batch:
        Receipt.update(state=PUSH_PENDING, attempts=Receipt.attempts + 1, last_error=error, next_attempt_at=at,
                       updated_at=now).where((Receipt.ticket == ticket_id) & (Receipt.state == PUSH_PENDING)).execute()
    return [None] * len(batch)


def _stop(batch):
    now = utcnow()
    for ticket_id, error, answer in batch:
        changes = dict(state=PUSH_STOPPED, attempts=Receipt.attempts + 1, last_error=error, updated_at=now)
        if answer is not None:
            changes.update(upstream_id=answer.upstream_id, key=answer.key, self_invoice_url=None,
                           upstream_status=answer.status, upstream_total=answer.total)
        Receipt.update(**changes).where(Receipt.ticket == ticket_id).execute()
        TicketEvent.create(ticket=ticket_id, at=now, kind="sync-stopped", detail=error)
    return [None] * len(batch)


def _refused(batch):
    now = utcnow()
    for ticket_id, error in batch:
        Receipt.update(state=PUSH_STOPPED, attempts=Receipt.attempts + 1, last_error=error, updated_at=now).where(
            Receipt.ticket == ticket_id
        ).execute()
        # Nothing was created upstream: the POS may send a corrected ticket (a new PUT).
        Ticket.update(synced_at=None).where(Ticket.id == ticket_id).execute()
        TicketEvent.create(ticket=ticket_id, at=now, kind="sync-refused", detail=error)
    return [None] * len(batch)


def _seen(batch):
    for updates in batch:
        for ticket_id, status, invoice_id, now in updates:
            Receipt.update(upstream_status=status, invoice_id=invoice_id, checked_at=now).where(
                Receipt.ticket == ticket_id
            ).execute()
    return [None] * len(batch)


def _release(batch):
    for ticket_ids in batch:
        runs: dict[int, int] = {}
        for chunk in _chunks(list(ticket_ids)):
            for ticket_id, run_id in Ticket.select(Ticket.id, Ticket.global_invoice).where(
                Ticket.id.in_(chunk) & Ticket.global_invoice.is_null(False)
            ).tuples():
                runs[run_id] = runs.get(run_id, 0) + 1
            Ticket.update(global_invoice=None).where(
                Ticket.id.in_(chunk) & Ticket.global_invoice.in_(
                    GlobalInvoice.select(GlobalInvoice.id).where(GlobalInvoice.state != RUN_STAMPED)
                )
            ).execute()
        for run_id, count in runs.items():
            GlobalInvoice.update(tickets=GlobalInvoice.tickets - count, updated_at=utcnow()).where(
                (GlobalInvoice.id == run_id) & (GlobalInvoice.state != RUN_STAMPED)
            ).execute()
            GlobalInvoice.update(state=RUN_VOID, retry_at=None).where(
                (GlobalInvoice.id == run_id) & (GlobalInvoice.tickets <= 0) & (GlobalInvoice.state != RUN_STAMPED)
            ).execute()
    return [None] * len(batch)


def _note(batch):
    for company, branch, pushed, polled, error, at in batch:
        SyncStatus.insert(company=company, branch=branch).on_conflict_ignore().execute()
        changes = {}
        if pushed is not None:
            changes["last_push_at"] = pushed
        if polled is not None:
            changes["last_poll_at"] = polled
        if error is not None:
            changes.update(last_error=error, last_error_at=at or utcnow())
        if changes:
            SyncStatus.update(**changes).where((SyncStatus.company == company) & (SyncStatus.branch == branch)).execute()
    return [None] * len(batch)

