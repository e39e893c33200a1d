"""Facturapi's API v2, as the agent uses it: receipts up, invoices down, global invoices,
cancellations. Plain requests over one session per company; no Flask, no store.

Every failure becomes one of three errors, because the callers decide only this: try
again later (Unreachable), wait as told (RateLimited), or stop and show a person
(Rejected). The secret key goes in the Authorization header and nowhere else: it is
never part of an error text or a log line.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterator

import requests

from agent.insumo import Insumo

DEFAULT_TIMEOUT = 15.0
PAGE_LIMIT = 100  # the API's largest page
MAX_PAGES = 30  # the API answers no page after the 30th

TAX_TYPES = {"002": "IVA", "003": "IEPS"}


class FacturapiError(RuntimeError):
    pass


class Unreachable(FacturapiError):
    """No answer, a dropped connection or a 5xx: the request may or may not have done
    its work, so it is repeated only where that is safe (idempotency key, a poll)."""


class RateLimited(FacturapiError):
    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(FacturapiError):
    """A 4xx other than 429: the request was understood and refused; repeating it as it
    is would be refused again."""

    def __init__(self, message: str, status: int, code: str = ""):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # parsed JSON, or None for an empty body


class FacturapiClient:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.livemode = api_key.startswith("sk_live_")
        self._key = api_key
        self._local = threading.local()  # a requests.Session is not safe across threads

    def __repr__(self) -> str:  # never the key
        return f"FacturapiClient({self.base_url!r}, {'live' if self.livemode else 'test'} key)"

    # -- receipts -----------------------------------------------------------------------

    def create_receipt(self, body: dict) -> dict:
        return self._call("POST", "/receipts", json_body=body).body

    def receipt(self, receipt_id: str) -> dict:
        return self._call("GET", f"/receipts/{receipt_id}").body

    def receipts_between(self, start: datetime, end: datetime) -> Iterator[dict]:
        """Receipts dated in [start, end] (aware datetimes), every page the API serves."""
        params = {"date[gte]": _utc_text(start), "date[lte]": _utc_text(end), "limit": PAGE_LIMIT}
        for page in range(1, MAX_PAGES + 1):
            body = self._call("GET", "/receipts", params={**params, "page": page}).body or {}
            yield from body.get("data", [])
            if page >= int(body.get("total_pages") or 0):
                return

    def global_invoice(self, body: dict) -> Answer:
        """The raw answer: 200 with an invoice, 200 with no body (no open receipts), or
        202 with a pending invoice."""
        return self._call("POST", "/receipts/global-invoice", json_body=body)

    # -- invoices -----------------------------------------------------------------------

    def invoice(self, invoice_id: str) -> dict:
        return self._call("GET", f"/invoices/{invoice_id}").body

    def download(self, invoice_id: str, fmt: str) -> bytes:
        return self._call("GET", f"/invoices/{invoice_id}/{fmt}", raw=True).body

    def cancel_invoice(self, invoice_id: str, motive: str, substitution: str | None = None) -> dict:
        params = {"motive": motive}
        if substitution:
            params["substitution"] = substitution
        return self._call("DELETE", f"/invoices/{invoice_id}", params=params).body

    # -- plumbing -----------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self._key}"
            session.headers["User-Agent"] = "pos-ticket-agent"
            self._local.session = session
        return session

    def _call(self, method: str, path: str, *, params=None, json_body=None, raw: bool = False) -> Answer:
        what = f"{method} {path}"
        try:
            response = self._session().request(
                method, self.base_url + path, params=params,
                data=None if json_body is None else json.dumps(json_body, default=_json_default),
                headers={"Content-Type": "application/json"} if json_body is not None else None,
                timeout=self.timeout,
            )  # fmt: skip
        except requests.Timeout:
            raise Unreachable(f"{what}: no answer within {self.timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise Unreachable(f"{what}: cannot connect ({_reason(exc)})") from None
        except requests.RequestException as exc:
            raise Unreachable(f"{what}: {type(exc).__name__}") from None
        status = response.status_code
        if status >= 500:
            raise Unreachable(f"{what}: Facturapi answered {status} ({_message(response)})")
        if status == 429:
            raise RateLimited(f"{what}: too many requests ({_message(response)})", _retry_after(response))
        if status >= 400:
            code = _field(response, "code")
            raise Rejected(f"{what}: Facturapi refused it ({status}: {_message(response)})", status, code)
        if raw:
            return Answer(status, response.content)
        if not response.content.strip():
            return Answer(status, None)
        try:
            return Answer(status, response.json(parse_float=Decimal))
        except ValueError:
            raise Unreachable(f"{what}: the answer is not JSON") from None



# -- what a ticket looks like as a receipt ------------------------------------------------


def receipt_body(insumo: Insumo, *, sold_at: datetime, zone, branch_name: str, number: str, idempotency_key: str) -> dict:
    """POST /v2/receipts for one ticket: its items and taxes as the insumo states them.

    Each item goes at its tax-included unit price with its tax rates: Facturapi then takes
    the taxes out of the price, and the receipt totals what the customer paid. A price
    without tax would make Facturapi add price x rate, which for a ticket priced with
    taxes included lands a cent off (10.66 + 16 % is 12.37, the ticket says 12.36)."""
    return {
        "items": [_item(item) for item in insumo.items],
        "payment_form": insumo.payment_form,
        "date": sold_at.replace(tzinfo=zone).isoformat(),
        "currency": insumo.currency,
        "branch": branch_name,
        "external_id": number,
        "idempotency_key": idempotency_key,
    }


def _item(item) -> dict:
    taxes = [
        {"type": TAX_TYPES[t.tax], "factor": t.factor, "rate": t.rate if t.rate is not None else Decimal(0)}
        for t in item.taxes
    ]  # fmt: skip
    paid = item.amount - item.discount + sum((t.amount for t in item.taxes if t.amount is not None), Decimal(0))
    product = {
        "description": item.description,
        "product_key": item.product_key,
        "price": (paid / item.quantity).quantize(Decimal("0.000001")),
        "tax_included": True,
        "taxability": item.tax_object,
        "taxes": taxes,
        "unit_key": item.unit_key,
    }
    if item.unit:
        product["unit_name"] = item.unit
    if item.sku:
        product["sku"] = item.sku
    # The discount is already out of the price: a separate one would be taken twice.
    return {"quantity": item.quantity, "product": product}


def parse_time(text: str | None) -> datetime | None:
    """An API timestamp ("2026-11-21T16:15:00.000Z") as naive UTC, the store's form."""
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _json_default(value):
    if isinstance(value, Decimal):
        # The API reads numbers as doubles; a double's shortest repr gives back the same
        # decimal text for every amount a ticket can carry (at most 15 significant digits).
        return float(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Name or service not known", "timed out",
                   "Remote end closed connection", "Connection aborted"):  # fmt: skip
        if marker.lower() in text.lower():
            return marker.lower()
    return type(exc).__name__


def _field(response: requests.Response, name: str) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get(name) or "") if isinstance(body, dict) else ""


def _message(response: requests.Response) -> str:
    return _field(response, "message")[:300] or response.reason or "no message"


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
