"""Basic auth per company: the key in the URL picks the company, its credentials must match."""
from __future__ import annotations

import base64
import binascii
import hmac
from functools import wraps

from flask import current_app, g, request

from agent import messages
from agent.http import text_response


def credentials_from_header(header: str | None) -> tuple[str, str] | None | bool:
    """(user, password); None when there is no header; False when it is malformed."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    user, sep, password = decoded.partition(":")
    if not sep:
        return False
    return user, password


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def company_required(view):
    """Resolve <key> to a company and check the request's Basic credentials against it.

    An unknown key and wrong credentials get the same answer, so the key cannot be
    probed; the log says which it was. Repeated failures from one address are throttled
    (agent.logins).
    """

    @wraps(view)
    def wrapper(key: str, *args, **kwargs):
        header = request.headers.get("Authorization")
        creds = credentials_from_header(header)
        if creds is None:
            return _unauthorized(messages.AUTH_MISSING)
        agent = current_app.config["AGENT"]
        logins = agent.logins
        address = request.remote_addr or "?"
        credential = logins.digest(key, header)
        wait = logins.retry_after(address, credential)
        if wait is not None:
            return too_many_attempts(wait)
        if creds is False:
            logins.failed(address, "malformed Authorization header")
            return _unauthorized(messages.AUTH_MALFORMED)
        company = agent.config.company(key)
        user, password = creds
        if company is None:
            # Spend the same comparison on nothing, so timing does not tell keys apart.
            _same(user + password, "\x00")
        if company is None or not logins.check(company, user, password):
            logins.failed(address, "unknown key" if company is None else "bad credentials")
            return _unauthorized(messages.AUTH_WRONG)
        logins.succeeded(address, credential)
        g.company = company
        g.company_key = key
        return view(key, *args, **kwargs)

    return wrapper


def too_many_attempts(wait: int):
    response = text_response(messages.too_many_attempts(wait), 429)
    response.headers["Retry-After"] = str(wait)
    return response


def _unauthorized(text: str):
    response = text_response(text, 401)
    response.headers["WWW-Authenticate"] = 'Basic realm="pos-ticket-agent", charset="UTF-8"'
    return response
