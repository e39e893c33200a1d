"""The factura global: a CFDI 4.0 to PUBLICO EN GENERAL covering a period's tickets.

Plain values in, bytes out: no Flask, no database. See docs/global-invoice-cfdi.md for the
rules field by field. In short:

- ``totals(invoice)``: what the CFDI will state (SubTotal, Descuento, taxes, Total,
  FormaPago) without building it.
- ``build_xml(invoice, csd)``: the XML, sealed when a CSD is given. One Concepto per
  ticket; amounts come from each ticket's insumo, in Decimal.
- ``cadena_original(xml)``: SAT's cadena original 4.0 of any CFDI 4.0, computed in Python
  in the order of SAT's XSLT (tests prove it equal to the XSLT's output).
- ``validate(xml)``: SAT's cfdv40.xsd with its catalogs (shipped by satcfdi), loaded
  offline once; raises CfdiInvalid with the list of problems.
- ``split(tickets)``: consecutive groups that respect a Concepto and a size cap.

Speed: the XML and the cadena original are written as text straight from the Decimals,
in one pass, instead of going through an object tree and SAT's XSLT; see the docs for
the figures and for why XSD validation, not building, is what costs time.
"""
from __future__ import annotations

import logging

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, localcontext
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from lxml import etree

from agent.insumo import Insumo
from agent.money import EXACT_CONTEXT, decimals_of, round_money, tax_bounds

if TYPE_CHECKING:  # only for annotations: any object with rfc, certificate_* and sign() works
    from sync.csd import Csd

__all__ = [
    "CfdiInvalid",
    "DEFAULT_MAX_BYTES",
    "GlobalInvoice",
    "GlobalTicket",
    "Issuer",
    "PERIODICIDAD",
    "SummaryTax",
    "Totals",
    "build_xml",
    "cadena_original",
    "check_ticket",
    "months_code",
    "sat_schema",
    "sat_schema_file",
    "split",
    "totals",
    "validate",
]

CFDI_NS = "http://www.sat.gob.mx/cfd/4"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATION = f"{CFDI_NS} http://www.sat.gob.mx/sitio_internet/cfd/4/cfdv40.xsd"

PERIODICIDAD = {"day": "01", "week": "02", "fortnight": "03", "month": "04", "two_months": "05"}
# Bimestral (05) is only for the Régimen Simplificado de Confianza / RIF issuers (621).
BIMONTHLY_REGIME = "621"

PUBLIC_RFC = "XAXX010101000"
PUBLIC_NAME = "PUBLICO EN GENERAL"
PUBLIC_REGIME = "616"  # Sin obligaciones fiscales
PUBLIC_USE = "S01"  # Sin efectos fiscales

# PACs refuse a CFDI of more than about 10 MB; keep a margin for the stamp (the
# TimbreFiscalDigital complement) and anything a PAC adds.
DEFAULT_MAX_BYTES = 9_000_000
# Room split() keeps for everything that is not a Concepto: declaration, Comprobante with
# its Certificado (about 2 KB) and Sello, Emisor, Receptor, the tax summary.
HEADER_ALLOWANCE = 16_384

_ZERO = Decimal(0)
_RATE_QUANTUM = Decimal("0.000001")
_CENT = Decimal("0.01")

_IVA, _IEPS = "002", "003"
_TO_BE_DEFINED = "99"  # c_FormaPago "Por definir": only for MetodoPago PPD
_EXEMPT = "Exento"

# Characters XML 1.0 cannot carry at all (not even as &#...;).
_NOT_XML_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPE_RE = re.compile('[&<>"\t\n\r]')
_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    # Escaped so that they survive attribute-value normalization as themselves.
    "\t": "&#9;",
    "\n": "&#10;",
    "\r": "&#13;",
}
# XPath normalize-space(): only these four are white space.
_XML_SPACE_RE = re.compile("[ \t\r\n]+")
_XML_SPACE = " \t\r\n"

log = logging.getLogger(__name__)


