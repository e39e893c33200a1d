"""Money helpers for tickets and the CFDI 4.0: strict parsing, rounding, SAT tolerance bounds.

Pure Decimal functions, no I/O. Amounts never go through float.

Every operation runs in EXACT_CONTEXT, not in the caller's (thread-local, changeable)
decimal context: with at most 18 integer and 6 decimal digits per amount, 100 digits of
precision keep products and sums of thousands of amounts exact, so a bound or a total
never depends on how some other module set up `decimal`.
"""

from __future__ import annotations

import re
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Context, Decimal

__all__ = [
    "CENT",
    "EXACT_CONTEXT",
    "MAX_INTEGER_DIGITS",
    "amount_bounds",
    "decimals_of",
    "parse_amount",
    "round_money",
    "tax_bounds",
]

CENT = Decimal("0.01")

# SAT's t_Importe allows 18 integer digits; more than that is garbage, not a sale.
MAX_INTEGER_DIGITS = 18

EXACT_CONTEXT = Context(prec=100, rounding=ROUND_HALF_UP)

# SAT's upper bounds subtract 10^-12 so that a value exactly on the half-unit above is
# excluded (the half-unit belongs to the next representable value).
_EPSILON = Decimal("1E-12")

# [0-9], not \d: \d also matches other scripts' digits ("٣"), which Decimal would accept.
_AMOUNT_RE = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")
_VALID_RE: dict[tuple[int, bool], re.Pattern[str]] = {}

# Exponents 10^-n and half-units 10^-n / 2 for the usual n, built once.
_QUANTUM = [Decimal(1).scaleb(-n) for n in range(13)]
_HALF_UNIT = [Decimal(5).scaleb(-(n + 1)) for n in range(13)]


def parse_amount(text: str, *, max_decimals: int = 6, allow_negative: bool = False) -> Decimal:
    """Parse a plain decimal number as written by a POS: ``123``, ``0.50``, ``10.655172``.

    Accepts ASCII digits, an optional ``.`` followed by 1..max_decimals digits and, only
    when allow_negative is true, a leading ``-``. Rejects everything Decimal() would
    otherwise happily take (exponents, NaN, Infinity, spaces, ``_``, commas, non-ASCII
    digits) so that what is stored is exactly what the ticket printed.

    Raises ValueError with a short Spanish reason that quotes the value.
    """
    if not isinstance(text, str):
        raise ValueError(f"se esperaba texto, no {type(text).__name__}")
    # Fast path: one regex that accepts exactly the valid inputs; diagnose only failures.
    valid = _VALID_RE.get((max_decimals, allow_negative))
    if valid is None:
        valid = _valid_re(max_decimals, allow_negative)
    if valid.fullmatch(text):
        return Decimal(text)
    m = _AMOUNT_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"{_quote(text)} no es un número (solo dígitos y punto decimal)")
    sign, integer, _ = m.groups()
    if sign and not allow_negative:
        raise ValueError(f"{_quote(text)} no puede ser negativo")
    if len(integer) > MAX_INTEGER_DIGITS:
        raise ValueError(f"{_quote(text)} tiene más de {MAX_INTEGER_DIGITS} dígitos enteros")
    raise ValueError(f"{_quote(text)} tiene más de {max_decimals} decimales")


def _valid_re(max_decimals: int, allow_negative: bool) -> re.Pattern[str]:
    sign = "-?" if allow_negative else ""
    fraction = f"(?:\\.[0-9]{{1,{max_decimals}}})?" if max_decimals > 0 else ""
    pattern = re.compile(f"{sign}[0-9]{{1,{MAX_INTEGER_DIGITS}}}{fraction}")
    _VALID_RE[max_decimals, allow_negative] = pattern
    return pattern


def decimals_of(d: Decimal) -> int:
    """Number of decimal places as written: Decimal("1.50") -> 2, Decimal("3") -> 0.

    SAT's tolerance rules depend on how many decimals a value was written with, not on
    its numeric value, so 1.50 and 1.5 give different bounds.
    """
    # str() is several times faster than as_tuple() and plain for every amount we parse.
    s = str(d)
    dot = s.find(".")
    if "E" not in s:
        if dot >= 0:
            return len(s) - dot - 1
        if s.lstrip("-").isdigit():
            return 0
    exponent = d.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"{d} no es un número finito")
    return -exponent if exponent < 0 else 0


def round_money(d: Decimal, places: int = 2) -> Decimal:
    """Round half up (away from zero on .5) to `places` decimals, SAT's rounding rule."""
    return d.quantize(_quantum(places), rounding=ROUND_HALF_UP, context=EXACT_CONTEXT)


def tax_bounds(base: Decimal, rate: Decimal, places: int) -> tuple[Decimal, Decimal]:
    """Lowest and highest Traslado Importe SAT accepts for `base` x `rate`.

    Anexo 20 (the usual rejections are CFDI40167/CFDI40180 and 40215/40221): the
    Importe must lie between (Base - 10^-d/2) x TasaOCuota truncated and
    (Base + 10^-d/2 - 10^-12) x TasaOCuota rounded up, both to the Importe's decimals,
    d = decimals of Base. The half-unit says "Base was itself rounded to d decimals".
    """
    half = _half_unit(decimals_of(base))
    ctx = EXACT_CONTEXT
    low = ctx.multiply(ctx.subtract(base, half), rate)
    high = ctx.multiply(ctx.subtract(ctx.add(base, half), _EPSILON), rate)
    return _truncate(low, places), _round_up(high, places)


def amount_bounds(quantity: Decimal, unit_price: Decimal, places: int) -> tuple[Decimal, Decimal]:
    """Lowest and highest Concepto Importe SAT accepts for `quantity` x `unit_price`.

    Anexo 20 (Concepto/Importe): the Importe must lie between
    (Cantidad - 10^-dq/2) x (ValorUnitario - 10^-dp/2) truncated and
    (Cantidad + 10^-dq/2 - 10^-12) x (ValorUnitario + 10^-dp/2 - 10^-12) rounded up, to
    the Importe's decimals; dq, dp = decimals of Cantidad and ValorUnitario. Note that an
    integer Cantidad allows +-0.5 units, so the check is loose for whole quantities.
    """
    hq = _half_unit(decimals_of(quantity))
    hp = _half_unit(decimals_of(unit_price))
    ctx = EXACT_CONTEXT
    low = ctx.multiply(ctx.subtract(quantity, hq), ctx.subtract(unit_price, hp))
    high = ctx.multiply(
        ctx.subtract(ctx.add(quantity, hq), _EPSILON),
        ctx.subtract(ctx.add(unit_price, hp), _EPSILON),
    )
    return _truncate(low, places), _round_up(high, places)


def _quantum(places: int) -> Decimal:
    return _QUANTUM[places] if 0 <= places < len(_QUANTUM) else Decimal(1).scaleb(-places)


def _half_unit(decimals: int) -> Decimal:
    if decimals < len(_HALF_UNIT):
        return _HALF_UNIT[decimals]
    return Decimal(5).scaleb(-(decimals + 1))


def _truncate(d: Decimal, places: int) -> Decimal:
    return d.quantize(_quantum(places), rounding=ROUND_DOWN, context=EXACT_CONTEXT)


def _round_up(d: Decimal, places: int) -> Decimal:
    return d.quantize(_quantum(places), rounding=ROUND_UP, context=EXACT_CONTEXT)


def _quote(text: str, limit: int = 40) -> str:
    # Error messages go back to the POS and into logs: keep a huge field from flooding them.
    return repr(text if len(text) <= limit else text[:limit] + "…")
