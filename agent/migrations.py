"""Schema migrations, applied in order by agent.db.migrate.

A step is a function of the open database. Steps are append-only: once released, a step
never changes, because stores in the field have already run it. New columns or tables
come as new steps.
"""
from __future__ import annotations

from agent.models import Cfdi, Ticket, TicketCfdi, TicketEvent


def initial_schema(db):
    db.create_tables([Cfdi, Ticket, TicketEvent, TicketCfdi])


STEPS = [
    initial_schema,
]
