"""A fake Facturapi v2 on 127.0.0.1, for tests: real HTTP, validated requests, kept state.

    with FakeFacturapi() as fake:                  # fake.url replaces https://www.facturapi.io/v2
        requests.post(fake.url + "/receipts", json=body,
                      headers={"Authorization": "Bearer sk_test_store1"})
        org = fake.organization("sk_test_store1")
        assert [r["status"] for r in org.receipts.values()] == ["open"]
        fake.self_invoice(next(iter(org.receipts)))  # a customer uses the portal
        fake.assert_no_invalid_requests()

Every request is checked against the hand-written models of ``facturapi_requests``: a
request the real API would refuse is answered 400 ``invalid_request`` (with ``path``
naming the field) AND recorded in ``invalid_requests``, so a fixture calling
``assert_no_invalid_requests()`` at teardown fails the test that sent it.

Served (paths relative to ``fake.url``, ``Authorization: Bearer sk_test_...|sk_live_...``;
each key is its own organization, created on first use):

- ``POST /receipts``, ``GET /receipts``, ``GET /receipts/{id}``, ``DELETE /receipts/{id}``;
- ``POST /receipts/global-invoice`` (200 Invoice, 202 pending Invoice, or 200 empty body);
- ``GET /invoices/{id}``, ``GET /invoices/{id}/xml|pdf``, ``DELETE /invoices/{id}``.

The cloud side, driven by the test: ``self_invoice()`` (a customer on the portal),
``cancel_in_cloud()`` (the dashboard), ``pac_down()``/``pac_up()`` (stamping delayed).

Faults, switchable at any time from any thread: ``down()``/``up()`` (refuse connections,
same port), ``fail_next()`` (error status, no work), ``drop_next()`` (close before the
work), ``lose_next_response()`` (close after the work), ``stall()``/``release()`` (hold
requests; ``stalled`` counts them). Nothing sleeps: waits are on a Condition or an Event
with deadlines (``wait_for``), so a test waits for "one request is stalled", not for time.

Where this differs from the real service (deliberately small):

- Money is ``Decimal``; a receipt's total is the sum of its lines, each rounded to cents.
  An invoice's XML breaks every line into base + IVA with base = round(total / (1 + r), 2),
  r the line's transferred IVA rate (no IVA: ObjetoImp 01, no Traslado); IEPS, ISR and
  withholdings change totals but are not broken out in the XML. Global invoice lines are
  always IVA 16 %. The XML is well formed CFDI 4.0 but not signed, and its seals are random.
- An invoice keeps ``_subtotal``, ``_iva``, ``_lines`` and ``_receipts`` (Decimals, ids) for
  assertions; keys starting with ``_`` never leave the fake.
- Unknown receipts in a global invoice give 400 ``receipt_not_found``; a ``zip`` download
  gives 400 ``unsupported_format``; ``customer``/``address`` on receipts, product ids,
  item parts/complements/third parties are refused as unknown fields.
- An idempotent replay answers the stored receipt even when the body differs.
- ``self_invoice()`` refuses an expired receipt, as the portal does (``allow_expired=True``
  skips that); ``FakeFacturapi(clock=...)`` sets "now" for creation, expiry and stamps.
- ``requests[i].json`` holds the body as parsed by the fake: JSON decimals are ``Decimal``.
"""
from __future__ import annotations

import base64
import calendar
import json
import math
import secrets
import socket
import string
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from lxml import etree
from pydantic import BaseModel, ValidationError

from facturapi_requests import (
    CancelInvoiceQuery,
    GlobalInvoiceInput,
    ReceiptInput,
    ReceiptListQuery,
    error_message,
    error_path,
)

__all__ = ["FakeFacturapi", "Organization", "RecordedRequest"]

CENT = Decimal("0.01")
IVA_16 = Decimal("0.16")
MAX_GLOBAL_RECEIPTS = 5000
PUBLIC_TAX_ID = "XAXX010101000"
PUBLIC_LEGAL_NAME = "PUBLICO EN GENERAL"
PAC_RFC = "FAKE010101AAA"
SAT_CERT_NUMBER = "30001000000500003456"
CSD_CERT_NUMBER = "30001000000500003416"
CFDI_NS = "http://www.sat.gob.mx/cfd/4"
TFD_NS = "http://www.sat.gob.mx/TimbreFiscalDigital"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
PERIODICITY_CODES = {"day": "01", "week": "02", "fortnight": "03", "month": "04", "two_months": "05"}
_KEY_ALPHABET = string.ascii_letters + string.digits


# ---------------------------------------------------------------- small helpers


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _iso(moment: datetime) -> str:
    """UTC, milliseconds and "Z", as Facturapi answers dates."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _new_id() -> str:
    return secrets.token_hex(12)


def _random_seal() -> str:
    return base64.b64encode(secrets.token_bytes(96)).decode()


def _public(value: Any) -> Any:
    """What goes on the wire: no ``_`` keys, Decimals as JSON numbers."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(raw: bytes) -> tuple[Any, str | None]:
    if not raw:
        return None, None
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"the body is not valid JSON ({exc})"


