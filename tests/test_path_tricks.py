"""Path tricks on a real server (waitress decodes the path itself): `..`, encoded slashes
and dots, another company's ids. The answer is 401 or 404 (or the contract's 400 naming
a malformed ticket number or a branch this company does not have), never a file or
another company's data."""
from __future__ import annotations

import http.client
import re
from urllib.parse import urlencode

import pytest
from helpers import (
    AUTH_A,
    AUTH_B,
    BRANCH_A,
    BRANCH_B,
    KEY_A,
    KEY_B,
    dumps,
    free_port,
    start_server,
    stop_server,
    ticket_body,
    write_config,
)
from helpers_cfdi import PDF, XML, attach_customer_cfdi

from agent.app import Agent
from agent.config import load_config

# What must never come back: the store's own files, the CFDIs, anything of company B
# (its name, RFC, branch name, its ticket's total; its ticket number is in the URLs).
REFUSALS = (400, 401, 404)
B_TOTAL = "777.77"
SECRETS = (b"SQLite format 3", XML, PDF, b"<?xml", b"%PDF", b"[[companies]]", b"password",
           b"XENON", b"XIA190128J61", b"Unica", B_TOTAL.encode(), b"777,77")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tricks")
    port = free_port()
    config_path = write_config(tmp_path, port=port)
    proc = start_server(["--config", str(config_path)], cwd=tmp_path, port=port)
    try:
        for key, auth, branch, number in ((KEY_A, AUTH_A, BRANCH_A, "A-1"), (KEY_B, AUTH_B, BRANCH_B, "ZZB-SECRET-1")):
            body = ticket_body(number)
            body["sucursal"] = branch
            assert request(port, "PUT", f"/{key}/tickets", {**auth, "Content-Type": "application/json"},
                           dumps(body))[0] == 200
        # The CFDIs are put in the store between two runs of the server, as an upstream would.
        stop_server(proc)
        agent = Agent(load_config(config_path))
        try:
            cfdi_a = attach_customer_cfdi(agent.store, "A-1")
            cfdi_b = attach_customer_cfdi(agent.store, "ZZB-SECRET-1", company=KEY_B, branch=BRANCH_B)
        finally:
            agent.close()
        proc = start_server(["--config", str(config_path)], cwd=tmp_path, port=port)
        status, _, headers = request(port, "POST", "/panel/entrar", {"Content-Type": "application/x-www-form-urlencoded"},
                                     urlencode({"usuario": "tepox", "contrasena": "tepox"}))
        assert status == 302
        cookie = re.match(r"(panel=[^;]+)", headers["Set-Cookie"]).group(1)
        yield {"port": port, "a": cfdi_a, "b": cfdi_b, "cookie": {"Cookie": cookie}}
    finally:
        stop_server(proc)


