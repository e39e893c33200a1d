"""Up: every stored ticket of a Facturapi company becomes exactly one receipt, through
outages, lost answers and rate limits, and the POS never waits for it."""
from __future__ import annotations

import pytest

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from helpers import AUTH_A, AUTH_B, BRANCH_A, FACTURAPI_KEY_A, KEY_A, KEY_B, insumo_for, put_json, ticket_body

from agent.models import PUSH_PENDING, PUSH_STOPPED, PUSH_SYNCED, Receipt, Ticket
from agent.receipts import idempotency_key

pytestmark = pytest.mark.both_databases  # tests/postgres.py


def put(client, number, total="116.00", key=KEY_A, auth=AUTH_A, **extra):
    response = put_json(client, f"/{key}/tickets", ticket_body(number, total, **extra), AUTH_A if key == KEY_A else auth)
    assert response.status_code == 200, response.get_data(as_text=True)


def receipts_of(fake):
    return list(fake.organization(FACTURAPI_KEY_A).receipts.values())


def test_a_stored_ticket_becomes_a_receipt_with_its_items_and_taxes(cloud):
    client = cloud.app.test_client()
    put(client, "T-1", "116.00")
    result = cloud.pusher.run_once()
    assert result.pushed == 1
    [receipt] = receipts_of(cloud.fake)
    assert receipt["external_id"] == "T-1"
    assert receipt["branch"] == "Centro"
    assert receipt["payment_form"] == "01"
    assert receipt["idempotency_key"] == idempotency_key(KEY_A, BRANCH_A, "T-1")
    assert KEY_A not in receipt["idempotency_key"]  # the POS URL secret stays home
    assert Decimal(str(receipt["total"])) == Decimal("116.00")
    [item] = receipt["items"]
    assert item["product"]["product_key"] == "01010101" and item["product"]["tax_included"] is True
    assert [(t["type"], Decimal(str(t["rate"]))) for t in item["product"]["taxes"]] == [("IVA", Decimal("0.16"))]
    # the sale's local time, with the branch's offset, is the receipt's date
    assert receipt["date"].startswith("2026-11-20T17:09:46")  # 11:09:46 in Mexico City is 17:09:46 UTC
    row = Receipt.get_by_id(cloud.agent.store.ticket(KEY_A, BRANCH_A, "T-1").id)
    assert (row.state, row.upstream_id, row.key) == (PUSH_SYNCED, receipt["id"], receipt["key"])
    assert row.self_invoice_url == receipt["self_invoice_url"]
    assert row.expires_at is not None


def test_a_sandbox_company_sends_nothing(cloud):
    put(cloud.app.test_client(), "B-1", key=KEY_B, auth=AUTH_B, branch="sucursal-b-1")
    assert cloud.pusher.run_once().pushed == 0
    assert cloud.fake.requests == []
    assert Ticket.get(Ticket.number == "B-1").synced_at is None


def test_a_thousand_tickets_stored_while_facturapi_is_down_reach_it_exactly_once(cloud):
    client = cloud.app.test_client()
    cloud.fake.down()
    for i in range(1000):
        put(client, f"D-{i}", "58.00")
    result = cloud.pusher.run_once()
    assert result.pushed == 0 and result.retrying > 0
    # the circuit opened: this round stopped asking long before trying all of them
    assert len(cloud.fake.requests) == 0
    assert cloud.pusher.circuits[KEY_A].open_until is not None
    cloud.fake.up()
    later = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(hours=1)
    cloud.pusher.clock = lambda: later  # past every backoff and the circuit's cool-down
    rounds = 0
    while Receipt.select().where(Receipt.state != PUSH_SYNCED).exists() or cloud.agent.receipts.has_unsent([KEY_A]):
        cloud.pusher.run_once()
        rounds += 1
        assert rounds < 20
    counts = cloud.fake.receipts_by_idempotency_key(FACTURAPI_KEY_A)
    assert len(counts) == 1000 and set(counts.values()) == {1}
    assert {idempotency_key(KEY_A, BRANCH_A, f"D-{i}") for i in range(1000)} == set(counts)


