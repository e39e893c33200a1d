"""/{key}/cfdis/cancelar/{uuid}: cancellation goes through the upstream, and the tickets
go back into the flow so each ends up in a valid CFDI again."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from helpers import AUTH_A, BRANCH_A, KEY_A, KEY_B, AUTH_B, put_json, ticket_body
from helpers_cfdi import attach_customer_cfdi, attach_global_cfdi

from sync.upstream import CANCEL_PENDING, CANCELLED, CancelResult, UpstreamError

pytestmark = pytest.mark.both_databases  # tests/postgres.py


def cancel(client, uuid, method="post", **params):
    return getattr(client, method)(f"/{KEY_A}/cfdis/cancelar/{uuid}", query_string=params, headers=AUTH_A)


@pytest.fixture
def invoiced(client, store):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("C1"))
    return attach_customer_cfdi(store, "C1")


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_cancelling_a_customer_cfdi_reopens_its_ticket(client, store, invoiced, method):
    response = cancel(client, invoiced.uuid, method)
    assert response.status_code == 200
    assert response.get_data(as_text=True) == f"Se cancelo el cfdi: {invoiced.uuid} motivo: 02"
    cfdi = store.cfdi(KEY_A, invoiced.id)
    assert (cfdi.status, cfdi.cancel_motive) == ("CANCELADO", "02")
    ticket = store.ticket(KEY_A, BRANCH_A, "C1")
    assert (ticket.status, ticket.cfdi_id) == ("ALMACENADO", None)
    assert store.events(ticket)[-1].kind == "cfdi_cancelled"
    [row] = json.loads(client.get(f"/{KEY_A}/cfdis?ticket=C1", headers=AUTH_A).get_data(as_text=True))["cfdis"]
    assert row["status"] == "CANCELADO" and row["fechaCancelacion"] != ""


def test_a_cancelled_ticket_can_be_invoiced_again(client, store, invoiced):
    cancel(client, invoiced.uuid)
    again = attach_customer_cfdi(store, "C1")
    rows = json.loads(client.get(f"/{KEY_A}/cfdis?ticket=C1", headers=AUTH_A).get_data(as_text=True))["cfdis"]
    assert [(row["uuid"], row["status"]) for row in rows] == [
        (invoiced.uuid, "CANCELADO"), (again.uuid, "ALMACENADO")
    ]


def test_cancelling_a_global_cfdi_sends_its_tickets_back_to_expired(client, store):
    for number in ("G1", "G2"):
        put_json(client, f"/{KEY_A}/tickets", ticket_body(number))
        store.expire_ticket(KEY_A, BRANCH_A, number, "window closed")
    cfdi = attach_global_cfdi(store, ["G1", "G2"])
    assert cancel(client, cfdi.uuid, motivo="03").status_code == 200
    assert {store.ticket(KEY_A, BRANCH_A, n).status for n in ("G1", "G2")} == {"EXPIRADO"}


def test_substitution_moves_the_tickets_to_the_new_cfdi(client, store, invoiced):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("C2"))
    substitute = attach_customer_cfdi(store, "C2")
    response = cancel(client, invoiced.uuid, motivo="01", folioSustitucion=substitute.uuid.lower())
    assert response.status_code == 200
    ticket = store.ticket(KEY_A, BRANCH_A, "C1")
    assert (ticket.status, ticket.cfdi_id) == ("FACTURADO", substitute.id)


def test_motive_01_needs_the_substitute(client, invoiced):
    response = cancel(client, invoiced.uuid, motivo="01")
    assert response.status_code == 400
    assert response.get_data(as_text=True).startswith("folioSustitucion: es requerido con el motivo 01")


@pytest.mark.parametrize("motive", ["05", "2", "x"])
def test_unknown_motive_is_refused(client, store, invoiced, motive):
    response = cancel(client, invoiced.uuid, motivo=motive)
    assert response.status_code == 400
    assert response.get_data(as_text=True) == f'motivo: debe ser 01, 02, 03 o 04 (se recibió "{motive}")'
    assert store.cfdi(KEY_A, invoiced.id).status == "ALMACENADO"


def test_motive_in_a_json_body(client, store, invoiced):
    response = client.post(f"/{KEY_A}/cfdis/cancelar/{invoiced.uuid}", data=json.dumps({"motivo": "03"}),
                           headers={**AUTH_A, "Content-Type": "application/json"})
    assert response.status_code == 200
    assert store.cfdi(KEY_A, invoiced.id).cancel_motive == "03"


def test_get_does_not_cancel(client, store, invoiced):
    response = cancel(client, invoiced.uuid, "get")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST, PUT, DELETE"
    assert store.cfdi(KEY_A, invoiced.id).status == "ALMACENADO"


def test_cancelling_twice_is_harmless(client, invoiced):
    cancel(client, invoiced.uuid)
    response = cancel(client, invoiced.uuid)
    assert (response.status_code, response.get_data(as_text=True)) == (
        200, f"El cfdi {invoiced.uuid} ya estaba cancelado"
    )


def test_unknown_uuid_and_other_companies_uuid_are_404(client, invoiced):
    assert cancel(client, "AFB80450-2813-4046-9B1F-9B6647DD545F").status_code == 404
    assert cancel(client, "../../etc").status_code == 404
    response = client.post(f"/{KEY_B}/cfdis/cancelar/{invoiced.uuid}", headers=AUTH_B)
    assert response.status_code == 404


def test_the_sandbox_refuses_a_production_cfdi_and_nothing_changes(client, store):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P1"))
    cfdi = attach_customer_cfdi(store, "P1", production=True)
    response = cancel(client, cfdi.uuid)
    assert response.status_code == 502
    assert "sandbox no puede cancelar un CFDI de producción" in response.get_data(as_text=True)
    assert store.cfdi(KEY_A, cfdi.id).status == "ALMACENADO"
    assert store.ticket(KEY_A, BRANCH_A, "P1").status == "FACTURADO"


class PendingUpstream:
    kind = "test"

    def cancel(self, uuid, motive, substitute=None, *, production, upstream_id=None):
        return CancelResult(CANCEL_PENDING, datetime.now(timezone.utc).replace(tzinfo=None))


class DownUpstream:
    kind = "test"

    def cancel(self, uuid, motive, substitute=None, *, production, upstream_id=None):
        raise UpstreamError("sin conexión con el PAC")


def test_a_pending_cancellation_changes_nothing_yet(client, store, invoiced, agent):
    agent.upstream = PendingUpstream()
    response = cancel(client, invoiced.uuid)
    assert response.status_code == 202
    assert store.cfdi(KEY_A, invoiced.id).status == "ALMACENADO"


def test_an_unreachable_upstream_changes_nothing(client, store, invoiced, agent):
    agent.upstream = DownUpstream()
    response = cancel(client, invoiced.uuid)
    assert response.status_code == 502
    assert response.get_data(as_text=True) == f"No se pudo cancelar el cfdi {invoiced.uuid}: sin conexión con el PAC"
    assert store.ticket(KEY_A, BRANCH_A, "C1").status == "FACTURADO"


def test_sandbox_cancel_result():
    from sync.upstream import SandboxUpstream

    assert SandboxUpstream().cancel("X", "02", production=False).status == CANCELLED
    with pytest.raises(UpstreamError):
        SandboxUpstream().cancel("X", "09", production=False)
