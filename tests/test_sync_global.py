"""The factura global of a Facturapi company: issued there from the period's receipts,
every receipt in exactly one CFDI, a pending answer polled and never re-sent."""
from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from helpers import AUTH_A, BRANCH_A, FACTURAPI_KEY_A, KEY_A, put_json, ticket_body
from helpers import LocalClock as Clock

from agent.models import GLOBAL_CFDI, IN_GLOBAL, INVOICED, RUN_STAMPED, RUN_VOID, RUN_WAITING, Cfdi, GlobalInvoice, Receipt
from service.background import global_invoicing
from sync.expiry import expire_overdue

pytestmark = pytest.mark.both_databases  # tests/postgres.py

MEXICO = ZoneInfo("America/Mexico_City")


@pytest.fixture
def invoicing(cloud):
    invoicing = global_invoicing(cloud.agent, sync=cloud)
    invoicing.clock = Clock("2026-11-21T00:05:00")
    return invoicing


def sell_and_push(cloud, *numbers, total="116.00"):
    client = cloud.app.test_client()
    for number in numbers:
        response = put_json(client, f"/{KEY_A}/tickets", ticket_body(number, total, fecha="2026-11-20T12:00:00"), AUTH_A)
        assert response.status_code == 200
    assert cloud.pusher.run_once().pushed == len(numbers)
    return client


def close_day(cloud, invoicing):
    expire_overdue(cloud.agent.store, cloud.agent.config, invoicing.clock())
    return invoicing.run()


def receipt_of(cloud, number):
    return Receipt.get_by_id(cloud.agent.store.ticket(KEY_A, BRANCH_A, number).id)


def global_posts(fake):
    return [r for r in fake.requests if r.method == "POST" and r.path.endswith("/receipts/global-invoice")]


def org(cloud):
    return cloud.fake.organization(FACTURAPI_KEY_A)


def test_the_period_goes_to_facturapi_as_one_global_invoice_of_its_receipts(cloud, invoicing):
    client = sell_and_push(cloud, "G-1", "G-2", "G-3")
    [run] = close_day(cloud, invoicing)
    assert (run.state, run.tickets, run.series, run.folio) == (RUN_STAMPED, 3, "FG", 1)
    [post] = global_posts(cloud.fake)
    assert post.json["receipts"] == [receipt_of(cloud, n).upstream_id for n in ("G-1", "G-2", "G-3")]
    assert (post.json["periodicity"], post.json["from"], post.json["to"]) == ("day", "2026-11-20", "2026-11-20")
    assert (post.json["series"], post.json["folio_number"], post.json["months"]) == ("FG", 1, "11")
    [invoice] = [i for i in org(cloud).invoices.values()]
    cfdi = Cfdi.get_by_id(run.cfdi)
    assert (cfdi.kind, cfdi.uuid, cfdi.upstream_id) == (GLOBAL_CFDI, invoice["uuid"].upper(), invoice["id"])
    assert (cfdi.receiver_rfc, cfdi.receiver_name) == ("XAXX010101000", "PUBLICO EN GENERAL")
    assert str(cfdi.total) == "348.000000"
    for number in ("G-1", "G-2", "G-3"):
        assert cloud.agent.store.ticket(KEY_A, BRANCH_A, number).status == IN_GLOBAL
        assert org(cloud).receipts[receipt_of(cloud, number).upstream_id]["status"] == "invoiced_globally"
    response = client.get(f"/{KEY_A}/cfdis", query_string={"ticket": "G-2", "sucursal": BRANCH_A}, headers=AUTH_A)
    [row] = json.loads(response.get_data(as_text=True))["cfdis"]
    assert (row["rfc"], row["uuid"]) == ("XAXX010101000", cfdi.uuid)
    # the closed period produces nothing new
    assert close_day(cloud, invoicing) == []
    assert len(global_posts(cloud.fake)) == 1


