"""A customer's own CFDI 4.0 for one ticket: the invoice the self-invoice page issues.

Plain values in, bytes out: no Flask, no database (like sync/cfdi40.py, whose cadena
original, XSD validation and Issuer it shares). See docs/self-invoice.md for the rules
field by field. In short: one Concepto per item of the ticket's insumo, with its own
Traslados, exactly as the POS wrote them; the summary and totals rounded the way the
insumo parser already checked them; the customer as Receptor; PUE with the ticket's
FormaPago.

    invoice = CustomerInvoice(issuer, customer, series, folio, issued_at, postal_code, insumo)
    xml = build_xml(invoice, csd)     # sealed
    cfdi40.validate(xml)              # SAT's XSD; raises CfdiInvalid
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING

from lxml import etree

from agent.insumo import Insumo, Item
from agent.money import EXACT_CONTEXT, round_money
from sync.cfdi40 import CFDI_NS, SCHEMA_LOCATION, XSI_NS, Issuer, SummaryTax, cadena_original

if TYPE_CHECKING:
    from sync.csd import Csd

__all__ = ["CannotInvoice", "Customer", "CustomerInvoice", "Totals", "build_xml", "totals"]

_ZERO = Decimal(0)
_RATE_QUANTUM = Decimal("0.000001")
_TO_BE_DEFINED = "99"  # c_FormaPago "Por definir"
_IVA = "002"
# Written by hand, as sync/cfdi40.py does, so both kinds of CFDI start alike (lxml's own
# declaration uses single quotes).
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
# Characters XML 1.0 cannot carry at all; lxml would refuse them with a less clear error.
_NOT_XML_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class CannotInvoice(ValueError):
    """The ticket itself cannot become a customer's CFDI. `reason` is Spanish, for the
    customer; str() is the same text."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Customer:
    """The Receptor, already validated (sync.sat_catalogs): uppercase RFC and name."""

    rfc: str
    name: str  # without the corporate regime ("SA DE CV"), as SAT registers it
    postal_code: str  # DomicilioFiscalReceptor
    tax_regime: str  # RegimenFiscalReceptor, c_RegimenFiscal
    use: str  # UsoCFDI, c_UsoCFDI


@dataclass(frozen=True)
class CustomerInvoice:
    issuer: Issuer
    customer: Customer
    series: str  # "" leaves Serie out
    folio: str  # "" leaves Folio out
    issued_at: datetime  # Fecha: the branch's local wall time, naive
    postal_code: str  # LugarExpedicion: the branch's postal code
    insumo: Insumo


@dataclass(frozen=True)
class Totals:
    subtotal: Decimal
    discount: Decimal
    transferred_taxes: Decimal  # TotalImpuestosTrasladados, 0 when the CFDI has none
    total: Decimal
    taxes: tuple[SummaryTax, ...]

    @property
    def iva(self) -> Decimal:
        return sum((t.amount for t in self.taxes if t.tax == _IVA and t.amount is not None), _ZERO)


def totals(invoice: CustomerInvoice) -> Totals:
    """The amounts the CFDI states, computed exactly as build_xml() writes them."""
    with localcontext(EXACT_CONTEXT):
        groups: dict[tuple, list] = {}
        for item in invoice.insumo.items:
            for t in _item_taxes(item):
                group = groups.setdefault((t.tax, t.factor, t.rate), [_ZERO, None])
                group[0] += t.base
                if t.amount is not None:
                    group[1] = (group[1] or _ZERO) + t.amount
        # The summary is rounded per (Impuesto, TipoFactor, TasaOCuota) and then added,
        # the same rule the insumo parser checked the ticket's Total with.
        summary = tuple(
            SummaryTax(tax, factor, rate if amount is not None else None, round_money(base),
                       round_money(amount) if amount is not None else None)
            for (tax, factor, rate), (base, amount) in groups.items()
        )  # fmt: skip
        transferred = sum((t.amount for t in summary if t.amount is not None), _ZERO)
        subtotal = round_money(sum((i.amount for i in invoice.insumo.items), _ZERO))
        discount = round_money(sum((i.discount for i in invoice.insumo.items), _ZERO))
        return Totals(subtotal, discount, transferred, subtotal - discount + transferred, summary)


def _item_taxes(item: Item):
    # SAT wants a Concepto Traslado Base above 0: an item discounted to nothing carries
    # no tax, so its zero-base lines are left out (as in the global CFDI).
    return [t for t in item.taxes if t.base > 0]


