"""agent/openapi.yaml describes exactly the routes the agent serves, is valid OpenAPI 3.1,
and is what GET /openapi.json and docs/openapi.yaml give.

The document's answers are checked against a live agent by tests/test_schema_fuzz.py;
here, against the Flask app itself, only the answers a live server cannot easily be made
to give (storage unavailable).
"""
from __future__ import annotations

import json
import re

import pytest
import schemathesis
import yaml
from helpers import AUTH_A, BRANCH_A, KEY_A, REPO, put_json, ticket_body
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agent import auth
from agent.openapi import DOCUMENT, document
from service import __version__

METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
# <key> -> {key}, <path:number> -> {number}, <any(xml, pdf):kind> -> {kind}
_CONVERTER = re.compile(r"<(?:[^<>]*:)?(\w+)>")


def openapi_path(rule: str) -> str:
    return _CONVERTER.sub(r"{\1}", rule)


def served(app) -> set[tuple[str, str]]:
    return {(openapi_path(rule.rule), method.lower()) for rule in app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}}  # fmt: skip


def documented(doc: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_converter_paths():
    assert openapi_path("/<key>/tickets") == "/{key}/tickets"
    assert openapi_path("/panel/tickets/<branch_id>/<path:number>") == "/panel/tickets/{branch_id}/{number}"
    assert openapi_path("/a/<any(xml, pdf):kind>") == "/a/{kind}"
    assert openapi_path("/panel/cfdi/<cfdi_id>.<kind>") == "/panel/cfdi/{cfdi_id}.{kind}"


def test_every_route_is_documented_and_every_operation_is_served(app):
    routes, operations = served(app), documented(document())
    assert routes - operations == set(), "routes the document does not describe"
    assert operations - routes == set(), "operations the agent does not serve"
    assert len(routes) >= 32


def test_basic_auth_routes_document_401_and_429(app):
    """Every view behind company_required says so: Basic security, its 401 and its 429."""
    protected_code = auth.company_required(lambda key: None).__code__
    doc = document()
    protected = 0
    for rule in app.url_map.iter_rules():
        if app.view_functions[rule.endpoint].__code__ is not protected_code:
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = doc["paths"][openapi_path(rule.rule)][method.lower()]
            assert operation["security"] == [{"basic": []}], (rule.rule, method)
            responses = operation["responses"]
            assert responses["401"] == {"$ref": "#/components/responses/Unauthorized"}, (rule.rule, method)
            assert responses["429"] == {"$ref": "#/components/responses/TooManyFailedLogins"}, (rule.rule, method)
            protected += 1
    assert protected == 13  # the contract's and the slips' operations


def test_every_operation_documents_the_internal_error():
    for path, method in documented(document()):
        assert "500" in document()["paths"][path][method]["responses"], (method, path)


def test_the_document_is_valid_openapi_3_1():
    doc = document()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["version"] == __version__
    # schemathesis (a test dependency) checks it against the OpenAPI 3.1 meta-schema.
    schemathesis.openapi.from_dict(doc).validate()


def test_the_document_passes_openapi_spec_validator():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document())


def test_openapi_json_serves_the_yaml_document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert json.loads(response.get_data(as_text=True)) == yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))


def test_docs_openapi_yaml_is_the_agents_document():
    docs = REPO / "docs" / "openapi.yaml"
    assert docs.read_bytes() == DOCUMENT.read_bytes()
    if docs.is_symlink():  # a checkout without symlinks has a copy; the bytes above still hold
        assert docs.resolve() == DOCUMENT.resolve()


@schemathesis.deserializer("text/plain", "text/html")
def _text(_ctx, response):
    # As in test_schema_fuzz: text bodies are strings the document's texts apply to.
    return response.content.decode(response.encoding or "utf-8")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]  # fmt: skip


def conforms(path: str, method: str, parameters: dict, response) -> None:
    """The test client's response, checked as schemathesis checks a live one (bar 5xx)."""
    operation = schemathesis.openapi.from_dict(document())[path][method]
    checks = [check for check in CHECKS if check is not not_a_server_error]
    operation.Case(path_parameters=parameters).validate_response(response, checks=checks)


def test_writes_refused_by_the_database_answer_the_documented_503(app, client, agent):
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("W-1")).status_code == 200
    login = client.post("/panel/entrar", data={"usuario": "tepox", "contrasena": "tepox"})
    assert login.status_code == 302
    with client.session_transaction() as session:
        session["token"] = "t"
    agent.writer.stop()  # every write now raises StorageUnavailable, as on a full disk
    ticket = {"key": KEY_A, "branch_id": BRANCH_A, "number": "W-1"}
    try:
        answers = [
            ("/{key}/tickets", "PUT", {"key": KEY_A}, put_json(client, f"/{KEY_A}/tickets", ticket_body("W-2"))),
            ("/{key}/expired", "POST", {"key": KEY_A},
             client.post(f"/{KEY_A}/expired", json={"noTicket": "W-1", "sucursal": BRANCH_A}, headers=AUTH_A)),
            ("/{key}/tickets/{branch_id}/{number}/reimprimir", "POST", ticket,
             client.post(f"/{KEY_A}/tickets/{BRANCH_A}/W-1/reimprimir", headers=AUTH_A)),
            ("/panel/tickets/{branch_id}/{number}/reimprimir", "POST", {"branch_id": BRANCH_A, "number": "W-1"},
             client.post(f"/panel/tickets/{BRANCH_A}/W-1/reimprimir", data={"token": "t"})),
        ]  # fmt: skip
    finally:
        agent.writer.start()
    for path, method, parameters, response in answers:
        assert response.status_code == 503, (method, path, response.get_data(as_text=True))
        conforms(path, method, parameters, response)
