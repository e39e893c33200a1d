"""The Facturapi fake itself: it validates like the API, keeps state, and fails on demand.

Other tests trust this fake to refuse what Facturapi would refuse and to remember what
it was told, so each test here checks behaviour a wrong fake would get wrong.
"""
from __future__ import annotations

import io
import re
import threading
from decimal import Decimal

import pytest
import requests
from lxml import etree
from pypdf import PdfReader

from fake_facturapi import FakeFacturapi

KEY = "sk_test_store1"
CFDI = "{http://www.sat.gob.mx/cfd/4}"
TFD = "{http://www.sat.gob.mx/TimbreFiscalDigital}"


@pytest.fixture
def fake():
    with FakeFacturapi() as fake:
        yield fake


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def post(fake, path, body, key=KEY):
    return requests.post(fake.url + path, json=body, headers=auth(key), timeout=5)


def get(fake, path, key=KEY, **params):
    return requests.get(fake.url + path, params=params, headers=auth(key), timeout=5)


def delete(fake, path, key=KEY, **params):
    return requests.delete(fake.url + path, params=params, headers=auth(key), timeout=5)


def item(price, description="Taco", **product):
    return {"product": {"description": description, "product_key": "50192100", "price": price, **product}}


def receipt_body(**fields):
    return {"payment_form": "01", "items": [item(116)], **fields}


def create_receipt(fake, key=KEY, **fields):
    response = post(fake, "/receipts", receipt_body(**fields), key)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- receipts


def test_a_receipt_is_created_with_the_documented_fields(fake):
    body = receipt_body(
        date="2024-03-28T10:00:00",  # no offset: Mexico City wall time
        branch="Centro", external_id="T-1", payment_form="04",
        items=[
            {"quantity": 2, "discount": 1, **item(100.50)},
            item(100, "Refresco", tax_included=False, sku="R1"),
        ],
    )
    receipt = post(fake, "/receipts", body).json()

    assert len(receipt["id"]) == 24 and int(receipt["id"], 16) >= 0
    assert len(receipt["key"]) == 8 and receipt["key"].isalnum()
    assert receipt["self_invoice_url"] == f"https://factura.space/demo/{receipt['key']}"
    assert receipt["created_at"].endswith("Z") and len(receipt["created_at"]) == 24
    assert receipt["date"] == "2024-03-28T16:00:00.000Z"
    # 7 days would reach April: the end of March (local) comes first.
    assert receipt["expires_at"] == "2024-04-01T05:59:59.999Z"
    # 2 x 100.50 - 1 included, plus 100 + 16 % IVA not included.
    assert receipt["total"] == 316
    assert (receipt["status"], receipt["invoice"], receipt["customer"]) == ("open", None, None)
    assert (receipt["livemode"], receipt["currency"], receipt["folio_number"]) == (False, "MXN", 1)
    assert (receipt["branch"], receipt["external_id"], receipt["payment_form"]) == ("Centro", "T-1", "04")
    first, second = receipt["items"]
    assert first["quantity"] == 2 and second["quantity"] == 1 and second["discount"] == 0
    assert second["product"]["unit_key"] == "H87" and second["product"]["sku"] == "R1"
    assert first["product"]["taxes"] == [{"rate": 0.16, "type": "IVA", "factor": "Tasa", "withholding": False}]

    assert create_receipt(fake)["folio_number"] == 2
    stored = fake.organization(KEY).receipts[receipt["id"]]
    assert stored["total"] == Decimal("316.00")


def test_expiry_follows_the_organization_duration(fake):
    fake.organization(KEY).duration_days = 3
    receipt = create_receipt(fake, date="2024-03-10T12:00:00-06:00")
    assert receipt["expires_at"] == "2024-03-13T18:00:00.000Z"


