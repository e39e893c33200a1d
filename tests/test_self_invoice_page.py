"""The sandbox self-invoice page, through Flask's test client, as a customer uses it after
scanning the slip's QR, and as the POS then sees the result."""
from __future__ import annotations

import json
import re
from datetime import datetime
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

import lxml.html
import pytest

from helpers import AUTH_A, AUTH_B, BRANCH_A, BRANCH_B, KEY_A, KEY_B, insumo_for, put_json, ticket_body, write_config
from helpers_cfdi import attach_customer_cfdi, attach_global_cfdi

from agent import self_invoice
from agent.app import create_app
from agent.config import load_config
from agent.models import Cfdi
from agent.self_invoice import CLOCK

pytestmark = pytest.mark.both_databases  # tests/postgres.py

MEXICO = ZoneInfo("America/Mexico_City")
# Company A's QR opens the page with a signed URL; company B's carries the ticket's total.
SECRET = "secreto-del-portal-de-pruebas"
PORTAL = "http://agent.local:8572/autofactura/{company}/{branch}/{ticket}"
SALE_DAY = datetime(2026, 11, 20, 15, 0, tzinfo=MEXICO)  # the helpers sell at 11:09 that day

CUSTOMER = {"rfc": "GODE561231GR8", "nombre": "Juan Pérez Gómez", "codigo_postal": "06600", "regimen": "612",
            "uso": "G03"}  # fmt: skip


@pytest.fixture
def config_path(tmp_path):
    path = write_config(tmp_path)
    text = path.read_text(encoding="utf-8")
    company_a_portal = 'portal_url = "https://facturacion.example.com/{company}/{branch}/{ticket}"\n'
    text = text.replace(company_a_portal, f'portal_url = "{PORTAL}"\nurl_secret = "{SECRET}"\n', 1)
    text = text.replace(company_a_portal, f'portal_url = "{PORTAL}?monto={{total}}"\n', 1)  # company B
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def app(config):
    app = create_app(config)
    app.config["TESTING"] = True
    app.config[CLOCK] = lambda: SALE_DAY
    yield app
    app.config["AGENT"].close()


def sell(client, number, total="116.00", *, company=KEY_A, branch=BRANCH_A, auth=AUTH_A, **body):
    response = put_json(client, f"/{company}/tickets", ticket_body(number, total, branch=branch, **body), auth)
    assert response.status_code == 200, response.get_data(as_text=True)


def slip_url(client, number, *, company=KEY_A, branch=BRANCH_A, auth=AUTH_A) -> str:
    """The URL printed in the slip's QR, as the POS can pull it."""
    response = client.get(f"/{company}/tickets/{branch}/{number}/qr", headers=auth)
    assert response.status_code == 200
    return response.headers["X-Portal-URL"]


