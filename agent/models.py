"""The tables of the local store.

Tickets are the source of truth: rows are never deleted, only moved through their
lifecycle (ALMACENADO -> FACTURADO | EXPIRADO -> GLOBAL) with an event per change.
"""
from __future__ import annotations

from decimal import Decimal

from peewee import (
    AutoField,
    BigIntegerField,
    BooleanField,
    CompositeKey,
    CharField,
    DatabaseProxy,
    DateField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

database = DatabaseProxy()

# Ticket statuses, as the contract and the domain name them.
STORED = "ALMACENADO"
INVOICED = "FACTURADO"
EXPIRED = "EXPIRADO"
IN_GLOBAL = "GLOBAL"

# CFDI statuses reported by GET /cfdis. The contract's example reports a stamped,
# kept CFDI as ALMACENADO; a cancelled one is CANCELADO.
CFDI_VALID = "ALMACENADO"
CFDI_CANCELLED = "CANCELADO"

CUSTOMER_CFDI = "customer"
GLOBAL_CFDI = "global"

_MICRO = Decimal(1_000_000)


class MoneyField(BigIntegerField):
    """A Decimal kept as an integer count of millionths of a peso.

    SQLite's NUMERIC affinity would turn "453.000000" into a float; integers keep every
    amount exact (CFDI Concepto amounts carry up to 6 decimals) and let the database sum
    them exactly on any backend.
    """

    def db_value(self, value):
        if value is None:
            return None
        scaled = Decimal(value) * _MICRO
        if scaled != scaled.to_integral_value():
            raise ValueError(f"more than 6 decimals: {value}")
        return int(scaled)

    def python_value(self, value):
        if value is None:
            return None
        return Decimal(int(value)).scaleb(-6)


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class Cfdi(BaseModel):
    """A stamped CFDI that covers one ticket (a customer's) or many (a global one)."""

    id = CharField(primary_key=True, max_length=32)  # "idCfd" in the contract
    company = CharField()
    branch = CharField()
    kind = CharField(default=CUSTOMER_CFDI)
    uuid = CharField(unique=True)
    serie = CharField(default="")
    folio = CharField(default="")
    issued_at = DateTimeField()  # the CFDI's Fecha, branch local time
    receiver_rfc = CharField()
    receiver_name = TextField()  # SAT allows 300 characters; a CharField is 255 on PostgreSQL
    subtotal = MoneyField()
    discount = MoneyField(default=0)
    total = MoneyField()
    iva = MoneyField(default=0)
    currency = CharField(default="MXN")
    production = BooleanField(default=False)
    status = CharField(default=CFDI_VALID)
    cancelled_at = DateTimeField(null=True)
    cancel_motive = CharField(null=True)
    cancel_substitute = CharField(null=True)
    # Paths relative to the data directory.
    xml_file = CharField(null=True)
    pdf_file = CharField(null=True)
    created_at = DateTimeField()
    # The invoice's id at the upstream that issued it (Facturapi), to cancel it there.
    upstream_id = CharField(null=True)

    class Meta:
        indexes = ((("company", "branch"), False),)


class Ticket(BaseModel):
    id = AutoField()
    company = CharField()  # the company key of the URL
    branch = CharField()  # the contract's "sucursal"
    number = CharField()  # "numeroTicket"
    sold_at = DateTimeField()  # "fecha": branch local wall time, no zone
    total = MoneyField()  # "monto"
    subtotal = MoneyField()
    discount = MoneyField()
    taxes = MoneyField()  # transferred taxes at currency precision
    iva = MoneyField()
    ieps = MoneyField()
    payment_form = CharField(max_length=2)
    environment = CharField(max_length=4)  # QA | PROD, from the insumo
    insumo = TextField()
    body_hash = CharField(max_length=64)  # what makes a re-send "identical"
    status = CharField(default=STORED)
    cfdi = ForeignKeyField(Cfdi, null=True, backref="tickets", on_delete="RESTRICT")
    # Set once the upstream has the ticket: from then on it can no longer be replaced.
    synced_at = DateTimeField(null=True)
    expired_at = DateTimeField(null=True)
    # The global invoice run that reserved this ticket (GlobalInvoice.id): set in the same
    # transaction that creates the run, so no ticket goes into two global CFDIs.
    global_invoice = IntegerField(null=True, index=True)
    created_at = DateTimeField()
    updated_at = DateTimeField()
    version = IntegerField(default=1)

    class Meta:
        indexes = (
            (("company", "branch", "number"), True),
            (("company", "status"), False),
            (("cfdi",), False),
        )


class TicketEvent(BaseModel):
    """The audit trail of a ticket: what happened, when (UTC) and why."""

    id = AutoField()
    ticket = ForeignKeyField(Ticket, backref="events", on_delete="RESTRICT")
    at = DateTimeField()
    kind = CharField()
    detail = TextField(default="")

    class Meta:
        indexes = ((("ticket", "at"), False),)


class TicketCfdi(BaseModel):
    """Every CFDI a ticket has been in, cancelled ones included (GET /cfdis lists them).

    Ticket.cfdi points at the one valid CFDI; this table keeps the history.
    """

    ticket = ForeignKeyField(Ticket, on_delete="RESTRICT")
    cfdi = ForeignKeyField(Cfdi, on_delete="RESTRICT")

    class Meta:
        primary_key = CompositeKey("ticket", "cfdi")
        indexes = ((("cfdi",), False),)


# Global invoice run states: RESERVED (tickets and folio taken), STAMPED (its CFDI is
# recorded), FAILED (will be retried after retry_at; its tickets stay reserved),
# WAITING (the upstream accepted it and is still stamping: polled, never re-sent), VOID
# (every ticket of it was invoiced by a customer in the cloud first; its folio is unused).
RUN_RESERVED = "reserved"
RUN_STAMPED = "stamped"
RUN_FAILED = "failed"
RUN_WAITING = "waiting"
RUN_VOID = "void"


class GlobalInvoice(BaseModel):
    """One global CFDI of a company's branch and period (a period may need several parts)."""

    id = AutoField()
    company = CharField()
    branch = CharField()
    periodicity = CharField()
    period_first = DateField()
    period_last = DateField()
    part = IntegerField()
    series = CharField()
    folio = IntegerField()
    state = CharField(default=RUN_RESERVED)
    tickets = IntegerField()
    total = MoneyField(null=True)
    cfdi = CharField(null=True)  # Cfdi.id once stamped
    attempts = IntegerField(default=0)
    last_error = TextField(null=True)
    retry_at = DateTimeField(null=True)
    created_at = DateTimeField()
    updated_at = DateTimeField()
    # The upstream's invoice id once it accepted the run (Facturapi), to poll it.
    upstream_id = CharField(null=True)

    class Meta:
        indexes = (
            (("company", "branch", "periodicity", "period_first", "part"), True),
            (("company", "series", "folio"), True),
            (("state",), False),
        )


# Print job states. A job is claimed (PRINTING) before its bytes leave for the printer and
# is PRINTED once they were accepted. Of the jobs found PRINTING at start-up, the first
# of each printer may have been under way and becomes FAILED rather than risk a second
# slip; the rest never left and are due again (see docs/printing.md).
JOB_PENDING = "pending"
JOB_PRINTING = "printing"
JOB_PRINTED = "printed"
JOB_FAILED = "failed"


class PrintJob(BaseModel):
    """One slip to print for a ticket: at the sale, after a replacement, or on request."""

    id = AutoField()
    ticket = ForeignKeyField(Ticket, backref="print_jobs", on_delete="RESTRICT")
    printer = CharField(default="")  # a name from the branch's `printers`; "" = `printer`
    reason = CharField(default="sale")  # sale | replaced | reprint
    state = CharField(default=JOB_PENDING)
    attempts = IntegerField(default=0)
    last_error = TextField(null=True)
    next_attempt_at = DateTimeField()  # UTC
    created_at = DateTimeField()
    printed_at = DateTimeField(null=True)
    # The agent process that claimed it (service.instance): after a crash only that
    # process's claims are in doubt, not those of the others on the same database.
    claimed_by = CharField(null=True, max_length=64)

    class Meta:
        indexes = ((("state", "next_attempt_at"), False), (("ticket",), False))


# Receipt push states (docs/sync.md). A ticket gets its Receipt row when the push job
# claims it, in the same transaction that marks the ticket synced: from then on the
# upstream may have it, so it can no longer be replaced.
PUSH_PENDING = "pending"  # claimed: being sent, or waiting for its retry
PUSH_SYNCED = "synced"  # the upstream has it; its id and self-invoice URL are kept
PUSH_STOPPED = "stopped"  # refused for good, or the upstream's total disagrees: a person must look


class Receipt(BaseModel):
    """A ticket as a receipt at the upstream (Facturapi): the outbox row and its answer."""

    ticket = ForeignKeyField(Ticket, primary_key=True, backref="receipt", on_delete="RESTRICT")
    company = CharField()
    branch = CharField()
    idempotency_key = CharField(unique=True)
    state = CharField(default=PUSH_PENDING)
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField()  # UTC
    last_error = TextField(null=True)
    upstream_id = CharField(null=True, unique=True)  # the receipt's id
    key = CharField(null=True)
    self_invoice_url = TextField(null=True)
    expires_at = DateTimeField(null=True)  # UTC
    upstream_status = CharField(null=True)  # open | canceled | invoiced_to_customer | invoiced_globally
    upstream_total = MoneyField(null=True)
    invoice_id = CharField(null=True)  # the upstream invoice that covers it, once invoiced
    synced_at = DateTimeField(null=True)
    checked_at = DateTimeField(null=True)  # last time a poll saw it
    created_at = DateTimeField()
    updated_at = DateTimeField()

    class Meta:
        indexes = ((("state", "next_attempt_at"), False), (("company", "upstream_status"), False))


class SyncStatus(BaseModel):
    """Per company and branch: when the sync last worked, and its last error."""

    company = CharField()
    branch = CharField()
    last_push_at = DateTimeField(null=True)
    last_poll_at = DateTimeField(null=True)
    last_error = TextField(null=True)
    last_error_at = DateTimeField(null=True)

    class Meta:
        primary_key = CompositeKey("company", "branch")


class SchemaVersion(BaseModel):
    version = IntegerField()

    class Meta:
        table_name = "schema_version"


ALL_TABLES = [Cfdi, Ticket, TicketEvent, TicketCfdi, PrintJob, GlobalInvoice, Receipt, SyncStatus]