def test_a_lost_answer_does_not_create_a_second_receipt(cloud):
    put(cloud.app.test_client(), "L-1")
    cloud.fake.lose_next_response(path="/receipts")
    assert cloud.pusher.run_once().retrying == 1
    assert len(receipts_of(cloud.fake)) == 1  # Facturapi made it; the agent did not hear
    ticket = cloud.agent.store.ticket(KEY_A, BRANCH_A, "L-1")
    assert Receipt.get_by_id(ticket.id).state == PUSH_PENDING
    later = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(hours=1)
    cloud.pusher.clock = lambda: later
    assert cloud.pusher.run_once().pushed == 1
    assert len(receipts_of(cloud.fake)) == 1
    assert cloud.fake.idempotent_replays == 1
    assert Receipt.get_by_id(ticket.id).upstream_id == receipts_of(cloud.fake)[0]["id"]


def test_a_429_waits_as_long_as_retry_after_says(cloud):
    put(cloud.app.test_client(), "R-1")
    now = datetime(2026, 11, 21, 12, 0, 0)
    cloud.pusher.clock = lambda: now
    cloud.fake.fail_next(status=429, retry_after=120)
    assert cloud.pusher.run_once().retrying == 1
    row = Receipt.get()
    assert row.next_attempt_at == now + timedelta(seconds=120)
    assert "too many requests" in row.last_error
    cloud.pusher.clock = lambda: now + timedelta(seconds=119)
    assert cloud.pusher.run_once().pushed == 0  # the company is on hold: nothing goes out
    assert len(cloud.fake.requests) == 1
    cloud.pusher.clock = lambda: now + timedelta(seconds=120)
    assert cloud.pusher.run_once().pushed == 1


def test_a_500_is_retried_with_growing_jittered_backoff(cloud):
    put(cloud.app.test_client(), "E-1")
    now = datetime(2026, 11, 21, 12, 0, 0)
    cloud.pusher.clock = lambda: now
    cloud.fake.fail_next(3, status=500)
    waits = []
    for _ in range(3):
        cloud.pusher.run_once()
        row = Receipt.get()
        waits.append((row.next_attempt_at - now).total_seconds())
        now = row.next_attempt_at
    assert Receipt.get().attempts == 3
    assert 1 <= waits[0] <= 2 < waits[1] <= 4 < waits[2] <= 8  # 2^n seconds, scaled by 50-100 %
    assert cloud.pusher.run_once().pushed == 1


def test_an_upstream_total_that_differs_stops_the_ticket_visibly(cloud):
    # An insumo whose item says one thing and whose header another cannot be stored, so
    # the fake is told to disagree: its receipt totals a cent and a half more.
    put(cloud.app.test_client(), "M-1", "116.00")
    original = cloud.fake.organization(FACTURAPI_KEY_A)
    cloud.pusher.clients[KEY_A].create_receipt = _inflating(cloud.pusher.clients[KEY_A].create_receipt)
    assert cloud.pusher.run_once().stopped == 1
    row = Receipt.get()
    assert row.state == PUSH_STOPPED
    assert "116.02" in row.last_error and "116.00" in row.last_error
    assert row.self_invoice_url is None  # the slip does not point customers at a wrong amount
    assert original.receipts  # it exists upstream; the agent keeps its id for a person
    [(branch, number, error)] = cloud.agent.receipts.stopped(KEY_A)
    assert (branch, number) == (BRANCH_A, "M-1") and error == row.last_error
    assert cloud.pusher.run_once().pushed == 0  # stopped stays stopped


def _inflating(create):
    def create_receipt(body):
        answer = create(body)
        return {**answer, "total": Decimal(str(answer["total"])) + Decimal("0.02")}

    return create_receipt