def test_the_same_idempotency_key_returns_the_same_receipt(fake):
    first = create_receipt(fake, idempotency_key="store1-A-1")
    again = create_receipt(fake, idempotency_key="store1-A-1")
    other_org = create_receipt(fake, key="sk_test_store2", idempotency_key="store1-A-1")

    assert again == first
    assert other_org["id"] != first["id"]  # keys are per organization
    assert len(fake.organization(KEY).receipts) == 1
    assert fake.receipts_by_idempotency_key(KEY) == {"store1-A-1": 1}
    assert fake.idempotent_replays == 1


def test_concurrent_retries_with_one_idempotency_key_create_one_receipt(fake):
    answers = []
    senders = [
        threading.Thread(target=lambda: answers.append(create_receipt(fake, idempotency_key="k")))
        for _ in range(8)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=5)

    assert len({answer["id"] for answer in answers}) == 1 and len(answers) == 8
    assert fake.receipts_by_idempotency_key() == {"k": 1} and fake.idempotent_replays == 7


BAD_REQUESTS = [
    ("POST", "/receipts", {"payment_form": "01"}, {}, "items"),
    ("POST", "/receipts", receipt_body(items=[item("116.00")]), {}, "items[0].product.price"),
    ("POST", "/receipts", receipt_body(items=[item(116, taxability="99")]), {}, "items[0].product.taxability"),
    ("POST", "/receipts", receipt_body(color="red"), {}, "color"),
    ("GET", "/receipts", None, {"limit": "500"}, "limit"),
    ("DELETE", "/invoices/0123456789abcdef01234567", None, {"motive": "07"}, "motive"),
    ("DELETE", "/invoices/0123456789abcdef01234567", None, {"motive": "01"}, "substitution"),
    ("POST", "/receipts/global-invoice", {"periodicity": "day", "receipts": ["ab" * 12]}, {}, "from"),
]


@pytest.mark.parametrize("method, path, body, params, field", BAD_REQUESTS,
                         ids=[case[-1] for case in BAD_REQUESTS])
def test_bad_requests_are_refused_naming_the_field(fake, method, path, body, params, field):
    response = requests.request(method, fake.url + path, json=body, params=params,
                                headers=auth(), timeout=5)

    assert response.status_code == 400
    error = response.json()
    assert (error["code"], error["ok"], error["status"], error["path"]) == ("invalid_request", False, 400, field)
    assert field in error["message"]
    [(seen_method, seen_path, problem)] = fake.invalid_requests
    assert (seen_method, seen_path) == (method, "/v2" + path) and field in problem
    assert fake.organization(KEY).receipts == {}
    with pytest.raises(AssertionError, match=re.escape(field)):
        fake.assert_no_invalid_requests()


def test_authentication_and_unknown_things(fake):
    assert requests.get(fake.url + "/receipts", timeout=5).status_code == 401
    wrong = get(fake, "/receipts", key="pk_test_abc")
    assert (wrong.status_code, wrong.json()["ok"]) == (401, False)

    live = create_receipt(fake, key="sk_live_store1")
    assert live["livemode"] is True
    assert get(fake, f"/receipts/{live['id']}").status_code == 404  # another organization
    assert get(fake, f"/receipts/{live['id']}", key="sk_live_store1").json() == live
    assert get(fake, "/invoices/0123456789abcdef01234567").json()["code"] == "not_found"
    assert get(fake, "/customers").status_code == 404
    fake.assert_no_invalid_requests()


def test_list_filters_by_date_and_paginates_newest_first(fake):
    ids = [create_receipt(fake, date=f"2024-03-0{day}T12:00:00Z")["id"] for day in range(1, 6)]

    window = get(fake, "/receipts", **{"date[gte]": "2024-03-02T12:00:00Z", "date[lte]": "2024-03-04T12:00:00Z"}).json()
    assert [r["id"] for r in window["data"]] == [ids[3], ids[2], ids[1]]  # bounds are inclusive
    assert (window["total_results"], window["total_pages"], window["page"]) == (3, 1, 1)

    page2 = get(fake, "/receipts", limit=2, page=2).json()
    assert [r["id"] for r in page2["data"]] == [ids[2], ids[1]]
    assert (page2["total_results"], page2["total_pages"]) == (5, 3)
    assert get(fake, "/receipts", payment_form="03").json()["data"] == []
    fake.assert_no_invalid_requests()


