"""Body limits through the real waitress server: refused with a clear 413, never buffered
whole, nothing stored, and the agent keeps serving."""
from __future__ import annotations

import http.client
import sqlite3

import pytest

from helpers import AUTH_A, KEY_A, dumps, free_port, start_server, stop_server, ticket_body, write_config


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("limits")
    port = free_port()
    proc = start_server(["--config", str(write_config(directory, port=port, max_body_kb=256))], cwd=directory, port=port)
    yield port, directory
    stop_server(proc)


def put(port, body: bytes):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("PUT", f"/{KEY_A}/tickets", body=body, headers={**AUTH_A, "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except (ConnectionResetError, BrokenPipeError):
        return None, "connection closed by the server"
    finally:
        conn.close()


def stored(directory) -> int:
    db = sqlite3.connect(directory / "data" / "tickets.db")
    try:
        return db.execute("SELECT count(*) FROM ticket").fetchone()[0]
    finally:
        db.close()


def test_a_body_over_the_limit_gets_the_spanish_413(server):
    port, directory = server
    body = ticket_body("BIG1")
    body["padding"] = "x" * (300 * 1024)
    assert put(port, dumps(body).encode()) == (413, "El cuerpo de la petición excede el límite de 256 KB.")
    assert stored(directory) == 0


def test_a_huge_body_is_refused_and_the_agent_keeps_serving(server):
    port, directory = server
    status, _ = put(port, b"{" + b" " * (20 * 1024 * 1024) + b"}")
    assert status in (413, None)  # waitress answers 413 or closes the connection; never 500
    assert put(port, dumps(ticket_body("AFTER")).encode()) == (200, "se guardo correctamente")
    assert stored(directory) == 1