def test_a_refused_receipt_gives_the_ticket_back_for_correction(cloud):
    client = cloud.app.test_client()
    put(client, "X-1", "116.00")
    cloud.fake.fail_next(status=400)
    assert cloud.pusher.run_once().stopped == 1
    ticket = cloud.agent.store.ticket(KEY_A, BRANCH_A, "X-1")
    assert ticket.synced_at is None and Receipt.get_by_id(ticket.id).state == PUSH_STOPPED
    # nothing was made upstream, so the POS may send a corrected ticket, which goes up
    put(client, "X-1", "232.00")
    assert cloud.pusher.run_once().pushed == 1
    [receipt] = receipts_of(cloud.fake)
    assert Decimal(str(receipt["total"])) == Decimal("232.00")


def test_a_ticket_replaced_before_it_was_pushed_goes_up_in_its_final_form_only(cloud):
    client = cloud.app.test_client()
    put(client, "F-1", "116.00")
    put(client, "F-1", "348.00")  # the POS corrects it before the push job ran
    assert cloud.pusher.run_once().pushed == 1
    [receipt] = receipts_of(cloud.fake)
    assert Decimal(str(receipt["total"])) == Decimal("348.00")
    # once pushed it cannot change any more: the cloud has it
    response = put_json(client, f"/{KEY_A}/tickets", ticket_body("F-1", "400.00"), AUTH_A)
    assert response.status_code == 409


def test_a_ticket_expired_before_it_was_pushed_is_still_pushed_once(cloud):
    client = cloud.app.test_client()
    put(client, "P-1")
    response = put_json(client, f"/{KEY_A}/expired", {"noTicket": "P-1", "sucursal": BRANCH_A}, AUTH_A)
    assert response.status_code == 200
    assert cloud.pusher.run_once().pushed == 1  # the global invoice needs it as a receipt
    assert len(receipts_of(cloud.fake)) == 1


def test_the_insumo_amounts_travel_exactly(cloud):
    client = cloud.app.test_client()
    body = ticket_body("Q-1", "12.36")
    body["insumo"] = insumo_for("12.36")
    put_json(client, f"/{KEY_A}/tickets", body, AUTH_A)
    cloud.pusher.run_once()
    [request] = [r for r in cloud.fake.requests if r.method == "POST"]
    product = request.json["items"][0]["product"]
    assert product["price"] == Decimal("12.36")  # what the customer paid, taxes inside
    assert Decimal(str(receipts_of(cloud.fake)[0]["total"])) == Decimal("12.36")


def test_a_failing_facturapi_is_not_hammered(cloud):
    client = cloud.app.test_client()
    for i in range(40):
        put(client, f"K-{i}")
    now = datetime(2026, 11, 21, 12, 0, 0)
    cloud.pusher.clock = lambda: now
    cloud.fake.fail_next(1000, status=503)
    cloud.pusher.run_once()
    asked = len(cloud.fake.requests)
    # five failures in a row open the circuit; only the requests already in flight follow
    assert 5 <= asked <= 5 + cloud.pusher.concurrency
    cloud.pusher.run_once()
    assert len(cloud.fake.requests) == asked  # open: nothing goes out
    cloud.pusher.clock = lambda: now + timedelta(seconds=31)  # the cool-down is over: one probe
    cloud.pusher.run_once(limit=1)
    assert len(cloud.fake.requests) == asked + 1


def test_the_circuit_pauses_once_per_failed_probe_not_per_request_in_flight():
    from sync.outbox import Circuit

    circuit, now = Circuit(), datetime(2026, 11, 21, 12, 0, 0)
    for _ in range(9):  # five failures open it; four more were already in flight
        circuit.failed(now)
    assert circuit.open_until == now + timedelta(seconds=30)
    probe = now + timedelta(seconds=30)
    assert circuit.allows(probe)
    circuit.failed(probe)  # the probe fails: twice as long
    assert circuit.open_until == probe + timedelta(seconds=60)
    circuit.succeeded()
    assert circuit.allows(probe) and circuit.failures == 0
