"""GET /openapi.json: the agent's OpenAPI 3.1 document (agent/openapi.yaml), as JSON.

The YAML file is the one source, written by hand and kept honest by tests/test_openapi.py
and tests/test_schema_fuzz.py (docs/api.md). It is read on the first request, not at
import, so an agent that nobody asks for it never pays for parsing it.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import yaml
from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)

DOCUMENT = Path(__file__).with_name("openapi.yaml")

_lock = threading.Lock()
_json: str | None = None


def document() -> dict:
    """The document as loaded from the YAML file."""
    return yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))


def _document_json() -> str:
    global _json
    with _lock:
        if _json is None:
            _json = json.dumps(document(), ensure_ascii=False, indent=1) + "\n"
        return _json


@bp.route("/openapi.json", methods=["GET"])
def openapi_json():
    return Response(_document_json(), content_type="application/json")
