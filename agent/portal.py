"""The self-invoicing portal URL of a ticket: what the QR on its slip opens."""
from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from decimal import Decimal

from agent.config import CompanyConfig

SIGNATURE_PARAM = "firma"
SIGNATURE_LENGTH = 16  # hex characters: 64 bits, short enough for a small QR


def signed_fields(company_key: str, branch: str, ticket: str, total: Decimal, sold_at: datetime) -> str:
    """The exact text the signature covers; a portal rebuilds it from the ticket it finds."""
    return f"{company_key}|{branch}|{ticket}|{total:.2f}|{sold_at:%Y-%m-%d}"


def signature(secret: str, company_key: str, branch: str, ticket: str, total: Decimal, sold_at: datetime) -> str:
    message = signed_fields(company_key, branch, ticket, total, sold_at).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()[:SIGNATURE_LENGTH]


def portal_url(company: CompanyConfig, branch: str, ticket: str, total: Decimal, sold_at: datetime) -> str:
    """The company's portal_url template filled for this ticket, signed when the company
    has a url_secret so the portal can tell a printed ticket from a typed-in one."""
    url = company.portal_link(branch=branch, ticket=ticket, total=f"{total:.2f}", date=f"{sold_at:%Y-%m-%d}")
    if not company.url_secret:
        return url
    sig = signature(company.url_secret, company.key, branch, ticket, total, sold_at)
    return f"{url}{'&' if '?' in url else '?'}{SIGNATURE_PARAM}={sig}"
