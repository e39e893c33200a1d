"""Schema migrations, applied in order by agent.db.migrate.

A step is a function of the open database. Steps are append-only: once released, a step
never changes, because stores in the field have already run it. New columns or tables
come as new steps. A step that creates a table from its model creates it as the model is
now; a later step that adds a column to that model must therefore skip it when present.
"""
from __future__ import annotations

from playhouse.migrate import SchemaMigrator, migrate

from agent.models import Cfdi, GlobalInvoice, PrintJob, Receipt, SyncStatus, Ticket, TicketCfdi, TicketEvent


def initial_schema(db):
    db.create_tables([Cfdi, Ticket, TicketEvent, TicketCfdi])


def print_queue(db):
    db.create_tables([PrintJob])


def global_invoices(db):
    db.create_tables([GlobalInvoice])
    columns = {column.name for column in db.get_columns(Ticket._meta.table_name)}
    if "global_invoice_id" not in columns and "global_invoice" not in columns:
        field = Ticket._meta.fields["global_invoice"]
        migrate(SchemaMigrator.from_database(db).add_column(Ticket._meta.table_name, field.column_name, field))
    db.execute_sql('CREATE INDEX IF NOT EXISTS "ticket_global_invoice" ON "ticket" ("global_invoice")')


def _add_column_if_missing(db, model, name):
    field = model._meta.fields[name]
    columns = {column.name for column in db.get_columns(model._meta.table_name)}
    if field.column_name not in columns:
        migrate(SchemaMigrator.from_database(db).add_column(model._meta.table_name, field.column_name, field))


def upstream_sync(db):
    db.create_tables([Receipt, SyncStatus])
    _add_column_if_missing(db, Cfdi, "upstream_id")
    _add_column_if_missing(db, GlobalInvoice, "upstream_id")
    # The outbox: tickets the upstream has not seen yet, per company and branch, for the
    # push job and the backlog counts. Partial: for a Facturapi company it holds only the
    # tickets in flight, not its whole history (a sandbox company's tickets are never
    # synced, so they all stay in it; one small index entry per ticket).
    db.execute_sql('CREATE INDEX IF NOT EXISTS "ticket_unsynced" ON "ticket" ("company", "branch") WHERE "synced_at" IS NULL')


def shared_database(db):
    """What several agent processes on one PostgreSQL database need: who claimed a print
    job, and room for the longest name SAT allows (SQLite never enforced a length)."""
    _add_column_if_missing(db, PrintJob, "claimed_by")
    if db.kind == "postgresql":
        db.execute_sql('ALTER TABLE "cfdi" ALTER COLUMN "receiver_name" TYPE TEXT')


STEPS = [
    initial_schema,
    print_queue,
    global_invoices,
    upstream_sync,
    shared_database,
]