class CfdiInvalid(ValueError):
    """The XML does not validate against SAT's cfdv40.xsd. `problems` lists why."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = "; ".join(self.problems[:5])
        more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        count = len(self.problems)
        super().__init__(
            f"CFDI does not validate against SAT's cfdv40.xsd, {count} problem"
            f"{'' if count == 1 else 's'}: {shown}{more}"
        )


@dataclass(frozen=True)
class Issuer:
    rfc: str
    name: str  # legal name as registered with SAT, without the corporate regime ("SA DE CV")
    tax_regime: str  # c_RegimenFiscal, e.g. "601"


@dataclass(frozen=True)
class GlobalTicket:
    number: str  # the ticket number: the Concepto's NoIdentificacion
    insumo: Insumo


@dataclass(frozen=True)
class GlobalInvoice:
    issuer: Issuer
    series: str  # Serie ("" to leave it out)
    folio: str  # Folio ("" to leave it out)
    issued_at: datetime  # Fecha: the branch's local wall time, naive
    postal_code: str  # LugarExpedicion, and the Receptor's DomicilioFiscalReceptor
    periodicity: str  # day | week | fortnight | month | two_months
    months: str  # InformacionGlobal Meses, see months_code()
    year: int  # InformacionGlobal Año
    tickets: Sequence[GlobalTicket]


@dataclass(frozen=True)
class SummaryTax:
    """One Comprobante/Impuestos/Traslados/Traslado line."""

    tax: str  # "002" IVA | "003" IEPS
    factor: str  # Tasa | Cuota | Exento
    rate: Decimal | None  # None when Exento
    base: Decimal  # rounded to cents
    amount: Decimal | None  # rounded to cents; None when Exento


@dataclass(frozen=True)
class Totals:
    subtotal: Decimal
    discount: Decimal
    transferred_taxes: Decimal  # TotalImpuestosTrasladados (0 when the CFDI has none)
    total: Decimal
    concepts: int
    payment_form: str  # FormaPago
    taxes: tuple[SummaryTax, ...] = ()

    @property
    def iva(self) -> Decimal:
        return sum((t.amount for t in self.taxes if t.tax == _IVA and t.amount is not None), _ZERO)

    @property
    def ieps(self) -> Decimal:
        return sum((t.amount for t in self.taxes if t.tax == _IEPS and t.amount is not None), _ZERO)


def months_code(periodicity: str, period_first_day: date) -> str:
    """InformacionGlobal Meses for a period starting on `period_first_day`.

    01..12 (the month of the period's first day) for day, week, fortnight and month;
    13 (Ene-Feb), 14 (Mar-Abr), 15 (May-Jun), 16 (Jul-Ago), 17 (Sep-Oct), 18 (Nov-Dic) for
    two_months.
    """
    if periodicity not in PERIODICIDAD:
        raise ValueError(
            f"unknown periodicity {periodicity!r}; expected one of {', '.join(PERIODICIDAD)}"
        )
    month = period_first_day.month
    if periodicity == "two_months":
        return str(13 + (month - 1) // 2)
    return f"{month:02d}"


# --------------------------------------------------------------------------- amounts


@dataclass(frozen=True, slots=True)
class _Tax:
    tax: str
    factor: str
    rate: Decimal | None
    base: Decimal
    amount: Decimal | None


def _ticket_taxes(ticket: GlobalTicket) -> list[_Tax]:
    """The ticket's Traslados summed per (Impuesto, TipoFactor, TasaOCuota), checked.

    Runs inside EXACT_CONTEXT (the callers set it)."""
    insumo = ticket.insumo
    if insumo.subtotal <= 0:
        raise ValueError(
            f"ticket {ticket.number!r}: SubTotal {insumo.subtotal} is not greater than 0; "
            f"tickets of $0 are left out of the global CFDI"
        )
    groups: dict[tuple[str, str, Decimal | None], list] = {}
    for item in insumo.items:
        _add_taxes(groups, item.taxes)
    taxes = []
    for (tax, factor, rate), (base, amount) in groups.items():
        if not base:
            # SAT wants Base > 0 on a Concepto's Traslado. A zero base (items discounted to
            # nothing) carries no tax: leave the line out.
            if amount:
                raise ValueError(
                    f"ticket {ticket.number!r}: Traslado {tax} {factor} {rate} has Importe "
                    f"{amount} on a Base of 0"
                )
            continue
        if amount is not None:
            low, high = tax_bounds(base, rate, decimals_of(amount))
            if not low <= amount <= high:
                # A POS that rounds each line's tax to cents can sum, over many lines of
                # one rate, outside what SAT accepts for the ticket's total base. Blocking
                # the period's global CFDI for that would miss SAT's 24 hours, so the
                # Concepto states the exact Base x Tasa instead (always inside the bounds);
                # the ticket's tax moves by a few cents at most. docs/global-invoice-cfdi.md.
                exact = (base * rate).quantize(Decimal("0.000001"))
                log.info("ticket %s: Traslado %s %s %s of %s recomputed as %s (SAT bounds %s..%s)",
                         ticket.number, tax, factor, rate, amount, exact, low, high)
                amount = exact
        taxes.append(_Tax(tax, factor, rate, base, amount))
    return taxes


def _add_taxes(groups: dict, taxes) -> None:
    """Sum Base and Importe per (Impuesto, TipoFactor, TasaOCuota); Exento has no Importe."""
    for t in taxes:
        key = (t.tax, t.factor, t.rate)
        group = groups.get(key)
        if group is None:
            groups[key] = [t.base, t.amount]
        else:
            group[0] += t.base
            if t.amount is not None:
                group[1] += t.amount


def check_ticket(ticket: GlobalTicket) -> None:
    """Raise the ValueError build_xml() would raise for this ticket, if any: subtotal 0,
    a number SAT cannot take as NoIdentificacion, or Traslados that, summed per rate,
    fall outside SAT's bounds. Lets a caller find such tickets before the period closes."""
    with localcontext(EXACT_CONTEXT):
        _render_concept(ticket, _ticket_taxes(ticket))


@dataclass
class _Plan:
    concepts_xml: list[str]
    concepts_cadena: list[str]
    subtotal: Decimal
    discount: Decimal
    summary: list[SummaryTax]
    transferred: Decimal | None  # TotalImpuestosTrasladados, None when it is left out
    total: Decimal
    payment_form: str


def _plan(invoice: GlobalInvoice, render: bool) -> _Plan:
    tickets = invoice.tickets
    if not tickets:
        raise ValueError("a global CFDI needs at least one ticket")
    xml_parts: list[str] = []
    cadena_parts: list[str] = []
    subtotal = discount = _ZERO
    summary: dict[tuple[str, str, Decimal | None], list] = {}
    seen: set[str] = set()
    largest: GlobalTicket | None = None
    largest_total = _ZERO
    with localcontext(EXACT_CONTEXT):
        for ticket in tickets:
            number = ticket.number
            if number in seen:
                raise ValueError(f"ticket {number!r} appears twice; a ticket goes into one CFDI only")
            seen.add(number)
            insumo = ticket.insumo
            taxes = _ticket_taxes(ticket)
            subtotal += insumo.subtotal
            discount += insumo.discount
            # FormaPago: the ticket with the largest amount; on a tie the first one. A
            # global CFDI is paid in full (PUE), so 99 "Por definir" cannot be its form.
            if insumo.payment_form != _TO_BE_DEFINED and (largest is None or insumo.total > largest_total):
                largest, largest_total = ticket, insumo.total
            _add_taxes(summary, taxes)
            if render:
                xml, cadena = _render_concept(ticket, taxes)
                xml_parts.append(xml)
                cadena_parts.append(cadena)
        lines = []
        transferred = None
        for (tax, factor, rate), (base, amount) in summary.items():
            if amount is None:
                lines.append(SummaryTax(tax, factor, None, round_money(base), None))
            else:
                amount = round_money(amount)
                lines.append(SummaryTax(tax, factor, rate, round_money(base), amount))
                transferred = amount if transferred is None else transferred + amount
        subtotal = round_money(subtotal)
        discount = round_money(discount)
        total = subtotal - discount + (transferred or _ZERO)
    if largest is None:
        raise ValueError(
            f"every ticket has FormaPago {_TO_BE_DEFINED} (Por definir); a global CFDI is paid "
            f"in full (MetodoPago PUE) and needs the real payment form"
        )
    return _Plan(
        xml_parts, cadena_parts, subtotal, discount, lines, transferred, total,
        largest.insumo.payment_form,
    )


def totals(invoice: GlobalInvoice) -> Totals:
    """The amounts the global CFDI states, computed exactly as build_xml() does."""
    plan = _plan(invoice, render=False)
    return Totals(
        subtotal=plan.subtotal,
        discount=plan.discount,
        transferred_taxes=plan.transferred or _ZERO,
        total=plan.total,
        concepts=len(invoice.tickets),
        payment_form=plan.payment_form,
        taxes=tuple(plan.summary),
    )


# --------------------------------------------------------------------------- text


def _dec(d: Decimal) -> str:
    s = str(d)
    return format(d, "f") if "E" in s or "e" in s else s


def _money(d: Decimal) -> str:
    """A Decimal of at most 2 decimals written with exactly 2 (130 -> 130.00)."""
    return _dec(round_money(d))


_RATES: dict[Decimal, str] = {}


def _rate(rate: Decimal) -> str:
    s = _RATES.get(rate)
    if s is None:
        s = _RATES[rate] = _dec(rate.quantize(_RATE_QUANTUM, context=EXACT_CONTEXT))
    return s


def _attr(value: str) -> str:
    """`value` escaped for a double-quoted XML attribute."""
    if _NOT_XML_RE.search(value):
        raise ValueError(f"{value!r} contains a character XML cannot carry")
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], value)


