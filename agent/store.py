"""The ticket store: every change to tickets and CFDIs, and the queries the contract needs.

Reads run on the caller's thread. Every write goes through the Writer, which groups
commits; a method that returns normally has its change on disk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Iterator, Sequence

from agent.insumo import Insumo
from agent.print_queue import insert_jobs
from agent.models import (
    CFDI_CANCELLED,
    CFDI_VALID,
    CUSTOMER_CFDI,
    EXPIRED,
    GLOBAL_CFDI,
    IN_GLOBAL,
    INVOICED,
    JOB_PENDING,
    STORED,
    Cfdi,
    PrintJob,
    Ticket,
    TicketCfdi,
    TicketEvent,
)
from agent.db import locked
from agent.writer import Conflict, Writer


def utcnow() -> datetime:
    """Naive UTC, the form every *_at column holds."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class NewTicket:
    company: str
    branch: str
    number: str
    sold_at: datetime  # branch local wall time
    total: Decimal
    insumo: Insumo
    body_hash: str
    # Which printer gets the slip: a name from the branch's `printers`, "" for the
    # branch's own printer, None when the branch does not print.
    printer: str | None = ""
    # Seconds the slip waits for the upstream's self-invoice link (a Facturapi company);
    # the push job lets it print as soon as the link arrives.
    print_delay: float = 0.0


@dataclass(frozen=True)
class NewCfdi:
    id: str
    company: str
    branch: str
    kind: str
    uuid: str
    issued_at: datetime
    receiver_rfc: str
    receiver_name: str
    subtotal: Decimal
    total: Decimal
    discount: Decimal = Decimal(0)
    iva: Decimal = Decimal(0)
    serie: str = ""
    folio: str = ""
    production: bool = False
    upstream_id: str | None = None  # its id at the upstream that issued it (Facturapi)


class TicketNotFound(LookupError):
    def __init__(self, company: str, branch: str, number: str):
        super().__init__(f"ticket {number} of branch {branch} does not exist")
        self.company, self.branch, self.number = company, branch, number


class TicketConflict(Exception):
    """The change is refused because of where the ticket is in its lifecycle."""

    def __init__(self, number: str, branch: str, status: str, synced: bool, cfdi_uuid: str | None, action: str):
        self.number, self.branch = number, branch
        self.status, self.synced, self.cfdi_uuid = status, synced, cfdi_uuid
        self.action = action  # "replace" | "expire" | "invoice"
        super().__init__(f"cannot {action} ticket {number} of branch {branch}: status {status}")

    @classmethod
    def of(cls, ticket: Ticket, action: str) -> "TicketConflict":
        uuid = ticket.cfdi.uuid if ticket.cfdi_id else None
        return cls(ticket.number, ticket.branch, ticket.status, ticket.synced_at is not None, uuid, action)


class CfdiNotFound(LookupError):
    pass


# Outcomes of put_ticket.
STORED_NEW, UNCHANGED, REPLACED = "stored", "unchanged", "replaced"