def _line_total(item: dict) -> Decimal:
    """The amount a line charges: price x quantity - discount, plus taxes when not included."""
    product = item["product"]
    quantity = Decimal(item["quantity"])
    base = product["price"] * quantity - item["discount"]
    if product["tax_included"]:
        return base
    total = base
    for tax in product["taxes"] + product["local_taxes"]:
        if tax.get("factor") == "Exento":
            continue
        amount = tax["rate"] * quantity if tax.get("factor") == "Cuota" else base * tax["rate"]
        total += -amount if tax["withholding"] else amount
    return total


def _split_line(item: dict) -> dict:
    total = _money(_line_total(item))
    rate = next(
        (
            tax["rate"]
            for tax in item["product"]["taxes"]
            if tax["type"] == "IVA" and tax["factor"] == "Tasa" and not tax["withholding"]
        ),
        None,
    )
    if rate is None:
        return {"total": total, "base": total, "iva": Decimal(0), "rate": None}
    base = _money(total / (1 + rate))
    return {"total": total, "base": base, "iva": total - base, "rate": rate}


def _last_period(periodicity: str, today: date) -> tuple[date, date]:
    """The last closed period before ``today``: the API's default ``from``/``to``."""
    if periodicity == "day":
        yesterday = today - timedelta(days=1)
        return yesterday, yesterday
    if periodicity == "week":
        start = today - timedelta(days=today.weekday() + 7)
        return start, start + timedelta(days=6)
    if periodicity == "fortnight":
        if today.day > 15:
            return today.replace(day=1), today.replace(day=15)
        end = today.replace(day=1) - timedelta(days=1)
        return end.replace(day=16), end
    if periodicity == "month":
        end = today.replace(day=1) - timedelta(days=1)
        return end.replace(day=1), end
    first_month = (today.month - 1) // 2 * 2 + 1
    end = date(today.year, first_month, 1) - timedelta(days=1)
    return date(end.year, end.month - 1, 1), end


