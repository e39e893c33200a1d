"""The curl examples of the POS contract, replayed against `ticket-agent serve` with no
configuration at all: the embedded demo defaults (0.0.0.0:8572, key
b391655ac2242d85ddd36d37b482259b1b7dfc1c, user tepox/tepox, branches
dsfhjkajslfd45646412 and 0dd6aebbea85662fd2fe2f76ce4258b3) are exactly the ones in the
contract's examples, so a POS developer can paste them and get the documented answers.

URLs, headers and bodies below are the contract's, byte for byte where it gives them.
Every answer is plain text, `Content-Type: text/plain; charset=UTF-8`.
"""
from __future__ import annotations

import http.client
import json
import socket

import pytest
from helpers import insumo_for, start_server, stop_server

pytestmark = pytest.mark.both_databases  # tests/postgres.py

PORT = 8572  # the demo defaults listen on 0.0.0.0:8572, like the contract's examples
KEY = "b391655ac2242d85ddd36d37b482259b1b7dfc1c"
BRANCH = "dsfhjkajslfd45646412"
OTHER_BRANCH = "0dd6aebbea85662fd2fe2f76ce4258b3"
TEXT = "text/plain; charset=UTF-8"

# The headers of the curl examples, spelled as the contract spells them.
AUTH = {"authorization": "Basic dGVwb3g6dGVwb3g="}  # tepox:tepox
JSON_HEADERS = {**AUTH, "content-type": "application/json"}

# The PUT /tickets example, verbatim. Its insumo is elided in the contract
# ("00|CFD33BASE|QA|4.0|\n01|..": the header record, then a truncated 01 record), so the
# literal example is not a valid ticket; `\n` is the JSON escape the shell passes through.
LITERAL_TICKET = (
    r'{"fecha": "2019-01-25T11:09:46", "insumo": "00|CFD33BASE|QA|4.0|\n01|..", "monto": 12.36, '
    r'"numeroTicket": "12A31", "sucursal": "dsfhjkajslfd45646412"}'
)
EXPIRE_12A30 = '{"noTicket":"12A30", "sucursal": "dsfhjkajslfd45646412"}'
EXPIRE_12AS30 = '{"noTicket":"12As30", "sucursal": "dsfhjkajslfd45646412"}'


def complete_ticket(number: str = "12A31", monto: str = "12.36", fecha: str = "2019-01-25T11:09:46") -> str:
    """The contract's example with its insumo completed (same fields, same order)."""
    return (
        f'{{"fecha": "{fecha}", "insumo": {json.dumps(insumo_for(monto, fecha))}, "monto": {monto}, '
        f'"numeroTicket": "{number}", "sucursal": "{BRANCH}"}}'
    )


