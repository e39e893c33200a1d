"""A PostgreSQL server that drops the agent's connections (a restart, a fail-over, an
administrator): the requests caught by it get the 503 a POS retries, never a 500, and
the agent works again without a restart of its own."""
from __future__ import annotations

import pytest

import postgres
from helpers import AUTH_A, KEY_A, put_json, ticket_body


def drop_connections(url: str) -> int:
    with postgres.connect(url) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_dropped_connections_give_a_503_then_the_agent_reconnects(client, agent, database_url):
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("R1")).status_code == 200
    assert drop_connections(database_url) >= 2  # this thread's, and the presence's

    lookup = client.get(f"/{KEY_A}/cfdis?ticket=R1", headers=AUTH_A)
    assert lookup.status_code == 503 and lookup.headers["Retry-After"] == "30"
    # The next statement opens a new connection: the same lookup answers as usual.
    again = client.get(f"/{KEY_A}/cfdis?ticket=R1", headers=AUTH_A)
    assert again.status_code == 400 and "R1" in again.get_data(as_text=True)  # stored, no CFDI yet

    drop_connections(database_url)
    sale = put_json(client, f"/{KEY_A}/tickets", ticket_body("R2"))
    assert sale.status_code == 503  # the writer's connection was gone: nothing stored, the POS retries
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("R2")).status_code == 200
    assert agent.store.ticket(KEY_A, "dsfhjkajslfd45646412", "R2") is not None
    # The health page sees the database again (the last commit worked).
    assert client.get("/healthz").status_code == 200