def test_cancel_receipt_only_while_open(fake):
    receipt = create_receipt(fake)
    assert delete(fake, f"/receipts/{receipt['id']}").json()["status"] == "canceled"
    again = delete(fake, f"/receipts/{receipt['id']}")
    assert (again.status_code, again.json()["code"]) == (400, "receipt_not_open")


# ---------------------------------------------------------------- global invoices


def two_receipts(fake):
    small = create_receipt(fake, date="2024-03-28T10:00:00", payment_form="01")
    large = create_receipt(fake, date="2024-03-28T11:00:00", payment_form="04", items=[item(116), item(116)])
    return small, large


def global_invoice(fake, receipts, **fields):
    body = {"periodicity": "day", "from": "2024-03-28", "to": "2024-03-28",
            "receipts": [r["id"] for r in receipts], **fields}
    return post(fake, "/receipts/global-invoice", body)


def test_global_invoice_over_explicit_receipts_links_them(fake):
    small, large = two_receipts(fake)

    response = global_invoice(fake, [small, large], series="G")

    assert response.status_code == 200
    invoice = response.json()
    assert (invoice["status"], invoice["type"], invoice["use"], invoice["series"]) == ("valid", "I", "S01", "G")
    assert invoice["uuid"] == invoice["uuid"].upper() and len(invoice["uuid"]) == 36
    assert invoice["customer"]["legal_name"] == "PUBLICO EN GENERAL"
    assert invoice["customer"]["tax_id"] == "XAXX010101000"
    assert invoice["total"] == 348
    assert invoice["payment_form"] == "04"  # the form of the largest receipt
    assert [(i["product"]["sku"], i["product"]["price"]) for i in invoice["items"]] == [
        (small["id"], 116), (large["id"], 232)]
    for receipt in (small, large):
        linked = get(fake, f"/receipts/{receipt['id']}").json()
        assert (linked["status"], linked["invoice"]) == ("invoiced_globally", invoice["id"])
    stored = fake.organization(KEY).invoices[invoice["id"]]
    assert (stored["_subtotal"], stored["_iva"]) == (Decimal("300.00"), Decimal("48.00"))
    assert get(fake, f"/invoices/{invoice['id']}").json() == invoice
    fake.assert_no_invalid_requests()


def test_global_invoice_refuses_receipts_that_are_not_open(fake):
    small, large = two_receipts(fake)
    delete(fake, f"/receipts/{small['id']}")

    response = global_invoice(fake, [small, large])

    assert (response.status_code, response.json()["code"]) == (400, "receipt_not_open")
    assert small["id"] in response.json()["message"] and large["id"] not in response.json()["message"]
    assert get(fake, f"/receipts/{large['id']}").json()["status"] == "open"
    assert fake.organization(KEY).invoices == {}
    fake.assert_no_invalid_requests()  # a business error, not a malformed request


def test_global_invoice_over_more_than_5000_receipts_is_refused(fake):
    response = post(fake, "/receipts/global-invoice", {
        "periodicity": "month", "from": "2024-03-01", "to": "2024-03-31",
        "receipts": [f"{n:024x}" for n in range(5001)]})
    assert (response.status_code, response.json()["code"]) == (400, "global_invoice_too_many_items")


def test_global_invoice_of_a_period_takes_its_open_receipts_in_local_time(fake):
    late_march = create_receipt(fake, date="2024-03-31T23:30:00")  # already April in UTC
    create_receipt(fake, date="2024-04-01T00:30:00")

    body = {"periodicity": "month", "from": "2024-03-01", "to": "2024-03-31"}
    invoice = post(fake, "/receipts/global-invoice", body).json()

    assert [i["product"]["sku"] for i in invoice["items"]] == [late_march["id"]]
    assert invoice["global"] == {"periodicity": "month", "months": "03", "year": 2024}
    # Run again: nothing open is left in March, so the API answers an empty 200.
    empty = post(fake, "/receipts/global-invoice", body)
    assert (empty.status_code, empty.content) == (200, b"")
    fake.assert_no_invalid_requests()