class Store:
    def __init__(self, db, writer: Writer, data_dir: Path):
        self.db = db
        self.writer = writer
        self.data_dir = data_dir

    # -- tickets ---------------------------------------------------------------------

    def put_ticket(self, ticket: NewTicket) -> str:
        """Store a ticket; a re-send of the same body is a no-op, a new body replaces it
        while nobody outside the store has seen it. Returns STORED_NEW, UNCHANGED or
        REPLACED; raises TicketConflict."""
        return self.writer.submit(_put_tickets, ticket)

    def expire_ticket(self, company: str, branch: str, number: str, reason: str) -> bool:
        """Close the ticket's self-invoicing window. True if it changed, False if it was
        already expired (or already in a global CFDI). Raises TicketNotFound or
        TicketConflict (already invoiced by the customer)."""
        return self.writer.submit(_expire_tickets, (company, branch, number, reason))

    def open_tickets(self, company: str) -> list[tuple[int, str, datetime]]:
        """(id, branch, sold_at) of the company's tickets still open for self-invoicing."""
        return list(
            Ticket.select(Ticket.id, Ticket.branch, Ticket.sold_at)
            .where((Ticket.company == company) & (Ticket.status == STORED))
            .tuples()
        )

    def expire_due(self, expiries: Sequence[tuple[int, str]]) -> int:
        """Expire tickets by id, each with its reason, in one commit; tickets that left
        ALMACENADO meanwhile (a customer invoiced one) are left alone. Returns how many."""
        return self.writer.submit(_expire_by_id, tuple(expiries)) if expiries else 0

    def ticket(self, company: str, branch: str, number: str) -> Ticket | None:
        return (
            Ticket.select()
            .where((Ticket.company == company) & (Ticket.branch == branch) & (Ticket.number == number))
            .first()
        )

    def tickets_numbered(self, company: str, number: str, branch: str | None = None) -> list[Ticket]:
        query = Ticket.select().where((Ticket.company == company) & (Ticket.number == number))
        if branch is not None:
            query = query.where(Ticket.branch == branch)
        return list(query)

    def events(self, ticket: Ticket) -> list[TicketEvent]:
        return list(TicketEvent.select().where(TicketEvent.ticket == ticket).order_by(TicketEvent.id))

    # -- CFDIs -----------------------------------------------------------------------

    def cfdi_rows(self, company: str, *, number: str | None = None, branch: str | None = None) -> Iterator[tuple]:
        """(ticket number, ticket branch, Cfdi) for every CFDI of the company's tickets,
        cancelled ones included, oldest first, the tickets of one CFDI together.

        Lazily and from raw rows: a company's history can be 100,000 rows, and a model
        instance per row would cost more than writing the row out; one Cfdi is built
        per CFDI and shared by its tickets."""
        fields = Cfdi._meta.sorted_fields
        query = (
            Ticket.select(Ticket.number, Ticket.branch, *fields)
            .join(TicketCfdi, on=(TicketCfdi.ticket == Ticket.id))
            .join(Cfdi, on=(TicketCfdi.cfdi == Cfdi.id))
            .where(Ticket.company == company)
            .order_by(Cfdi.created_at, Cfdi.id, Ticket.id)
        )
        if number is not None:
            query = query.where(Ticket.number == number)
        if branch is not None:
            query = query.where(Ticket.branch == branch)
        current = None
        for ticket_number, ticket_branch, *values in self.db.stream(*query.sql()):
            if current is None or values[0] != current.id:
                current = Cfdi(**{field.name: field.python_value(value) for field, value in zip(fields, values)})
            yield ticket_number, ticket_branch, current

    def cfdi(self, company: str, cfdi_id: str) -> Cfdi | None:
        return Cfdi.select().where((Cfdi.company == company) & (Cfdi.id == cfdi_id)).first()

    def cfdi_by_uuid(self, company: str, uuid: str) -> Cfdi | None:
        return Cfdi.select().where((Cfdi.company == company) & (Cfdi.uuid == uuid.upper())).first()

    def cfdi_file(self, cfdi: Cfdi, kind: str) -> Path | None:
        name = cfdi.xml_file if kind == "xml" else cfdi.pdf_file
        if not name:
            return None
        path = self.data_dir / name
        return path if path.is_file() else None

    def record_cfdi(
        self, cfdi: NewCfdi, ticket_ids: Sequence[int], *, xml: bytes, pdf: bytes | None = None
    ) -> Cfdi:
        """Keep a stamped CFDI and mark its tickets: FACTURADO for a customer's CFDI,
        GLOBAL for a global one. Refused (TicketConflict) if any ticket already has a
        valid CFDI: a sale ends up in exactly one."""
        files = self.cfdi_files(cfdi, xml, pdf)
        return self.writer.submit(_record_cfdis, (cfdi, tuple(ticket_ids), files))

    def cfdi_files(self, cfdi: NewCfdi, xml: bytes, pdf: bytes | None) -> tuple[str, str | None]:
        """Write a CFDI's XML and PDF to disk (before the row naming them is committed);
        their paths relative to the data directory."""
        folder = self.data_dir / "cfdi" / cfdi.company
        names = [_write_durably(folder / f"{cfdi.id}.xml", xml)]
        names.append(_write_durably(folder / f"{cfdi.id}.pdf", pdf) if pdf is not None else None)
        return tuple(str(n.relative_to(self.data_dir)) if n else None for n in names)

    def record_cancellation(
        self, cfdi_id: str, motive: str, substitute: str | None, cancelled_at: datetime
    ) -> Cfdi:
        """Mark a CFDI cancelled and give its tickets back to the flow so each ends up in
        a valid CFDI again: a customer's ticket may be self-invoiced again, a global
        CFDI's tickets wait, expired, for the next global. With a substitute CFDI already
        in the store, the tickets move to it instead."""
        return self.writer.submit(_record_cancellations, (cfdi_id, motive, substitute, cancelled_at))


