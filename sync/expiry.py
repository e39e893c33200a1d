"""Expiry: a ticket whose self-invoicing window closed can no longer be self-invoiced
and waits for its period's global CFDI. A plain function; the scheduler calls it."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from agent.periods import self_invoice_deadline

log = logging.getLogger(__name__)


def expire_overdue(store, config, now: datetime | None = None) -> int:
    """Expire every ticket whose deadline day is over in its branch's time zone.
    `now` is aware (defaults to the current time). Returns how many were expired."""
    now = now or datetime.now(timezone.utc)
    total = 0
    for company in config.companies:
        zones = {branch.id: branch.zone for branch in company.branches}
        due = []
        for ticket_id, branch, sold_at in store.open_tickets(company.key):
            if branch not in zones:
                continue  # the branch left the configuration: nothing decides its window
            deadline = self_invoice_deadline(sold_at, company.periodicity, company.self_invoice_days)
            if now.astimezone(zones[branch]).date() > deadline:
                due.append((ticket_id, f"self-invoicing window closed on {deadline:%Y-%m-%d}"))
        total += store.expire_due(due)
    if total:
        log.info("expired %d tickets whose self-invoicing window closed", total)
    return total
