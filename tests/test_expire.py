"""PUT/POST /{key}/expired: the POS closes a ticket's self-invoicing window early."""
from __future__ import annotations

import pytest

from helpers import AUTH_A, BRANCH_A, KEY_A, dumps, put_json, ticket_body
from helpers_cfdi import attach_customer_cfdi, attach_global_cfdi

pytestmark = pytest.mark.both_databases  # tests/postgres.py

URL = f"/{KEY_A}/expired"


def expire(client, number="12A30", branch=BRANCH_A, method="post"):
    return getattr(client, method)(
        URL, data=dumps({"noTicket": number, "sucursal": branch}), headers={**AUTH_A, "Content-Type": "application/json"}
    )


@pytest.mark.parametrize("method", ["post", "put"])
def test_expiring_a_stored_ticket(client, store, method):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("12A30"))
    response = expire(client, method=method)
    assert response.status_code == 200
    assert response.get_data(as_text=True) == f"Se expiro no_ticket: 12A30 sucursal : {BRANCH_A}"
    ticket = store.ticket(KEY_A, BRANCH_A, "12A30")
    assert ticket.status == "EXPIRADO"
    assert ticket.expired_at is not None
    [event] = store.events(ticket)
    assert event.kind == "expired"
    assert event.detail == "expired by the POS (PUT /expired)"


def test_expiring_twice_is_harmless_and_leaves_one_event(client, store):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("12A30"))
    assert expire(client).status_code == 200
    first = store.ticket(KEY_A, BRANCH_A, "12A30").expired_at
    assert expire(client).status_code == 200
    ticket = store.ticket(KEY_A, BRANCH_A, "12A30")
    assert ticket.expired_at == first
    assert len(store.events(ticket)) == 1


def test_unknown_ticket_gets_the_contract_text(client):
    response = expire(client, number="12As30")
    assert response.status_code == 400
    assert response.get_data(as_text=True) == f"Ticket numero: 12As30, sucursal: {BRANCH_A}, no existe"


def test_ticket_of_another_branch_does_not_exist_here(client):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("12A30", branch=BRANCH_A))
    response = expire(client, branch="0dd6aebbea85662fd2fe2f76ce4258b3")
    assert response.status_code == 400
    assert response.get_data(as_text=True).endswith("no existe")


def test_expiring_an_invoiced_ticket_is_a_409(client, store):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("12A30"))
    cfdi = attach_customer_cfdi(store, "12A30")
    response = expire(client)
    assert response.status_code == 409
    assert response.get_data(as_text=True) == (
        f"El ticket 12A30 de la sucursal {BRANCH_A} ya fue facturado (CFDI {cfdi.uuid}); no se puede expirar."
    )
    assert store.ticket(KEY_A, BRANCH_A, "12A30").status == "FACTURADO"


def test_a_ticket_already_in_a_global_cfdi_stays_there(client, store):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("12A30"))
    store.expire_ticket(KEY_A, BRANCH_A, "12A30", "window closed")
    attach_global_cfdi(store, ["12A30"])
    assert expire(client).status_code == 200
    assert store.ticket(KEY_A, BRANCH_A, "12A30").status == "GLOBAL"


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"sucursal": BRANCH_A}, "noTicket: es requerido"),
        ({"noTicket": "12A30"}, "sucursal: es requerido"),
        ({"noTicket": "12 A30", "sucursal": BRANCH_A}, "El no. de ticket no contiene el formato correcto."),
        ({"noTicket": "12A30", "sucursal": "otra"}, "sucursal: la sucursal otra no existe para esta empresa"),
    ],
)
def test_bad_bodies_name_the_field(client, body, expected):
    response = client.post(URL, data=dumps(body), headers={**AUTH_A, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.get_data(as_text=True) == expected


def test_expire_needs_json(client):
    response = client.post(URL, data="noTicket=1", headers={**AUTH_A, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
