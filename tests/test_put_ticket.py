"""PUT /{key}/tickets: a ticket is stored once, and every bad field is named in Spanish."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from helpers import AUTH_A, BRANCH_A, BRANCH_A2, KEY_A, dumps, insumo_for, put_json, ticket_body

from agent.models import Ticket

pytestmark = pytest.mark.both_databases  # tests/postgres.py

URL = f"/{KEY_A}/tickets"


def count_tickets() -> int:
    return Ticket.select().count()


def test_valid_ticket_is_stored_with_its_amounts(client, store):
    response = put_json(client, URL, ticket_body("12A31", "12.36"))
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "se guardo correctamente"
    assert response.content_type == "text/plain; charset=UTF-8"
    ticket = store.ticket(KEY_A, BRANCH_A, "12A31")
    assert ticket.status == "ALMACENADO"
    assert ticket.total == Decimal("12.36")
    assert ticket.subtotal == Decimal("10.66")
    assert ticket.iva == Decimal("1.70")
    assert ticket.payment_form == "01"
    assert ticket.sold_at.isoformat() == "2026-11-20T11:09:46"
    assert ticket.insumo == insumo_for("12.36")


@pytest.mark.parametrize("number", ["12A31", "a", "A" * 40, "TK-2026_11", "0001"])
def test_ticket_number_formats_accepted(client, number):
    assert put_json(client, URL, ticket_body(number)).status_code == 200


@pytest.mark.parametrize("number", ["", "A" * 41, "12 A", "12/A", "ñ1", "12.5", None, True, ["1"]])
def test_bad_ticket_number_gets_the_contract_text(client, number):
    response = put_json(client, URL, ticket_body(number=number))
    assert response.status_code == 400
    assert response.get_data(as_text=True) == "El no. de ticket no contiene el formato correcto."
    assert count_tickets() == 0


def test_integer_ticket_number_is_the_same_ticket_as_its_text(client, store):
    assert put_json(client, URL, ticket_body(number=10301)).status_code == 200
    assert store.ticket(KEY_A, BRANCH_A, "10301") is not None
    assert put_json(client, URL, ticket_body(number="10301")).status_code == 200
    assert count_tickets() == 1


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"sucursal": "no-such-branch"}, "sucursal: la sucursal no-such-branch no existe para esta empresa"),
        ({"sucursal": None}, "sucursal: es requerido"),
        ({"fecha": "2019-01-25 11:09:46"}, 'fecha: debe tener el formato AAAA-MM-DDTHH:MM:SS (se recibió "2019-01-25 11:09:46")'),
        ({"fecha": "2019-02-30T11:09:46"}, 'fecha: debe tener el formato AAAA-MM-DDTHH:MM:SS (se recibió "2019-02-30T11:09:46")'),
        ({"fecha": None}, "fecha: es requerido"),
        ({"monto": Decimal("0")}, "monto: debe ser un importe positivo con a lo más 2 decimales (se recibió 0.0)"),
        ({"monto": Decimal("-12.36")}, "monto: debe ser un importe positivo"),
        ({"monto": Decimal("12.365")}, "monto: debe ser un importe positivo"),
        ({"monto": "doce"}, "monto: debe ser un importe positivo"),
        ({"monto": None}, "monto: es requerido"),
        ({"monto": Decimal("12.37")}, "monto: 12.37 no coincide con el Total del insumo (12.36)"),
        ({"insumo": None}, "insumo: es requerido"),
        ({"insumo": 5}, "insumo: debe ser texto"),
        ({"insumo": "00|CFD33BASE|QA|4.0|\n01|.."}, "insumo: inválido, línea 2"),
    ],
)
def test_each_bad_field_is_named_and_nothing_is_stored(client, change, expected):
    body = ticket_body("12A31", "12.36")
    body.update(change)
    response = put_json(client, URL, body)
    assert response.status_code == 400
    assert expected in response.get_data(as_text=True)
    assert count_tickets() == 0


def test_insumo_error_names_its_line(client):
    body = ticket_body()
    lines = body["insumo"].split("\n")
    lines[3] = "03|002|Tasa|0.160000|10.66|9.99|"
    body["insumo"] = "\n".join(lines)
    text = put_json(client, URL, body).get_data(as_text=True)
    assert text.startswith("insumo: inválido, línea 4:")
    assert "Importe" in text


def test_several_problems_are_reported_together_ticket_number_first(client):
    body = ticket_body(number="bad number", fecha="ayer")
    body["monto"] = "x"
    lines = put_json(client, URL, body).get_data(as_text=True).split("\n")
    assert lines[0] == "El no. de ticket no contiene el formato correcto."
    assert any(line.startswith("fecha:") for line in lines)
    assert any(line.startswith("monto:") for line in lines)


def test_monto_accepts_a_numeric_string_and_an_integer(client):
    body = ticket_body("S1", "12.36")
    body["monto"] = "12.36"
    assert put_json(client, URL, body).status_code == 200
    body = ticket_body("I1", "100.00")
    assert put_json(client, URL, dumps(body).replace('"monto": 100.0', '"monto": 100')).status_code == 200


def test_data_is_accepted_as_the_contract_table_names_fecha(client, store):
    body = ticket_body("D1")
    body["data"] = body.pop("fecha")
    assert put_json(client, URL, body).status_code == 200
    assert store.ticket(KEY_A, BRANCH_A, "D1").sold_at.isoformat() == "2026-11-20T11:09:46"


def test_fecha_and_data_that_disagree_are_refused(client):
    body = ticket_body("D2", data="2026-11-21T00:00:00")
    response = put_json(client, URL, body)
    assert response.status_code == 400
    assert "fecha: se recibieron fecha y data con valores distintos" in response.get_data(as_text=True)


def test_monto_never_goes_through_a_float(client, store):
    # 0.1 + 0.2 style: a float would store 3.3000000000000003.
    body = ticket_body("F1", "3.30")
    response = put_json(client, URL, dumps(body).replace('"monto": 3.3', '"monto": 3.30'))
    assert response.status_code == 200
    assert store.ticket(KEY_A, BRANCH_A, "F1").total == Decimal("3.30")


# -- idempotency and replacement -------------------------------------------------------


def test_identical_resend_stores_nothing_twice(client, store):
    body = ticket_body("R1", "50.00")
    for _ in range(3):
        response = put_json(client, URL, body)
        assert (response.status_code, response.get_data(as_text=True)) == (200, "se guardo correctamente")
    assert count_tickets() == 1
    assert store.events(store.ticket(KEY_A, BRANCH_A, "R1")) == []


def test_crlf_resend_is_identical(client):
    body = ticket_body("R2", "50.00")
    put_json(client, URL, body)
    body["insumo"] = body["insumo"].replace("\n", "\r\n")
    assert put_json(client, URL, body).status_code == 200
    assert count_tickets() == 1


def test_same_number_in_another_branch_is_another_ticket(client, store):
    put_json(client, URL, ticket_body("R3", branch=BRANCH_A))
    put_json(client, URL, ticket_body("R3", branch=BRANCH_A2))
    assert count_tickets() == 2


def test_new_body_replaces_a_stored_unsynced_ticket(client, store):
    put_json(client, URL, ticket_body("R4", "50.00"))
    response = put_json(client, URL, ticket_body("R4", "75.50"))
    assert response.status_code == 200
    ticket = store.ticket(KEY_A, BRANCH_A, "R4")
    assert ticket.total == Decimal("75.50")
    assert ticket.version == 2
    assert count_tickets() == 1
    [event] = store.events(ticket)
    assert (event.kind, event.detail) == ("replaced", "monto 50.00 -> 75.50")


def test_replacing_an_expired_ticket_is_a_409_that_says_why(client, store):
    put_json(client, URL, ticket_body("R5", "50.00"))
    store.expire_ticket(KEY_A, BRANCH_A, "R5", "test")
    response = put_json(client, URL, ticket_body("R5", "60.00"))
    assert response.status_code == 409
    assert response.get_data(as_text=True) == (
        f"El ticket R5 de la sucursal {BRANCH_A} ya no se puede reemplazar: ya expiró."
    )
    assert store.ticket(KEY_A, BRANCH_A, "R5").total == Decimal("50.00")
    # The identical body is still a harmless 200.
    assert put_json(client, URL, ticket_body("R5", "50.00")).status_code == 200


def test_replacing_a_synced_ticket_is_a_409(client, store):
    put_json(client, URL, ticket_body("R6", "50.00"))
    Ticket.update(synced_at=Ticket.created_at).where(Ticket.number == "R6").execute()
    response = put_json(client, URL, ticket_body("R6", "60.00"))
    assert response.status_code == 409
    assert response.get_data(as_text=True).endswith("ya se envió al servicio de facturación.")


def test_replacing_an_invoiced_ticket_is_a_409_naming_the_cfdi(client, store):
    from helpers_cfdi import attach_customer_cfdi

    put_json(client, URL, ticket_body("R7", "50.00"))
    cfdi = attach_customer_cfdi(store, "R7")
    response = put_json(client, URL, ticket_body("R7", "60.00"))
    assert response.status_code == 409
    assert response.get_data(as_text=True).endswith(f"ya fue facturado (CFDI {cfdi.uuid}).")


# -- the request itself ----------------------------------------------------------------


def test_wrong_content_type_is_refused(client):
    response = client.put(URL, data=dumps(ticket_body()), headers={**AUTH_A, "Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.get_data(as_text=True) == "content-type debe ser application/json."
    assert count_tickets() == 0


@pytest.mark.parametrize(
    "raw, expected",
    [
        ('{"fecha": ', "El cuerpo no es JSON válido"),
        ("", "El cuerpo no es JSON válido"),
        ("[1, 2]", "El cuerpo debe ser un objeto JSON"),
        ('"texto"', "El cuerpo debe ser un objeto JSON"),
        ('{"monto": NaN}', "El cuerpo no es JSON válido: NaN no es un número válido"),
        (b"\xff\xfe{}", "El cuerpo de la petición no está en UTF-8."),
        ("[" * 100_000, "El cuerpo no es JSON válido: anidado a más profundidad de la que se acepta."),
    ],
)
def test_malformed_body_is_a_clear_400(client, raw, expected):
    response = put_json(client, URL, raw)
    assert response.status_code == 400
    assert expected in response.get_data(as_text=True)
    assert count_tickets() == 0


def test_oversized_body_is_refused_before_parsing(client):
    body = ticket_body()
    body["padding"] = "x" * (300 * 1024)
    response = put_json(client, URL, body)
    assert response.status_code == 413
    assert response.get_data(as_text=True) == "El cuerpo de la petición excede el límite de 256 KB."
    assert count_tickets() == 0


def test_other_methods_get_a_spanish_405(client):
    response = client.post(URL, data="{}", headers={**AUTH_A, "Content-Type": "application/json"})
    assert response.status_code == 405
    assert response.get_data(as_text=True) == "Método POST no permitido en esta ruta; use OPTIONS, PUT."


def test_unknown_fields_are_ignored(client):
    # Old POS software sends extra fields (caja, cajero...); they do not block a sale.
    assert put_json(client, URL, ticket_body("U1", caja="3")).status_code == 200


def test_json_error_message_points_at_the_place(client):
    text = put_json(client, URL, '{"fecha": "x",\n "monto": }').get_data(as_text=True)
    assert "línea 2" in text


def test_bodies_are_json_objects_with_exact_keys():
    # The contract example's body, as sent by its curl line, has these five keys.
    example = json.loads(
        '{"fecha": "2019-01-25T11:09:46", "insumo": "00|CFD33BASE|QA|4.0|\\n01|..", "monto": 12.36, '
        '"numeroTicket": "12A31", "sucursal": "dsfhjkajslfd45646412"}'
    )
    assert set(ticket_body()) == set(example)