def test_a_receipt_a_customer_invoiced_in_the_cloud_first_is_in_exactly_one_cfdi(cloud, invoicing):
    sell_and_push(cloud, "H-1", "H-2", "H-3")
    # between the last poll and the period's close, a customer invoiced H-2 on the portal
    customer = cloud.fake.self_invoice(receipt_of(cloud, "H-2").upstream_id, allow_expired=True)
    [run] = close_day(cloud, invoicing)
    run = GlobalInvoice.get_by_id(run.id)
    assert (run.state, run.tickets) == (RUN_STAMPED, 2)
    # Facturapi refused H-2 as not open; the agent asked, kept the customer's invoice, and
    # sent the other two
    first, second = global_posts(cloud.fake)
    assert len(first.json["receipts"]) == 3 and len(second.json["receipts"]) == 2
    h2 = cloud.agent.store.ticket(KEY_A, BRANCH_A, "H-2")
    assert h2.status == INVOICED and Cfdi.get_by_id(h2.cfdi_id).uuid == customer["uuid"].upper()
    # every receipt of the period is in exactly one invoice, in the cloud and in the store
    invoices_per_receipt = {}
    for invoice in org(cloud).invoices.values():
        for receipt_id in invoice["_receipts"]:
            invoices_per_receipt.setdefault(receipt_id, []).append(invoice["id"])
    assert sorted(len(v) for v in invoices_per_receipt.values()) == [1, 1, 1]
    assert {cloud.agent.store.ticket(KEY_A, BRANCH_A, n).cfdi_id is not None for n in ("H-1", "H-2", "H-3")} == {True}


def test_a_run_whose_receipts_were_all_invoiced_by_customers_is_void(cloud, invoicing):
    sell_and_push(cloud, "V-1")
    cloud.fake.self_invoice(receipt_of(cloud, "V-1").upstream_id, allow_expired=True)
    [result] = close_day(cloud, invoicing)
    [run] = GlobalInvoice.select()
    assert (run.state, run.tickets) == (RUN_VOID, 0)
    assert cloud.agent.store.ticket(KEY_A, BRANCH_A, "V-1").status == INVOICED
    assert close_day(cloud, invoicing) == []


def test_a_pending_answer_is_polled_and_never_sent_again(cloud, invoicing):
    sell_and_push(cloud, "P-1", "P-2")
    cloud.fake.pac_down()
    [result] = close_day(cloud, invoicing)
    [run] = GlobalInvoice.select()
    assert run.state == RUN_WAITING and run.upstream_id
    invoicing.clock.now = invoicing.clock.now.replace(minute=30)
    close_day(cloud, invoicing)  # still pending: asked, not sent
    assert GlobalInvoice.get_by_id(run.id).state == RUN_WAITING
    cloud.fake.pac_up()
    invoicing.clock.now = invoicing.clock.now.replace(hour=1)
    close_day(cloud, invoicing)
    assert GlobalInvoice.get_by_id(run.id).state == RUN_STAMPED
    assert len(global_posts(cloud.fake)) == 1
    assert any(r.method == "GET" and r.path.endswith(f"/invoices/{run.upstream_id}") for r in cloud.fake.requests)


def test_a_lost_answer_finds_the_invoice_instead_of_making_a_second(cloud, invoicing):
    sell_and_push(cloud, "L-1", "L-2")
    cloud.fake.lose_next_response(path="/receipts/global-invoice")
    [error] = close_day(cloud, invoicing)
    assert isinstance(error, Exception)
    [run] = GlobalInvoice.select()
    assert run.state == "failed" and len(org(cloud).invoices) == 1  # made in the cloud, unheard here
    invoicing.clock.now = invoicing.clock.now.replace(hour=2)  # past the retry time
    close_day(cloud, invoicing)
    assert GlobalInvoice.get_by_id(run.id).state == RUN_STAMPED
    assert len(global_posts(cloud.fake)) == 1 and len(org(cloud).invoices) == 1


def test_tickets_not_in_facturapi_yet_hold_the_run_until_they_are(cloud, invoicing):
    client = cloud.app.test_client()
    put_json(client, f"/{KEY_A}/tickets", ticket_body("N-1", "116.00", fecha="2026-11-20T12:00:00"), AUTH_A)
    cloud.fake.down()
    cloud.pusher.run_once()  # the internet is down: N-1 stays in the outbox
    cloud.fake.up()
    [error] = close_day(cloud, invoicing)
    assert "not in Facturapi yet" in str(error)
    assert global_posts(cloud.fake) == []
    later = datetime(2030, 1, 1)
    cloud.pusher.clock = lambda: later
    assert cloud.pusher.run_once().pushed == 1
    invoicing.clock.now = invoicing.clock.now.replace(hour=3)
    close_day(cloud, invoicing)
    assert GlobalInvoice.get().state == RUN_STAMPED