def build_xml(invoice: CustomerInvoice, csd: Csd) -> bytes:
    """The sealed CFDI as UTF-8 bytes with an XML declaration. Raises CannotInvoice for a
    ticket that cannot be invoiced to a customer, ValueError for a bad argument."""
    insumo = invoice.insumo
    if insumo.payment_form == _TO_BE_DEFINED:
        # PUE means paid in full, and SAT refuses FormaPago 99 with it; the ticket does
        # not say how it was paid, so only the store can invoice it.
        raise CannotInvoice(
            "el ticket no indica la forma de pago (99, Por definir); pida su factura en la tienda"
        )
    if invoice.issued_at.tzinfo is not None:
        raise ValueError("issued_at must be the branch's local wall time without a zone (naive)")
    if csd.rfc != invoice.issuer.rfc.strip().upper():
        raise ValueError(f"the CSD belongs to RFC {csd.rfc}, but the issuer is {invoice.issuer.rfc}")
    sums = totals(invoice)
    if sums.total <= 0:
        raise CannotInvoice("el ticket es de $0.00 y no se factura")

    q = _qualified
    root = etree.Element(q("Comprobante"), nsmap={"cfdi": CFDI_NS, "xsi": XSI_NS})
    root.set(f"{{{XSI_NS}}}schemaLocation", SCHEMA_LOCATION)
    attrs = {"Version": "4.0"}
    if invoice.series:
        attrs["Serie"] = invoice.series
    if invoice.folio:
        attrs["Folio"] = invoice.folio
    attrs["Fecha"] = invoice.issued_at.strftime("%Y-%m-%dT%H:%M:%S")
    attrs["Sello"] = ""  # not part of the cadena original: filled in once it is computed
    attrs["FormaPago"] = insumo.payment_form
    attrs["NoCertificado"] = csd.certificate_number
    attrs["Certificado"] = csd.certificate_base64
    attrs["SubTotal"] = _money(sums.subtotal)
    if sums.discount > 0:
        attrs["Descuento"] = _money(sums.discount)
    attrs.update({
        "Moneda": "MXN", "Total": _money(sums.total), "TipoDeComprobante": "I", "Exportacion": "01",
        "MetodoPago": "PUE", "LugarExpedicion": invoice.postal_code,
    })  # fmt: skip
    _set(root, attrs)

    issuer, customer = invoice.issuer, invoice.customer
    _set(etree.SubElement(root, q("Emisor")), {
        "Rfc": issuer.rfc, "Nombre": issuer.name, "RegimenFiscal": issuer.tax_regime,
    })  # fmt: skip
    _set(etree.SubElement(root, q("Receptor")), {
        "Rfc": customer.rfc, "Nombre": customer.name, "DomicilioFiscalReceptor": customer.postal_code,
        "RegimenFiscalReceptor": customer.tax_regime, "UsoCFDI": customer.use,
    })  # fmt: skip

    concepts = etree.SubElement(root, q("Conceptos"))
    for item in insumo.items:
        taxes = _item_taxes(item)
        # A 02 item whose every tax had a zero base has nothing left to break down.
        tax_object = "01" if item.tax_object == "02" and not taxes else item.tax_object
        attrs = {"ClaveProdServ": item.product_key}
        if item.sku:
            attrs["NoIdentificacion"] = item.sku
        attrs.update({"Cantidad": _dec(item.quantity), "ClaveUnidad": item.unit_key})
        if item.unit:
            attrs["Unidad"] = item.unit
        attrs.update({
            "Descripcion": item.description, "ValorUnitario": _dec(item.unit_price), "Importe": _dec(item.amount),
        })  # fmt: skip
        if item.discount > 0:
            attrs["Descuento"] = _dec(item.discount)
        attrs["ObjetoImp"] = tax_object
        concept = etree.SubElement(concepts, q("Concepto"))
        _set(concept, attrs)
        if taxes:
            lines = etree.SubElement(etree.SubElement(concept, q("Impuestos")), q("Traslados"))
            for t in taxes:
                _set(etree.SubElement(lines, q("Traslado")), _tax_attrs(t.base, t.tax, t.factor, t.rate, t.amount))

    if sums.taxes:
        summary = etree.SubElement(root, q("Impuestos"))
        if any(t.amount is not None for t in sums.taxes):
            summary.set("TotalImpuestosTrasladados", _money(sums.transferred_taxes))
        lines = etree.SubElement(summary, q("Traslados"))
        for t in sums.taxes:
            _set(etree.SubElement(lines, q("Traslado")), _tax_attrs(
                t.base, t.tax, t.factor, t.rate, t.amount, money=True))  # fmt: skip

    root.set("Sello", csd.sign(cadena_original(etree.tostring(root)).encode("utf-8")))
    return _DECLARATION + etree.tostring(root, encoding="UTF-8")


def _qualified(name: str) -> str:
    return f"{{{CFDI_NS}}}{name}"


def _tax_attrs(base, tax, factor, rate, amount, *, money: bool = False) -> dict:
    write = _money if money else _dec
    attrs = {"Base": write(base), "Impuesto": tax, "TipoFactor": factor}
    if amount is not None:
        attrs["TasaOCuota"] = _dec(rate.quantize(_RATE_QUANTUM, context=EXACT_CONTEXT))
        attrs["Importe"] = write(amount)
    return attrs


def _set(element, attrs: dict) -> None:
    for name, value in attrs.items():
        if _NOT_XML_RE.search(value):
            raise ValueError(f"{name} {value[:40]!r} contains a character XML cannot carry")
        element.set(name, value)


def _dec(d: Decimal) -> str:
    """A Decimal as the POS wrote it, never in exponent form."""
    return format(d, "f")


def _money(d: Decimal) -> str:
    return format(round_money(d), "f")
