"""GET /{key}/cfdis: which CFDI came out of a ticket, in the contract's exact format."""
from __future__ import annotations

import pytest

import json
import tracemalloc
from datetime import datetime

from helpers import AUTH_A, BRANCH_A, BRANCH_A2, KEY_A, put_json, ticket_body
from helpers_cfdi import attach_customer_cfdi, attach_global_cfdi

from agent.models import Ticket

pytestmark = pytest.mark.both_databases  # tests/postgres.py

URL = f"/{KEY_A}/cfdis"

SEED_FIELDS = [
    "idSucursal", "rfc", "razonSocial", "fecha", "folio", "status", "uuid", "monto", "idCfd", "serie",
    "subtotal", "descuento", "tipoMoneda", "tipoCambio", "iva", "fechaCancelacion", "tienePDF", "pedimento",
    "fechaPedimento", "aduana", "pdfAndXmlDownload", "pdfDownload", "xmlDownload", "cancelCfdi", "produccion",
    "noTicket",
]  # fmt: skip


def get(client, **params):
    return client.get(URL, query_string=params, headers=AUTH_A)


def store_ticket(client, number, total="453.00", branch=BRANCH_A):
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body(number, total, branch=branch)).status_code == 200


def test_customer_cfdi_of_a_ticket_in_the_contract_format(client, store):
    store_ticket(client, "12k29", "453.00")
    cfdi = attach_customer_cfdi(store, "12k29")
    response = get(client, ticket="12k29", sucursal=BRANCH_A)
    assert response.status_code == 200
    assert response.content_type == "text/plain; charset=UTF-8"
    [row] = json.loads(response.get_data(as_text=True))["cfdis"]
    assert list(row) == SEED_FIELDS
    base = f"http://localhost/{KEY_A}"
    query = f"idCfdi={cfdi.id}&produccion=false&representacion="
    assert row == {
        "idSucursal": BRANCH_A,
        "rfc": "SIMD6406302E8",
        "razonSocial": "Empresa Pruebas",
        "fecha": "2019-01-31 12:31:40.0",
        "folio": "",
        "status": "ALMACENADO",
        "uuid": cfdi.uuid,
        "monto": "453.000000",
        "idCfd": cfdi.id,
        "serie": "",
        "subtotal": "390.520000",
        "descuento": "0.000000",
        "tipoMoneda": "MXN",
        "tipoCambio": "1.0000",
        "iva": "62.480000",
        "fechaCancelacion": "",
        "tienePDF": "true",
        "pedimento": "",
        "fechaPedimento": "",
        "aduana": "",
        "pdfAndXmlDownload": f"{base}/descargasCfdi?{query}XML_PDF",
        "pdfDownload": f"{base}/descargasCfdi?{query}PDF",
        "xmlDownload": f"{base}/descargasCfdi?{query}XML",
        "cancelCfdi": f"{base}/cfdis/cancelar/{cfdi.uuid}",
        "produccion": "false",
        "noTicket": "12k29",
    }


def test_the_links_in_a_row_work(client, store):
    store_ticket(client, "L1")
    attach_customer_cfdi(store, "L1")
    [row] = json.loads(get(client, ticket="L1").get_data(as_text=True))["cfdis"]
    for field, mimetype in (("xmlDownload", "application/xml"), ("pdfDownload", "application/pdf"),
                            ("pdfAndXmlDownload", "application/zip")):
        response = client.get(row[field].replace("http://localhost", ""), headers=AUTH_A)
        assert (response.status_code, response.mimetype) == (200, mimetype)


def test_public_url_is_the_base_of_the_links(config, tmp_path):
    from agent.app import create_app

    server = config.server.model_copy(update={"public_url": "https://agente.tienda.mx:8572"})
    app = create_app(config.model_copy(update={"server": server}))
    try:
        client = app.test_client()
        store_ticket(client, "P1")
        attach_customer_cfdi(app.config["AGENT"].store, "P1")
        [row] = json.loads(get(client, ticket="P1").get_data(as_text=True))["cfdis"]
        assert row["xmlDownload"].startswith(f"https://agente.tienda.mx:8572/{KEY_A}/descargasCfdi?")
    finally:
        app.config["AGENT"].close()


def test_a_global_cfdi_answers_for_each_of_its_tickets(client, store):
    for number in ("G1", "G2"):
        store_ticket(client, number, "100.00")
        store.expire_ticket(KEY_A, BRANCH_A, number, "window closed")
    cfdi = attach_global_cfdi(store, ["G1", "G2"])
    [row] = json.loads(get(client, ticket="G2", sucursal=BRANCH_A).get_data(as_text=True))["cfdis"]
    assert (row["rfc"], row["razonSocial"], row["noTicket"]) == ("XAXX010101000", "PUBLICO EN GENERAL", "G2")
    assert (row["serie"], row["folio"], row["uuid"], row["monto"]) == ("FG", "1", cfdi.uuid, "200.000000")


