"""Parser of the POS ticket "insumo", layout CFD33BASE (see docs/insumo.md).

The insumo is the pipe-separated text a POS sends with every ticket; it carries what the
customer's CFDI (or the global CFDI) will say. It runs on every request, so it splits the
text once, checks each field with precompiled regexes and stops at the first error.

Every problem raises InsumoError (a ValueError) with the physical line number and a
Spanish reason naming the field, because the message goes back to the POS integrator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext

from agent.money import (
    CENT,
    EXACT_CONTEXT,
    amount_bounds,
    decimals_of,
    parse_amount,
    round_money,
    tax_bounds,
)

__all__ = ["MAX_LINES", "Insumo", "InsumoError", "Item", "Tax", "parse_insumo"]

LAYOUT = "CFD33BASE"
MAX_LINES = 10_000

# SAT c_FormaPago.
PAYMENT_FORMS = frozenset(
    "01 02 03 04 05 06 08 12 13 14 15 17 23 24 25 26 27 28 29 30 31 99".split()
)
IVA, IEPS = "002", "003"

# Number of fields per record, the record type included.
_EXPECTED_FIELDS = {"00": 4, "01": 11, "02": 11, "03": 6}

_ZERO = Decimal(0)
_ONE = Decimal(1)

# Characters no POS text should carry and that would break the CFDI XML later: C0 and C1
# controls (a lone \r included: only \n and \r\n end lines), DEL, lone surrogates, a BOM
# and the two noncharacters XML refuses.
_BAD_CHAR_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufeff\ufffe\uffff]")
_DATE_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})")
_POSTAL_CODE_RE = re.compile(r"[0-9]{5}")
_PRODUCT_KEY_RE = re.compile(r"[0-9]{8}")
_UNIT_KEY_RE = re.compile(r"[A-Za-z0-9]{1,3}")
_TAX_OBJECT_RE = re.compile(r"0[1-8]")
_EXCHANGE_RATE_ONE_RE = re.compile(r"1(?:\.0+)?")


class InsumoError(ValueError):
    """An insumo the agent must refuse. `line` is the 1-based physical line, or None."""

    def __init__(self, line: int | None, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(reason if line is None else f"línea {line}: {reason}")


@dataclass(frozen=True, slots=True)
class Tax:
    """A transferred tax (Traslado) of one item."""

    tax: str  # "002" IVA | "003" IEPS
    factor: str  # "Tasa" | "Cuota" | "Exento"
    rate: Decimal | None  # None when Exento
    base: Decimal
    amount: Decimal | None  # None when Exento


@dataclass(frozen=True, slots=True)
class Item:
    """A Concepto: one line of the ticket."""

    product_key: str  # ClaveProdServ
    sku: str | None  # NoIdentificacion
    quantity: Decimal
    unit_key: str  # ClaveUnidad
    unit: str | None  # Unidad
    description: str
    unit_price: Decimal
    amount: Decimal  # Importe, before discount
    discount: Decimal  # 0 when the field was empty
    tax_object: str  # ObjetoImp "01".."08"
    taxes: tuple[Tax, ...]


@dataclass(frozen=True, slots=True)
class Insumo:
    """A parsed ticket insumo. Amounts are Decimals with the decimals the POS wrote."""

    environment: str  # "QA" | "PROD"
    version: str  # "4.0"
    series: str | None
    folio: str | None
    date: datetime  # naive: the branch's local wall time, as printed
    payment_form: str
    currency: str
    exchange_rate: Decimal
    subtotal: Decimal
    discount: Decimal
    total: Decimal
    place_of_issue: str  # LugarExpedicion, postal code
    items: tuple[Item, ...]
    raw: str

    @property
    def transferred_taxes(self) -> Decimal:
        """TotalImpuestosTrasladados as the CFDI will state it (see _transferred)."""
        return self._transferred(None)

    @property
    def iva(self) -> Decimal:
        return self._transferred(IVA)

    @property
    def ieps(self) -> Decimal:
        return self._transferred(IEPS)

    def _transferred(self, only: str | None) -> Decimal:
        # The CFDI summarises Traslados per (Impuesto, TipoFactor, TasaOCuota) and rounds
        # each summary line to the currency; the total is the sum of those rounded lines,
        # which can differ by cents from rounding the grand sum.
        groups: dict[tuple[str, str, Decimal | None], Decimal] = {}
        with localcontext(EXACT_CONTEXT):
            for item in self.items:
                for t in item.taxes:
                    if t.amount is not None and (only is None or t.tax == only):
                        key = (t.tax, t.factor, t.rate)
                        groups[key] = groups.get(key, _ZERO) + t.amount
            return round_money(sum(map(round_money, groups.values()), _ZERO))


def parse_insumo(text: str) -> Insumo:
    """Parse and validate a CFD33BASE insumo. Raises only InsumoError."""
    if not isinstance(text, str):
        raise InsumoError(None, f"el insumo debe ser texto (str), no {type(text).__name__}")
    physical_lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    if physical_lines > MAX_LINES:
        raise InsumoError(MAX_LINES + 1, f"el insumo excede el máximo de {MAX_LINES} líneas")
    # Sums of thousands of 24-digit amounts must stay exact whatever the caller's context.
    with localcontext(EXACT_CONTEXT):
        return _Parser(text).parse()


class _Parser:
    __slots__ = ("text", "layout", "header", "header_line", "items", "item", "item_line", "taxes")

    def __init__(self, text: str) -> None:
        self.text = text
        self.layout: tuple[int, str, str] = (0, "", "")  # line, environment, version
        self.header: dict = {}
        self.header_line = 0
        self.items: list[Item] = []
        # The item being read stays open until the next 02 or the end, because its 03
        # records follow it.
        self.item: dict | None = None
        self.item_line = 0
        self.taxes: list[Tax] = []

    def parse(self) -> Insumo:
        last = None  # kind of the previous record: the order rules only need that
        lines = self.text.split("\n")
        for lineno, line in enumerate(lines, 1):
            if line.endswith("\r") and lineno < len(lines):  # \r\n; a \r ending the text is lone
                line = line[:-1]
            if not line.strip(" \t"):
                continue
            bad = _BAD_CHAR_RE.search(line)
            if bad:
                raise InsumoError(lineno, f"carácter no permitido U+{ord(bad.group()):04X}")
            fields = line.split("|")
            kind = fields[0]
            expected = _EXPECTED_FIELDS.get(kind)
            if expected is None:
                raise InsumoError(
                    lineno,
                    f"tipo de registro {_show(kind)} desconocido (se espera 00, 01, 02 o 03)",
                )
            _check_order(lineno, last, kind)
            if len(fields) != expected:
                # A trailing "|" adds an empty last field. It is optional, so only a count
                # that is one too many with an empty last field is the terminator.
                found = len(fields) - (fields[-1] == "")
                if found != expected:
                    raise InsumoError(
                        lineno,
                        f"el registro {kind} debe tener {expected} campos (incluido el tipo) "
                        f"y tiene {found}",
                    )
                fields.pop()
            if kind == "00":
                self._layout(lineno, fields)
            elif kind == "01":
                self._header(lineno, fields)
            elif kind == "02":
                self._close_item()
                self._item(lineno, fields)
            else:
                self._tax(lineno, fields)
            last = kind
        if last is None:
            raise InsumoError(None, "insumo vacío")
        if last == "00":
            raise InsumoError(self.layout[0], "falta el registro 01 después del registro 00")
        if last == "01":
            raise InsumoError(self.header_line, "el insumo no tiene conceptos (registro 02)")
        self._close_item()
        _, environment, version = self.layout
        insumo = Insumo(
            environment=environment,
            version=version,
            items=tuple(self.items),
            raw=self.text,
            **self.header,
        )
        self._check_totals(insumo)
        return insumo

    # -- records --------------------------------------------------------------------------

    def _layout(self, lineno: int, f: list[str]) -> None:
        if f[1] != LAYOUT:
            raise InsumoError(lineno, f"Layout {_show(f[1])} no soportado: se espera {LAYOUT}")
        if f[2] not in ("QA", "PROD"):
            raise InsumoError(lineno, f"Ambiente {_show(f[2])} inválido: se espera QA o PROD")
        if f[3] != "4.0":
            raise InsumoError(lineno, f"Version {_show(f[3])} no soportada: se espera 4.0")
        self.layout = (lineno, f[2], f[3])

    def _header(self, lineno: int, f: list[str]) -> None:
        self.header_line = lineno
        _, series, folio, date, payment_form, currency, rate, subtotal, discount, total, cp = f
        if len(series) > 25:
            raise InsumoError(lineno, f"Serie tiene {len(series)} caracteres (máximo 25)")
        if len(folio) > 40:
            raise InsumoError(lineno, f"Folio tiene {len(folio)} caracteres (máximo 40)")
        if payment_form not in PAYMENT_FORMS:
            raise InsumoError(
                lineno, f"FormaPago {_show(payment_form)} no está en el catálogo c_FormaPago"
            )
        if currency != "MXN":
            raise InsumoError(
                lineno, f"Moneda {_show(currency)} no soportada: solo se aceptan tickets en MXN"
            )
        if rate and not _EXCHANGE_RATE_ONE_RE.fullmatch(rate):
            raise InsumoError(
                lineno, f"TipoCambio {_show(rate)} inválido: con Moneda MXN va vacío o en 1"
            )
        if not _POSTAL_CODE_RE.fullmatch(cp):
            raise InsumoError(
                lineno, f"LugarExpedicion {_show(cp)} inválido: se esperan 5 dígitos"
            )
        self.header = {
            "series": series or None,
            "folio": folio or None,
            "date": _date(lineno, date),
            "payment_form": payment_form,
            "currency": currency,
            "exchange_rate": Decimal(rate) if rate else _ONE,
            "subtotal": _amount(lineno, "SubTotal", subtotal, max_decimals=2),
            "discount": _amount(lineno, "Descuento", discount, max_decimals=2, optional=True),
            "total": _amount(lineno, "Total", total, max_decimals=2),
            "place_of_issue": cp,
        }

    def _item(self, lineno: int, f: list[str]) -> None:
        _, product_key, sku, quantity, unit_key, unit, description, price, amount, discount, obj = f
        if not _PRODUCT_KEY_RE.fullmatch(product_key):
            raise InsumoError(
                lineno, f"ClaveProdServ {_show(product_key)} inválida: se esperan 8 dígitos"
            )
        if len(sku) > 100:
            raise InsumoError(
                lineno, f"NoIdentificacion tiene {len(sku)} caracteres (máximo 100)"
            )
        if not _UNIT_KEY_RE.fullmatch(unit_key):
            raise InsumoError(
                lineno,
                f"ClaveUnidad {_show(unit_key)} inválida: se esperan 1 a 3 letras o dígitos",
            )
        if len(unit) > 20:
            raise InsumoError(lineno, f"Unidad tiene {len(unit)} caracteres (máximo 20)")
        if not description.strip(" "):
            raise InsumoError(lineno, "falta Descripcion (campo obligatorio)")
        if len(description) > 1000:
            raise InsumoError(
                lineno, f"Descripcion tiene {len(description)} caracteres (máximo 1000)"
            )
        if not _TAX_OBJECT_RE.fullmatch(obj):
            raise InsumoError(lineno, f"ObjetoImp {_show(obj)} inválido: se espera 01 a 08")
        q = _amount(lineno, "Cantidad", quantity)
        if not q:
            raise InsumoError(lineno, "Cantidad debe ser mayor que 0")
        p = _amount(lineno, "ValorUnitario", price)
        a = _amount(lineno, "Importe", amount)
        places = decimals_of(a)
        low, high = amount_bounds(q, p, places)
        if not low <= a <= high:
            raise InsumoError(
                lineno,
                f"Importe {amount} no corresponde a Cantidad x ValorUnitario "
                f"({round_money(q * p, places)}); se acepta de {low} a {high}",
            )
        d = _amount(lineno, "Descuento", discount, optional=True)
        if d > a:
            raise InsumoError(lineno, f"Descuento {discount} mayor que el Importe {amount}")
        self.item_line = lineno
        self.item = {
            "product_key": product_key,
            "sku": sku or None,
            "quantity": q,
            "unit_key": unit_key,
            "unit": unit or None,
            "description": description,
            "unit_price": p,
            "amount": a,
            "discount": d,
            "tax_object": obj,
        }
        self.taxes = []

    def _tax(self, lineno: int, f: list[str]) -> None:
        if self.item["tax_object"] == "01":
            raise InsumoError(
                lineno,
                f"ObjetoImp 01 (no objeto de impuesto) del concepto de la línea "
                f"{self.item_line} no admite impuestos (registro 03)",
            )
        _, tax, factor, rate, base, amount = f
        if tax not in (IVA, IEPS):
            if tax == "001":
                raise InsumoError(
                    lineno, "Impuesto 001 (ISR) no se traslada: se espera 002 (IVA) o 003 (IEPS)"
                )
            raise InsumoError(
                lineno, f"Impuesto {_show(tax)} inválido: se espera 002 (IVA) o 003 (IEPS)"
            )
        if factor not in ("Tasa", "Cuota", "Exento"):
            raise InsumoError(
                lineno, f"TipoFactor {_show(factor)} inválido: se espera Tasa, Cuota o Exento"
            )
        if tax == IVA and factor == "Cuota":
            raise InsumoError(lineno, "TipoFactor Cuota no aplica a IVA (002): use Tasa o Exento")
        b = _amount(lineno, "Base", base)
        if factor == "Exento":
            if rate:
                raise InsumoError(lineno, "TasaOCuota debe ir vacía con TipoFactor Exento")
            if amount:
                raise InsumoError(lineno, "Importe debe ir vacío con TipoFactor Exento")
            self.taxes.append(Tax(tax, factor, None, b, None))
            return
        r = _amount(lineno, "TasaOCuota", rate)
        if factor == "Tasa" and r > _ONE:
            raise InsumoError(lineno, f"TasaOCuota {rate} mayor que 1 con TipoFactor Tasa")
        a = _amount(lineno, "Importe", amount)
        if not b and a:
            # SAT's bounds let a Base of "0" carry up to half a unit times the rate, but a
            # CFDI cannot carry a tax without a base: the customer's invoice would lose it.
            raise InsumoError(lineno, f"Importe {amount} con Base 0: un impuesto sin base debe tener Importe 0")
        places = decimals_of(a)
        low, high = tax_bounds(b, r, places)
        if not low <= a <= high:
            raise InsumoError(
                lineno,
                f"Importe {amount} no corresponde a Base x TasaOCuota "
                f"({round_money(b * r, places)}); se acepta de {low} a {high}",
            )
        self.taxes.append(Tax(tax, factor, r, b, a))

    def _close_item(self) -> None:
        if self.item is None:
            return
        if self.item["tax_object"] == "02" and not self.taxes:
            raise InsumoError(
                self.item_line,
                "ObjetoImp 02 (sí objeto de impuesto) requiere al menos un impuesto (registro 03)",
            )
        self.items.append(Item(**self.item, taxes=tuple(self.taxes)))

    def _check_totals(self, insumo: Insumo) -> None:
        line = self.header_line
        items = insumo.items
        amounts = round_money(sum([i.amount for i in items], _ZERO))
        if amounts != insumo.subtotal:
            raise InsumoError(
                line,
                f"SubTotal {insumo.subtotal} no corresponde a la suma de los Importes "
                f"de los conceptos ({amounts})",
            )
        discounts = round_money(sum([i.discount for i in items], _ZERO))
        if discounts != insumo.discount:
            raise InsumoError(
                line,
                f"Descuento {insumo.discount} no corresponde a la suma de los Descuentos "
                f"de los conceptos ({discounts})",
            )
        # POS systems round tax per line and the CFDI per (tax, rate) group, so a printed
        # Total may honestly differ by one cent from the recomputed one; more is an error.
        taxes = insumo.transferred_taxes
        expected = insumo.subtotal - insumo.discount + taxes
        if abs(insumo.total - expected) > CENT:
            raise InsumoError(
                line,
                f"Total {insumo.total} no corresponde a SubTotal - Descuento + impuestos "
                f"trasladados ({insumo.subtotal} - {insumo.discount} + {taxes} = {expected}); "
                f"tolerancia 0.01",
            )


def _check_order(lineno: int, last: str | None, kind: str) -> None:
    """00 first, 01 right after it, then items (02) each followed by its taxes (03)."""
    if last is None:
        if kind != "00":
            raise InsumoError(lineno, f"el insumo debe empezar con el registro 00, no con {kind}")
    elif kind == "00":
        raise InsumoError(lineno, "registro 00 repetido: solo puede haber uno")
    elif last == "00":
        if kind != "01":
            raise InsumoError(lineno, f"se esperaba el registro 01 después del 00, no {kind}")
    elif kind == "01":
        raise InsumoError(lineno, "registro 01 repetido: solo puede haber uno")
    elif kind == "03" and last == "01":
        raise InsumoError(lineno, "registro 03 sin un concepto (registro 02) antes")


def _amount(
    lineno: int, name: str, text: str, *, max_decimals: int = 6, optional: bool = False
) -> Decimal:
    if not text:
        if optional:
            return _ZERO
        raise InsumoError(lineno, f"falta {name} (campo obligatorio)")
    try:
        return parse_amount(text, max_decimals=max_decimals)
    except ValueError as e:
        raise InsumoError(lineno, f"{name}: {e}") from None


def _date(lineno: int, text: str) -> datetime:
    m = _DATE_RE.fullmatch(text)
    if m is None:
        raise InsumoError(lineno, f"Fecha {_show(text)} inválida: formato AAAA-MM-DDTHH:MM:SS")
    try:
        return datetime(*map(int, m.groups()))
    except ValueError:
        raise InsumoError(lineno, f"Fecha {_show(text)} no es una fecha y hora válida") from None


def _show(value: str, limit: int = 40) -> str:
    # Quote the offending value, cut so a megabyte field does not flood the response.
    return repr(value if len(value) <= limit else value[:limit] + "…")
