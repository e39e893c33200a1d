"""Two companies in one agent: a key, branch or credential of one never reaches the other."""
from __future__ import annotations

import pytest

import json

from helpers import AUTH_A, AUTH_B, BRANCH_A, BRANCH_B, KEY_A, KEY_B, dumps, put_json, ticket_body
from helpers_cfdi import attach_customer_cfdi

pytestmark = pytest.mark.both_databases  # tests/postgres.py


def test_same_ticket_number_in_two_companies_are_two_tickets(client, store):
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("T1", "10.00", branch=BRANCH_A)).status_code == 200
    assert put_json(client, f"/{KEY_B}/tickets", ticket_body("T1", "20.00", branch=BRANCH_B), AUTH_B).status_code == 200
    assert store.ticket(KEY_A, BRANCH_A, "T1").total != store.ticket(KEY_B, BRANCH_B, "T1").total


def test_a_company_cannot_use_another_companys_branch(client):
    response = put_json(client, f"/{KEY_A}/tickets", ticket_body("T2", branch=BRANCH_B))
    assert response.status_code == 400
    assert response.get_data(as_text=True) == f"sucursal: la sucursal {BRANCH_B} no existe para esta empresa"


def test_a_company_cannot_expire_another_companys_ticket(client, store):
    put_json(client, f"/{KEY_B}/tickets", ticket_body("T3", branch=BRANCH_B), AUTH_B)
    response = client.post(f"/{KEY_A}/expired", data=dumps({"noTicket": "T3", "sucursal": BRANCH_B}),
                           headers={**AUTH_A, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert store.ticket(KEY_B, BRANCH_B, "T3").status == "ALMACENADO"


def test_cfdi_listings_are_per_company(client, store):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("T4", branch=BRANCH_A))
    put_json(client, f"/{KEY_B}/tickets", ticket_body("T4", branch=BRANCH_B), AUTH_B)
    cfdi_a = attach_customer_cfdi(store, "T4", company=KEY_A, branch=BRANCH_A)
    cfdi_b = attach_customer_cfdi(store, "T4", company=KEY_B, branch=BRANCH_B)
    rows_a = json.loads(client.get(f"/{KEY_A}/cfdis", headers=AUTH_A).get_data(as_text=True))["cfdis"]
    rows_b = json.loads(client.get(f"/{KEY_B}/cfdis", headers=AUTH_B).get_data(as_text=True))["cfdis"]
    assert [row["uuid"] for row in rows_a] == [cfdi_a.uuid]
    assert [row["uuid"] for row in rows_b] == [cfdi_b.uuid]
    assert rows_b[0]["xmlDownload"].startswith(f"http://localhost/{KEY_B}/")


def test_credentials_of_one_company_do_not_open_the_other(client):
    assert client.get(f"/{KEY_B}/cfdis", headers=AUTH_A).status_code == 401
    assert client.get(f"/{KEY_A}/cfdis", headers=AUTH_B).status_code == 401


def test_a_company_cannot_attach_a_cfdi_to_another_companys_ticket(client, store):
    import pytest

    from helpers_cfdi import PDF, XML, new_cfdi

    put_json(client, f"/{KEY_A}/tickets", ticket_body("T5", branch=BRANCH_A))
    ticket = store.ticket(KEY_A, BRANCH_A, "T5")
    with pytest.raises(ValueError):
        store.record_cfdi(new_cfdi(company=KEY_B, branch=BRANCH_B), [ticket.id], xml=XML, pdf=PDF)
    assert store.ticket(KEY_A, BRANCH_A, "T5").status == "ALMACENADO"
