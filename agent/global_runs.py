"""The store side of the factura global: runs, their tickets, their folios.

A run is one global CFDI for a company's branch and period. Creating it reserves its
tickets (ticket.global_invoice) and its folio in one transaction, so however often the
job runs, and wherever the agent is killed, a ticket is in at most one run, and a run
becomes at most one recorded CFDI. See docs/global-invoice.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Sequence

from peewee import fn

from agent.db import locked
from agent.models import (
    EXPIRED,
    RUN_FAILED,
    RUN_RESERVED,
    RUN_STAMPED,
    RUN_WAITING,
    GlobalInvoice,
    Ticket,
)
from agent.store import NewCfdi, Store, _chunks, _record_cfdis, utcnow
from agent.writer import Writer


@dataclass(frozen=True)
class RunTicket:
    id: int
    number: str
    insumo: str
    total: Decimal
    subtotal: Decimal
    payment_form: str


class GlobalRuns:
    def __init__(self, writer: Writer, store: Store):
        self.writer = writer
        self.store = store

    def candidates(self, company: str, branch: str, first: date, last: date) -> list[RunTicket]:
        """Expired tickets of the period with no CFDI and no run yet, oldest first.

        A ticket of $0 is left out of the global CFDI (SAT's rule), and stays as it is."""
        return _candidates(company, branch, first, last)

    def waiting_days(self, company: str, branch: str) -> set[date]:
        """Local dates of the branch's tickets that wait for a global CFDI."""
        query = Ticket.select(Ticket.sold_at).where(
            (Ticket.company == company)
            & (Ticket.branch == branch)
            & (Ticket.status == EXPIRED)
            & Ticket.cfdi.is_null()
            & Ticket.global_invoice.is_null()
            & (Ticket.subtotal > 0)
        )
        return {sold_at.date() for (sold_at,) in query.tuples()}

    def reserve(
        self, company: str, branch: str, periodicity: str, first: date, last: date, series: str, parts: Sequence[Sequence[int]]
    ) -> list[GlobalInvoice]:
        """Create one run per part with the next folios of the series, reserving each
        part's tickets. Tickets taken meanwhile by another run or a customer's CFDI are
        left out; an empty part creates nothing."""
        return self.writer.submit(_reserve, (company, branch, periodicity, first, last, series, parts))

    def to_stamp(self, now: datetime, company: str | None = None) -> list[GlobalInvoice]:
        query = GlobalInvoice.select().where(
            (GlobalInvoice.state == RUN_RESERVED)
            | (GlobalInvoice.state.in_([RUN_FAILED, RUN_WAITING]) & (GlobalInvoice.retry_at <= now))
        )
        if company is not None:
            query = query.where(GlobalInvoice.company == company)
        return list(query.order_by(GlobalInvoice.id))

    def tickets_of(self, run_id: int) -> list[RunTicket]:
        rows = (
            Ticket.select(Ticket.id, Ticket.number, Ticket.insumo, Ticket.total, Ticket.subtotal, Ticket.payment_form)
            .where(Ticket.global_invoice == run_id)
            .order_by(Ticket.sold_at, Ticket.id)
            .tuples()
        )
        return [RunTicket(*row) for row in rows]

    def record(self, run_id: int, cfdi: NewCfdi, *, xml: bytes, pdf: bytes | None) -> GlobalInvoice:
        """Keep the stamped CFDI, move the run's tickets to GLOBAL and close the run, in
        one transaction."""
        files = self.store.cfdi_files(cfdi, xml, pdf)
        return self.writer.submit(_record, (run_id, cfdi, files))

    def failed(self, run_id: int, error: str, retry_at: datetime | None) -> None:
        self.writer.submit(_failed, (run_id, error, retry_at))

    def waiting(self, run_id: int, upstream_id: str | None, retry_at: datetime, note: str | None = None) -> None:
        """The upstream accepted the run and is still stamping it: poll it at retry_at,
        never send it again. `upstream_id` None forgets an invoice that failed there."""
        self.writer.submit(_waiting, (run_id, upstream_id, retry_at, note))

    def runs(self, company: str, branch: str | None = None) -> list[GlobalInvoice]:
        query = GlobalInvoice.select().where(GlobalInvoice.company == company)
        if branch is not None:
            query = query.where(GlobalInvoice.branch == branch)
        return list(query.order_by(GlobalInvoice.period_first, GlobalInvoice.part))


def _candidates(company: str, branch: str, first: date, last: date) -> list[RunTicket]:
    start = datetime.combine(first, datetime.min.time())
    end = datetime.combine(last, datetime.max.time())
    rows = (
        Ticket.select(Ticket.id, Ticket.number, Ticket.insumo, Ticket.total, Ticket.subtotal, Ticket.payment_form)
        .where(
            (Ticket.company == company)
            & (Ticket.branch == branch)
            & (Ticket.status == EXPIRED)
            & (Ticket.cfdi.is_null())
            & (Ticket.global_invoice.is_null())
            & (Ticket.sold_at >= start)
            & (Ticket.sold_at <= end)
            & (Ticket.subtotal > 0)
        )
        .order_by(Ticket.sold_at, Ticket.id)
        .tuples()
    )
    return [RunTicket(*row) for row in rows]


def _reserve(batch):
    results = []
    for company, branch, periodicity, first, last, series, parts in batch:
        now = utcnow()
        existing = (
            GlobalInvoice.select(fn.MAX(GlobalInvoice.part))
            .where(
                (GlobalInvoice.company == company)
                & (GlobalInvoice.branch == branch)
                & (GlobalInvoice.periodicity == periodicity)
                & (GlobalInvoice.period_first == first)
            )
            .scalar()
            or 0
        )
        folio = (
            GlobalInvoice.select(fn.MAX(GlobalInvoice.folio))
            .where((GlobalInvoice.company == company) & (GlobalInvoice.series == series))
            .scalar()
            or 0
        )
        runs = []
        for ticket_ids in parts:
            free = [
                t.id
                for chunk in _chunks(sorted(ticket_ids))
                for t in locked(
                    Ticket.select(Ticket.id)
                    .where(
                        Ticket.id.in_(chunk)
                        & (Ticket.status == EXPIRED)
                        & Ticket.cfdi.is_null()
                        & Ticket.global_invoice.is_null()
                    )
                    .order_by(Ticket.id)
                )
            ]
            if not free:
                continue
            existing += 1
            folio += 1
            run = GlobalInvoice.create(
                company=company, branch=branch, periodicity=periodicity, period_first=first,
                period_last=last, part=existing, series=series, folio=folio, state=RUN_RESERVED,
                tickets=len(free), created_at=now, updated_at=now,
            )  # fmt: skip
            for chunk in _chunks(free):
                Ticket.update(global_invoice=run.id).where(Ticket.id.in_(chunk)).execute()
            runs.append(run)
        results.append(runs)
    return results


def _record(batch):
    results = []
    for run_id, cfdi, files in batch:
        run = locked(GlobalInvoice.select().where(GlobalInvoice.id == run_id)).get()
        if run.state == RUN_STAMPED:  # recorded already: a second run of the job
            results.append(run)
            continue
        ids = [t.id for t in Ticket.select(Ticket.id).where(Ticket.global_invoice == run_id)]
        [recorded] = _record_cfdis([(cfdi, ids, files)])
        if isinstance(recorded, Exception):
            results.append(recorded)
            continue
        now = utcnow()
        GlobalInvoice.update(state=RUN_STAMPED, cfdi=recorded.id, total=cfdi.total, last_error=None,
                             retry_at=None, updated_at=now).where(GlobalInvoice.id == run_id).execute()
        results.append(GlobalInvoice.get_by_id(run_id))
    return results


def _waiting(batch):
    for run_id, upstream_id, retry_at, note in batch:
        GlobalInvoice.update(
            state=RUN_WAITING, upstream_id=upstream_id, retry_at=retry_at, last_error=note, updated_at=utcnow()
        ).where((GlobalInvoice.id == run_id) & (GlobalInvoice.state != RUN_STAMPED)).execute()
    return [None] * len(batch)


def _failed(batch):
    for run_id, error, retry_at in batch:
        GlobalInvoice.update(
            state=RUN_FAILED, last_error=error, retry_at=retry_at, attempts=GlobalInvoice.attempts + 1, updated_at=utcnow()
        ).where((GlobalInvoice.id == run_id) & (GlobalInvoice.state != RUN_STAMPED)).execute()
    return [None] * len(batch)
