"""The expiry sweep: tickets expire when their deadline day is over where they were sold."""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from helpers import AUTH_B, BRANCH_A, BRANCH_B, KEY_A, KEY_B, put_json, ticket_body
from helpers_cfdi import attach_customer_cfdi

from sync.expiry import expire_overdue

MEXICO = ZoneInfo("America/Mexico_City")


def at(text: str, zone=MEXICO) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


def test_a_daily_ticket_expires_at_local_midnight(client, store, config):
    # Company A: daily periodicity, so the deadline is the sale day itself.
    put_json(client, f"/{KEY_A}/tickets", ticket_body("E1", fecha="2026-11-20T23:30:00"))
    assert expire_overdue(store, config, at("2026-11-20T23:59:59")) == 0
    # 06:00 UTC on the 21st is midnight in Mexico City: a UTC clock would have expired it
    # at 18:00 local on the 20th, in the middle of the customer's window.
    assert expire_overdue(store, config, datetime(2026, 11, 21, 5, 59, tzinfo=timezone.utc)) == 0
    assert expire_overdue(store, config, at("2026-11-21T00:00:00")) == 1
    ticket = store.ticket(KEY_A, BRANCH_A, "E1")
    assert ticket.status == "EXPIRADO"
    [event] = store.events(ticket)
    assert (event.kind, event.detail) == ("expired", "self-invoicing window closed on 2026-11-20")


def test_the_window_ends_before_the_month_when_shorter(client, store, config):
    # Company B: monthly, 3 days, America/Cancun (UTC-5 all year).
    cancun = ZoneInfo("America/Cancun")
    put_json(client, f"/{KEY_B}/tickets", ticket_body("M1", branch=BRANCH_B, fecha="2026-11-10T12:00:00"), AUTH_B)
    put_json(client, f"/{KEY_B}/tickets", ticket_body("M2", branch=BRANCH_B, fecha="2026-11-29T12:00:00"), AUTH_B)
    assert expire_overdue(store, config, at("2026-11-13T23:59:00", cancun)) == 0
    assert expire_overdue(store, config, at("2026-11-14T00:00:00", cancun)) == 1  # M1: 10 + 3 days
    assert expire_overdue(store, config, at("2026-12-01T00:00:00", cancun)) == 1  # M2: the month ended
    assert {store.ticket(KEY_B, BRANCH_B, n).status for n in ("M1", "M2")} == {"EXPIRADO"}


def test_invoiced_and_already_expired_tickets_are_left_alone(client, store, config):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("E2", fecha="2026-11-20T10:00:00"))
    put_json(client, f"/{KEY_A}/tickets", ticket_body("E3", fecha="2026-11-20T10:00:00"))
    attach_customer_cfdi(store, "E2")
    store.expire_ticket(KEY_A, BRANCH_A, "E3", "expired by the POS (PUT /expired)")
    assert expire_overdue(store, config, at("2026-11-22T00:00:00")) == 0
    assert store.ticket(KEY_A, BRANCH_A, "E2").status == "FACTURADO"
    assert [e.detail for e in store.events(store.ticket(KEY_A, BRANCH_A, "E3"))] == [
        "expired by the POS (PUT /expired)"
    ]


def test_running_twice_expires_nothing_more(client, store, config):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("E4", fecha="2026-11-20T10:00:00"))
    assert expire_overdue(store, config, at("2026-11-22T00:00:00")) == 1
    assert expire_overdue(store, config, at("2026-11-22T00:00:00")) == 0
    assert len(store.events(store.ticket(KEY_A, BRANCH_A, "E4"))) == 1
