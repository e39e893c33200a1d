"""Response helpers shared by the blueprints: the contract answers in plain UTF-8 text."""
from __future__ import annotations

from flask import Response

TEXT = "text/plain; charset=UTF-8"


def text_response(text: str, status: int = 200) -> Response:
    return Response(text, status=status, content_type=TEXT)