def test_no_cfdi_for_an_unknown_ticket_is_a_204(client):
    response = get(client, ticket="10301", sucursal=BRANCH_A2)
    assert response.status_code == 204
    assert response.content_type == "text/plain; charset=UTF-8"
    assert response.headers["X-Mensaje"] == "No hay cfdi generados"


def test_a_stored_ticket_without_cfdi_is_the_contract_400(client):
    store_ticket(client, "100", branch=BRANCH_A2)
    response = get(client, ticket="100", sucursal=BRANCH_A2)
    assert response.status_code == 400
    assert response.get_data(as_text=True) == f"Ticket numero:100 , sucursal: {BRANCH_A2}, aun no genera cfdi"


def test_ticket_without_branch_searches_every_branch(client, store):
    store_ticket(client, "X1", branch=BRANCH_A)
    store_ticket(client, "X1", branch=BRANCH_A2)
    attach_customer_cfdi(store, "X1", branch=BRANCH_A2)
    rows = json.loads(get(client, ticket="X1").get_data(as_text=True))["cfdis"]
    assert [row["idSucursal"] for row in rows] == [BRANCH_A2]


def test_no_parameters_lists_every_cfdi_of_the_company_and_branch_filters(client, store):
    for number, branch in (("A1", BRANCH_A), ("A2", BRANCH_A), ("B1", BRANCH_A2)):
        store_ticket(client, number, branch=branch)
        attach_customer_cfdi(store, number, branch=branch)
    store_ticket(client, "none")  # no CFDI: not listed
    everything = json.loads(get(client).get_data(as_text=True))["cfdis"]
    assert sorted(row["noTicket"] for row in everything) == ["A1", "A2", "B1"]
    only_a2 = json.loads(get(client, sucursal=BRANCH_A2).get_data(as_text=True))["cfdis"]
    assert [row["noTicket"] for row in only_a2] == ["B1"]


def test_cancelled_cfdis_stay_listed_with_their_cancellation_date(client, store):
    store_ticket(client, "C1")
    cfdi = attach_customer_cfdi(store, "C1")
    store.record_cancellation(cfdi.id, "02", None, datetime(2019, 2, 1, 18, 0, 0))
    [row] = json.loads(get(client, ticket="C1").get_data(as_text=True))["cfdis"]
    assert row["status"] == "CANCELADO"
    assert row["fechaCancelacion"] == "2019-02-01 12:00:00.0"  # UTC 18:00 is noon in Mexico City


def test_bad_filters_are_named(client):
    response = get(client, ticket="1 2")
    assert (response.status_code, response.get_data(as_text=True)) == (
        400, "El no. de ticket no contiene el formato correcto."
    )
    response = get(client, sucursal="nowhere")
    assert response.status_code == 400
    assert response.get_data(as_text=True) == "sucursal: la sucursal nowhere no existe para esta empresa"


def test_100000_rows_stream_without_holding_them_in_memory(client, store, agent):
    # Fill the tables directly: one global CFDI over 100,000 tickets.
    now = datetime(2026, 11, 20, 12, 0, 0)
    columns = "company, branch, number, sold_at, total, subtotal, discount, taxes, iva, ieps, payment_form, " \
              "environment, insumo, body_hash, status, created_at, updated_at, version"
    stamp = str(now)
    rows = [(KEY_A, BRANCH_A, f"N{i}", stamp, 1160000, 1000000, 0, 160000, 160000, 0, "01", "QA", "-", "-",
             "EXPIRADO", stamp, stamp, 1) for i in range(100_000)]
    with agent.db.atomic():
        agent.db.cursor().executemany(f"INSERT INTO ticket ({columns}) VALUES ({', '.join([agent.db.param] * 18)})", rows)
    store_ticket(client, "seed")
    ids = [t.id for t in Ticket.select(Ticket.id).where(Ticket.status == "EXPIRADO")]
    from helpers_cfdi import PDF, XML, new_cfdi

    store.record_cfdi(new_cfdi(kind="global", total="116000.00"), ids, xml=XML, pdf=PDF)

    response = client.get(URL, headers=AUTH_A)
    assert response.status_code == 200
    assert response.is_streamed
    tracemalloc.start()
    count = 0
    size = 0
    for chunk in response.response:
        size += len(chunk)
        count += chunk.count('"noTicket"') if isinstance(chunk, str) else chunk.count(b'"noTicket"')
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 100_000
    assert size > 100_000 * 900  # every row really went out
    assert peak < 20 * 1024 * 1024, f"streaming 100,000 rows peaked at {peak / 1e6:.1f} MB"
