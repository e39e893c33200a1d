"""Hashed POS passwords in the configuration file (``password_hash``).

Werkzeug's key derivation (scrypt, as Flask ships it) is used rather than a scheme of our
own: the hash says its method and parameters, so an older hash keeps working after the
default strengthens. A check costs about 0.1 s on a store PC; agent.logins remembers the
credentials that already matched so a POS pays it once, not on every ticket.
"""
from __future__ import annotations

from werkzeug.security import check_password_hash, generate_password_hash

METHODS = ("scrypt:", "pbkdf2:")


def make(password: str) -> str:
    return generate_password_hash(password, method="scrypt")


def is_hash(text: str) -> bool:
    return text.startswith(METHODS) and text.count("$") == 2


def matches(password_hash: str, password: str) -> bool:
    return check_password_hash(password_hash, password)