# -- batch operations, run by the writer inside its transaction ------------------------


# Storing tickets is the hot path. A group is stored with one SELECT per branch and one
# multi-row INSERT, as SQL built once per size: building statements through the ORM per
# ticket cost more than the rest of the request, and every statement SQLite steps
# releases and re-takes the GIL, which under load means waiting for another thread.
_INSERTED = (
    "company", "branch", "number", "status", "created_at", "updated_at", "sold_at", "total", "subtotal",
    "discount", "taxes", "iva", "ieps", "payment_form", "environment", "insumo", "body_hash", "version",
)  # fmt: skip
_INSERT_FIELDS = [Ticket._meta.fields[name] for name in _INSERTED]
_TABLE = Ticket._meta.table_name


@lru_cache(maxsize=128)
def _insert_sql(rows: int, returning: bool, param: str) -> str:
    one = "(" + ", ".join(param for _ in _INSERT_FIELDS) + ")"
    columns = ", ".join(f'"{field.column_name}"' for field in _INSERT_FIELDS)
    # DO NOTHING: the same ticket inserted a moment ago by another agent process on the
    # same PostgreSQL database is not an error but a Conflict (fewer rows than sent),
    # and the group runs again, finding that ticket stored.
    sql = f'INSERT INTO "{_TABLE}" ({columns}) VALUES ' + ", ".join([one] * rows) + " ON CONFLICT DO NOTHING"
    # The new ids are only read back when slips must be queued for them: every row
    # returned is one more step of SQLite, and with it one more wait for the GIL.
    return sql + ' RETURNING "id", "company", "branch", "number"' if returning else sql


@lru_cache(maxsize=64)
def _lookup_sql(numbers: int, param: str, lock: bool) -> str:
    marks = ", ".join(param for _ in range(numbers))
    # Locked (PostgreSQL) until the commit: a replacement decided on what was read here
    # cannot race the receipt pusher marking the same ticket synced in another process.
    return (
        'SELECT "number", "id", "status", "synced_at", "body_hash", "total", "cfdi_id" '
        f'FROM "{_TABLE}" WHERE "company" = {param} AND "branch" = {param} AND "number" IN ({marks})'
        + (" FOR UPDATE" if lock else "")
    )


@dataclass
class _Current:
    id: int
    status: str
    synced: bool
    body_hash: str
    total: Decimal
    cfdi_id: str | None


def _existing(db, batch: Sequence[NewTicket]) -> dict[tuple, _Current]:
    numbers: dict[tuple[str, str], set[str]] = {}
    for item in batch:
        numbers.setdefault((item.company, item.branch), set()).add(item.number)
    found: dict[tuple, _Current] = {}
    for (company, branch), wanted in numbers.items():
        wanted = sorted(wanted)
        for chunk in (wanted[i : i + 500] for i in range(0, len(wanted), 500)):
            cursor = db.execute_sql(_lookup_sql(len(chunk), db.param, db.kind == "postgresql"), (company, branch, *chunk))
            for number, ticket_id, status, synced_at, body_hash, total, cfdi_id in cursor:
                found[(company, branch, number)] = _Current(
                    ticket_id, status, synced_at is not None, body_hash, Ticket.total.python_value(total), cfdi_id
                )
    return found


