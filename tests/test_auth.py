"""Basic auth per company: nothing is read or written without the company's credentials."""
from __future__ import annotations

import base64

import pytest

from helpers import AUTH_A, AUTH_B, KEY_A, KEY_B, basic, dumps, ticket_body

from agent.models import Ticket

BODY = dumps(ticket_body("A1"))
JSON = {"Content-Type": "application/json"}

ROUTES = [
    ("put", f"/{KEY_A}/tickets", BODY),
    ("get", f"/{KEY_A}/cfdis", None),
    ("post", f"/{KEY_A}/expired", '{"noTicket": "A1", "sucursal": "dsfhjkajslfd45646412"}'),
    ("get", f"/{KEY_A}/descargasCfdi?idCfdi={'0' * 32}&representacion=XML", None),
    ("post", f"/{KEY_A}/cfdis/cancelar/AFB80450-2813-4046-9B1F-9B6647DD545F", None),
]


def call(client, method, path, body, headers):
    return getattr(client, method)(path, data=body, headers={**headers, **JSON})


@pytest.mark.parametrize("method, path, body", ROUTES)
@pytest.mark.parametrize(
    "headers, text",
    [
        ({}, "Falta el encabezado Authorization con usuario y contraseña (Basic)."),
        (basic("tepox", "wrong"), "Usuario o contraseña incorrectos para esta empresa."),
        (basic("otro", "tepox"), "Usuario o contraseña incorrectos para esta empresa."),
        (AUTH_B, "Usuario o contraseña incorrectos para esta empresa."),
        ({"Authorization": "Bearer abc"}, "El encabezado Authorization no es Basic usuario:contraseña en base64."),
        ({"Authorization": "Basic"}, "El encabezado Authorization no es Basic usuario:contraseña en base64."),
        ({"Authorization": "Basic !!!notbase64"}, "El encabezado Authorization no es Basic usuario:contraseña en base64."),
        ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
         "El encabezado Authorization no es Basic usuario:contraseña en base64."),
        ({"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()},
         "El encabezado Authorization no es Basic usuario:contraseña en base64."),
    ],
)
def test_every_route_refuses_bad_credentials(client, method, path, body, headers, text):
    response = call(client, method, path, body, headers)
    assert response.status_code == 401
    assert response.get_data(as_text=True) == text
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="pos-ticket-agent"')
    assert Ticket.select().count() == 0


def test_unknown_key_looks_like_wrong_credentials(client):
    response = call(client, "put", "/" + "f" * 40 + "/tickets", BODY, AUTH_A)
    assert response.status_code == 401
    assert response.get_data(as_text=True) == "Usuario o contraseña incorrectos para esta empresa."


def test_the_contract_example_header_is_accepted(client):
    # authorization: Basic dGVwb3g6dGVwb3g= is tepox:tepox, lower-case header name.
    response = client.put(f"/{KEY_A}/tickets", data=BODY,
                          headers={"authorization": "Basic dGVwb3g6dGVwb3g=", "content-type": "application/json"})
    assert response.status_code == 200


def test_scheme_is_case_insensitive(client):
    token = base64.b64encode(b"tepox:tepox").decode()
    assert call(client, "put", f"/{KEY_A}/tickets", BODY, {"Authorization": f"basic {token}"}).status_code == 200


def test_password_with_a_colon(tmp_path):
    from helpers import write_config

    from agent.app import create_app
    from agent.config import load_config

    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('password = "otra-clave"', 'password = "a:b:c"'))
    app = create_app(load_config(path))
    try:
        response = app.test_client().get(f"/{KEY_B}/cfdis", headers=basic("otra", "a:b:c"))
        assert response.status_code == 204
    finally:
        app.config["AGENT"].close()


def test_auth_is_checked_before_the_body(client):
    response = client.put(f"/{KEY_A}/tickets", data="not json", headers={"Content-Type": "text/plain"})
    assert response.status_code == 401