def test_pac_down_gives_a_pending_invoice_that_pac_up_stamps(fake):
    small, large = two_receipts(fake)
    fake.pac_down()

    response = global_invoice(fake, [small, large])

    assert response.status_code == 202
    pending = response.json()
    assert (pending["status"], pending["uuid"], pending["stamp"]) == ("pending", None, None)
    assert get(fake, f"/receipts/{small['id']}").json()["invoice"] == pending["id"]
    assert get(fake, f"/invoices/{pending['id']}/xml").json()["code"] == "invoice_not_stamped"

    fake.pac_up()

    valid = get(fake, f"/invoices/{pending['id']}").json()
    assert valid["status"] == "valid" and len(valid["uuid"]) == 36
    assert valid["stamp"]["sat_cert_number"]


def test_xml_and_pdf_carry_the_uuid(fake):
    small, large = two_receipts(fake)
    invoice = global_invoice(fake, [small, large]).json()

    xml = get(fake, f"/invoices/{invoice['id']}/xml")
    assert xml.headers["Content-Type"] == "application/xml"
    root = etree.fromstring(xml.content)
    assert root.tag == CFDI + "Comprobante"
    assert (root.get("Version"), root.get("Total"), root.get("SubTotal")) == ("4.0", "348.00", "300.00")
    assert root.find(f"{CFDI}Complemento/{TFD}TimbreFiscalDigital").get("UUID") == invoice["uuid"]
    assert root.find(f"{CFDI}InformacionGlobal").get("Periodicidad") == "01"
    assert root.find(f"{CFDI}Receptor").get("UsoCFDI") == "S01"
    transfers = root.findall(f"{CFDI}Conceptos/{CFDI}Concepto/{CFDI}Impuestos/{CFDI}Traslados/{CFDI}Traslado")
    assert [t.get("Importe") for t in transfers] == ["16.00", "32.00"]
    assert root.find(f"{CFDI}Impuestos").get("TotalImpuestosTrasladados") == "48.00"

    pdf = get(fake, f"/invoices/{invoice['id']}/pdf")
    assert pdf.headers["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    text = PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
    assert invoice["uuid"] in text and "PUBLICO EN GENERAL" in text and "348.00" in text
    assert get(fake, f"/invoices/{invoice['id']}/zip").status_code == 400


def test_canceling_an_invoice_reopens_its_receipts(fake):
    small, large = two_receipts(fake)
    invoice = global_invoice(fake, [small, large]).json()

    canceled = delete(fake, f"/invoices/{invoice['id']}", motive="02").json()

    assert (canceled["status"], canceled["cancellation_status"]) == ("canceled", "accepted")
    assert canceled["canceled_at"]
    for receipt in (small, large):
        reopened = get(fake, f"/receipts/{receipt['id']}").json()
        assert (reopened["status"], reopened["invoice"]) == ("open", None)
    again = delete(fake, f"/invoices/{invoice['id']}", motive="02")
    assert (again.status_code, again.json()["code"]) == (400, "invoice_already_canceled")
    reissued = global_invoice(fake, [small, large]).json()
    assert reissued["id"] != invoice["id"] and reissued["folio_number"] == invoice["folio_number"] + 1
    fake.assert_no_invalid_requests()


# ---------------------------------------------------------------- the cloud side


def test_self_invoice_and_cancel_in_cloud(fake):
    receipt = create_receipt(fake)  # dated now, so still open on the portal

    invoice = fake.self_invoice(receipt["key"])

    assert (invoice["status"], invoice["series"], invoice["use"]) == ("valid", "F", "G03")
    assert invoice["customer"]["tax_id"] == "ROWA121212A11" and invoice["total"] == receipt["total"]
    seen = get(fake, f"/receipts/{receipt['id']}").json()
    assert (seen["status"], seen["invoice"], seen["customer"]) == (
        "invoiced_to_customer", invoice["id"], invoice["customer"]["id"])
    assert [r["id"] for r in get(fake, "/receipts", invoice=invoice["id"]).json()["data"]] == [receipt["id"]]
    with pytest.raises(ValueError):
        fake.self_invoice(receipt["id"])

    fake.cancel_in_cloud(invoice["id"])

    assert get(fake, f"/invoices/{invoice['id']}").json()["status"] == "canceled"
    assert get(fake, f"/receipts/{receipt['id']}").json()["status"] == "open"


def test_the_portal_refuses_expired_receipts(fake):
    old = create_receipt(fake, date="2024-03-28T10:00:00")
    with pytest.raises(ValueError, match="expired"):
        fake.self_invoice(old["id"])


# ---------------------------------------------------------------- faults


def test_down_refuses_connections_and_up_listens_on_the_same_port(fake):
    url = fake.url
    fake.down()
    with pytest.raises(requests.ConnectionError):
        create_receipt(fake)

    fake.up()

    assert fake.url == url
    assert create_receipt(fake)["status"] == "open"


def test_fail_next_answers_429_with_retry_after_and_does_nothing(fake):
    fake.fail_next(1, 429, retry_after=7)

    limited = post(fake, "/receipts", receipt_body())

    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert limited.json() == {"message": limited.json()["message"], "status": 429, "ok": False,
                              "code": "rate_limit_exceeded"}
    assert fake.organization(KEY).receipts == {}
    assert create_receipt(fake)["status"] == "open"  # only the next one failed


def test_fail_next_only_hits_the_matching_path(fake):
    fake.fail_next(status=503, path="/global-invoice")
    small, large = two_receipts(fake)

    failed = global_invoice(fake, [small, large])

    assert (failed.status_code, failed.json()["code"]) == (503, "internal_error")
    assert get(fake, f"/receipts/{small['id']}").json()["status"] == "open"
    assert global_invoice(fake, [small, large]).status_code == 200


def test_drop_next_closes_before_the_work(fake):
    fake.drop_next()
    with pytest.raises(requests.ConnectionError):
        post(fake, "/receipts", receipt_body())
    assert fake.organization(KEY).receipts == {}
    assert len(fake.requests) == 1  # it did arrive


def test_lose_next_response_does_the_work_then_closes(fake):
    fake.lose_next_response(path="/receipts")
    with pytest.raises(requests.ConnectionError):
        post(fake, "/receipts", receipt_body(idempotency_key="t-1"))
    [stored] = fake.organization(KEY).receipts.values()

    retried = create_receipt(fake, idempotency_key="t-1")

    assert retried["id"] == stored["id"]
    assert fake.receipts_by_idempotency_key(KEY) == {"t-1": 1} and fake.idempotent_replays == 1


def test_stall_holds_requests_until_release(fake):
    fake.stall(path="/receipts")
    answers = []
    sender = threading.Thread(target=lambda: answers.append(post(fake, "/receipts", receipt_body())))
    sender.start()

    fake.wait_for(lambda f: f.stalled == 1)
    assert fake.organization(KEY).receipts == {}  # held before the work

    fake.release()
    sender.join(timeout=5)

    assert [a.status_code for a in answers] == [200] and fake.stalled == 0
    assert len(fake.organization(KEY).receipts) == 1


def test_close_does_not_hang_on_a_stalled_request():
    fake = FakeFacturapi()
    fake.stall()
    sender = threading.Thread(target=lambda: _ignore_errors(post, fake, "/receipts", receipt_body()))
    sender.start()
    fake.wait_for(lambda f: f.stalled == 1)

    fake.close()

    sender.join(timeout=5)
    assert not sender.is_alive()


def _ignore_errors(call, *args):
    try:
        call(*args)
    except requests.RequestException:
        pass


def test_wait_for_gives_up_at_its_deadline(fake):
    with pytest.raises(AssertionError):
        fake.wait_for(lambda f: len(f.requests) > 0, timeout=0.05)