def _put_tickets(batch: Sequence[NewTicket]) -> list:
    db = Ticket._meta.database
    now = utcnow()
    existing = _existing(db, batch)
    results: list = []
    new_rows: dict[tuple, dict] = {}
    for item in batch:
        key = (item.company, item.branch, item.number)
        pending = new_rows.get(key)
        if pending is not None:  # the same new ticket twice in one group
            if pending["body_hash"] == item.body_hash:
                results.append(UNCHANGED)
            else:
                pending.update(_ticket_fields(item))
                results.append(REPLACED)
            continue
        current = existing.get(key)
        if current is None:
            new_rows[key] = {
                "company": item.company,
                "branch": item.branch,
                "number": item.number,
                "status": STORED,
                "created_at": now,
                "updated_at": now,
                "version": 1,
                **_ticket_fields(item),
            }
            results.append(STORED_NEW)
        elif current.body_hash == item.body_hash:
            results.append(UNCHANGED)
        elif current.status == STORED and not current.synced:
            (
                Ticket.update(**_ticket_fields(item), updated_at=now, version=Ticket.version + 1)
                .where(Ticket.id == current.id)
                .execute()
            )
            TicketEvent.create(
                ticket=current.id, at=now, kind="replaced", detail=f"monto {current.total:.2f} -> {item.total:.2f}"
            )
            current.body_hash, current.total = item.body_hash, item.total
            if item.printer is not None and not _has_pending_job(current.id):
                insert_jobs([(current.id, item.printer, "replaced", _print_at(item, now))], now)
            results.append(REPLACED)
        else:
            results.append(
                TicketConflict(item.number, item.branch, current.status, current.synced, _uuid_of(current.cfdi_id), "replace")
            )
    rows = list(new_rows.values())
    printers = {key: item for item in batch if (key := (item.company, item.branch, item.number)) in new_rows}
    jobs = []
    for chunk in (rows[i : i + 400] for i in range(0, len(rows), 400)):
        params = [field.db_value(row[field.name]) for row in chunk for field in _INSERT_FIELDS]
        printing = any(printers[(row["company"], row["branch"], row["number"])].printer is not None for row in chunk)
        cursor = db.execute_sql(_insert_sql(len(chunk), printing, db.param), params)
        inserted = 0
        for ticket_id, company, branch, number in cursor if printing else ():
            inserted += 1
            item = printers[(company, branch, number)]
            if item.printer is not None:
                jobs.append((ticket_id, item.printer, "sale", _print_at(item, now)))
        if (inserted if printing else cursor.rowcount) != len(chunk):
            raise Conflict("a ticket of this group was stored meanwhile by another agent process")
    insert_jobs(jobs, now)  # in the same transaction: a stored ticket always has its slip
    return results


def _print_at(item: NewTicket, now: datetime) -> datetime:
    return now + timedelta(seconds=item.print_delay) if item.print_delay else now


def _has_pending_job(ticket_id: int) -> bool:
    return PrintJob.select().where((PrintJob.ticket == ticket_id) & (PrintJob.state == JOB_PENDING)).exists()


def _uuid_of(cfdi_id: str | None) -> str | None:
    if cfdi_id is None:
        return None
    cfdi = Cfdi.get_or_none(Cfdi.id == cfdi_id)
    return cfdi.uuid if cfdi else None


def _ticket_fields(item: NewTicket) -> dict:
    insumo = item.insumo
    return {
        "sold_at": item.sold_at,
        "total": item.total,
        "subtotal": insumo.subtotal,
        "discount": insumo.discount,
        "taxes": insumo.transferred_taxes,
        "iva": insumo.iva,
        "ieps": insumo.ieps,
        "payment_form": insumo.payment_form,
        "environment": insumo.environment,
        "insumo": insumo.raw,
        "body_hash": item.body_hash,
    }


def _expire_tickets(batch: Sequence[tuple]) -> list:
    now = utcnow()
    results: list = []
    for company, branch, number, reason in batch:
        ticket = locked(
            Ticket.select().where((Ticket.company == company) & (Ticket.branch == branch) & (Ticket.number == number))
        ).first()
        if ticket is None:
            results.append(TicketNotFound(company, branch, number))
        elif ticket.status in (EXPIRED, IN_GLOBAL):
            results.append(False)
        elif ticket.status == INVOICED:
            results.append(TicketConflict.of(ticket, "expire"))
        else:
            Ticket.update(status=EXPIRED, expired_at=now, updated_at=now, version=Ticket.version + 1).where(
                Ticket.id == ticket.id
            ).execute()
            TicketEvent.create(ticket=ticket.id, at=now, kind="expired", detail=reason)
            results.append(True)
    return results


def _expire_by_id(batch: Sequence[tuple]) -> list:
    now = utcnow()
    results = []
    for expiries in batch:
        done = 0
        for ticket_id, reason in expiries:
            changed = (
                Ticket.update(status=EXPIRED, expired_at=now, updated_at=now, version=Ticket.version + 1)
                .where((Ticket.id == ticket_id) & (Ticket.status == STORED))
                .execute()
            )
            if changed:
                TicketEvent.create(ticket=ticket_id, at=now, kind="expired", detail=reason)
                done += 1
        results.append(done)
    return results


