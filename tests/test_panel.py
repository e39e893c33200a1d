"""The manager's panel: behind the company's credentials, today's figures per branch,
ticket search with history, reprint, CFDI downloads, and the factura global built from a
preview. Spanish pages, server-rendered."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from helpers import AUTH_A, AUTH_B, BRANCH_A, BRANCH_A2, BRANCH_B, KEY_A, KEY_B, put_json, ticket_body
from helpers_cfdi import attach_customer_cfdi

from agent.models import PrintJob
from service.background import Background

pytestmark = pytest.mark.both_databases  # tests/postgres.py

MEXICO = ZoneInfo("America/Mexico_City")


def now_local(**delta) -> str:
    return (datetime.now(timezone.utc).astimezone(MEXICO) + timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%S")


def sell(client, number, total="116.00", key=KEY_A, auth=AUTH_A, branch=BRANCH_A, fecha=None):
    body = ticket_body(number, total, branch=branch, fecha=fecha or now_local(minutes=-5))
    response = put_json(client, f"/{key}/tickets", body, auth)
    assert response.status_code == 200, response.get_data(as_text=True)


def login(client, user="tepox", password="tepox"):
    return client.post("/panel/entrar", data={"usuario": user, "contrasena": password})


def token(page: str) -> str:
    return re.search(r'name="token" value="([^"]+)"', page).group(1)


@pytest.fixture
def manager(client):
    assert login(client).status_code == 302
    return client


def test_pages_need_the_companys_credentials(client):
    response = client.get("/panel/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/panel/entrar")
    bad = login(client, password="otra")
    assert bad.status_code == 401 and "Usuario o contraseña incorrectos." in bad.get_data(as_text=True)
    assert client.get("/panel/tickets").status_code == 302
    good = login(client)
    assert good.headers["Location"] == "/panel/"
    assert client.get("/panel/").status_code == 200
    client.post("/panel/salir")
    assert client.get("/panel/").status_code == 302


def test_the_agents_address_opens_the_panel(client):
    assert client.get("/").headers["Location"] == "/panel/"


def test_a_login_never_redirects_away_from_the_panel(client):
    response = client.post("/panel/entrar?next=https://evil.example.com/", data={"usuario": "tepox", "contrasena": "tepox"})
    assert response.headers["Location"] == "/panel/"


def test_today_shows_each_branchs_tickets_prints_and_totals(manager, store):
    sell(manager, "H-1", "116.00")
    sell(manager, "H-2", "58.00")
    sell(manager, "H-3", "100.00", branch=BRANCH_A2)
    sell(manager, "OLD", "999.00", fecha=now_local(days=-2))  # not today
    attach_customer_cfdi(store, "H-2")
    page = manager.get("/panel/").get_data(as_text=True)
    centro = page.split('id="sucursal-' + BRANCH_A)[1].split("</section>")[0]
    assert re.search(r"Tickets guardados</th><td class=\"n\">2</td><td class=\"m\">\$174.00", centro)
    assert re.search(r"Impresiones pendientes</th><td class=\"n\">2<", centro)  # no worker ran: both wait
    assert re.search(r"Facturados por clientes</th><td class=\"n\">1</td><td class=\"m\">\$58.00", centro)
    norte = page.split('id="sucursal-' + BRANCH_A2)[1].split("</section>")[0]
    assert re.search(r"Tickets guardados</th><td class=\"n\">1</td><td class=\"m\">\$100.00", norte)


def test_another_companys_tickets_are_never_shown(manager, client):
    sell(client, "B-SECRET", key=KEY_B, auth=AUTH_B, branch=BRANCH_B, fecha=now_local(minutes=-5))
    page = manager.get("/panel/tickets?numero=B-SECRET").get_data(as_text=True)
    assert "Ningún ticket con esos datos." in page and "/panel/tickets/" + BRANCH_B not in page
    assert manager.get(f"/panel/tickets/{BRANCH_B}/B-SECRET").status_code == 404


def test_search_by_number_date_and_status(manager):
    sell(manager, "S-100", fecha="2026-11-20T10:00:00")
    sell(manager, "S-200", fecha="2026-11-19T10:00:00")
    page = manager.get("/panel/tickets?numero=S-&fecha=2026-11-20").get_data(as_text=True)
    assert "S-100" in page and "S-200" not in page
    page = manager.get("/panel/tickets?estado=FACTURADO").get_data(as_text=True)
    assert "S-100" not in page and "Ningún ticket con esos datos." in page
    bad = manager.get("/panel/tickets?fecha=20/11/2026").get_data(as_text=True)
    assert "La fecha debe tener el formato AAAA-MM-DD." in bad


def test_a_ticket_shows_its_history_and_cfdi_with_downloads(manager, store):
    sell(manager, "T-1", fecha="2026-11-20T10:00:00")
    sell(manager, "T-1", "232.00", fecha="2026-11-20T10:00:00")  # replaced
    cfdi = attach_customer_cfdi(store, "T-1")
    page = manager.get(f"/panel/tickets/{BRANCH_A}/T-1").get_data(as_text=True)
    assert "Reemplazado" in page and "monto 116.00 -&gt; 232.00" in page
    assert cfdi.uuid in page and "Facturado" in page
    xml = manager.get(f"/panel/cfdi/{cfdi.id}.xml")
    assert xml.status_code == 200 and xml.mimetype == "application/xml"
    assert manager.get(f"/panel/cfdi/{cfdi.id}.pdf").data.startswith(b"%PDF")
    assert manager.get("/panel/cfdi/../tickets.db.xml").status_code == 404


def test_reprint_queues_a_slip_and_needs_the_forms_token(manager, store):
    sell(manager, "R-1")
    page = manager.get(f"/panel/tickets/{BRANCH_A}/R-1").get_data(as_text=True)
    refused = manager.post(f"/panel/tickets/{BRANCH_A}/R-1/reimprimir", data={})
    assert refused.status_code == 400 and "El formulario venció" in refused.get_data(as_text=True)
    done = manager.post(f"/panel/tickets/{BRANCH_A}/R-1/reimprimir", data={"token": token(page)}, follow_redirects=True)
    assert "Reimpresión del ticket R-1 enviada a la cola de impresión." in done.get_data(as_text=True)
    ticket = store.ticket(KEY_A, BRANCH_A, "R-1")
    assert [j.reason for j in PrintJob.select().where(PrintJob.ticket == ticket.id).order_by(PrintJob.id)] == ["sale", "reprint"]


def test_a_closed_period_is_previewed_then_built(manager, agent):
    Background(agent)  # its global invoicing, not started: the test drives it
    sell(manager, "G-1", "116.00", fecha="2026-11-20T10:00:00")
    sell(manager, "G-2", "58.00", fecha="2026-11-20T11:00:00")
    page = manager.get("/panel/facturas-globales").get_data(as_text=True)
    form = {"token": token(page), "sucursal": BRANCH_A, "fecha": "2026-11-20"}
    preview = manager.post("/panel/facturas-globales/vista-previa", data=form).get_data(as_text=True)
    assert re.search(r'<td class="n">2</td><td class="m">\$150.00', preview)  # subtotal 100 + 50
    assert "$174.00" in preview
    assert manager.get("/panel/facturas-globales").get_data(as_text=True).count("Timbrada") == 0  # a preview builds nothing
    built = manager.post("/panel/facturas-globales/emitir", data=form, follow_redirects=True).get_data(as_text=True)
    assert "Factura global FG-1 timbrada: 2 tickets." in built
    assert "Timbrada" in built and "$174.00" in built
    again = manager.post("/panel/facturas-globales/emitir", data=form, follow_redirects=True).get_data(as_text=True)
    assert again.count("FG-") == 2  # the row, and the message about it: nothing new was issued


def test_an_open_period_cannot_be_built(manager, agent):
    Background(agent)
    page = manager.get("/panel/facturas-globales").get_data(as_text=True)
    tomorrow = (datetime.now(timezone.utc).astimezone(MEXICO) + timedelta(days=1)).date().isoformat()
    response = manager.post("/panel/facturas-globales/vista-previa",
                            data={"token": token(page), "sucursal": BRANCH_A, "fecha": tomorrow}, follow_redirects=True)
    assert "aún no termina" in response.get_data(as_text=True)


def test_the_health_banner_names_a_printer_in_trouble(manager, store):
    sell(manager, "E-1")
    PrintJob.update(last_error="printer tcp://192.168.1.50:9100 (job x): refused the connection").execute()
    page = manager.get("/panel/").get_data(as_text=True)
    banner = page.split('id="salud"')[1].split("</section>")[0]
    assert 'class="health warn"' in page
    assert "Impresora · Centro" in banner and "refused the connection" in banner
