"""GET /metrics: Prometheus text format 0.0.4 that a Prometheus server can scrape as is.

Every line is checked by a strict parser written from the format's description (HELP and
TYPE before a family's samples, one block per family, escaped label values, histogram
buckets cumulative up to +Inf = _count), and the numbers are the store's own."""
from __future__ import annotations

import math
import re
from calendar import timegm
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from helpers import AUTH_A, BRANCH_A, BRANCH_A2, BRANCH_B, KEY_A, KEY_B, put_json, ticket_body

from agent import ops
from agent.models import GlobalInvoice
from service.background import global_invoicing
from sync.expiry import expire_overdue

pytestmark = pytest.mark.both_databases  # tests/postgres.py

RFC_A, RFC_B = "EKU9003173C9", "XIA190128J61"
TICKETS = "/<key>/tickets"

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?:\{{(?P<labels>.*)\}})? (?P<value>\S+)$")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\\n]|\\[\\"n])*)"')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse(text: str) -> dict[str, dict]:
    """family -> {"type", "help", "samples": [(name, labels, value)]}; AssertionError on
    anything a Prometheus server would refuse or misread."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, dict] = {}
    current = None
    for number, line in enumerate(text[:-1].split("\n"), start=1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            _, _, name, help_text = line.split(" ", 3)
            assert re.fullmatch(_NAME, name), where
            assert name not in families, f"{where}: family declared twice"
            families[name] = {"help": help_text, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and families[name]["type"] is None, f"{where}: TYPE must follow its HELP, once"
            assert kind in _TYPES, where
            families[name]["type"] = kind
        else:
            assert not line.startswith("#") and line.strip() == line and line, where
            match = _SAMPLE.match(line)
            assert match, where
            name, raw_labels, raw_value = match["name"], match["labels"], match["value"]
            labels = {}
            if raw_labels:
                pieces = list(_LABEL.finditer(raw_labels))
                assert ",".join(p.group(0) for p in pieces) == raw_labels, f"{where}: malformed labels"
                labels = {p["key"]: p["value"] for p in pieces}
                assert len(labels) == len(pieces), f"{where}: repeated label"
            value = float(raw_value)  # also accepts +Inf, NaN as the format does
            assert current is not None and families[current]["type"], f"{where}: sample before its TYPE"
            kind = families[current]["type"]
            allowed = {current} if kind != "histogram" else {f"{current}_bucket", f"{current}_sum", f"{current}_count"}
            assert name in allowed, f"{where}: sample outside its family's block ({current})"
            families[current]["samples"].append((name, labels, value))
    for name, family in families.items():
        assert family["type"], f"{name}: HELP without TYPE"
        if family["type"] == "counter":
            assert name.endswith("_total")
        if family["type"] == "histogram":
            check_histogram(name, family["samples"])
    return families


def check_histogram(name: str, samples) -> None:
    series: dict[tuple, dict] = {}
    for sample, labels, value in samples:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        entry = series.setdefault(key, {"buckets": [], "sum": None, "count": None})
        if sample.endswith("_bucket"):
            entry["buckets"].append((float(labels["le"]), value))
        elif sample.endswith("_sum"):
            entry["sum"] = value
        else:
            entry["count"] = value
    for key, entry in series.items():
        bounds = [b for b, _ in entry["buckets"]]
        counts = [c for _, c in entry["buckets"]]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf, f"{name}{key}: buckets out of order or no +Inf"
        assert counts == sorted(counts), f"{name}{key}: buckets not cumulative"
        assert entry["count"] == counts[-1], f"{name}{key}: _count differs from the +Inf bucket"
        assert entry["sum"] is not None and entry["sum"] >= 0, f"{name}{key}: no _sum"


def values(families, name) -> dict[tuple, float]:
    return {tuple(sorted(labels.items())): value for _, labels, value in families[name]["samples"]}


def one(families, name, **labels) -> float:
    return values(families, name)[tuple(sorted(labels.items()))]


@pytest.fixture
def client(app):
    if "ops" not in app.blueprints:
        app.register_blueprint(ops.bp)
    ops.install(app)
    return app.test_client()


def scrape(client):
    response = client.get("/metrics")  # no credentials: Prometheus on the LAN scrapes it
    assert response.status_code == 200
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = response.get_data(as_text=True)
    for secret in (KEY_A, KEY_B, "tepox"):
        assert secret not in text
    return parse(text)


def test_request_durations_by_route_pattern_method_and_status_class(client):
    for number in ("M1", "M2", "M3"):
        assert put_json(client, f"/{KEY_A}/tickets", ticket_body(number)).status_code == 200
    assert put_json(client, f"/{KEY_A}/tickets", {"numeroTicket": "X"}).status_code == 400
    assert client.get(f"/{KEY_A}/cfdis?ticket=M1&sucursal={BRANCH_A}", headers=AUTH_A).status_code == 400  # no CFDI yet
    assert client.get("/nowhere/at/all").status_code == 404

    families = scrape(client)
    durations = families["ticket_agent_request_duration_seconds"]
    assert durations["type"] == "histogram"
    count = "ticket_agent_request_duration_seconds_count"
    counts = {(labels["route"], labels["method"], labels["status"]): value
              for name, labels, value in durations["samples"] if name == count}
    assert counts[(TICKETS, "PUT", "2xx")] == 3
    assert counts[(TICKETS, "PUT", "4xx")] == 1
    assert counts[("<unmatched>", "GET", "4xx")] == 1  # one series for every unknown path
    assert counts[("/<key>/cfdis", "GET", "4xx")] == 1
    assert not any("nowhere" in route for route, _, _ in counts)


def test_store_gauges_follow_tickets_slips_and_the_global_invoice(client, agent):
    for number in ("G1", "G2"):
        assert put_json(client, f"/{KEY_A}/tickets", ticket_body(number, fecha="2026-11-20T12:00:00")).status_code == 200
    # A re-send of the same ticket is not a new ticket.
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("G1", fecha="2026-11-20T12:00:00")).status_code == 200
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("N1", branch=BRANCH_A2)).status_code == 200

    families = scrape(client)
    assert families["ticket_agent_tickets_stored_total"]["type"] == "counter"
    assert one(families, "ticket_agent_tickets_stored_total") == 3
    assert one(families, "ticket_agent_tickets", company_rfc=RFC_A, branch=BRANCH_A, status="ALMACENADO") == 2
    assert one(families, "ticket_agent_tickets", company_rfc=RFC_A, branch=BRANCH_A2, status="ALMACENADO") == 1
    # Every configured branch has its series, zero included, so an alert always has data.
    assert one(families, "ticket_agent_tickets", company_rfc=RFC_B, branch=BRANCH_B, status="EXPIRADO") == 0
    assert one(families, "ticket_agent_print_jobs", state="pending") == 2  # BRANCH_A prints, BRANCH_A2 does not
    assert one(families, "ticket_agent_print_jobs", state="failed") == 0
    assert one(families, "ticket_agent_database_up") == 1
    assert "ticket_agent_sync_backlog" not in families  # no company uses Facturapi
    assert families["ticket_agent_last_global_invoice_timestamp_seconds"]["samples"] == []

    # The day closes: the tickets expire and go into a stamped global CFDI.
    invoicing = global_invoicing(agent)
    close = datetime(2026, 11, 21, 0, 5, tzinfo=ZoneInfo("America/Mexico_City"))
    invoicing.clock = lambda: close
    expire_overdue(agent.store, agent.config, close)
    assert one(scrape(client), "ticket_agent_tickets", company_rfc=RFC_A, branch=BRANCH_A, status="EXPIRADO") == 2
    runs = invoicing.run()
    assert [r.state for r in runs if r.branch == BRANCH_A] == ["stamped"]

    families = scrape(client)
    assert one(families, "ticket_agent_tickets", company_rfc=RFC_A, branch=BRANCH_A, status="EXPIRADO") == 0
    stamped = GlobalInvoice.get((GlobalInvoice.branch == BRANCH_A) & (GlobalInvoice.state == "stamped"))
    assert one(families, "ticket_agent_last_global_invoice_timestamp_seconds", company_rfc=RFC_A,
               branch=BRANCH_A) == timegm(stamped.updated_at.utctimetuple())  # fmt: skip
    assert one(families, "ticket_agent_tickets_stored_total") == 3


def test_facturapi_backlog_per_branch(tmp_path, facturapi):
    from agent.app import create_app
    from agent.config import load_config
    from helpers import write_config

    app = create_app(load_config(write_config(tmp_path, facturapi_url=facturapi.url)))
    app.config["TESTING"] = True
    ops.install(app)
    if "ops" not in app.blueprints:
        app.register_blueprint(ops.bp)
    try:
        client = app.test_client()
        assert put_json(client, f"/{KEY_A}/tickets", ticket_body("B1")).status_code == 200
        families = scrape(client)
        assert one(families, "ticket_agent_sync_backlog", company_rfc=RFC_A, branch=BRANCH_A, kind="unsent") == 1
        assert one(families, "ticket_agent_sync_backlog", company_rfc=RFC_A, branch=BRANCH_A2, kind="stopped") == 0
        # Company B stays on the sandbox: nothing to sync, no series.
        assert not [s for s in families["ticket_agent_sync_backlog"]["samples"] if s[1]["company_rfc"] == RFC_B]
        assert facturapi.requests == []
    finally:
        app.config["AGENT"].close()


def test_the_metrics_still_answer_when_the_database_does_not(client, agent, monkeypatch):
    from peewee import OperationalError

    from agent.models import Ticket

    def broken(*_a, **_k):
        raise OperationalError("database disk image is malformed")

    monkeypatch.setattr(Ticket, "select", broken)
    families = scrape(client)
    assert one(families, "ticket_agent_database_up") == 0
    assert "ticket_agent_tickets" not in families


def test_label_values_are_escaped(tmp_path):
    from agent.metrics import RequestMetrics, render

    requests = RequestMetrics()
    requests.observe('/a"b\\c\nd', "GET", 200, 0.003)
    requests.observe('/a"b\\c\nd', "GET", 200, 12.0)  # beyond the last bucket: only +Inf
    agent = type("NoDatabase", (), {"data_dir": tmp_path, "config": None})()
    families = parse(render(agent, requests, "1.0"))
    [(labels, count)] = [(labels, v) for n, labels, v in families["ticket_agent_request_duration_seconds"]["samples"]
                         if n.endswith("_count")]  # fmt: skip
    assert labels["route"] == '/a\\"b\\\\c\\nd' and count == 2
    buckets = {labels["le"]: v for n, labels, v in families["ticket_agent_request_duration_seconds"]["samples"]
               if n.endswith("_bucket")}  # fmt: skip
    assert buckets["0.005"] == 1 and buckets["10"] == 1 and buckets["+Inf"] == 2
