"""Down: an invoice a customer made in Facturapi becomes the ticket's CFDI in the store,
with its XML and PDF, so GET /cfdis and the downloads answer even offline."""
from __future__ import annotations

import pytest

import json
from lxml import etree

from helpers import AUTH_A, BRANCH_A, FACTURAPI_KEY_A, KEY_A, put_json, ticket_body

from agent.models import EXPIRED, INVOICED, Receipt

pytestmark = pytest.mark.both_databases  # tests/postgres.py


def synced(cloud, *numbers, total="116.00"):
    client = cloud.app.test_client()
    for number in numbers:
        assert put_json(client, f"/{KEY_A}/tickets", ticket_body(number, total), AUTH_A).status_code == 200
    assert cloud.pusher.run_once().pushed == len(numbers)
    return client


def receipt_id(cloud, number):
    return Receipt.get_by_id(cloud.agent.store.ticket(KEY_A, BRANCH_A, number).id).upstream_id


def cfdis(client, number):
    response = client.get(f"/{KEY_A}/cfdis", query_string={"ticket": number, "sucursal": BRANCH_A}, headers=AUTH_A)
    return response.status_code, (json.loads(response.get_data(as_text=True))["cfdis"] if response.status_code == 200 else None)


def test_a_customer_invoice_in_facturapi_shows_up_in_get_cfdis_with_working_downloads(cloud):
    client = synced(cloud, "C-1", "C-2")
    invoice = cloud.fake.self_invoice(receipt_id(cloud, "C-1"), tax_id="ROWA121212A11", legal_name="ROGER WATERS",
                                      allow_expired=True)  # fmt: skip
    assert cfdis(client, "C-1")[0] == 400  # not polled yet: "aun no genera cfdi"
    result = cloud.invoices.run_once()
    assert (result.checked, result.invoiced) == (2, 1)
    status, [row] = cfdis(client, "C-1")
    assert status == 200
    assert row["uuid"] == invoice["uuid"].upper()
    assert (row["rfc"], row["razonSocial"]) == ("ROWA121212A11", "ROGER WATERS")
    assert row["produccion"] == "false"  # a test key's invoice is not a production one
    assert (row["monto"], row["subtotal"], row["iva"]) == ("116.000000", "100.000000", "16.000000")
    ticket = cloud.agent.store.ticket(KEY_A, BRANCH_A, "C-1")
    assert ticket.status == INVOICED
    assert cloud.agent.store.ticket(KEY_A, BRANCH_A, "C-2").cfdi_id is None

    # the downloads answer from the store: even with Facturapi gone
    cloud.fake.down()
    xml = client.get(_path(row["xmlDownload"]), headers=AUTH_A)
    assert xml.status_code == 200 and xml.mimetype == "application/xml"
    stamp = etree.fromstring(xml.data).find(".//{http://www.sat.gob.mx/TimbreFiscalDigital}TimbreFiscalDigital")
    assert stamp.get("UUID").upper() == invoice["uuid"].upper()
    pdf = client.get(_path(row["pdfDownload"]), headers=AUTH_A)
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def test_polling_again_records_nothing_twice(cloud):
    client = synced(cloud, "C-3")
    cloud.fake.self_invoice(receipt_id(cloud, "C-3"), allow_expired=True)
    assert cloud.invoices.run_once().invoiced == 1
    assert cloud.invoices.run_once().invoiced == 0  # the ticket has its CFDI: not watched any more
    assert len(cfdis(client, "C-3")[1]) == 1


def test_a_locally_expired_ticket_invoiced_in_the_cloud_first_keeps_the_customer_invoice(cloud):
    client = synced(cloud, "C-4")
    put_json(client, f"/{KEY_A}/expired", {"noTicket": "C-4", "sucursal": BRANCH_A}, AUTH_A)
    assert cloud.agent.store.ticket(KEY_A, BRANCH_A, "C-4").status == EXPIRED
    # Facturapi has no lock on a receipt: the customer got there first
    cloud.fake.self_invoice(receipt_id(cloud, "C-4"), allow_expired=True)
    assert cloud.invoices.run_once().invoiced == 1
    ticket = cloud.agent.store.ticket(KEY_A, BRANCH_A, "C-4")
    assert ticket.status == INVOICED  # so the global invoice leaves it out: one CFDI per sale


def test_an_invoice_still_stamping_is_taken_at_a_later_poll(cloud):
    client = synced(cloud, "C-5")
    cloud.fake.pac_down()
    cloud.fake.self_invoice(receipt_id(cloud, "C-5"), allow_expired=True)
    assert cloud.invoices.run_once().invoiced == 0
    assert cfdis(client, "C-5")[0] == 400
    cloud.fake.pac_up()
    assert cloud.invoices.run_once().invoiced == 1
    assert cfdis(client, "C-5")[0] == 200


def test_receipts_beyond_the_listed_pages_are_asked_for_one_by_one(cloud):
    synced(cloud, "C-6")
    # a store with more receipts than the API lists: the date filter misses this one
    cloud.invoices.clients[KEY_A].receipts_between = lambda start, end: iter(())
    cloud.fake.self_invoice(receipt_id(cloud, "C-6"), allow_expired=True)
    assert cloud.invoices.run_once().invoiced == 1
    assert any(r.path.endswith("/receipts/" + receipt_id(cloud, "C-6")) for r in cloud.fake.requests)


def test_a_failed_poll_is_shown_and_changes_nothing(cloud):
    synced(cloud, "C-7")
    cloud.fake.down()
    result = cloud.invoices.run_once()
    assert result.errors and "cannot connect" in result.errors[0]
    [backlog] = [b for b in cloud.agent.receipts.backlog(KEY_A, [BRANCH_A])]
    assert "cannot connect" in backlog.last_error
    assert cloud.agent.store.ticket(KEY_A, BRANCH_A, "C-7").cfdi_id is None


def test_the_cancel_link_cancels_the_customer_invoice_in_facturapi(cloud):
    client = synced(cloud, "C-8")
    invoice = cloud.fake.self_invoice(receipt_id(cloud, "C-8"), allow_expired=True)
    cloud.invoices.run_once()
    uuid = invoice["uuid"].upper()
    response = client.post(f"/{KEY_A}/cfdis/cancelar/{uuid}", query_string={"motivo": "02"}, headers=AUTH_A)
    assert response.status_code == 200, response.get_data(as_text=True)
    stored = cloud.fake.organization(FACTURAPI_KEY_A).invoices[invoice["id"]]
    assert stored["status"] == "canceled"
    [delete] = [r for r in cloud.fake.requests if r.method == "DELETE"]
    assert delete.query["motive"] in ("02", ["02"])
    # the ticket is free again: its receipt is open in the cloud, and in the store
    assert cloud.agent.store.ticket(KEY_A, BRANCH_A, "C-8").cfdi_id is None