def local(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def page_of(number, *, company=KEY_A, branch=BRANCH_A) -> str:
    return f"/autofactura/{company}/{branch}/{number}"


def html(response):
    return lxml.html.fromstring(response.get_data(as_text=True))


def text_of(doc, element_id) -> str:
    return " ".join(doc.get_element_by_id(element_id).text_content().split())


def has_id(doc, element_id) -> bool:
    return bool(doc.xpath(f'//*[@id="{element_id}"]'))


def firma_of(url: str) -> str:
    return re.search(r"firma=([0-9a-f]+)", url).group(1)


def submit(client, number, *, firma=None, company=KEY_A, branch=BRANCH_A, **fields):
    data = {**CUSTOMER, **fields}
    if firma is not None:
        data["firma"] = firma
    return client.post(page_of(number, company=company, branch=branch), data=data)


def cfdis_for(client, number, *, company=KEY_A, auth=AUTH_A):
    response = client.get(f"/{company}/cfdis?ticket={number}", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return json.loads(response.get_data(as_text=True))["cfdis"]


def nothing_stored(agent, number, *, company=KEY_A, branch=BRANCH_A):
    ticket = agent.store.ticket(company, branch, number)
    folder = agent.data_dir / "cfdi" / company
    return (
        ticket.status == "ALMACENADO"
        and ticket.cfdi_id is None
        and Cfdi.select().count() == 0
        and not (folder.exists() and any(folder.iterdir()))
    )


# -- the page the QR opens ---------------------------------------------------------------


def test_the_slips_qr_opens_the_page_showing_number_date_and_total(client):
    sell(client, "12A31", "116.00")
    url = slip_url(client, "12A31")
    assert url.startswith(f"http://agent.local:8572/autofactura/{KEY_A}/{BRANCH_A}/12A31?firma=")

    response = client.get(local(url))
    assert response.status_code == 200
    doc = html(response)
    assert text_of(doc, "ticket") == "12A31"
    assert text_of(doc, "fecha") == "20/11/2026 11:09"
    assert text_of(doc, "total") == "$116.00"
    assert text_of(doc, "plazo") == "20/11/2026"  # company A closes its periods daily
    for field in ("rfc", "nombre", "codigo_postal", "regimen", "uso", "facturar"):
        assert has_id(doc, field), field
    # The signed link already proves the ticket is in the customer's hands.
    assert not has_id(doc, "monto")
    assert "SANDBOX" in doc.text_content()


def test_a_valid_submission_stamps_and_the_pos_sees_the_customers_cfdi(client, agent):
    sell(client, "12A31", "116.00")
    response = submit(client, "12A31", firma=firma_of(slip_url(client, "12A31")))

    assert response.status_code == 200, response.get_data(as_text=True)
    doc = html(response)
    uuid = text_of(doc, "uuid")
    assert re.fullmatch(r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[0-9A-F]{4}-[0-9A-F]{12}", uuid)
    assert "Su factura está lista" in doc.text_content()
    assert text_of(doc, "nombre-receptor") == "JUAN PÉREZ GÓMEZ"  # uppercased, as SAT registers names

    [cfdi] = cfdis_for(client, "12A31")
    assert (cfdi["rfc"], cfdi["razonSocial"], cfdi["uuid"]) == ("GODE561231GR8", "JUAN PÉREZ GÓMEZ", uuid)
    assert (cfdi["monto"], cfdi["subtotal"], cfdi["iva"]) == ("116.000000", "100.000000", "16.000000")
    assert (cfdi["status"], cfdi["produccion"], cfdi["tienePDF"]) == ("ALMACENADO", "false", "true")
    assert agent.store.ticket(KEY_A, BRANCH_A, "12A31").status == "FACTURADO"


def test_the_download_links_give_the_customers_xml_and_pdf(client):
    sell(client, "12A31", "116.00")
    doc = html(submit(client, "12A31", firma=firma_of(slip_url(client, "12A31"))))
    uuid = text_of(doc, "uuid")

    xml = client.get(doc.get_element_by_id("descargar-xml").get("href"))
    assert xml.status_code == 200 and xml.mimetype == "application/xml"
    assert f'filename="{uuid}.xml"' in xml.headers["Content-Disposition"]
    assert b'Rfc="GODE561231GR8"' in xml.data and uuid.encode() in xml.data
    pdf = client.get(doc.get_element_by_id("descargar-pdf").get("href"))
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf" and pdf.data.startswith(b"%PDF")
    # The POS's own download link answers with the same file.
    [cfdi] = cfdis_for(client, "12A31")
    assert client.get(urlsplit(cfdi["xmlDownload"]).path + "?" + urlsplit(cfdi["xmlDownload"]).query,
                      headers=AUTH_A).data == xml.data  # fmt: skip


def test_the_pages_are_private_and_indexable_by_nobody(client):
    sell(client, "12A31")
    response = client.get(local(slip_url(client, "12A31")))
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"


# -- what the customer typed -------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("rfc", "GODE56123", "RFC: «GODE56123» no es un RFC válido"),
        ("rfc", "GODE560230GR8", "RFC: la fecha 560230 (AAMMDD) de su RFC no existe"),
        ("rfc", "XAXX010101000", "RFC: XAXX010101000 es el RFC genérico de público en general"),
        ("rfc", "", "RFC: escriba su RFC"),
        ("nombre", "   ", "Nombre o razón social: escriba su nombre o razón social"),
        ("nombre", "JUAN | PEREZ", "Nombre o razón social: no puede contener el carácter «|»"),
        ("regimen", "601", ("Régimen fiscal: 601 (General de Ley Personas Morales) no aplica a su RFC, que es de "
                            "persona física (13 caracteres)")),
        ("regimen", "999", "Régimen fiscal: elija uno de la lista"),
        ("uso", "S02", "Uso del CFDI: elija uno de la lista"),
        ("codigo_postal", "6600", "Código postal: escriba los 5 dígitos"),
        ("codigo_postal", "00001", "Código postal: 00001 no existe en el catálogo de códigos postales del SAT"),
    ],
    ids=["rfc-short", "rfc-bad-date", "rfc-generic", "rfc-missing", "name-missing", "name-pipe",
         "regime-of-a-company", "regime-unknown", "use-unknown", "postal-code-4-digits", "postal-code-unknown"],
)  # fmt: skip
def test_each_bad_field_is_named_next_to_it_in_spanish_and_nothing_is_stored(client, agent, field, value, expected):
    sell(client, "12A31")
    firma = firma_of(slip_url(client, "12A31"))
    response = submit(client, "12A31", firma=firma, **{field: value})

    assert response.status_code == 422
    doc = html(response)
    assert text_of(doc, f"{field}-error").startswith(expected)
    assert doc.get_element_by_id(field).get("aria-describedby") == f"{field}-error"
    assert [e.get("id") for e in doc.find_class("error")] == [f"{field}-error"]  # only the bad one
    # What the customer typed stays in the form.
    assert doc.get_element_by_id("nombre").get("value") == (value if field == "nombre" else "Juan Pérez Gómez")
    assert doc.get_element_by_id("rfc").get("value") == (value if field == "rfc" else "GODE561231GR8")
    assert nothing_stored(agent, "12A31")


def test_a_use_the_regime_cannot_choose_lists_the_ones_it_can(client, agent):
    sell(client, "12A31")
    response = submit(client, "12A31", firma=firma_of(slip_url(client, "12A31")),
                      rfc="EKU9003173C9", nombre="Escuela Kemper Urgate", regimen="601", uso="D01")  # fmt: skip
    assert response.status_code == 422
    message = text_of(html(response), "uso-error")
    assert message.startswith("Uso del CFDI: D01 (Honorarios médicos, dentales y gastos hospitalarios) no corresponde "
                              "al régimen 601.")  # fmt: skip
    assert message.endswith("puede elegir: G01, G02, G03, I01, I02, I03, I04, I05, I06, I07, I08, S01.")
    selected = html(response).xpath('//select[@id="uso"]/option[@selected]/@value')
    assert selected == ["D01"]
    assert nothing_stored(agent, "12A31")


def test_every_problem_is_shown_at_once(client, agent):
    sell(client, "12A31")
    response = submit(client, "12A31", firma=firma_of(slip_url(client, "12A31")),
                      rfc="EKU90031", nombre="", codigo_postal="", regimen="601", uso="D01")  # fmt: skip
    doc = html(response)
    assert [e.get("id") for e in doc.find_class("error")] == ["rfc-error", "nombre-error", "codigo_postal-error",
                                                              "uso-error"]  # fmt: skip
    # The summary at the top links to each field, in the form's order.
    assert doc.xpath('//*[@id="errores"]//a/@href') == ["#rfc", "#nombre", "#codigo_postal", "#uso"]
    assert nothing_stored(agent, "12A31")


def test_a_company_rfc_with_a_company_regime_is_invoiced(client):
    sell(client, "12A31")
    response = submit(client, "12A31", firma=firma_of(slip_url(client, "12A31")),
                      rfc="eku-900317-3c9", nombre=" escuela   kemper urgate ", regimen="601", uso="G01")  # fmt: skip
    assert response.status_code == 200, response.get_data(as_text=True)
    [cfdi] = cfdis_for(client, "12A31")
    assert (cfdi["rfc"], cfdi["razonSocial"]) == ("EKU9003173C9", "ESCUELA KEMPER URGATE")


def test_garbage_never_breaks_the_page(client, agent):
    sell(client, "12A31")
    firma = firma_of(slip_url(client, "12A31"))
    # A NUL and bytes that are not UTF-8 in the name; Arabic-Indic digits that look like 06600.
    body = urlencode({"firma": firma, "rfc": "<script>" * 200, "regimen": "<b>", "uso": "x" * 5000,
                      "codigo_postal": "٠٦٦٠٠"}) + "&nombre=%00%ED%A0%80%FF"  # fmt: skip
    response = client.post(page_of("12A31"), data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert "<script>" not in body and "&lt;script&gt;" in body
    assert {e.get("id") for e in html(response).find_class("error")} == {
        "rfc-error", "nombre-error", "codigo_postal-error", "regimen-error", "uso-error"}
    assert nothing_stored(agent, "12A31")
    assert client.get("/autofactura/x/y/..%2F..").status_code == 404


# -- proof that the visitor holds the ticket ---------------------------------------------


@pytest.mark.parametrize("firma", [None, "", "0000000000000000", "not-hex"], ids=["missing", "empty", "wrong", "junk"])
def test_a_signed_company_refuses_a_link_without_its_firma(client, agent, firma):
    sell(client, "12A31")
    query = "" if firma is None else f"?firma={firma}"
    page = client.get(page_of("12A31") + query)
    assert page.status_code == 403
    assert "El enlace de este ticket no es válido" in text_of(html(page), "mensaje")
    assert "116.00" not in page.get_data(as_text=True)

    assert submit(client, "12A31", firma=firma).status_code == 403
    assert nothing_stored(agent, "12A31")


def test_a_firma_of_another_ticket_does_not_open_this_one(client, agent):
    sell(client, "T1")
    sell(client, "T2")
    assert submit(client, "T2", firma=firma_of(slip_url(client, "T1"))).status_code == 403
    assert nothing_stored(agent, "T2")


def test_without_url_secret_the_total_is_asked_not_shown(client, agent):
    sell(client, "B1", "58.00", company=KEY_B, branch=BRANCH_B, auth=AUTH_B)
    page = client.get(page_of("B1", company=KEY_B, branch=BRANCH_B))
    assert page.status_code == 200
    doc = html(page)
    assert text_of(doc, "ticket") == "B1" and not has_id(doc, "total")
    assert "58.00" not in page.get_data(as_text=True)
    assert has_id(doc, "monto")
    assert text_of(doc, "plazo") == "23/11/2026"  # sale day plus company B's 3 days

    wrong = submit(client, "B1", company=KEY_B, branch=BRANCH_B, monto="85.00")
    assert wrong.status_code == 422
    assert text_of(html(wrong), "monto-error").startswith("Total del ticket: no coincide")
    assert nothing_stored(agent, "B1", company=KEY_B, branch=BRANCH_B)

    right = submit(client, "B1", company=KEY_B, branch=BRANCH_B, monto="$58")
    assert right.status_code == 200, right.get_data(as_text=True)
    doc = html(right)
    assert text_of(doc, "total") == "$58.00"
    [cfdi] = cfdis_for(client, "B1", company=KEY_B, auth=AUTH_B)
    assert cfdi["uuid"] == text_of(doc, "uuid") and cfdi["idSucursal"] == BRANCH_B

    # The download links carry the total; without it, nothing.
    link = doc.get_element_by_id("descargar-pdf").get("href")
    assert client.get(link).status_code == 200
    refused = client.get(link.split("?")[0])
    assert refused.status_code == 403 and refused.mimetype == "text/html"


def test_a_qr_that_carries_the_total_opens_a_ready_form(client):
    sell(client, "B1", "58.00", company=KEY_B, branch=BRANCH_B, auth=AUTH_B)
    url = slip_url(client, "B1", company=KEY_B, branch=BRANCH_B, auth=AUTH_B)
    assert url.endswith(f"/autofactura/{KEY_B}/{BRANCH_B}/B1?monto=58.00")
    doc = html(client.get(local(url)))
    assert text_of(doc, "total") == "$58.00"
    assert doc.get_element_by_id("monto").get("value") == "58.00"
    response = client.post(doc.forms[0].action, data={**dict(doc.forms[0].form_values()), **CUSTOMER})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert cfdis_for(client, "B1", company=KEY_B, auth=AUTH_B)[0]["uuid"] == text_of(html(response), "uuid")


# -- tickets that cannot be invoiced here ------------------------------------------------


def test_an_unknown_ticket_branch_or_company_is_a_404_page(client):
    sell(client, "12A31")
    for path in (page_of("NOEXISTE"), page_of("12A31", branch="otra-sucursal"), page_of("12A31", company="0" * 40)):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.mimetype == "text/html"
        assert "No encontramos el ticket" in text_of(html(response), "mensaje")


def test_an_expired_ticket_is_refused_with_its_deadline(client, agent):
    sell(client, "AYER", fecha="2026-11-19T18:00:00")  # company A's window closed at midnight
    page = client.get(local(slip_url(client, "AYER")))
    assert page.status_code == 410
    assert "El plazo para facturar el ticket AYER terminó el 19/11/2026" in text_of(html(page), "mensaje")
    assert submit(client, "AYER", firma=firma_of(slip_url(client, "AYER"))).status_code == 410
    assert nothing_stored(agent, "AYER")


def test_a_ticket_the_pos_expired_is_refused(client, agent):
    sell(client, "12A31")
    put_json(client, f"/{KEY_A}/expired", {"noTicket": "12A31", "sucursal": BRANCH_A})
    response = submit(client, "12A31", firma=firma_of(slip_url(client, "12A31")))
    assert response.status_code == 410
    assert "terminó el 20/11/2026" in text_of(html(response), "mensaje")


def test_a_ticket_in_the_global_invoice_is_refused(client, store):
    sell(client, "12A31")
    put_json(client, f"/{KEY_A}/expired", {"noTicket": "12A31", "sucursal": BRANCH_A})
    attach_global_cfdi(store, ["12A31"])
    response = client.get(local(slip_url(client, "12A31")))
    assert response.status_code == 410
    assert "ya está incluido en la factura global" in text_of(html(response), "mensaje")


def test_an_invoiced_ticket_shows_its_uuid_and_downloads(client, store):
    sell(client, "12A31")
    cfdi = attach_customer_cfdi(store, "12A31")
    url = local(slip_url(client, "12A31"))

    page = client.get(url)
    assert page.status_code == 200
    doc = html(page)
    assert "Este ticket ya fue facturado" in text_of(doc, "titulo")
    assert text_of(doc, "uuid") == cfdi.uuid
    assert client.get(doc.get_element_by_id("descargar-pdf").get("href")).data.startswith(b"%PDF")
    # Submitting again issues nothing new.
    again = submit(client, "12A31", firma=firma_of(url))
    assert again.status_code == 409 and text_of(html(again), "uuid") == cfdi.uuid
    assert Cfdi.select().count() == 1


def test_an_invoiced_ticket_without_url_secret_shows_its_uuid_only_for_the_total(client, store):
    sell(client, "B1", "58.00", company=KEY_B, branch=BRANCH_B, auth=AUTH_B)
    cfdi = attach_customer_cfdi(store, "B1", company=KEY_B, branch=BRANCH_B)
    locked = client.get(page_of("B1", company=KEY_B, branch=BRANCH_B))
    assert locked.status_code == 200
    assert cfdi.uuid not in locked.get_data(as_text=True) and has_id(html(locked), "monto")
    wrong = client.get(page_of("B1", company=KEY_B, branch=BRANCH_B) + "?monto=57.99")
    assert cfdi.uuid not in wrong.get_data(as_text=True)
    assert text_of(html(wrong), "monto-error").startswith("Total del ticket: no coincide")
    opened = client.get(page_of("B1", company=KEY_B, branch=BRANCH_B) + "?monto=58.00")
    assert text_of(html(opened), "uuid") == cfdi.uuid


def test_a_facturapi_companys_ticket_is_sent_to_facturapis_portal(tmp_path):
    config = load_config(write_config(tmp_path, facturapi_url="http://127.0.0.1:9/v2"))
    app = create_app(config)
    app.config[CLOCK] = lambda: SALE_DAY
    try:
        client = app.test_client()
        sell(client, "12A31")
        for path in (page_of("12A31"), page_of("NOEXISTE")):  # whether the ticket exists or not
            response = client.get(path)
            assert response.status_code == 404
            assert "portal de Facturapi" in text_of(html(response), "mensaje")
        assert client.post(page_of("12A31"), data=CUSTOMER).status_code == 404
        assert app.config["AGENT"].store.ticket(KEY_A, BRANCH_A, "12A31").status == "ALMACENADO"
    finally:
        app.config["AGENT"].close()


def test_a_ticket_without_a_payment_form_is_sent_to_the_store(client, agent):
    body = ticket_body("12A31", "116.00")
    body["insumo"] = insumo_for("116.00", body["fecha"], payment_form="99")
    assert put_json(client, f"/{KEY_A}/tickets", body).status_code == 200
    response = submit(client, "12A31", firma=firma_of(slip_url(client, "12A31")))
    assert response.status_code == 422
    assert "no indica la forma de pago (99, Por definir); pida su factura en la tienda" in text_of(html(response),
                                                                                                   "mensaje")
    assert nothing_stored(agent, "12A31")


# -- races -------------------------------------------------------------------------------


def during_stamping(monkeypatch, action):
    """Run `action` once, after the CFDI is stamped and before it is recorded: the moment
    another request can slip in."""
    real = self_invoice.render_pdf
    calls = []

    def render_then_act(xml):
        pdf = real(xml)
        if not calls:
            calls.append(xml)
            action()
        return pdf

    monkeypatch.setattr(self_invoice, "render_pdf", render_then_act)
    return calls


def test_two_submits_at_once_make_one_cfdi_and_both_see_it(app, client, agent, monkeypatch):
    sell(client, "12A31")
    firma = firma_of(slip_url(client, "12A31"))
    second = []
    during_stamping(monkeypatch, lambda: second.append(submit(app.test_client(), "12A31", firma=firma)))

    first = submit(client, "12A31", firma=firma)

    assert second[0].status_code == 200  # the one recorded first
    assert first.status_code == 409
    uuid = text_of(html(second[0]), "uuid")
    assert text_of(html(first), "uuid") == uuid
    assert "Este ticket ya fue facturado" in text_of(html(first), "titulo")
    assert [c["uuid"] for c in cfdis_for(client, "12A31")] == [uuid]
    # The losing stamp left no files behind.
    assert sorted(p.suffix for p in (agent.data_dir / "cfdi" / KEY_A).iterdir()) == [".pdf", ".xml"]


def test_a_ticket_expired_while_stamping_is_not_invoiced(client, agent, monkeypatch):
    sell(client, "12A31")
    during_stamping(monkeypatch, lambda: agent.store.expire_ticket(KEY_A, BRANCH_A, "12A31", "window closed"))
    response = submit(client, "12A31", firma=firma_of(slip_url(client, "12A31")))
    assert response.status_code == 410
    assert agent.store.ticket(KEY_A, BRANCH_A, "12A31").status == "EXPIRADO"
    assert Cfdi.select().count() == 0 and not any((agent.data_dir / "cfdi" / KEY_A).iterdir())


def test_a_ticket_the_pos_replaced_while_stamping_is_not_invoiced(client, agent, monkeypatch):
    sell(client, "B1", "58.00", company=KEY_B, branch=BRANCH_B, auth=AUTH_B)
    during_stamping(monkeypatch, lambda: sell(client, "B1", "60.00", company=KEY_B, branch=BRANCH_B, auth=AUTH_B))
    response = submit(client, "B1", company=KEY_B, branch=BRANCH_B, monto="58.00")
    assert response.status_code == 409
    assert "La tienda modificó el ticket B1" in text_of(html(response), "mensaje")
    assert nothing_stored(agent, "B1", company=KEY_B, branch=BRANCH_B)


def test_an_unexpected_failure_is_an_html_page_and_stores_nothing(client, agent, monkeypatch):
    sell(client, "12A31")

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(self_invoice, "build_xml", broken)
    response = submit(client, "12A31", firma=firma_of(slip_url(client, "12A31")))
    assert response.status_code == 500
    assert response.mimetype == "text/html"
    assert "No pudimos generar su factura" in text_of(html(response), "titulo")
    assert nothing_stored(agent, "12A31")