def _normalize(value: str) -> str:
    """XPath normalize-space(), as SAT's XSLT applies it to every cadena value."""
    return _XML_SPACE_RE.sub(" ", value).strip(_XML_SPACE)


def _text(value: str, what: str, maximum: int) -> tuple[str, str]:
    """(escaped for XML, as in the cadena) of a free text field SAT limits to
    `maximum` characters without '|'."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, not {type(value).__name__}")
    normalized = _normalize(value)
    if not normalized:
        raise ValueError(f"{what} is empty")
    if len(normalized) > maximum:
        raise ValueError(f"{what} {value[:40]!r}... has {len(normalized)} characters (SAT allows {maximum})")
    if "|" in value:
        raise ValueError(f"{what} {value!r} contains '|', which SAT does not allow")
    try:
        escaped = _attr(value)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return escaped, normalized


def _render_concept(ticket: GlobalTicket, taxes: list[_Tax]) -> tuple[str, str]:
    """The Concepto element and its part of the cadena original."""
    noid_xml, noid_cadena = _text(ticket.number, "ticket number (NoIdentificacion)", 100)
    insumo = ticket.insumo
    amount = _money(insumo.subtotal)
    if insumo.discount > 0:
        d = _money(insumo.discount)
        discount_xml, discount_cadena = f' Descuento="{d}"', f"|{d}"
    else:
        discount_xml = discount_cadena = ""
    obj = "02" if taxes else "01"
    head = (
        f'<cfdi:Concepto ClaveProdServ="01010101" NoIdentificacion="{noid_xml}" Cantidad="1" '
        f'ClaveUnidad="ACT" Descripcion="Venta" ValorUnitario="{amount}" Importe="{amount}"'
        f'{discount_xml} ObjetoImp="{obj}"'
    )
    cadena = f"|01010101|{noid_cadena}|1|ACT|Venta|{amount}|{amount}{discount_cadena}|{obj}"
    if not taxes:
        return head + "/>", cadena
    xml = [head, "><cfdi:Impuestos><cfdi:Traslados>"]
    for t in taxes:
        base = _dec(t.base)
        if t.amount is None:
            xml.append(f'<cfdi:Traslado Base="{base}" Impuesto="{t.tax}" TipoFactor="{t.factor}"/>')
            cadena += f"|{base}|{t.tax}|{t.factor}"
        else:
            rate, value = _rate(t.rate), _dec(t.amount)
            xml.append(
                f'<cfdi:Traslado Base="{base}" Impuesto="{t.tax}" TipoFactor="{t.factor}" '
                f'TasaOCuota="{rate}" Importe="{value}"/>'
            )
            cadena += f"|{base}|{t.tax}|{t.factor}|{rate}|{value}"
    xml.append("</cfdi:Traslados></cfdi:Impuestos></cfdi:Concepto>")
    return "".join(xml), cadena


def _check_invoice(invoice: GlobalInvoice, csd: Csd | None) -> None:
    issuer = invoice.issuer
    if invoice.periodicity not in PERIODICIDAD:
        raise ValueError(
            f"unknown periodicity {invoice.periodicity!r}; expected one of {', '.join(PERIODICIDAD)}"
        )
    if invoice.periodicity == "two_months":
        if invoice.months not in {str(m) for m in range(13, 19)}:
            raise ValueError(f"months {invoice.months!r}: two_months needs 13 (Ene-Feb) .. 18 (Nov-Dic)")
        if issuer.tax_regime != BIMONTHLY_REGIME:
            raise ValueError(
                f"periodicity two_months (Bimestral) is only for tax regime {BIMONTHLY_REGIME}; "
                f"the issuer's is {issuer.tax_regime!r}"
            )
    elif invoice.months not in {f"{m:02d}" for m in range(1, 13)}:
        raise ValueError(f"months {invoice.months!r}: expected 01..12 for periodicity {invoice.periodicity}")
    if not isinstance(invoice.year, int) or not 2019 <= invoice.year <= 9999:
        raise ValueError(f"year {invoice.year!r} is not a 4-digit year from 2019 on")
    if not re.fullmatch(r"[0-9]{5}", invoice.postal_code or ""):
        raise ValueError(f"postal code {invoice.postal_code!r} must be exactly 5 digits")
    if invoice.issued_at.tzinfo is not None:
        raise ValueError("issued_at must be the branch's local wall time without a zone (naive)")
    if csd is not None and csd.rfc != issuer.rfc.strip().upper():
        raise ValueError(
            f"the CSD belongs to RFC {csd.rfc}, but the issuer is {issuer.rfc}: SAT refuses a "
            f"CFDI sealed with another taxpayer's certificate"
        )


def build_xml(invoice: GlobalInvoice, csd: Csd | None = None) -> bytes:
    """The global CFDI as UTF-8 bytes with an XML declaration; sealed when `csd` is given
    (NoCertificado, Certificado, Sello). Raises ValueError naming the ticket or field."""
    _check_invoice(invoice, csd)
    issuer = invoice.issuer
    plan = _plan(invoice, render=True)

    rfc = _text(issuer.rfc, "issuer RFC", 13)
    name = _text(issuer.name, "issuer name", 300)
    regime = _text(issuer.tax_regime, "issuer tax regime", 3)
    series = _text(invoice.series, "series", 25) if invoice.series else None
    folio = _text(invoice.folio, "folio", 40) if invoice.folio else None
    when = invoice.issued_at.strftime("%Y-%m-%dT%H:%M:%S")
    postal = invoice.postal_code
    periodicity = PERIODICIDAD[invoice.periodicity]
    subtotal, total = _money(plan.subtotal), _money(plan.total)
    discount = _money(plan.discount) if plan.discount > 0 else None
    certificate_number = csd.certificate_number if csd is not None else ""

    # Cadena original, in the order of SAT's cadenaoriginal_4_0.xslt.
    cadena = ["||4.0"]
    if series:
        cadena.append(f"|{series[1]}")
    if folio:
        cadena.append(f"|{folio[1]}")
    cadena.append(f"|{when}|{plan.payment_form}|{certificate_number}|{subtotal}")
    if discount:
        cadena.append(f"|{discount}")
    cadena.append(f"|MXN|{total}|I|01|PUE|{postal}")
    cadena.append(f"|{periodicity}|{invoice.months}|{invoice.year}")
    cadena.append(f"|{rfc[1]}|{name[1]}|{regime[1]}")
    cadena.append(f"|{PUBLIC_RFC}|{PUBLIC_NAME}|{postal}|{PUBLIC_REGIME}|{PUBLIC_USE}")
    cadena.extend(plan.concepts_cadena)
    summary_xml = []
    for t in plan.summary:
        base = _dec(t.base)
        if t.amount is None:
            summary_xml.append(f'<cfdi:Traslado Base="{base}" Impuesto="{t.tax}" TipoFactor="{t.factor}"/>')
            cadena.append(f"|{base}|{t.tax}|{t.factor}")
        else:
            rate, value = _rate(t.rate), _dec(t.amount)
            summary_xml.append(
                f'<cfdi:Traslado Base="{base}" Impuesto="{t.tax}" TipoFactor="{t.factor}" '
                f'TasaOCuota="{rate}" Importe="{value}"/>'
            )
            cadena.append(f"|{base}|{t.tax}|{t.factor}|{rate}|{value}")
    transferred = _money(plan.transferred) if plan.transferred is not None else None
    if transferred is not None:
        cadena.append(f"|{transferred}")
    cadena.append("||")
    plan.concepts_cadena = []

    seal = ""
    if csd is not None:
        seal = (
            f' Sello="{csd.sign("".join(cadena).encode("utf-8"))}"'
            f' NoCertificado="{csd.certificate_number}" Certificado="{csd.certificate_base64}"'
        )
    del cadena

    head = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<cfdi:Comprobante xmlns:cfdi="{CFDI_NS}" xmlns:xsi="{XSI_NS}" '
        f'xsi:schemaLocation="{SCHEMA_LOCATION}" Version="4.0"',
    ]
    if series:
        head.append(f' Serie="{series[0]}"')
    if folio:
        head.append(f' Folio="{folio[0]}"')
    head.append(f' Fecha="{when}"{seal} FormaPago="{plan.payment_form}" SubTotal="{subtotal}"')
    if discount:
        head.append(f' Descuento="{discount}"')
    head.append(
        f' Moneda="MXN" Total="{total}" TipoDeComprobante="I" Exportacion="01" MetodoPago="PUE"'
        f' LugarExpedicion="{postal}">'
        f'<cfdi:InformacionGlobal Periodicidad="{periodicity}" Meses="{invoice.months}" Año="{invoice.year}"/>'
        f'<cfdi:Emisor Rfc="{rfc[0]}" Nombre="{name[0]}" RegimenFiscal="{regime[0]}"/>'
        f'<cfdi:Receptor Rfc="{PUBLIC_RFC}" Nombre="{PUBLIC_NAME}" DomicilioFiscalReceptor="{postal}"'
        f' RegimenFiscalReceptor="{PUBLIC_REGIME}" UsoCFDI="{PUBLIC_USE}"/>'
        "<cfdi:Conceptos>"
    )
    tail = ["</cfdi:Conceptos>"]
    if summary_xml:
        total_attr = f' TotalImpuestosTrasladados="{transferred}"' if transferred is not None else ""
        tail.append(f"<cfdi:Impuestos{total_attr}><cfdi:Traslados>")
        tail.extend(summary_xml)
        tail.append("</cfdi:Traslados></cfdi:Impuestos>")
    tail.append("</cfdi:Comprobante>")
    head.extend(plan.concepts_xml)
    plan.concepts_xml = []
    head.extend(tail)
    return "".join(head).encode("utf-8")


# --------------------------------------------------------------------------- split


def _concept_bytes(ticket: GlobalTicket) -> int:
    with localcontext(EXACT_CONTEXT):
        xml, _ = _render_concept(ticket, _ticket_taxes(ticket))
    return len(xml) if xml.isascii() else len(xml.encode("utf-8"))


def split(
    tickets: Iterable[GlobalTicket],
    *,
    max_concepts: int = 5000,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[list[GlobalTicket]]:
    """Consecutive groups of tickets, in order, each small enough for one global CFDI.

    A group has at most `max_concepts` tickets, and its Conceptos (measured exactly as
    build_xml() writes them) plus HEADER_ALLOWANCE take at most `max_bytes`. Raises
    ValueError for a ticket build_xml() would refuse."""
    if max_concepts < 1:
        raise ValueError("max_concepts must be at least 1")
    budget = max_bytes - HEADER_ALLOWANCE
    if budget <= 0:
        raise ValueError(f"max_bytes must be larger than {HEADER_ALLOWANCE}")
    groups: list[list[GlobalTicket]] = []
    current: list[GlobalTicket] = []
    size = 0
    for ticket in tickets:
        n = _concept_bytes(ticket)
        if n > budget:
            raise ValueError(f"ticket {ticket.number!r} alone takes {n} bytes, more than max_bytes allows")
        if current and (len(current) >= max_concepts or size + n > budget):
            groups.append(current)
            current, size = [], 0
        current.append(ticket)
        size += n
    if current:
        groups.append(current)
    return groups


# --------------------------------------------------------------------------- schema


def sat_schema_file(*parts: str) -> Path:
    """A file of SAT's schemas as shipped by satcfdi, under www.sat.gob.mx/sitio_internet/cfd,
    e.g. sat_schema_file("4", "cfdv40.xsd")."""
    root = resources.files("satcfdi").joinpath("transform", "schemas", "www.sat.gob.mx", "sitio_internet", "cfd")
    path = root.joinpath(*parts)
    if not isinstance(path, Path):
        raise RuntimeError("satcfdi must be installed as plain files (not zipped) to read SAT's schemas")
    if not path.is_file():
        raise RuntimeError(f"SAT schema file {path} is missing from the satcfdi package")
    return path


_schema_lock = threading.Lock()
_schema: etree.XMLSchema | None = None
# lxml keeps one error log per XMLSchema object: detailed validation takes turns.
_detail_lock = threading.Lock()


def sat_schema() -> etree.XMLSchema:
    """SAT's cfdv40.xsd with the catalogs it imports (catCFDI.xsd, tdCFDI.xsd), read from
    satcfdi's files once (about 0.2 s and 100 MB) and kept. Relative imports, no network.
    validate() loads it on first use; call this at start-up to pay that cost early.

    One change of form, none of substance: c_ClaveProdServ, SAT's enumeration of 52,747
    product codes, is loaded as the union of {"01010101"} and that same enumeration.
    "01010101" is in the enumeration, so the union accepts exactly the same codes
    (tests/test_global_cfdi.py proves both from the files); but libxml2 walks the whole
    list for every Concepto, which cost 8.7 s for 50,000 Conceptos, and it stops at the
    first member of a union that matches: every Concepto of a global CFDI is 01010101."""
    global _schema
    if _schema is None:
        with _schema_lock:
            if _schema is None:
                parser = etree.XMLParser(no_network=True, resolve_entities=False)
                parser.resolvers.add(_CatalogResolver(catalog_with_fast_global_code()))
                doc = etree.parse(str(sat_schema_file("4", "cfdv40.xsd")), parser)
                _schema = etree.XMLSchema(doc)
    return _schema


_XS = "http://www.w3.org/2001/XMLSchema"
GLOBAL_PRODUCT_CODE = "01010101"


def catalog_with_fast_global_code() -> bytes:
    """SAT's catCFDI.xsd with c_ClaveProdServ as union({01010101}, SAT's enumeration)."""
    catalog = etree.parse(str(sat_schema_file("catalogos", "catCFDI.xsd")), _plain_parser())
    root = catalog.getroot()
    original = root.find(f"{{{_XS}}}simpleType[@name='c_ClaveProdServ']")
    codes = {e.get("value") for e in original.iter(f"{{{_XS}}}enumeration")}
    if GLOBAL_PRODUCT_CODE not in codes:  # a future catalog without it: keep SAT's as is
        return etree.tostring(catalog)
    original.set("name", "c_ClaveProdServ_catalogo")
    fast = etree.SubElement(root, f"{{{_XS}}}simpleType", name="c_ClaveProdServ_global")
    restriction = etree.SubElement(fast, f"{{{_XS}}}restriction", base="xs:string")
    etree.SubElement(restriction, f"{{{_XS}}}whiteSpace", value="collapse")
    etree.SubElement(restriction, f"{{{_XS}}}enumeration", value=GLOBAL_PRODUCT_CODE)
    union = etree.SubElement(root, f"{{{_XS}}}simpleType", name="c_ClaveProdServ")
    etree.SubElement(union, f"{{{_XS}}}union",
                     memberTypes="catCFDI:c_ClaveProdServ_global catCFDI:c_ClaveProdServ_catalogo")
    return etree.tostring(catalog)


class _CatalogResolver(etree.Resolver):
    def __init__(self, catalog: bytes):
        super().__init__()
        self.catalog = catalog

    def resolve(self, url, pubid, context):
        if url and url.replace("\\", "/").endswith("catalogos/catCFDI.xsd"):
            return self.resolve_string(self.catalog, context)
        return None


def _plain_parser() -> etree.XMLParser:
    return etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False, remove_comments=False)


# A Concepto costs ~0.2 ms to validate whatever its content: for every ClaveProdServ,
# libxml2 walks the list of all 52,747 facets of c_ClaveProdServ (twice, besides the
# enumeration match). Large documents are validated in slices on all cores (lxml releases
# the GIL while libxml2 parses and validates).
_CHUNK_CONCEPTS = 2000
_DOCTYPE_RE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
_CONCEPTOS_RE = re.compile(rb"<(?:([A-Za-z_][\w.\-]*):)?Conceptos[\s>]")


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def validate(xml: bytes) -> None:
    """Validate against SAT's cfdv40.xsd and catalogs; raise CfdiInvalid(problems).

    The document must be a complete, sealed CFDI before stamping (SAT's schema requires
    Sello, NoCertificado and Certificado)."""
    if not isinstance(xml, (bytes, bytearray)):
        raise TypeError(f"validate() takes the XML as bytes, not {type(xml).__name__}")
    xml = bytes(xml)
    if _DOCTYPE_RE.search(xml):
        raise CfdiInvalid(["a CFDI must not contain a DOCTYPE"])
    sat_schema()
    slices = _slices(xml)
    if slices is None:
        errors = _quick(xml)
        if errors:
            raise CfdiInvalid(_detail(xml, 0) or errors)
        return
    head, tail, parts = slices
    # Each worker builds its slice document itself, so only the slices being validated
    # are in memory twice, not all of them.
    with ThreadPoolExecutor(max_workers=min(_workers(), len(parts))) as pool:
        results = list(pool.map(lambda p: _quick(head + xml[p[0] : p[1]] + tail), parts))
    if not any(results):
        return
    problems: list[str] = []
    for (a, b, offset), errors in zip(parts, results):
        if not errors:
            continue
        found = _detail(head + xml[a:b] + tail, offset)
        if found and found[0].startswith("not well-formed XML"):
            # Either the whole document is broken or the slicing cut through something
            # unusual (a comment, a CDATA section): judge the whole document.
            whole = _detail(xml, 0)
            if whole:
                raise CfdiInvalid(whole)
            return
        for p in found or errors:
            if p not in problems:
                problems.append(p)
        if len(problems) >= 50:
            break
    raise CfdiInvalid(problems)


def _slices(xml: bytes) -> tuple[bytes, bytes, list[tuple[int, int, int]]] | None:
    """Cut a large CFDI into documents that each keep the real head (declaration,
    Comprobante, Emisor, Receptor, <Conceptos>) and tail (</Conceptos>, Impuestos) around
    a run of consecutive Conceptos.

    Sound because cfdv40.xsd has no identity constraints and Conceptos is a plain
    sequence of Concepto: if every slice document is valid, the whole document is. A cut
    in the wrong place only makes a slice fail, and then validate() judges the whole
    document. Slicing also bounds memory: libxml2 builds a tree of about 3.6 KB per
    Concepto while it validates, so a slice at a time, not 180 MB for 50,000 Conceptos.
    Returns None when the document is small or has no recognizable Conceptos.
    """
    if len(xml) < 1_000_000:
        return None
    m = _CONCEPTOS_RE.search(xml)
    if m is None:
        return None
    prefix = m.group(1)
    head_end = xml.find(b">", m.end() - 1) + 1
    if head_end <= 0 or xml[head_end - 2 : head_end] == b"/>":
        return None
    qualified = (prefix + b":" if prefix else b"")
    tail_start = xml.rfind(b"</" + qualified + b"Conceptos")
    if tail_start < head_end:
        return None
    starts = [
        c.start()
        for c in re.finditer(b"<" + re.escape(qualified) + rb"Concepto[\s/>]", xml[head_end:tail_start])
    ]
    if len(starts) < 2 * _CHUNK_CONCEPTS:
        return None
    cuts = [head_end] + [head_end + starts[i] for i in range(_CHUNK_CONCEPTS, len(starts), _CHUNK_CONCEPTS)]
    ends = cuts[1:] + [tail_start]
    parts = [(a, b, i * _CHUNK_CONCEPTS) for i, (a, b) in enumerate(zip(cuts, ends))]
    return xml[:head_end], xml[tail_start:], parts


def _quick(doc: bytes) -> list[str]:
    """Validate while parsing (thread-safe, no shared state); [] when valid."""
    parser = etree.XMLParser(
        schema=sat_schema(), no_network=True, resolve_entities=False, load_dtd=False
    )
    try:
        etree.fromstring(doc, parser)
    except etree.XMLSyntaxError as e:
        problems: list[str] = []
        for entry in parser.error_log:
            message = _message(entry.message)
            if message not in problems:
                problems.append(message)
        return problems or [_message(str(e))]
    return []


_CONCEPT_PATH_RE = re.compile(r"^/cfdi:Comprobante/cfdi:Conceptos/cfdi:Concepto(?:\[(\d+)\])?")
_ENUM_SET_RE = re.compile(r"is not an element of the set \{(.*)\}", re.S)


def _message(text: str) -> str:
    text = text.replace("{" + CFDI_NS + "}", "cfdi:").strip()

    def shorten(m: re.Match) -> str:
        values = m.group(1)
        if len(values) <= 200:
            return m.group(0)
        items = values.split(", ")
        return f"is not in SAT's catalog ({len(items)} values: {', '.join(items[:6])}, ...)"

    return _ENUM_SET_RE.sub(shorten, text)


def _detail(doc: bytes, concept_offset: int) -> list[str]:
    """Problems with where they are: 'Concepto N (NoIdentificacion ...)'."""
    try:
        root = etree.fromstring(doc, _plain_parser())
    except etree.XMLSyntaxError as e:
        return [f"not well-formed XML: {e}"]
    schema = sat_schema()
    with _detail_lock:
        schema.validate(root)
        entries = list(schema.error_log)
    tree = root.getroottree()
    problems = []
    for entry in entries:
        message = _message(entry.message)
        where = ""
        path = entry.path or ""
        m = _CONCEPT_PATH_RE.match(path)
        if m:
            index = int(m.group(1) or 1)
            noid = None
            try:
                found = tree.xpath(m.group(0), namespaces={"cfdi": CFDI_NS})
                if found:
                    noid = found[0].get("NoIdentificacion")
            except etree.XPathError:
                pass
            where = f"Concepto {concept_offset + index}"
            if noid is not None:
                where += f" (NoIdentificacion {noid!r})"
            where += ": "
        problems.append(where + message)
    return problems


# --------------------------------------------------------------------------- cadena


def _q(name: str) -> str:
    return "{" + CFDI_NS + "}" + name


_C = {n: _q(n) for n in (
    "Comprobante", "InformacionGlobal", "CfdiRelacionados", "CfdiRelacionado", "Emisor",
    "Receptor", "Conceptos", "Concepto", "Impuestos", "Traslados", "Traslado", "Retenciones",
    "Retencion", "ACuentaTerceros", "InformacionAduanera", "CuentaPredial",
    "ComplementoConcepto", "Parte", "Complemento",
)}
_NS = {"cfdi": CFDI_NS}


class _NeedsXslt(Exception):
    """The document has a node whose cadena only SAT's XSLT knows (complements)."""