def _months_code(periodicity: str, start: date) -> str:
    if periodicity == "two_months":
        return str(13 + (start.month - 1) // 2)
    return f"{start.month:02d}"


# ---------------------------------------------------------------- state


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict
    json: Any
    headers: dict


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict = field(default_factory=dict)


def _json_response(status: int, payload: Any) -> _Response:
    return _Response(status, json.dumps(_public(payload)).encode())


class ApiError(Exception):
    """An error answer (GenericError). ``invalid`` ones are client bugs and get recorded."""

    def __init__(self, status: int, code: str, message: str, *, path: str | None = None,
                 location: str | None = None, errors: list | None = None,
                 invalid: bool = False, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.path, self.location, self.errors = path, location, errors
        self.invalid = invalid
        self.headers = headers or {}

    def response(self) -> _Response:
        body: dict[str, Any] = {"message": self.message, "status": self.status, "ok": False, "code": self.code}
        if self.path is not None:
            body["path"] = self.path
        if self.location is not None:
            body["location"] = self.location
        if self.errors:
            body["errors"] = self.errors
        return _Response(self.status, json.dumps(body).encode(), headers=self.headers)


def _invalid(message: str, path: str | None, location: str = "body") -> ApiError:
    return ApiError(400, "invalid_request", message, path=path, location=location, invalid=True)


@dataclass
class _Rule:
    kind: str  # "fail", "drop" or "lose"
    remaining: int
    path: str | None
    status: int = 500
    retry_after: int | None = None


class Organization:
    """One API key's organization: settings (plain attributes) and what it holds, by id."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.livemode = api_key.startswith("sk_live_")
        self.zone = ZoneInfo("America/Mexico_City")
        self.duration_days = 7
        self.legal_name = "ESCUELA KEMPER URGATE"
        self.tax_id = "EKU9003173C9"
        self.tax_system = "601"
        self.zip = "68050"
        self.next_receipt_folio = 1
        self.next_invoice_folio = 1  # global invoices
        self.next_customer_folio = 1  # self-invoices, series "F"
        self.receipts: dict[str, dict] = {}
        self.invoices: dict[str, dict] = {}
        self.customers: dict[str, dict] = {}  # by tax_id
        self.receipt_by_idempotency_key: dict[str, str] = {}


def _valid_key(api_key: str) -> bool:
    return api_key.startswith(("sk_test_", "sk_live_")) and len(api_key) > len("sk_test_")


# ---------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeFacturapi


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real service
    server_version = "FakeFacturapi"
    sys_version = ""
    timeout = 30  # an idle keep-alive connection ends on its own

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; with Nagle on, the second waits for
        # the client's delayed ACK (40 ms a request on Linux), which real servers avoid.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._connection_opened(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            pass  # down() or close() cut the connection under us

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fake._connection_closed(self.connection)

    def do_GET(self) -> None:
        self.server.fake._serve(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


# ---------------------------------------------------------------- the fake


class FakeFacturapi:
    def __init__(self, *, stall_timeout: float = 30.0,
                 clock: Callable[[], datetime] | None = None) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._orgs: dict[str, Organization] = {}
        self._requests: list[RecordedRequest] = []
        self._invalid: list[tuple[str, str, str]] = []
        self._crashes: list[str] = []
        self._rules: list[_Rule] = []
        self._stalling = False
        self._stall_path: str | None = None
        self._release_event = threading.Event()
        self._stalled = 0
        self._pac_is_up = True
        self._closing = False
        self._connections: set[socket.socket] = set()
        self._active = 0
        self._receipt_keys: set[str] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.idempotent_replays = 0
        self.stall_timeout = stall_timeout  # a forgotten release() cannot hang a test forever
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.port = 0
        self.up()
        self.url = f"http://127.0.0.1:{self.port}/v2"

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> FakeFacturapi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self) -> None:
        """Listen (again, on the same port)."""
        with self._lock:
            if self._server is not None or self._closing:
                return
            server = _Server(("127.0.0.1", self.port), _Handler)
            server.fake = self
            self.port = server.server_address[1]
            self._server = server
            # A short poll keeps down() and close() quick; serve_forever has no other wake-up.
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.02},
                name=f"fake-facturapi-{self.port}", daemon=True,
            )
            self._thread.start()

    def down(self) -> None:
        """Stop listening and cut open connections: new connections are refused."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            connections = list(self._connections)
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None:
            thread.join(timeout=5)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._release_event.set()
            self._changed.notify_all()
        self.down()
        with self._lock:
            self._changed.wait_for(lambda: self._active == 0, timeout=5)

    def _connection_opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)
            self._active += 1

    def _connection_closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)
            self._active -= 1
            self._changed.notify_all()

    # ------------------------------------------------------------ faults

    def fail_next(self, n: int = 1, status: int = 500, *, retry_after: int | None = None,
                  path: str | None = None) -> None:
        """Answer the next n (matching) requests with ``status`` and do nothing else."""
        self._add_rule(_Rule("fail", n, path, status, retry_after))

    def drop_next(self, n: int = 1, path: str | None = None) -> None:
        """Close the next n (matching) connections without answering, before the work."""
        self._add_rule(_Rule("drop", n, path))

    def lose_next_response(self, n: int = 1, path: str | None = None) -> None:
        """Do the work of the next n (matching) requests, then close without answering."""
        self._add_rule(_Rule("lose", n, path))

    def stall(self, path: str | None = None) -> None:
        """Hold matching requests before their work until ``release()`` (or ``close()``)."""
        with self._lock:
            if not self._stalling:
                self._release_event = threading.Event()
            self._stalling, self._stall_path = True, path

    def release(self) -> None:
        with self._lock:
            self._stalling = False
            self._release_event.set()

    @property
    def stalled(self) -> int:
        with self._lock:
            return self._stalled

    def pac_down(self) -> None:
        """Invoices are created pending (global invoice answers 202) until ``pac_up()``."""
        with self._lock:
            self._pac_is_up = False

    def pac_up(self) -> None:
        """The PAC is back: every pending invoice gets stamped."""
        with self._lock:
            self._pac_is_up = True
            for org in self._orgs.values():
                for invoice in org.invoices.values():
                    if invoice["status"] == "pending":
                        self._stamp(org, invoice)
            self._changed.notify_all()

    def _add_rule(self, rule: _Rule) -> None:
        if rule.remaining < 1:
            raise ValueError("n must be at least 1")
        with self._lock:
            self._rules.append(rule)

    def _take_rule(self, kinds: tuple[str, ...], path: str) -> _Rule | None:
        for rule in self._rules:
            if rule.kind in kinds and (rule.path is None or rule.path in path):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._rules.remove(rule)
                return rule
        return None

    # ------------------------------------------------------------ recording

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def invalid_requests(self) -> list[tuple[str, str, str]]:
        """(method, path, problem) of every request that failed validation."""
        with self._lock:
            return list(self._invalid)

    def assert_no_invalid_requests(self) -> None:
        with self._lock:
            problems = [f"{m} {p}: {why}" for m, p, why in self._invalid]
            problems += [f"the fake crashed:\n{crash}" for crash in self._crashes]
        if problems:
            raise AssertionError("Facturapi fake got bad requests:\n" + "\n".join(problems))

    def receipts_by_idempotency_key(self, api_key: str | None = None) -> dict[str, int]:
        """idempotency_key -> receipts created with it (of one organization, or of all)."""
        with self._lock:
            orgs = [self._orgs[api_key]] if api_key in self._orgs else (
                [] if api_key else list(self._orgs.values()))
            counts: dict[str, int] = {}
            for org in orgs:
                for receipt in org.receipts.values():
                    key = receipt["idempotency_key"]
                    if key:
                        counts[key] = counts.get(key, 0) + 1
            return counts

    def wait_for(self, predicate: Callable[[FakeFacturapi], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate(fake)`` holds; re-checked after every request and change."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"the fake did not reach the expected state in {timeout} s")

    def organization(self, api_key: str) -> Organization:
        """The state of the organization behind ``api_key`` (created if new)."""
        if not _valid_key(api_key):
            raise ValueError("an API key starts with sk_test_ or sk_live_")
        with self._lock:
            if api_key not in self._orgs:
                self._orgs[api_key] = Organization(api_key)
            return self._orgs[api_key]

    # ------------------------------------------------------------ cloud side

    def self_invoice(self, receipt_id_or_key: str, *, tax_id: str = "ROWA121212A11",
                     legal_name: str = "ROGER WATERS", zip: str = "06600",
                     tax_system: str = "612", use: str = "G03",
                     allow_expired: bool = False) -> dict:
        """A customer invoices an open receipt on the portal; returns the Invoice as JSON."""
        with self._lock:
            org, receipt = self._find_receipt(receipt_id_or_key)
            if receipt["status"] != "open":
                raise ValueError(f"receipt {receipt['id']} is {receipt['status']}, not open")
            if not allow_expired and self.clock() > _parse_iso(receipt["expires_at"]):
                raise ValueError(f"receipt {receipt['id']} expired at {receipt['expires_at']}")
            customer = org.customers.setdefault(tax_id, {"id": _new_id()})
            customer.update(legal_name=legal_name, tax_id=tax_id, tax_system=tax_system,
                            address={"zip": zip, "country": "MEX"})
            invoice = self._new_invoice(
                org, customer=dict(customer), items=receipt["items"], series="F",
                folio=self._folio(org, "next_customer_folio", None),
                payment_form=receipt["payment_form"], use=use, moment=self.clock(),
                receipts=[receipt],
            )
            receipt.update(status="invoiced_to_customer", invoice=invoice["id"], customer=customer["id"])
            self._changed.notify_all()
            return _public(invoice)

    def cancel_in_cloud(self, invoice_id: str, motive: str = "02") -> dict:
        """Cancel an invoice as if from Facturapi's dashboard; returns it as JSON."""
        with self._lock:
            for org in self._orgs.values():
                if invoice_id in org.invoices:
                    invoice = org.invoices[invoice_id]
                    if invoice["status"] != "valid":
                        raise ValueError(f"invoice {invoice_id} is {invoice['status']}, not valid")
                    self._cancel(org, invoice, motive)
                    self._changed.notify_all()
                    return _public(invoice)
        raise ValueError(f"no invoice {invoice_id}")

    def _find_receipt(self, id_or_key: str) -> tuple[Organization, dict]:
        for org in self._orgs.values():
            if id_or_key in org.receipts:
                return org, org.receipts[id_or_key]
            for receipt in org.receipts.values():
                if receipt["key"] == id_or_key:
                    return org, receipt
        raise ValueError(f"no receipt {id_or_key}")

    # ------------------------------------------------------------ serving

    def _serve(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        path = split.path
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length > 0 else b""
        query = parse_qs(split.query, keep_blank_values=True)
        body, body_problem = _parse_json(raw)
        record = RecordedRequest(
            handler.command, path, {k: v[0] if len(v) == 1 else v for k, v in query.items()},
            body, dict(handler.headers.items()),
        )
        with self._lock:
            self._requests.append(record)
            stall = self._stalling and not self._closing and (
                self._stall_path is None or self._stall_path in path)
            release = self._release_event
            if stall:
                self._stalled += 1
            self._changed.notify_all()
        if stall:
            release.wait(self.stall_timeout)
            with self._lock:
                self._stalled -= 1
                self._changed.notify_all()

        with self._lock:
            fault = self._take_rule(("drop", "fail"), path)
            if fault is None:
                response = self._respond(handler.command, path, query, body, body_problem, handler.headers)
                lost = self._take_rule(("lose",), path) is not None
            else:
                response, lost = self._fault_response(fault), fault.kind == "drop"
        if lost:
            handler.close_connection = True  # the server closes the socket, nothing written
        else:
            self._send(handler, response)
        with self._lock:
            self._changed.notify_all()

    @staticmethod
    def _fault_response(rule: _Rule) -> _Response:
        if rule.status == 429:
            code, message = "rate_limit_exceeded", "Se excedió el límite de solicitudes."
        elif rule.status >= 500:
            code, message = "internal_error", "Internal error (injected by the fake)"
        else:
            code, message = "injected_error", "Error injected by the fake"
        headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else {}
        return ApiError(rule.status, code, message, headers=headers).response()

    @staticmethod
    def _send(handler: _Handler, response: _Response) -> None:
        try:
            handler.send_response(response.status)
            if response.content_type:
                handler.send_header("Content-Type", response.content_type)
            handler.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(response.body)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True

    def _respond(self, method: str, path: str, query: dict, body: Any,
                 body_problem: str | None, headers: Any) -> _Response:
        try:
            org = self._authenticate(headers.get("Authorization", ""))
            return self._route(org, method, path, query, body, body_problem, headers)
        except ApiError as error:
            if error.invalid:
                self._invalid.append((method, path, error.message if not error.errors else
                                      "; ".join(e["message"] for e in error.errors)))
            return error.response()
        except Exception:
            self._crashes.append(traceback.format_exc())
            return ApiError(500, "internal_error", "the fake crashed (see assert_no_invalid_requests)").response()

    def _authenticate(self, authorization: str) -> Organization:
        scheme, _, api_key = authorization.partition(" ")
        api_key = api_key.strip()
        if scheme.lower() != "bearer" or not _valid_key(api_key):
            raise ApiError(401, "unauthorized",
                           "Send your secret key as 'Authorization: Bearer sk_test_...' or sk_live_...")
        return self.organization(api_key)

    def _route(self, org: Organization, method: str, path: str, query: dict, body: Any,
               body_problem: str | None, headers: Any) -> _Response:
        if not path.startswith("/v2/"):
            raise ApiError(404, "not_found", f"Route {method} {path} not found")
        parts = path[len("/v2/"):].rstrip("/").split("/")
        match method, parts:
            case "POST", ["receipts"]:
                payload = self._body(ReceiptInput, body, body_problem, headers)
                return self._create_receipt(org, payload)
            case "GET", ["receipts"]:
                return self._list_receipts(org, self._query(ReceiptListQuery, query))
            case "POST", ["receipts", "global-invoice"]:
                payload = self._body(GlobalInvoiceInput, body, body_problem, headers)
                return self._create_global_invoice(org, payload)
            case "GET", ["receipts", receipt_id]:
                return _json_response(200, self._receipt(org, receipt_id))
            case "DELETE", ["receipts", receipt_id]:
                return self._cancel_receipt(org, self._receipt(org, receipt_id))
            case "GET", ["invoices", invoice_id]:
                return _json_response(200, self._invoice(org, invoice_id))
            case "GET", ["invoices", invoice_id, file_format]:
                return self._download(org, invoice_id, file_format)
            case "DELETE", ["invoices", invoice_id]:
                return self._cancel_invoice(org, invoice_id, self._query(CancelInvoiceQuery, query))
        raise ApiError(404, "not_found", f"Route {method} {path} not found")

    # ------------------------------------------------------------ validation

    @staticmethod
    def _validate(model: type[BaseModel], data: Any, location: str) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            details = [
                {
                    "message": error_message(error),
                    "code": "required" if error["type"] == "missing" else (
                        "invalid_type" if error["type"].endswith("_type") else "invalid"),
                    "source": "facturapi",
                    "path": error_path(error["loc"]),
                    "location": location,
                }
                for error in exc.errors(include_url=False)
            ]
            first = details[0]
            raise ApiError(400, "invalid_request", first["message"], path=first["path"],
                           location=location, errors=details, invalid=True) from None

    def _body(self, model: type[BaseModel], body: Any, problem: str | None, headers: Any) -> Any:
        content_type = headers.get("Content-Type", "")
        if not content_type.split(";")[0].strip().lower() == "application/json":
            raise _invalid(f"Content-Type must be application/json, not {content_type!r}", None)
        if problem:
            raise _invalid(problem, None)
        return self._validate(model, body if body is not None else {}, "body")

    def _query(self, model: type[BaseModel], query: dict[str, list[str]]) -> Any:
        for name, values in query.items():
            if len(values) > 1:
                raise _invalid(f"{name} is given {len(values)} times", name, "query")
        return self._validate(model, {k: v[0] for k, v in query.items()}, "query")

    # ------------------------------------------------------------ receipts

    def _receipt(self, org: Organization, receipt_id: str) -> dict:
        if receipt_id not in org.receipts:
            raise ApiError(404, "not_found", f"Receipt {receipt_id} not found")
        return org.receipts[receipt_id]

    def _utc(self, org: Organization, moment: datetime) -> datetime:
        # Dates without an offset are the organization's wall time.
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=org.zone)
        return moment.astimezone(UTC)

    @staticmethod
    def _folio(org: Organization, counter: str, given: int | None) -> int:
        folio = getattr(org, counter) if given is None else given
        setattr(org, counter, max(getattr(org, counter), folio + 1))
        return folio

    def _new_receipt_key(self) -> str:
        while True:
            key = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(8))
            if key not in self._receipt_keys:
                self._receipt_keys.add(key)
                return key

    @staticmethod
    def _expiry(org: Organization, moment: datetime) -> datetime:
        local = moment.astimezone(org.zone)
        last_day = calendar.monthrange(local.year, local.month)[1]
        end_of_month = datetime(local.year, local.month, last_day, 23, 59, 59, 999000, tzinfo=org.zone)
        return min(moment + timedelta(days=org.duration_days), end_of_month)

    def _create_receipt(self, org: Organization, payload: ReceiptInput) -> _Response:
        idempotency_key = payload.idempotency_key or None  # blank means none, says the spec
        if idempotency_key in org.receipt_by_idempotency_key:
            self.idempotent_replays += 1
            return _json_response(200, org.receipts[org.receipt_by_idempotency_key[idempotency_key]])
        now = self.clock()
        moment = self._utc(org, payload.date) if payload.date else now
        items = [item.model_dump(exclude_none=True) for item in payload.items]
        receipt_key = self._new_receipt_key()
        receipt = {
            "id": _new_id(),
            "created_at": _iso(now),
            "livemode": org.livemode,
            "key": receipt_key,
            "self_invoice_url": f"https://factura.space/demo/{receipt_key}",
            "date": _iso(moment),
            "expires_at": _iso(self._expiry(org, moment)),
            "status": "open",
            "total": sum((_money(_line_total(item)) for item in items), Decimal("0.00")),
            "invoice": None,
            "customer": None,
            "items": items,
            "external_id": payload.external_id,
            "idempotency_key": idempotency_key,
            "branch": payload.branch,
            "payment_form": payload.payment_form,
            "folio_number": self._folio(org, "next_receipt_folio", payload.folio_number),
            "currency": payload.currency,
            "exchange": payload.exchange if payload.exchange is not None else Decimal(1),
        }
        org.receipts[receipt["id"]] = receipt
        if idempotency_key:
            org.receipt_by_idempotency_key[idempotency_key] = receipt["id"]
        return _json_response(200, receipt)

    def _list_receipts(self, org: Organization, query: ReceiptListQuery) -> _Response:
        bounds = [
            (query.date_gt, lambda d, b: d > b),
            (query.date_gte, lambda d, b: d >= b),
            (query.date_lt, lambda d, b: d < b),
            (query.date_lte, lambda d, b: d <= b),
        ]
        bounds = [(self._utc(org, bound), test) for bound, test in bounds if bound is not None]
        text = query.q.lower() if query.q else None

        def matches(receipt: dict) -> bool:
            moment = _parse_iso(receipt["date"])
            if not all(test(moment, bound) for bound, test in bounds):
                return False
            if text and not any(
                text in item["product"]["description"].lower()
                or text in item["product"].get("sku", "").lower()
                for item in receipt["items"]
            ):
                return False
            return all(
                wanted is None or receipt[name] == wanted
                for name, wanted in (("payment_form", query.payment_form),
                                     ("customer", query.customer), ("invoice", query.invoice))
            )

        found = [(n, r) for n, r in enumerate(org.receipts.values()) if matches(r)]
        found.sort(key=lambda pair: (pair[1]["date"], pair[0]), reverse=True)  # newest first
        start = (query.page - 1) * query.limit
        return _json_response(200, {
            "page": query.page,
            "total_pages": max(1, math.ceil(len(found) / query.limit)),
            "total_results": len(found),
            "data": [receipt for _, receipt in found[start:start + query.limit]],
        })

    def _cancel_receipt(self, org: Organization, receipt: dict) -> _Response:
        if receipt["status"] != "open":
            raise ApiError(400, "receipt_not_open",
                           f"Receipt {receipt['id']} is {receipt['status']}: only an open receipt can be canceled")
        receipt["status"] = "canceled"
        return _json_response(200, receipt)

    # ------------------------------------------------------------ invoices

    def _invoice(self, org: Organization, invoice_id: str) -> dict:
        if invoice_id not in org.invoices:
            raise ApiError(404, "not_found", f"Invoice {invoice_id} not found")
        return org.invoices[invoice_id]

    def _public_customer(self, org: Organization) -> dict:
        customer = org.customers.setdefault(PUBLIC_TAX_ID, {"id": _new_id()})
        customer.update(legal_name=PUBLIC_LEGAL_NAME, tax_id=PUBLIC_TAX_ID, tax_system="616",
                        address={"zip": org.zip, "country": "MEX"})
        return dict(customer)

    def _issue_moment(self, org: Organization, day: date) -> datetime:
        now = self.clock()
        if day >= now.astimezone(org.zone).date():
            return now
        return datetime.combine(day, time(23, 59, 59), tzinfo=org.zone).astimezone(UTC)

    def _create_global_invoice(self, org: Organization, payload: GlobalInvoiceInput) -> _Response:
        start, end = payload.from_, payload.to
        if payload.receipts is not None:
            self._check_global_size(len(payload.receipts))
            unknown = [rid for rid in payload.receipts if rid not in org.receipts]
            if unknown:
                raise ApiError(400, "receipt_not_found", f"Receipts not found: {', '.join(unknown)}",
                               path="receipts", location="body")
            chosen = [org.receipts[rid] for rid in payload.receipts]
            not_open = [r["id"] for r in chosen if r["status"] != "open"]
            if not_open:
                raise ApiError(400, "receipt_not_open",
                               f"These receipts are not open and cannot be invoiced: {', '.join(not_open)}",
                               path="receipts", location="body")
        else:
            default_start, default_end = _last_period(
                payload.periodicity, self.clock().astimezone(org.zone).date())
            start, end = start or default_start, end or default_end
            if end < start:
                raise _invalid("to: must not be before from", "to")
            chosen = [
                r for r in org.receipts.values()
                if r["status"] == "open"
                and start <= _parse_iso(r["date"]).astimezone(org.zone).date() <= end
                and payload.payment_form in (None, r["payment_form"])
            ]
            self._check_global_size(len(chosen))
        if not chosen:
            return _Response(200, b"", content_type=None)  # the real API's "nothing to invoice"

        largest = max(chosen, key=lambda r: r["total"])
        items = [
            {
                "quantity": Decimal(1),
                "discount": Decimal(0),
                "product": {
                    "description": "Venta", "product_key": "01010101", "price": r["total"],
                    "tax_included": True, "taxability": "02",
                    "taxes": [{"rate": IVA_16, "type": "IVA", "factor": "Tasa", "withholding": False}],
                    "local_taxes": [], "unit_key": "ACT", "unit_name": "Actividad", "sku": r["id"],
                },
            }
            for r in chosen
        ]
        invoice = self._new_invoice(
            org, customer=self._public_customer(org), items=items, series=payload.series,
            folio=self._folio(org, "next_invoice_folio", payload.folio_number),
            payment_form=payload.payment_form or largest["payment_form"], use="S01",
            moment=self._issue_moment(org, payload.date or end), receipts=chosen,
            global_info={"periodicity": payload.periodicity,
                         "months": payload.months or _months_code(payload.periodicity, start),
                         "year": start.year},
        )
        for receipt in chosen:
            receipt.update(status="invoiced_globally", invoice=invoice["id"])
        return _json_response(200 if invoice["status"] == "valid" else 202, invoice)

    @staticmethod
    def _check_global_size(count: int) -> None:
        if count > MAX_GLOBAL_RECEIPTS:
            raise ApiError(400, "global_invoice_too_many_items",
                           f"A global invoice takes at most {MAX_GLOBAL_RECEIPTS} receipts, got {count}")

    def _new_invoice(self, org: Organization, *, customer: dict, items: list[dict],
                     series: str | None, folio: int, payment_form: str, use: str,
                     moment: datetime, receipts: list[dict],
                     global_info: dict | None = None) -> dict:
        lines = [_split_line(item) for item in items]
        invoice = {
            "id": _new_id(),
            "created_at": _iso(self.clock()),
            "livemode": org.livemode,
            "status": "pending",
            "cancellation_status": "none",
            "canceled_at": None,
            "verification_url": None,
            "date": _iso(moment),
            "type": "I",
            "customer": customer,
            "total": sum((line["total"] for line in lines), Decimal("0.00")),
            "uuid": None,
            "folio_number": folio,
            "series": series,
            "payment_form": payment_form,
            "payment_method": "PUE",
            "use": use,
            "export": "01",
            "items": [dict(item) for item in items],
            "currency": "MXN",
            "exchange": Decimal(1),
            "stamp": None,
            "related_documents": [],
            "_subtotal": sum((line["base"] for line in lines), Decimal("0.00")),
            "_iva": sum((line["iva"] for line in lines), Decimal("0.00")),
            "_lines": lines,
            "_receipts": [r["id"] for r in receipts],
        }
        if global_info:
            invoice["global"] = global_info
        org.invoices[invoice["id"]] = invoice
        if self._pac_is_up:
            self._stamp(org, invoice)
        return invoice

    def _stamp(self, org: Organization, invoice: dict) -> None:
        fiscal_id = str(uuid.uuid4()).upper()
        signature = _random_seal()
        invoice.update(
            status="valid",
            uuid=fiscal_id,
            stamp={"date": _iso(self.clock()), "sat_cert_number": SAT_CERT_NUMBER,
                   "signature": signature, "sat_signature": _random_seal()},
            verification_url=(
                "https://verificacfdi.facturaelectronica.sat.gob.mx/default.aspx"
                f"?id={fiscal_id}&re={org.tax_id}&rr={invoice['customer']['tax_id']}"
                f"&tt={invoice['total']:.6f}&fe={signature[-8:]}"
            ),
        )

    def _cancel_invoice(self, org: Organization, invoice_id: str, query: CancelInvoiceQuery) -> _Response:
        invoice = self._invoice(org, invoice_id)
        if query.substitution is not None:
            substitute = next((i for i in org.invoices.values()
                               if query.substitution in (i["id"], i["uuid"])), None)
            if substitute is None or substitute is invoice:
                raise _invalid(f"substitution: {query.substitution} is not another invoice of this "
                               "organization", "substitution", "query")
        if invoice["status"] == "canceled":
            raise ApiError(400, "invoice_already_canceled", f"Invoice {invoice_id} is already canceled")
        if invoice["status"] != "valid":
            raise ApiError(400, "invoice_not_valid",
                           f"Invoice {invoice_id} is {invoice['status']}: only a valid invoice can be canceled")
        self._cancel(org, invoice, query.motive, query.substitution)
        return _json_response(200, invoice)

    def _cancel(self, org: Organization, invoice: dict, motive: str,
                substitution: str | None = None) -> None:
        invoice.update(status="canceled", cancellation_status="accepted",
                       canceled_at=_iso(self.clock()), _motive=motive, _substitution=substitution)
        # Its receipts can be invoiced again.
        for receipt_id in invoice["_receipts"]:
            receipt = org.receipts[receipt_id]
            if receipt["invoice"] == invoice["id"]:
                receipt.update(status="open", invoice=None)

    def _download(self, org: Organization, invoice_id: str, file_format: str) -> _Response:
        if file_format not in ("xml", "pdf", "zip"):
            raise _invalid(f"format: must be one of xml, pdf, zip, not {file_format!r}", "format", "params")
        invoice = self._invoice(org, invoice_id)
        if file_format == "zip":
            raise ApiError(400, "unsupported_format", "The zip format is not supported by the fake")
        if invoice["status"] == "pending":
            raise ApiError(400, "invoice_not_stamped",
                           f"Invoice {invoice_id} is pending: it has no files until it is stamped")
        if file_format == "xml":
            return _Response(200, _cfdi_xml(org, invoice), "application/xml")
        return _Response(200, _cfdi_pdf(org, invoice), "application/pdf")


# ---------------------------------------------------------------- documents


def _amount(value: Decimal) -> str:
    return f"{value:.2f}"


def _cfdi_xml(org: Organization, invoice: dict) -> bytes:
    def node(parent: Any, name: str, **attributes: str) -> Any:
        return etree.SubElement(parent, f"{{{CFDI_NS}}}{name}", attributes)

    customer, lines = invoice["customer"], invoice["_lines"]
    issued = _parse_iso(invoice["date"]).astimezone(org.zone).strftime("%Y-%m-%dT%H:%M:%S")
    root = etree.Element(f"{{{CFDI_NS}}}Comprobante", nsmap={"cfdi": CFDI_NS, "xsi": XSI_NS})
    root.set(f"{{{XSI_NS}}}schemaLocation",
             f"{CFDI_NS} http://www.sat.gob.mx/sitio_internet/cfd/4/cfdv40.xsd")
    root.set("Version", "4.0")
    if invoice["series"]:
        root.set("Serie", invoice["series"])
    for name, value in (
        ("Folio", str(invoice["folio_number"])), ("Fecha", issued),
        ("FormaPago", invoice["payment_form"]), ("NoCertificado", CSD_CERT_NUMBER),
        ("Certificado", base64.b64encode(b"fake certificate").decode()),
        ("SubTotal", _amount(invoice["_subtotal"])), ("Moneda", "MXN"),
        ("Total", _amount(invoice["total"])), ("TipoDeComprobante", "I"), ("Exportacion", "01"),
        ("MetodoPago", "PUE"), ("LugarExpedicion", org.zip), ("Sello", invoice["stamp"]["signature"]),
    ):
        root.set(name, value)

    global_info = invoice.get("global")
    if global_info:
        node(root, "InformacionGlobal", Periodicidad=PERIODICITY_CODES[global_info["periodicity"]],
             Meses=global_info["months"], **{"Año": str(global_info["year"])})
    node(root, "Emisor", Rfc=org.tax_id, Nombre=org.legal_name, RegimenFiscal=org.tax_system)
    node(root, "Receptor", Rfc=customer["tax_id"], Nombre=customer["legal_name"],
         DomicilioFiscalReceptor=customer["address"]["zip"],
         RegimenFiscalReceptor=customer["tax_system"], UsoCFDI=invoice["use"])

    concepts = node(root, "Conceptos")
    summary: dict[Decimal, list[Decimal]] = {}
    for item, line in zip(invoice["items"], lines):
        product, quantity = item["product"], Decimal(item["quantity"])
        attributes = {"ClaveProdServ": product["product_key"]}
        if product.get("sku"):
            attributes["NoIdentificacion"] = product["sku"]
        attributes.update(Cantidad=f"{quantity.normalize():f}", ClaveUnidad=product["unit_key"])
        if not global_info:
            attributes["Unidad"] = product["unit_name"]
        attributes.update(
            Descripcion=product["description"],
            ValorUnitario=_amount(line["base"]) if quantity == 1 else f"{line['base'] / quantity:.6f}",
            Importe=_amount(line["base"]),
            ObjetoImp="01" if line["rate"] is None else "02",
        )
        concept = node(concepts, "Concepto", **attributes)
        if line["rate"] is not None:
            transfers = node(node(concept, "Impuestos"), "Traslados")
            node(transfers, "Traslado", Base=_amount(line["base"]), Impuesto="002", TipoFactor="Tasa",
                 TasaOCuota=f"{line['rate']:.6f}", Importe=_amount(line["iva"]))
            totals = summary.setdefault(line["rate"], [Decimal(0), Decimal(0)])
            totals[0] += line["base"]
            totals[1] += line["iva"]
    if summary:
        taxes = node(root, "Impuestos", TotalImpuestosTrasladados=_amount(invoice["_iva"]))
        transfers = node(taxes, "Traslados")
        for rate, (base, iva) in sorted(summary.items()):
            node(transfers, "Traslado", Base=_amount(base), Impuesto="002", TipoFactor="Tasa",
                 TasaOCuota=f"{rate:.6f}", Importe=_amount(iva))

    complement = node(root, "Complemento")
    stamp = invoice["stamp"]
    seal = etree.SubElement(complement, f"{{{TFD_NS}}}TimbreFiscalDigital", nsmap={"tfd": TFD_NS})
    seal.set(f"{{{XSI_NS}}}schemaLocation",
             f"{TFD_NS} http://www.sat.gob.mx/sitio_internet/cfd/TimbreFiscalDigital/TimbreFiscalDigitalv11.xsd")
    for name, value in (
        ("Version", "1.1"), ("UUID", invoice["uuid"]),
        ("FechaTimbrado", _parse_iso(stamp["date"]).astimezone(org.zone).strftime("%Y-%m-%dT%H:%M:%S")),
        ("RfcProvCertif", PAC_RFC), ("SelloCFD", stamp["signature"]),
        ("NoCertificadoSAT", stamp["sat_cert_number"]), ("SelloSAT", stamp["sat_signature"]),
    ):
        seal.set(name, value)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _latin1(text: str) -> str:
    # The PDF core fonts speak latin-1 only.
    return text.encode("latin-1", "replace").decode("latin-1")


def _cfdi_pdf(org: Organization, invoice: dict) -> bytes:
    customer = invoice["customer"]
    folio = f"{invoice['series'] or ''}{invoice['folio_number']}"
    lines = [
        f"Folio fiscal (UUID): {invoice['uuid']}",
        f"Serie y folio: {folio}    Fecha: {invoice['date']}",
        f"Emisor: {org.legal_name}    RFC: {org.tax_id}",
        f"Receptor: {customer['legal_name']}    RFC: {customer['tax_id']}",
        f"Uso CFDI: {invoice['use']}    Forma de pago: {invoice['payment_form']}    Metodo: PUE",
    ]
    lines += [
        f"  {item['product']['description'][:60]}    {_amount(line['total'])}"
        for item, line in list(zip(invoice["items"], invoice["_lines"]))[:20]
    ]
    lines += [
        f"Subtotal: {_amount(invoice['_subtotal'])}    IVA: {_amount(invoice['_iva'])}",
        f"Total: {_amount(invoice['total'])} MXN",
    ]
    if invoice["status"] == "canceled":
        lines.append(f"CANCELADA el {invoice['canceled_at']}")
    pdf = FPDF()
    pdf.set_creator("FakeFacturapi")
    pdf.add_page()
    pdf.set_font("Helvetica", style="B", size=14)
    pdf.cell(0, 10, "Factura CFDI 4.0", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", size=10)
    for line in lines:
        pdf.cell(0, 7, _latin1(line), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output())
