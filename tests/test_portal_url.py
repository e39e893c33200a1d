"""The portal URL printed in a ticket's QR."""
from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from decimal import Decimal

from helpers import BRANCH_A, KEY_A

from agent.portal import portal_url

SOLD = datetime(2026, 11, 20, 23, 30, 5)


def company(config, **changes):
    return config.company(KEY_A).model_copy(update=changes)


def test_the_template_is_filled_and_url_encoded(config):
    template = "https://f.example.com/{company}/{branch}/{ticket}?total={total}&fecha={date}"
    url = portal_url(company(config, portal_url=template), BRANCH_A, "A-1_2", Decimal("1234.5"), SOLD)
    assert url == f"https://f.example.com/{KEY_A}/{BRANCH_A}/A-1_2?total=1234.50&fecha=2026-11-20"


def test_no_secret_no_signature(config):
    assert "firma" not in portal_url(company(config), BRANCH_A, "T1", Decimal("12.36"), SOLD)


def test_a_portal_can_verify_the_signature(config):
    # What docs/printing.md tells a portal to do, done independently here.
    secret = "s3cr3t-de-la-tienda"
    url = portal_url(company(config, url_secret=secret), BRANCH_A, "T1", Decimal("12.36"), SOLD)
    base, _, signature = url.partition("?firma=")
    message = f"{KEY_A}|{BRANCH_A}|T1|12.36|2026-11-20".encode()
    assert signature == hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:16]
    assert base == f"https://facturacion.example.com/{KEY_A}/{BRANCH_A}/T1"


def test_a_typed_in_ticket_does_not_match(config):
    signed = company(config, url_secret="x")
    one = portal_url(signed, BRANCH_A, "T1", Decimal("12.36"), SOLD).rpartition("=")[2]
    other = portal_url(signed, BRANCH_A, "T2", Decimal("12.36"), SOLD).rpartition("=")[2]
    more = portal_url(signed, BRANCH_A, "T1", Decimal("12.37"), SOLD).rpartition("=")[2]
    assert len({one, other, more}) == 3


def test_signature_joins_an_existing_query(config):
    template = "https://f.example.com/?t={ticket}"
    url = portal_url(company(config, portal_url=template, url_secret="x"), BRANCH_A, "T1", Decimal("1"), SOLD)
    assert url.startswith("https://f.example.com/?t=T1&firma=")
