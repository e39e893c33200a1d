"""The sandbox self-invoice page: where the QR of a slip can take the customer when the
company's upstream is the local sandbox (docs/self-invoice.md).

The customer sees the ticket, types their fiscal data and gets a sandbox-stamped CFDI
4.0 (XML and PDF); GET /{key}/cfdis then reports it to the POS like any customer CFDI.
Public on purpose (it is the customer's page, not the POS's), so every route asks for
proof that the visitor holds the printed ticket: the slip's `firma` when the company
signs its portal URLs (url_secret), otherwise the ticket's total typed by the customer.
The company key is in the URL; without that proof a guessed URL gets nothing.

Plain server-rendered HTML in Spanish, no JavaScript: it must work on any phone and
with no internet beyond the store's LAN.
"""
from __future__ import annotations

import hmac
import logging
import re
import threading
import uuid as uuidlib
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Callable

from flask import Blueprint, Response, current_app, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from agent.db import locked
from agent.insumo import InsumoError, parse_insumo
from agent.models import EXPIRED, IN_GLOBAL, INVOICED, STORED, Ticket
from agent.periods import self_invoice_deadline
from agent.portal import SIGNATURE_PARAM, signature
from agent.requests_in import ticket_number
from agent.store import CUSTOMER_CFDI, NewCfdi, TicketConflict, _record_cfdis
from agent.writer import StorageUnavailable
from sync import sat_catalogs
from sync.cfdi40 import CfdiInvalid, Issuer, validate
from sync.csd import CsdError
from sync.customer_cfdi import CannotInvoice, Customer, CustomerInvoice, build_xml, totals
from sync.pdf import render_pdf
from sync.signing import Signers
from sync.upstream import UpstreamError

log = logging.getLogger(__name__)

bp = Blueprint("self_invoice", __name__, template_folder="templates")

# app.config key: a callable returning the current aware datetime. Tests set it to sell
# and invoice on a fixed day; the deadline and the CFDI's Fecha both come from it.
CLOCK = "SELF_INVOICE_CLOCK"

# Form fields, as named in the HTML (stable ids for browser tests) and in error texts.
FIELDS = {
    "rfc": "RFC",
    "nombre": "Nombre o razón social",
    "codigo_postal": "Código postal",
    "regimen": "Régimen fiscal",
    "uso": "Uso del CFDI",
    "monto": "Total del ticket",
}
# Longer input is cut before it is looked at: every real value is far shorter.
_MAX_INPUT = 400
_MAX_NAME = 300  # SAT's limit for Receptor/Nombre