class Server:
    """`ticket-agent serve` with no --config and no TICKET_AGENT_CONFIG, in its own cwd."""

    def __init__(self, cwd):
        self.cwd = cwd
        self.proc = start_server([], cwd=cwd, port=PORT)  # removes TICKET_AGENT_CONFIG
        self.returncode: int | None = None

    def wait_for_output(self, *needles: str, timeout: float = 10.0) -> str:
        """Read the server's output until every needle was seen (or fail at the deadline)."""
        return self.proc.output.wait_for(*needles, timeout=timeout)

    def request(self, method: str, path: str, body: str | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        try:
            conn.request(method, path, body=body.encode("utf-8") if body is not None else None,
                         headers=headers if headers is not None else JSON_HEADERS)
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type"), response.read().decode("utf-8"), response
        finally:
            conn.close()

    def stop(self) -> int:
        """SIGTERM (stop_server) and the exit code."""
        if self.returncode is None:
            stop_server(self.proc)  # terminate, wait up to 15 s, then kill
            self.returncode = self.proc.returncode
        return self.returncode


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not _port_is_free(PORT):
        pytest.fail(
            f"port {PORT} is already in use on this machine; the contract examples need the demo "
            f"defaults' port {PORT}: stop whatever listens there (e.g. another ticket-agent) and rerun"
        )
    cwd = tmp_path_factory.mktemp("demo-defaults")
    srv = Server(cwd)
    try:
        srv.wait_for_output(KEY, "user: tepox")
        yield srv
    finally:
        code = srv.stop()
    assert code == 0, f"the server exited with {code} after SIGTERM:\n{''.join(srv.seen)}"


def test_banner_shows_the_demo_key_and_credentials(server):
    out = server.wait_for_output(KEY, "user: tepox")
    assert f"company key: {KEY}" in out
    assert "user: tepox   password: tepox" in out
    assert f"http://0.0.0.0:{PORT}" in out  # listening on every interface, like a store agent


def test_put_ticket_example(server):
    # Sent verbatim, the example is refused: its insumo is truncated by the contract itself
    # ("01|.."), and the agent names the line that is wrong instead of storing half a ticket.
    status, ctype, text, _ = server.request("PUT", f"/{KEY}/tickets", LITERAL_TICKET)
    assert status == 400
    assert text.startswith("insumo: inválido, línea 2"), text
    assert ctype == TEXT
    assert server.request("GET", f"/{KEY}/cfdis?ticket=12A31&sucursal={BRANCH}", headers=AUTH)[0] == 204

    # The same example with a complete insumo for its monto 12.36 is saved.
    status, ctype, text, _ = server.request("PUT", f"/{KEY}/tickets", complete_ticket())
    assert (status, text) == (200, "se guardo correctamente")
    assert ctype == TEXT
    # Kept under the cwd's data folder, as the demo defaults say.
    assert (server.cwd / "data" / "tickets.db").is_file()
    assert server.request("GET", f"/{KEY}/cfdis?ticket=12A31&sucursal={BRANCH}", headers=AUTH)[0] == 400
    # A POS retry of the same ticket answers the same.
    assert server.request("PUT", f"/{KEY}/tickets", complete_ticket())[:3] == (200, TEXT, "se guardo correctamente")


def test_the_banners_own_curl_line_stores_a_ticket(server):
    # The -d body the banner prints, sent as printed: the contract example's ticket, so
    # after test_put_ticket_example it is an identical re-send.
    out = server.wait_for_output("-d '")
    body = next(line for line in out.splitlines() if line.strip().startswith("-d '")).strip()[4:-1]
    status, _, text, _ = server.request("PUT", f"/{KEY}/tickets", body)
    assert (status, text) == (200, "se guardo correctamente")


def test_put_ticket_example_bad_number_gets_the_400_text(server):
    body = complete_ticket(number="12 A31")
    status, ctype, text, _ = server.request("PUT", f"/{KEY}/tickets", body)
    assert (status, text) == (400, "El no. de ticket no contiene el formato correcto.")
    assert ctype == TEXT


@pytest.mark.parametrize("headers", [AUTH, JSON_HEADERS], ids=["curl-headers", "table-headers"])
def test_cfdis_example_without_cfdis_answers_204(server, headers):
    # The curl example's URL (the contract breaks it across two lines after "?").
    path = f"/{KEY}/cfdis?ticket=10301&sucursal={OTHER_BRANCH}"
    status, ctype, text, response = server.request("GET", path, headers=headers)
    assert status == 204
    assert ctype == TEXT
    # HTTP forbids a body on 204: the contract's text travels in a header.
    assert text == ""
    assert response.getheader("X-Mensaje") == "No hay cfdi generados"


def test_cfdis_of_a_stored_ticket_without_cfdi_answers_400(server):
    assert server.request("PUT", f"/{KEY}/tickets", complete_ticket())[0] == 200
    status, ctype, text, _ = server.request("GET", f"/{KEY}/cfdis?ticket=12A31&sucursal={BRANCH}", headers=AUTH)
    assert (status, text) == (400, "Ticket numero:12A31 , sucursal: dsfhjkajslfd45646412, aun no genera cfdi")
    assert ctype == TEXT


def test_expired_example_post(server):
    assert server.request("PUT", f"/{KEY}/tickets", complete_ticket("12A30", "20.00"))[0] == 200
    status, ctype, text, _ = server.request("POST", f"/{KEY}/expired", EXPIRE_12A30)
    assert (status, text) == (200, "Se expiro no_ticket: 12A30 sucursal : dsfhjkajslfd45646412")
    assert ctype == TEXT


def test_expired_example_put(server):
    # The endpoint table says PUT, the curl example POST: both answer the same.
    assert server.request("PUT", f"/{KEY}/tickets", complete_ticket("12A30", "20.00"))[0] == 200
    status, ctype, text, _ = server.request("PUT", f"/{KEY}/expired", EXPIRE_12A30)
    assert (status, text) == (200, "Se expiro no_ticket: 12A30 sucursal : dsfhjkajslfd45646412")
    assert ctype == TEXT
    assert server.request("PUT", f"/{KEY}/tickets", complete_ticket("12A32", "5.80"))[0] == 200
    body = '{"noTicket":"12A32", "sucursal": "dsfhjkajslfd45646412"}'
    status, ctype, text, _ = server.request("PUT", f"/{KEY}/expired", body)
    assert (status, text) == (200, "Se expiro no_ticket: 12A32 sucursal : dsfhjkajslfd45646412")
    assert ctype == TEXT


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_expired_example_unknown_ticket_answers_400(server, method):
    status, ctype, text, _ = server.request(method, f"/{KEY}/expired", EXPIRE_12AS30)
    assert (status, text) == (400, "Ticket numero: 12As30, sucursal: dsfhjkajslfd45646412, no existe")
    assert ctype == TEXT


def test_sigterm_stops_the_server_with_exit_code_0(server):
    assert server.proc.poll() is None
    assert server.stop() == 0
    assert server.proc.returncode == 0