def cadena_original(xml: bytes) -> str:
    """SAT's cadena original 4.0 of a CFDI 4.0, as cadenaoriginal_4_0.xslt produces it.

    Computed in Python following the XSLT template by template (every value through
    normalize-space, a '|' before each, '||' around the whole). Documents with
    complements (Complemento, ComplementoConcepto children), whose templates live in
    SAT's other XSLT files, go through SAT's XSLT itself."""
    root = etree.fromstring(xml, _plain_parser())
    if root.tag != _C["Comprobante"] or root.get("Version") != "4.0":
        raise ValueError("not a CFDI 4.0 cfdi:Comprobante")
    out: list[str] = []
    try:
        _walk_comprobante(root, out)
    except _NeedsXslt:
        return str(_sat_xslt()(root.getroottree()))
    return "||" + "|".join(out) + "||"


_xslt: etree.XSLT | None = None


def _sat_xslt() -> etree.XSLT:
    global _xslt
    if _xslt is None:
        with _schema_lock:
            if _xslt is None:
                parser = etree.XMLParser(no_network=True, resolve_entities=False)
                path = sat_schema_file("4", "cadenaoriginal_4_0", "cadenaoriginal_4_0.xslt")
                _xslt = etree.XSLT(etree.parse(str(path), parser))
    return _xslt


