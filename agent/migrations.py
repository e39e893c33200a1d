"""Schema migrations, applied in order by agent.db.migrate.

A step is a function of the open database. Steps are append-only: once released, a step
never changes, because stores in the field have already run it. New columns or tables
come as new steps. A step that creates a table from its model creates it as the model is
now; a later step that adds a column to that model must therefore skip it when present.
"""
from __future__ import annotations

from agent.models import Cfdi, PrintJob, Ticket, TicketCfdi, TicketEvent


def initial_schema(db):
    db.create_tables([Cfdi, Ticket, TicketEvent, TicketCfdi])


def print_queue(db):
    db.create_tables([PrintJob])


STEPS = [
    initial_schema,
    print_queue,
]