_AMOUNT_RE = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,2})?")
_THOUSANDS_RE = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]{1,2})?")
_POSTAL_CODE_RE = re.compile(r"[0-9]{5}")
_NOT_IN_NAME_RE = re.compile("[|\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def _agent():
    return current_app.config["AGENT"]


def _now() -> datetime:
    clock: Callable[[], datetime] | None = current_app.config.get(CLOCK)
    return clock() if clock else datetime.now(timezone.utc)


# -- who is asking, about which ticket -----------------------------------------------------


@dataclass
class _Visit:
    company: object  # agent.config.CompanyConfig
    branch: object  # agent.config.BranchConfig
    ticket: Ticket
    firma: str  # as received, echoed into forms and links
    signed: bool  # the company signs its URLs, so firma is the proof
    proven: bool  # the visitor showed the proof (firma, or the ticket's total)

    @property
    def deadline(self):
        return self_invoice_deadline(self.ticket.sold_at, self.company.periodicity, self.company.self_invoice_days)

    def proof_args(self, monto: str | None) -> dict:
        """Query arguments that carry the proof into links (downloads, the next visit)."""
        if self.signed:
            return {SIGNATURE_PARAM: self.firma}
        return {"monto": monto} if monto else {}


class _Refusal(Exception):
    """Answer with a message page instead of the ticket's page."""

    def __init__(self, status: int, title: str, text: str):
        super().__init__(text)
        self.status, self.title, self.text = status, title, text


@bp.errorhandler(_Refusal)
def _refused(exc: _Refusal):
    return _page("self_invoice/message.html", exc.status, title=exc.title, text=exc.text)


@bp.errorhandler(StorageUnavailable)
def _storage_unavailable(exc: StorageUnavailable):
    log.error("self-invoice: storage unavailable: %s", exc)
    return _page("self_invoice/message.html", 503, title="Intente más tarde",
                 text="La tienda no puede guardar su factura en este momento. Intente de nuevo en unos minutos.")


@bp.errorhandler(Exception)
def _unexpected(exc: Exception):
    if isinstance(exc, HTTPException):
        # A request Werkzeug could not read (a broken form body): the customer's fault or
        # their browser's, so its own 4xx, on a page they can read.
        return _page("self_invoice/message.html", exc.code or 400, title="No pudimos leer su solicitud",
                     text="La página recibió datos que no puede leer. Abra de nuevo el enlace de su ticket e "
                          "intente otra vez.")  # fmt: skip
    # A customer must never see the POS's plain-text 500 about tickets not stored.
    log.exception("self-invoice: unexpected error")
    return _page("self_invoice/message.html", 500, title="No pudimos generar su factura",
                 text="Ocurrió un error inesperado en la tienda. Intente de nuevo; si se repite, pida su "
                      "factura en la tienda.")  # fmt: skip


def _not_found(number: str) -> _Refusal:
    # The same answer for an unknown company, branch or ticket: a guessed URL learns nothing.
    return _Refusal(404, "Ticket no encontrado",
                    f"No encontramos el ticket {number} en esta tienda. Revise que abrió el enlace del código QR "
                    "impreso en su ticket.")  # fmt: skip


def _visit(company_key: str, branch_id: str, number: str) -> _Visit:
    config = _agent().config
    company = config.company(company_key)
    if company is None:
        raise _not_found(number)
    if config.upstream_of(company) != "sandbox":
        raise _Refusal(404, "Facture en el portal de Facturapi",
                       "Esta tienda factura sus tickets en el portal de Facturapi, no en esta página. Escanee el "
                       "código QR impreso en su ticket: lo lleva a ese portal.")  # fmt: skip
    branch = company.branch(branch_id)
    if branch is None or ticket_number(number) is None:
        raise _not_found(number)
    ticket = _agent().store.ticket(company_key, branch_id, number)
    if ticket is None:
        raise _not_found(number)
    firma = request.values.get(SIGNATURE_PARAM, "")[:_MAX_INPUT]
    signed = bool(company.url_secret)
    if signed:
        expected = signature(company.url_secret, company.key, branch.id, ticket.number, ticket.total, ticket.sold_at)
        if not hmac.compare_digest(expected.encode(), firma.encode("utf-8", "replace")):
            raise _Refusal(403, "Enlace no válido",
                           "El enlace de este ticket no es válido o está incompleto. Escanee de nuevo el código "
                           "QR impreso en su ticket.")  # fmt: skip
        return _Visit(company, branch, ticket, firma, True, True)
    return _Visit(company, branch, ticket, "", False, _total_matches(request.values.get("monto"), ticket))


def _total_matches(typed: str | None, ticket: Ticket) -> bool:
    amount = _parse_amount(typed)
    return amount is not None and amount == ticket.total


def _parse_amount(typed: str | None) -> Decimal | None:
    """The total as customers type it: 1234.50, $1,234.50, 1234,50."""
    if not typed:
        return None
    text = typed[:_MAX_INPUT].replace("$", "").replace(" ", "").strip()
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    elif text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")
    if not _AMOUNT_RE.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _closed(visit: _Visit) -> None:
    """Refuse a ticket whose self-invoicing is over: expired or in the global CFDI."""
    ticket = visit.ticket
    deadline = f"{visit.deadline:%d/%m/%Y}"
    if ticket.status == IN_GLOBAL:
        raise _Refusal(410, "Ticket en la factura global",
                       f"El ticket {ticket.number} ya está incluido en la factura global de la tienda (a PÚBLICO EN "
                       "GENERAL), por eso ya no se puede facturar a su nombre.")  # fmt: skip
    today = _now().astimezone(visit.branch.zone).date()
    if ticket.status == EXPIRED or (ticket.status == STORED and today > visit.deadline):
        raise _Refusal(410, "Plazo vencido",
                       f"El plazo para facturar el ticket {ticket.number} terminó el {deadline}. Las ventas que no "
                       "se facturan a tiempo se incluyen en la factura global de la tienda.")  # fmt: skip


# -- the page ----------------------------------------------------------------------------


@bp.route("/autofactura/<company_key>/<branch_id>/<number>", methods=["GET", "POST"])
def ticket_page(company_key: str, branch_id: str, number: str):
    visit = _visit(company_key, branch_id, number)
    _closed(visit)
    if visit.ticket.status == INVOICED:
        return _invoiced(visit, fresh=False, status=200 if request.method == "GET" else 409)
    if request.method == "GET":
        # A QR whose URL carries the total (?monto={total}, docs/self-invoice.md) arrives
        # proven: the customer should not have to type it again.
        typed = request.args.get("monto", "")[:_MAX_INPUT] if visit.proven and not visit.signed else ""
        return _form(visit, {"monto": typed} if typed else {}, {}, 200)
    values = {name: request.form.get(name, "")[:_MAX_INPUT] for name in FIELDS}
    customer, errors = _check_form(values, visit)
    if errors:
        return _form(visit, values, errors, 422)
    return _issue(visit, customer, values.get("monto", ""))


def _form(visit: _Visit, values: dict, errors: dict, status: int):
    shown = visit.proven  # the total is the proof when the URL is not signed: not shown before it
    return _page(
        "self_invoice/ticket.html", status,
        visit=visit, values=values, errors=errors, labels=FIELDS, show_total=shown, items=_items(visit) if shown else [],
        regimes=sat_catalogs.regimes(), uses=sat_catalogs.uses(),
        action=url_for(".ticket_page", company_key=visit.company.key, branch_id=visit.branch.id,
                       number=visit.ticket.number),
    )  # fmt: skip


def _items(visit: _Visit) -> list:
    try:
        return list(parse_insumo(visit.ticket.insumo).items)
    except InsumoError:  # stored tickets passed the parser; a later, stricter one must not break the page
        return []


def _check_form(values: dict, visit: _Visit) -> tuple[Customer | None, dict]:
    """The customer's data, normalised, or {field: Spanish problem naming the field}."""
    errors: dict[str, str] = {}

    rfc = re.sub(r"[\s-]", "", values["rfc"]).upper()
    person = None
    if not rfc:
        errors["rfc"] = "RFC: escriba su RFC."
    elif not sat_catalogs.RFC_RE.fullmatch(rfc):
        errors["rfc"] = (f"RFC: «{values['rfc'].strip()[:20]}» no es un RFC válido. Tiene 12 caracteres si es "
                         "persona moral (ej. EKU9003173C9) o 13 si es persona física (ej. GODE561231GR8).")
    elif not sat_catalogs.rfc_date_valid(rfc):
        errors["rfc"] = f"RFC: la fecha {rfc[-9:-3]} (AAMMDD) de su RFC no existe; revíselo."
    elif rfc in sat_catalogs.GENERIC_RFCS:
        errors["rfc"] = (f"RFC: {rfc} es el RFC genérico de {sat_catalogs.GENERIC_RFCS[rfc]}; una factura a su "
                         "nombre necesita su propio RFC.")
    else:
        person = sat_catalogs.person_of(rfc)

    name = " ".join(values["nombre"].split()).upper()
    if not name:
        errors["nombre"] = ("Nombre o razón social: escriba su nombre o razón social como aparece en su Constancia "
                            "de Situación Fiscal.")
    elif _NOT_IN_NAME_RE.search(name):
        errors["nombre"] = "Nombre o razón social: no puede contener el carácter «|» ni caracteres de control."
    elif len(name) > _MAX_NAME:
        errors["nombre"] = f"Nombre o razón social: tiene {len(name)} caracteres; el máximo es {_MAX_NAME}."

    postal_code = values["codigo_postal"].strip()
    if not _POSTAL_CODE_RE.fullmatch(postal_code):
        errors["codigo_postal"] = "Código postal: escriba los 5 dígitos del código postal de su domicilio fiscal."
    elif not sat_catalogs.postal_code_exists(postal_code):
        errors["codigo_postal"] = f"Código postal: {postal_code} no existe en el catálogo de códigos postales del SAT."

    regime = values["regimen"].strip()
    if not regime:
        errors["regimen"] = "Régimen fiscal: elija su régimen fiscal."
    elif not sat_catalogs.is_regime(regime):
        errors["regimen"] = "Régimen fiscal: elija uno de la lista."
    elif person is not None and not sat_catalogs.regime_allows(regime, person):
        kind, length = ("persona física", 13) if person == sat_catalogs.FISICA else ("persona moral", 12)
        errors["regimen"] = (f"Régimen fiscal: {regime} ({sat_catalogs.regime_name(regime)}) no aplica a su RFC, "
                             f"que es de {kind} ({length} caracteres).")

    use = values["uso"].strip()
    if not use:
        errors["uso"] = "Uso del CFDI: elija el uso que dará a la factura."
    elif not sat_catalogs.is_use(use):
        errors["uso"] = "Uso del CFDI: elija uno de la lista."
    elif "regimen" not in errors and not sat_catalogs.use_allows(use, regime, person):
        allowed = ", ".join(sat_catalogs.uses_for(regime, person))
        errors["uso"] = (f"Uso del CFDI: {use} ({sat_catalogs.use_name(use)}) no corresponde al régimen {regime}. "
                         f"Con ese régimen puede elegir: {allowed}.")

    if not visit.signed:
        typed = values["monto"]
        if _parse_amount(typed) is None:
            errors["monto"] = "Total del ticket: escriba el total impreso en su ticket, por ejemplo 123.45."
        elif not _total_matches(typed, visit.ticket):
            errors["monto"] = "Total del ticket: no coincide con el de este ticket; escríbalo tal como aparece impreso."

    if errors:
        return None, errors
    return Customer(rfc, name, postal_code, regime, use), {}


# -- issuing -----------------------------------------------------------------------------


class _TicketChanged(Exception):
    """The POS replaced the ticket while its CFDI was being made."""


def _issue(visit: _Visit, customer: Customer, monto: str):
    agent = _agent()
    company, branch, ticket = visit.company, visit.branch, visit.ticket
    issued_at = _now().astimezone(branch.zone).replace(tzinfo=None, microsecond=0)
    try:
        insumo = parse_insumo(ticket.insumo)
        invoice = CustomerInvoice(
            issuer=Issuer(company.rfc, company.legal_name, company.tax_regime),
            customer=customer,
            # The POS's own Serie and Folio: the invoice reads like the ticket it comes from.
            series=insumo.series or "",
            folio=insumo.folio or ticket.number,
            issued_at=issued_at,
            postal_code=branch.postal_code,
            insumo=insumo,
        )
        xml = build_xml(invoice, _signers().csd_for(company))
        validate(xml)
        stamped = agent.upstream_for(company.key).stamp(xml, key=f"{company.key}-customer-{ticket.id}")
        pdf = render_pdf(stamped.xml)
    except CannotInvoice as exc:
        log.warning("self-invoice of ticket %s/%s refused: %s", branch.id, ticket.number, exc.reason)
        raise _Refusal(422, "No se puede facturar en línea", f"No es posible facturar este ticket aquí: {exc.reason}.")
    except (CsdError, UpstreamError) as exc:
        log.error("self-invoice of ticket %s/%s: cannot sign or stamp: %s", branch.id, ticket.number, exc)
        raise _Refusal(503, "Intente más tarde",
                       "La tienda no puede emitir facturas en este momento. Intente de nuevo más tarde o pida su "
                       "factura en la tienda.")  # fmt: skip
    except (CfdiInvalid, ValueError) as exc:  # InsumoError is a ValueError too
        # The ticket's data (from the POS) does not make a valid CFDI: the customer can do
        # nothing about it; the store's log says why.
        log.error("self-invoice of ticket %s/%s: invalid CFDI: %s", branch.id, ticket.number, exc)
        raise _Refusal(422, "No se puede facturar en línea",
                       "Los datos de este ticket no permiten generar la factura en línea. Pida su factura en la "
                       "tienda.")  # fmt: skip
    sums = totals(invoice)
    record = NewCfdi(
        id=uuidlib.uuid4().hex, company=company.key, branch=branch.id, kind=CUSTOMER_CFDI, uuid=stamped.uuid,
        issued_at=issued_at, receiver_rfc=customer.rfc, receiver_name=customer.name, subtotal=sums.subtotal,
        total=sums.total, discount=sums.discount, iva=sums.iva, serie=invoice.series, folio=invoice.folio,
        production=stamped.production,
    )  # fmt: skip
    try:
        _record(record, ticket, stamped.xml, pdf)
    except TicketConflict:
        # Another submit (a double click, a second phone) was recorded first: one sale, one
        # CFDI. Show the ticket as it is now; this stamp is dropped.
        visit.ticket = agent.store.ticket(company.key, branch.id, ticket.number)
        _closed(visit)
        return _invoiced(visit, fresh=False, status=409, monto=monto)
    except _TicketChanged:
        # Its total or items changed: the CFDI just made no longer matches the sale, and
        # a signed link names the old total. The customer starts again from the new slip.
        raise _Refusal(409, "El ticket cambió",
                       f"La tienda modificó el ticket {ticket.number} mientras generábamos su factura; no se emitió "
                       "ninguna factura. Abra de nuevo la página de su ticket e intente otra vez.")  # fmt: skip
    visit.ticket = agent.store.ticket(company.key, branch.id, ticket.number)
    log.info("self-invoice: ticket %s/%s invoiced to %s, UUID %s", branch.id, ticket.number, customer.rfc,
             stamped.uuid)
    return _invoiced(visit, fresh=True, status=200, monto=monto)


def _record(record: NewCfdi, ticket: Ticket, xml: bytes, pdf: bytes) -> None:
    store = _agent().store
    files = store.cfdi_files(record, xml, pdf)
    try:
        store.writer.submit(_record_if_open, (ticket.id, ticket.version, record, files))
    except (TicketConflict, _TicketChanged):
        for name in files:  # the losing stamp's files: nothing will ever name them
            if name:
                (store.data_dir / name).unlink(missing_ok=True)
        raise


def _record_if_open(batch):
    """Store.record_cfdi, plus what it cannot know: the ticket is still open for
    self-invoicing (not expired or reserved for a global CFDI since the page checked)
    and still the ticket the CFDI was built from. Checked and written in one transaction."""
    results = []
    for ticket_id, version, record, files in batch:
        ticket = locked(Ticket.select().where(Ticket.id == ticket_id)).get()
        if ticket.status != STORED or ticket.cfdi_id is not None or ticket.global_invoice is not None:
            results.append(TicketConflict.of(ticket, "invoice"))
        elif ticket.version != version:
            results.append(_TicketChanged())
        else:
            results.extend(_record_cfdis([(record, (ticket_id,), files)]))
    return results


# -- the result, and its files -----------------------------------------------------------


def _invoiced(visit: _Visit, *, fresh: bool, status: int, monto: str | None = None):
    monto = monto if monto is not None else request.values.get("monto", "")[:_MAX_INPUT]
    cfdi = visit.ticket.cfdi if visit.ticket.cfdi_id else None
    proven = visit.proven or _total_matches(monto, visit.ticket)
    links = {}
    if proven and cfdi is not None:
        args = visit.proof_args(monto)
        for kind in ("xml", "pdf"):
            links[kind] = url_for(".download", company_key=visit.company.key, branch_id=visit.branch.id,
                                  number=visit.ticket.number, kind=kind, **args)  # fmt: skip
    error = None
    if monto and not proven:
        error = "Total del ticket: no coincide con el de este ticket; escríbalo tal como aparece impreso."
    return _page(
        "self_invoice/invoice.html", status,
        visit=visit, cfdi=cfdi if proven else None, fresh=fresh, links=links, error=error, monto=monto,
        action=url_for(".ticket_page", company_key=visit.company.key, branch_id=visit.branch.id,
                       number=visit.ticket.number),
    )  # fmt: skip


@bp.route("/autofactura/<company_key>/<branch_id>/<number>/<any(xml, pdf):kind>", methods=["GET"])
def download(company_key: str, branch_id: str, number: str, kind: str):
    visit = _visit(company_key, branch_id, number)
    ticket = visit.ticket
    if not visit.proven:
        raise _Refusal(403, "Enlace no válido",
                       "Para descargar la factura abra la página de su ticket y escriba el total impreso en él.")
    cfdi = ticket.cfdi if ticket.cfdi_id else None
    path = _agent().store.cfdi_file(cfdi, kind) if ticket.status == INVOICED and cfdi is not None else None
    if path is None:
        raise _Refusal(404, "Sin factura", f"El ticket {ticket.number} no tiene una factura para descargar.")
    mimetype = "application/xml" if kind == "xml" else "application/pdf"
    response = Response(path.read_bytes(), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{cfdi.uuid}.{kind}"'
    return response


# -- plumbing ----------------------------------------------------------------------------


def _page(template: str, status: int, **context) -> Response:
    return Response(render_template(template, **context), status=status, mimetype="text/html")


@bp.after_request
def _private(response: Response) -> Response:
    # The pages carry a customer's RFC and the links their proof: never cached, and the
    # URL (with firma or monto) never sent on to another site.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


class _LockedSigners:
    """sync.signing.Signers for request threads: the first use of a company may create
    its sandbox CSD files, which two threads must not do at once."""

    def __init__(self, agent):
        self._signers = Signers(agent.config, agent.data_dir, "sandbox")
        self._lock = threading.Lock()

    def csd_for(self, company):
        with self._lock:
            return self._signers(company)


_signers_lock = threading.Lock()


def _signers() -> _LockedSigners:
    extensions = current_app.extensions
    with _signers_lock:
        if "self_invoice_signers" not in extensions:
            extensions["self_invoice_signers"] = _LockedSigners(_agent())
        return extensions["self_invoice_signers"]