def _walk_comprobante(c: etree._Element, out: list[str]) -> None:
    def req(el, *names):
        for n in names:
            out.append(_normalize(el.get(n, "")))

    def opt(el, *names):
        for n in names:
            v = el.get(n)
            if v is not None:
                out.append(_normalize(v))

    req(c, "Version"); opt(c, "Serie", "Folio"); req(c, "Fecha"); opt(c, "FormaPago")
    req(c, "NoCertificado"); opt(c, "CondicionesDePago"); req(c, "SubTotal")
    opt(c, "Descuento"); req(c, "Moneda"); opt(c, "TipoCambio"); req(c, "Total")
    req(c, "TipoDeComprobante", "Exportacion"); opt(c, "MetodoPago")
    req(c, "LugarExpedicion"); opt(c, "Confirmacion")
    for g in c.iterfind("cfdi:InformacionGlobal", _NS):
        req(g, "Periodicidad", "Meses", "Año")
    for r in c.iterfind("cfdi:CfdiRelacionados", _NS):
        req(r, "TipoRelacion")
        for u in r.iterfind("cfdi:CfdiRelacionado", _NS):
            req(u, "UUID")
    for e in c.iterfind("cfdi:Emisor", _NS):
        req(e, "Rfc", "Nombre", "RegimenFiscal"); opt(e, "FacAtrAdquirente")
    for r in c.iterfind("cfdi:Receptor", _NS):
        req(r, "Rfc", "Nombre", "DomicilioFiscalReceptor"); opt(r, "ResidenciaFiscal", "NumRegIdTrib")
        req(r, "RegimenFiscalReceptor", "UsoCFDI")
    for cs in c.iterfind("cfdi:Conceptos", _NS):
        for k in cs.iterfind("cfdi:Concepto", _NS):
            req(k, "ClaveProdServ"); opt(k, "NoIdentificacion"); req(k, "Cantidad", "ClaveUnidad")
            opt(k, "Unidad"); req(k, "Descripcion", "ValorUnitario", "Importe"); opt(k, "Descuento")
            req(k, "ObjetoImp")
            for t in k.iterfind("cfdi:Impuestos/cfdi:Traslados/cfdi:Traslado", _NS):
                req(t, "Base", "Impuesto", "TipoFactor"); opt(t, "TasaOCuota", "Importe")
            for t in k.iterfind("cfdi:Impuestos/cfdi:Retenciones/cfdi:Retencion", _NS):
                req(t, "Base", "Impuesto", "TipoFactor", "TasaOCuota", "Importe")
            for a in k.iterfind("cfdi:ACuentaTerceros", _NS):
                req(a, "RfcACuentaTerceros", "NombreACuentaTerceros", "RegimenFiscalACuentaTerceros",
                    "DomicilioFiscalACuentaTerceros")
            for a in k.iterfind("cfdi:InformacionAduanera", _NS):
                req(a, "NumeroPedimento")
            for p in k.iterfind("cfdi:CuentaPredial", _NS):
                req(p, "Numero")
            for cc in k.iterfind("cfdi:ComplementoConcepto", _NS):
                if len(cc):  # the XSLT only looks at its child elements
                    raise _NeedsXslt
            for p in k.iterfind(".//cfdi:Parte", _NS):
                req(p, "ClaveProdServ"); opt(p, "NoIdentificacion"); req(p, "Cantidad")
                opt(p, "Unidad"); req(p, "Descripcion"); opt(p, "ValorUnitario", "Importe")
                for a in p.iterfind(".//cfdi:InformacionAduanera", _NS):
                    req(a, "NumeroPedimento")
    for i in c.iterfind("cfdi:Impuestos", _NS):
        for t in i.iterfind("cfdi:Retenciones/cfdi:Retencion", _NS):
            req(t, "Impuesto", "Importe")
        opt(i, "TotalImpuestosRetenidos")
        for t in i.iterfind("cfdi:Traslados/cfdi:Traslado", _NS):
            req(t, "Base", "Impuesto", "TipoFactor"); opt(t, "TasaOCuota", "Importe")
        opt(i, "TotalImpuestosTrasladados")
    for comp in c.iterfind("cfdi:Complemento", _NS):
        if len(comp):
            raise _NeedsXslt