def _record_cfdis(batch: Sequence[tuple]) -> list:
    now = utcnow()
    results: list = []
    for cfdi, ticket_ids, (xml_file, pdf_file) in batch:
        ids = sorted(set(ticket_ids))
        columns = (Ticket.id, Ticket.company, Ticket.cfdi)
        tickets = [
            t
            for chunk in _chunks(ids)
            for t in locked(Ticket.select(*columns).where(Ticket.id.in_(chunk)).order_by(Ticket.id)).tuples()
        ]
        if len(tickets) != len(ids) or any(company != cfdi.company for _, company, _ in tickets):
            results.append(ValueError("a CFDI must cover existing tickets of its own company"))
            continue
        taken = next((ticket_id for ticket_id, _, cfdi_id in tickets if cfdi_id is not None), None)
        if taken is not None:
            results.append(TicketConflict.of(Ticket.get_by_id(taken), "invoice"))
            continue
        row = Cfdi.create(**cfdi.__dict__, status=CFDI_VALID, xml_file=xml_file, pdf_file=pdf_file, created_at=now)
        status = INVOICED if cfdi.kind == CUSTOMER_CFDI else IN_GLOBAL
        event = f"{cfdi.kind} {cfdi.uuid}"
        for chunk in _chunks(ids):
            Ticket.update(cfdi=row.id, status=status, updated_at=now, version=Ticket.version + 1).where(
                Ticket.id.in_(chunk)
            ).execute()
            TicketCfdi.insert_many([(tid, row.id) for tid in chunk], fields=[TicketCfdi.ticket, TicketCfdi.cfdi]).execute()
            TicketEvent.insert_many(
                [(tid, now, "cfdi", event) for tid in chunk],
                fields=[TicketEvent.ticket, TicketEvent.at, TicketEvent.kind, TicketEvent.detail],
            ).execute()
        results.append(row)
    return results


def _chunks(values: Sequence, size: int = 500):
    """Slices small enough for SQLite's limit on bound variables per statement."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _record_cancellations(batch: Sequence[tuple]) -> list:
    now = utcnow()
    results: list = []
    for cfdi_id, motive, substitute, cancelled_at in batch:
        cfdi = locked(Cfdi.select().where(Cfdi.id == cfdi_id)).first()
        if cfdi is None:
            results.append(CfdiNotFound(cfdi_id))
            continue
        if cfdi.status == CFDI_CANCELLED:
            results.append(cfdi)
            continue
        Cfdi.update(
            status=CFDI_CANCELLED, cancelled_at=cancelled_at, cancel_motive=motive, cancel_substitute=substitute
        ).where(Cfdi.id == cfdi_id).execute()
        replacement = (
            Cfdi.get_or_none((Cfdi.uuid == substitute.upper()) & (Cfdi.status == CFDI_VALID)) if substitute else None
        )
        ticket_ids = [t.id for t in Ticket.select(Ticket.id).where(Ticket.cfdi == cfdi_id)]
        if replacement is not None:
            changes = dict(cfdi=replacement.id, status=INVOICED if replacement.kind == CUSTOMER_CFDI else IN_GLOBAL)
            detail = f"CFDI {cfdi.uuid} cancelled (motive {motive}), replaced by {replacement.uuid}"
        else:
            # Unreserved too: the next global run of their period takes them again.
            changes = dict(cfdi=None, global_invoice=None, status=STORED if cfdi.kind == CUSTOMER_CFDI else EXPIRED)
            detail = f"CFDI {cfdi.uuid} cancelled (motive {motive}); ticket back to {changes['status']}"
        for chunk in _chunks(ticket_ids):
            Ticket.update(**changes, updated_at=now, version=Ticket.version + 1).where(Ticket.id.in_(chunk)).execute()
            if replacement is not None:
                TicketCfdi.insert_many(
                    [(tid, replacement.id) for tid in chunk], fields=[TicketCfdi.ticket, TicketCfdi.cfdi]
                ).on_conflict_ignore().execute()
            TicketEvent.insert_many(
                [(tid, now, "cfdi_cancelled", detail) for tid in chunk],
                fields=[TicketEvent.ticket, TicketEvent.at, TicketEvent.kind, TicketEvent.detail],
            ).execute()
        results.append(Cfdi.get_by_id(cfdi_id))
    return results


def _write_durably(path: Path, content: bytes) -> Path:
    """Write a file so that it is on disk before the row that names it is committed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


__all__ = [
    "CFDI_CANCELLED",
    "CFDI_VALID",
    "CUSTOMER_CFDI",
    "GLOBAL_CFDI",
    "NewCfdi",
    "NewTicket",
    "Store",
    "TicketConflict",
    "TicketNotFound",
    "CfdiNotFound",
    "STORED_NEW",
    "UNCHANGED",
    "REPLACED",
]