def request(port, method, path, headers, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # putrequest sends the path exactly as given: no client-side normalisation of `..`.
        conn.putrequest(method, path, skip_accept_encoding=True)
        payload = body.encode() if isinstance(body, str) else body
        for name, value in {**headers, **({"Content-Length": str(len(payload))} if payload else {})}.items():
            conn.putheader(name, value)
        conn.endheaders(payload)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def paths(server):
    a, b = server["a"], server["b"]
    dl = f"/{KEY_A}/descargasCfdi?representacion=XML&idCfdi="
    pos = [
        dl + "../tickets.db",
        dl + "..%2F..%2Ftickets.db",
        dl + "%2e%2e%2fpanel-secret",
        dl + "..%252F..%252Ftickets.db",
        dl + b.id,  # company B's CFDI through company A's key
        f"/{KEY_A}/tickets/{BRANCH_A}/..%2F..%2Ftickets.db/recibo",
        f"/{KEY_A}/tickets/{BRANCH_A}/%2e%2e/qr",
        f"/{KEY_A}/tickets/{BRANCH_A}/..%5C..%5Ctickets.db/recibo",
        f"/{KEY_A}/tickets/{BRANCH_B}/ZZB-SECRET-1/recibo",  # company B's branch and ticket
        f"/{KEY_A}/tickets/{BRANCH_B}/ZZB-SECRET-1/qr",
        f"/{KEY_A}/../{KEY_B}/cfdis?noTicket=ZZB-SECRET-1&sucursal={BRANCH_B}",
        f"/{KEY_A}/%2e%2e/{KEY_B}/cfdis?noTicket=ZZB-SECRET-1&sucursal={BRANCH_B}",
        f"/{KEY_A}%2F..%2F{KEY_B}/cfdis?noTicket=ZZB-SECRET-1&sucursal={BRANCH_B}",
        f"/{KEY_B}/cfdis?noTicket=ZZB-SECRET-1&sucursal={BRANCH_B}",  # A's credentials on B's key
        f"/{KEY_B}/descargasCfdi?representacion=XML&idCfdi={b.id}",
        f"/{KEY_A}/cfdis?noTicket=ZZB-SECRET-1&sucursal={BRANCH_B}",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2Fapp.py",
        "/static/../../agent/config.py",
        "/static/%2e%2e/%2e%2e/ticket-agent.toml",
        "/static/..%5C..%5Cticket-agent.toml",
        "//etc/passwd",
    ]
    panel = [
        f"/panel/cfdi/{b.id}.xml",  # logged in as A, asking for B's CFDI
        f"/panel/cfdi/{a.id}.db",
        "/panel/cfdi/..%2F..%2Ftickets.db.xml",
        f"/panel/cfdi/{a.id}%2F..%2F..%2Ftickets.xml",
        f"/panel/tickets/{BRANCH_B}/ZZB-SECRET-1",
        "/panel/tickets/%2e%2e/%2e%2e/tickets.db",
    ]
    public = [
        f"/autofactura/{KEY_A}/{BRANCH_B}/ZZB-SECRET-1/xml?monto=453.00",
        f"/autofactura/{KEY_B}/{BRANCH_B}/..%2F..%2Ftickets.db/xml",
        f"/autofactura/{KEY_A}/{BRANCH_A}/%2e%2e/pdf",
    ]
    return pos, panel, public


def test_path_tricks_with_valid_credentials_get_nothing(server):
    pos, panel, public = paths(server)
    answers = [(p, *request(server["port"], "GET", p, AUTH_A)[:2]) for p in pos]
    answers += [(p, *request(server["port"], "GET", p, server["cookie"])[:2]) for p in panel]
    answers += [(p, *request(server["port"], "GET", p, {})[:2]) for p in public]
    wrong = [(p, status, body[:120]) for p, status, body in answers if status not in REFUSALS]
    assert wrong == [], "\n".join(map(str, wrong))
    leaked = [(p, s) for p, _, body in answers for s in SECRETS if s in body]
    assert leaked == []


def test_the_same_routes_without_credentials_get_nothing(server):
    pos, _, _ = paths(server)
    answers = [(p, *request(server["port"], "GET", p, {})[:2]) for p in pos]
    assert [(p, status) for p, status, _ in answers if status not in REFUSALS] == []
    assert [(p, s) for p, _, body in answers for s in SECRETS if s in body] == []


def test_the_tricks_are_not_just_broken_urls(server):
    # The untricked forms answer with the data, so a 404 above is the trick being refused.
    port, a = server["port"], server["a"]
    assert request(port, "GET", f"/{KEY_A}/descargasCfdi?representacion=XML&idCfdi={a.id}", AUTH_A)[1] == XML
    assert request(port, "GET", f"/panel/cfdi/{a.id}.xml", server["cookie"])[1] == XML
    assert request(port, "GET", f"/{KEY_B}/descargasCfdi?representacion=XML&idCfdi={server['b'].id}", AUTH_B)[1] == XML
    assert request(port, "GET", f"/{KEY_A}/tickets/{BRANCH_A}/A-1/qr", AUTH_A)[0] == 200
