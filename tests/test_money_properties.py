"""Property tests of the money rules (agent/money.py) and of the totals built on them, with
hypothesis.

- agent.money on its own: parse_amount reads exactly what is written and nothing else,
  round_money rounds half up, tax_bounds/amount_bounds are Anexo 20's formulas and
  always hold the correctly rounded product; none depends on the caller's decimal context.
- A parsed ticket (agent.insumo) reconciles to the cent: SubTotal and Descuento are the
  rounded sums, the transferred taxes are the sum of the per-group rounded sums
  (docs/insumo.md), the Total is within 0.01.
- The customer's CFDI (sync.customer_cfdi.totals) states the ticket's SubTotal and
  Descuento and a Total within a cent of the ticket's (docs/self-invoice.md).
- The global CFDI (sync.cfdi40) adds the tickets' cents, rounds each summary group and
  adds the rounded groups, and every Concepto Traslado it writes is inside SAT's bounds
  (docs/global-invoice-cfdi.md, Amounts).

Every expectation is computed again here with Fractions, not with agent.money. The valid
tickets come from tests/test_insumo_properties.py.
"""
from __future__ import annotations

import re
from datetime import datetime
from decimal import (
    ROUND_FLOOR,
    Context,
    Decimal,
    Inexact,
    InvalidOperation,
    Rounded,
    localcontext,
)
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from lxml import etree
from test_insumo_properties import (
    IVA,
    Amount,
    amount_bounds_oracle,
    amounts,
    canon,
    hypothesis_settings,
    round_half_up,
    tax_bounds_oracle,
    valid_insumos,
)

from agent.insumo import InsumoError, parse_insumo
from agent.money import (
    amount_bounds,
    decimals_of,
    parse_amount,
    round_money,
    tax_bounds,
)
from sync import cfdi40, customer_cfdi

CENT = Fraction(1, 100)


def F(d: Decimal) -> Fraction:
    return Fraction(d)


_WIDE = Context(prec=200)


def odd_context():
    """A caller's decimal context that would spoil (or trap) any arithmetic done in it."""
    return localcontext(Context(prec=3, rounding=ROUND_FLOOR, traps=[Inexact, Rounded, InvalidOperation]))


# -- agent.money ----------------------------------------------------------------------------


@st.composite
def amount_texts(draw):
    """(text, integer digits, decimals, max_decimals): a valid amount as a POS writes it."""
    max_decimals = draw(st.integers(0, 6))
    integer = draw(st.text(st.sampled_from("0123456789"), min_size=1, max_size=18))
    decimals = draw(st.integers(0, max_decimals))
    fraction = draw(st.text(st.sampled_from("0123456789"), min_size=decimals, max_size=decimals))
    return (f"{integer}.{fraction}" if decimals else integer), integer, fraction, max_decimals


@hypothesis_settings(300)
@given(amount_texts())
@example(("123456789012345678.123456", "123456789012345678", "123456", 6))
@example(("000000000000000000", "000000000000000000", "", 0))
def test_parse_amount_reads_exactly_what_is_written(case):
    text, integer, fraction, max_decimals = case
    d = parse_amount(text, max_decimals=max_decimals)
    assert F(d) == Fraction(int(integer + fraction), 10 ** len(fraction))
    assert d.as_tuple().exponent == -len(fraction)
    assert decimals_of(d) == len(fraction)
    assert str(d) == format(d, "f")  # never exponent notation


_AMOUNT_ALPHABET = st.sampled_from("0123456789.-+eE _,x١٢３\u00a0\x00nNaIify")
_PLAIN = {}


def _plain_number(max_decimals: int, allow_negative: bool) -> re.Pattern[str]:
    """The doc's rule, written again: ASCII digits, at most 18 integer digits and
    max_decimals decimals, a '-' only when allowed."""
    key = (max_decimals, allow_negative)
    if key not in _PLAIN:
        fraction = rf"(\.[0-9]{{1,{max_decimals}}})?" if max_decimals else ""
        _PLAIN[key] = re.compile(("-?" if allow_negative else "") + "[0-9]{1,18}" + fraction, re.ASCII)
    return _PLAIN[key]


@hypothesis_settings(400)
@given(
    st.one_of(st.text(_AMOUNT_ALPHABET, max_size=25), st.text(max_size=10), amount_texts().map(lambda c: c[0])),
    st.integers(0, 6),
    st.booleans(),
)
@example("1e5", 6, False)
@example("-0", 6, False)
@example("-0", 6, True)
@example("NaN", 6, True)
@example("١", 6, False)
@example("1" * 19, 6, False)
def test_parse_amount_accepts_only_plain_numbers_and_raises_only_value_error(text, max_decimals, negative):
    plain = _plain_number(max_decimals, negative).fullmatch(text) is not None
    try:
        d = parse_amount(text, max_decimals=max_decimals, allow_negative=negative)
    except ValueError as err:
        assert not plain, f"{text!r} refused: {err}"
        assert len(str(err)) < 200
        return
    assert plain, f"{text!r} accepted as {d!r}"
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("-")
    integer, _, fraction = digits.partition(".")
    assert F(d) == sign * Fraction(int(integer + fraction), 10 ** len(fraction))
    assert decimals_of(d) == len(fraction)


@st.composite
def decimals(draw):
    sign = draw(st.sampled_from(["", "-"]))
    coefficient = draw(st.integers(0, 10 ** draw(st.integers(0, 30))))
    return Decimal(f"{sign}{coefficient}E{draw(st.integers(-14, 3))}")


@hypothesis_settings(300)
@given(decimals(), st.integers(0, 8))
@example(Decimal("2.675"), 2)
@example(Decimal("-2.675"), 2)
@example(Decimal("0.5"), 0)
def test_round_money_rounds_half_up_to_exactly_the_places(d, places):
    expected = round_half_up(F(d), places)
    result = round_money(d, places)
    assert F(result) == expected
    assert result.as_tuple().exponent == -places
    with odd_context():
        assert round_money(d, places).as_tuple() == result.as_tuple()


_RATES = st.one_of(
    st.sampled_from([Amount(160000, 6), Amount(16, 2), Amount(80000, 6), Amount(0, 6), Amount(1, 0)]),
    amounts(max_integer_digits=3),
)


@hypothesis_settings(300)
@given(amounts(max_integer_digits=18), _RATES, st.integers(0, 6))
@example(Amount(10655172, 6), Amount(160000, 6), 6)  # docs/insumo.md: 1.704827 .. 1.704828
@example(Amount(10655172, 6), Amount(160000, 6), 2)  # 1.70 .. 1.71
@example(Amount(35998, 2), Amount(160000, 6), 2)  # SAT's worked example: 57.59 .. 57.60
def test_tax_bounds_are_anexo_20_and_hold_the_rounded_product(base, rate, places):
    b, r = Decimal(base.text()), Decimal(rate.text())
    low, high = tax_bounds(b, r, places)
    assert (F(low), F(high)) == tax_bounds_oracle(base, rate, places)
    assert low.as_tuple().exponent == high.as_tuple().exponent == -places
    # What the global CFDI writes when a POS's sum falls outside: Base x Tasa, rounded.
    assert low <= round_money(_WIDE.multiply(b, r), places) <= high
    with odd_context():
        assert tax_bounds(b, r, places) == (low, high)


@hypothesis_settings(300)
@given(amounts(max_integer_digits=18, min_units=1), amounts(max_integer_digits=18), st.integers(0, 6))
@example(Amount(1000, 3), Amount(1200, 2), 2)  # docs/insumo.md: 11.98 .. 12.02
@example(Amount(1, 0), Amount(10655172, 6), 6)  # 5.327585 .. 15.982759
def test_amount_bounds_are_anexo_20_and_hold_the_rounded_product(quantity, price, places):
    q, p = Decimal(quantity.text()), Decimal(price.text())
    low, high = amount_bounds(q, p, places)
    assert (F(low), F(high)) == amount_bounds_oracle(quantity, price, places)
    assert low <= round_money(_WIDE.multiply(q, p), places) <= high
    with odd_context():
        assert amount_bounds(q, p, places) == (low, high)


# -- a parsed ticket ------------------------------------------------------------------------------


def groups_of(item_taxes, rounded: bool = True) -> dict[tuple, Fraction]:
    """Tax Importes summed per (Impuesto, TipoFactor, TasaOCuota); Exento adds nothing."""
    groups: dict[tuple, Fraction] = {}
    for t in item_taxes:
        if t.amount is not None:
            key = (t.tax, t.factor, F(t.rate))
            groups[key] = groups.get(key, Fraction(0)) + F(t.amount)
    return {k: round_half_up(v) if rounded else v for k, v in groups.items()}


def ticket_taxes(insumo):
    return [t for item in insumo.items for t in item.taxes]


@hypothesis_settings(120)
@given(valid_insumos())
def test_ticket_totals_reconcile_to_the_cent(generated):
    insumo = parse_insumo(generated.text)
    subtotal = round_half_up(sum((F(i.amount) for i in insumo.items), Fraction(0)))
    discount = round_half_up(sum((F(i.discount) for i in insumo.items), Fraction(0)))
    groups = groups_of(ticket_taxes(insumo))
    assert F(insumo.subtotal) == subtotal
    assert F(insumo.discount) == discount
    # docs/insumo.md: each (Impuesto, TipoFactor, TasaOCuota) group rounded, then added.
    assert F(insumo.transferred_taxes) == sum(groups.values(), Fraction(0))
    assert F(insumo.iva) == sum((v for k, v in groups.items() if k[0] == IVA), Fraction(0))
    assert insumo.iva + insumo.ieps == insumo.transferred_taxes
    assert decimals_of(insumo.transferred_taxes) == 2  # as the CFDI will state it
    assert abs(F(insumo.total) - (subtotal - discount + sum(groups.values(), Fraction(0)))) <= CENT
    # Nothing depends on the caller's decimal context.
    with odd_context():
        again = parse_insumo(generated.text)
        assert again.transferred_taxes.as_tuple() == insumo.transferred_taxes.as_tuple()
    assert canon(again) == canon(insumo)


# -- the customer's CFDI ---------------------------------------------------------------------------

ISSUER = cfdi40.Issuer("EKU9003173C9", "ESCUELA KEMPER URGATE", "601")
CUSTOMER = customer_cfdi.Customer("PECM800101AB1", "MARIA JOSE PENA", "06600", "612", "G03")


def zero_base_with_tax(insumo) -> bool:
    """A Traslado on a Base of 0 with an Importe: the CFDIs leave such a line out."""
    return any(t.base == 0 and t.amount for t in ticket_taxes(insumo))


@hypothesis_settings(100)
@given(valid_insumos())
def test_customer_cfdi_totals_are_the_tickets(generated):
    insumo = parse_insumo(generated.text)
    invoice = customer_cfdi.CustomerInvoice(ISSUER, CUSTOMER, "", "1", datetime(2026, 1, 1), "68050", insumo)
    sums = customer_cfdi.totals(invoice)
    assert sums.subtotal == insumo.subtotal
    assert sums.discount == insumo.discount
    # The summary: Base and Importe summed per group and rounded; Base-0 lines left out.
    kept = [t for t in ticket_taxes(insumo) if t.base > 0]
    groups = groups_of(kept)
    assert {(t.tax, t.factor, F(t.rate)): F(t.amount) for t in sums.taxes if t.amount is not None} == groups
    bases: dict[tuple, Fraction] = {}
    for t in kept:
        key = (t.tax, t.factor, None if t.amount is None else F(t.rate))
        bases[key] = bases.get(key, Fraction(0)) + F(t.base)
    assert {(t.tax, t.factor, None if t.rate is None else F(t.rate)): F(t.base) for t in sums.taxes} == {
        k: round_half_up(v) for k, v in bases.items()
    }
    assert F(sums.transferred_taxes) == sum(groups.values(), Fraction(0))
    assert sums.total == sums.subtotal - sums.discount + sums.transferred_taxes
    if not zero_base_with_tax(insumo):
        # docs/self-invoice.md: the CFDI's Total is the ticket's monto or one cent away.
        assert sums.transferred_taxes == insumo.transferred_taxes
        assert abs(sums.total - insumo.total) <= Decimal("0.01")


# A Traslado of 1.50 on a Base written "0" (0 decimals: anything below 0.5): inside SAT's
# formula, so the parser takes it; the customer's CFDI leaves Base-0 lines out.
ZERO_BASE_TICKET = (
    "00|CFD33BASE|QA|4.0|\n"
    "01||1|2026-01-01T10:00:00|01|MXN|1|10.00|0.00|11.50|68050|\n"
    "02|50202306||1|H87||Refresco|10.00|10.00|0.00|02|\n"
    "03|003|Cuota|3.000000|0|1.50|\n"
)


def test_a_tax_without_a_base_is_refused_so_the_customer_cfdi_keeps_its_total():
    # SAT's bounds let a Base of "0" carry up to half a unit times the rate; a CFDI cannot
    # carry a tax without a base, so the customer's invoice would have lost the 1.50.
    with pytest.raises(InsumoError) as refused:
        parse_insumo(ZERO_BASE_TICKET)
    assert refused.value.line == 4 and "Base 0" in str(refused.value)


# -- the global CFDI -----------------------------------------------------------------------------

_NS = {"cfdi": cfdi40.CFDI_NS}


def global_invoice(insumos) -> cfdi40.GlobalInvoice:
    tickets = [cfdi40.GlobalTicket(f"T{n}", insumo) for n, insumo in enumerate(insumos, 1)]
    return cfdi40.GlobalInvoice(ISSUER, "FG", "1", datetime(2026, 1, 2, 3, 0, 0), "68050", "day", "01", 2026, tickets)


def d(element, name) -> Decimal:
    return Decimal(element.get(name))


def decimal_groups(insumo) -> dict[tuple, list]:
    """(Impuesto, TipoFactor, TasaOCuota) -> [Σ Base, Σ Importe or None] in Decimal, which
    keeps the most decimals written: the global CFDI's Concepto Traslados before SAT's
    bounds are applied (docs/global-invoice-cfdi.md, Amounts)."""
    groups: dict[tuple, list] = {}
    for t in ticket_taxes(insumo):
        key = (t.tax, t.factor, None if t.rate is None else F(t.rate))
        group = groups.setdefault(key, [None, None])
        group[0] = t.base if group[0] is None else _WIDE.add(group[0], t.base)
        if t.amount is not None:
            group[1] = t.amount if group[1] is None else _WIDE.add(group[1], t.amount)
    return groups


def _amount(value: Decimal) -> Amount:
    t = value.as_tuple()
    return Amount(int("".join(map(str, t.digits))), max(0, -t.exponent))


def in_sat_bounds(base: Decimal, rate: Fraction, amount: Decimal) -> bool:
    rate_amount = Amount(int(rate * 10**6), 6)
    low, high = tax_bounds_oracle(_amount(base), rate_amount, decimals_of(amount))
    return low <= F(amount) <= high


@hypothesis_settings(80)
@given(st.lists(valid_insumos(max_items=4), min_size=1, max_size=4))
def test_global_cfdi_adds_cents_rounds_per_group_and_stays_in_sat_bounds(generated):
    insumos = [parse_insumo(g.text) for g in generated]
    insumos = [i for i in insumos if i.subtotal > 0]  # the caller leaves $0 tickets out
    if not insumos:
        return
    invoice = global_invoice(insumos)
    # docs/global-invoice-cfdi.md: these two are the documented refusals of a valid ticket.
    refused = all(i.payment_form == "99" for i in insumos) or any(
        base == 0 and amount for i in insumos for base, amount in decimal_groups(i).values()
    )
    if refused:
        with pytest.raises(ValueError):
            cfdi40.totals(invoice)
        return
    sums = cfdi40.totals(invoice)
    assert sums.subtotal == sum(i.subtotal for i in insumos)
    assert sums.discount == sum(i.discount for i in insumos)
    assert sums.total == sums.subtotal - sums.discount + sums.transferred_taxes
    assert sums.iva + sums.ieps == sums.transferred_taxes

    root = etree.fromstring(cfdi40.build_xml(invoice))
    assert (d(root, "SubTotal"), d(root, "Total")) == (sums.subtotal, sums.total)
    concept_groups: dict[tuple, Fraction] = {}
    concepts = root.iterfind("cfdi:Conceptos/cfdi:Concepto", _NS)
    for concept, insumo in zip(concepts, insumos, strict=True):
        assert d(concept, "Importe") == insumo.subtotal
        expected = {k: v for k, v in decimal_groups(insumo).items() if v[0] > 0}  # Base 0: left out
        written = {}
        for t in concept.iterfind("cfdi:Impuestos/cfdi:Traslados/cfdi:Traslado", _NS):
            rate = t.get("TasaOCuota")
            key = (t.get("Impuesto"), t.get("TipoFactor"), None if rate is None else F(Decimal(rate)))
            written[key] = (d(t, "Base"), None if rate is None else d(t, "Importe"))
        assert written.keys() == expected.keys()
        for key, (base, amount) in written.items():
            ticket_base, ticket_amount = expected[key]
            assert base == ticket_base
            if amount is None:
                continue
            # SAT's CFDI40167/CFDI40180: every Concepto Traslado inside the bounds; the
            # ticket's own sum when it is, else Base x TasaOCuota to 6 decimals.
            assert in_sat_bounds(base, key[2], amount)
            if in_sat_bounds(ticket_base, key[2], ticket_amount):
                assert amount.as_tuple() == ticket_amount.as_tuple()
            else:
                assert F(amount) == round_half_up(F(ticket_base) * key[2], 6)
            concept_groups[key] = concept_groups.get(key, Fraction(0)) + F(amount)
    summary = {(t.tax, t.factor, F(t.rate)): F(t.amount) for t in sums.taxes if t.amount is not None}
    assert summary == {k: round_half_up(v) for k, v in concept_groups.items()}
    assert F(sums.transferred_taxes) == sum(summary.values(), Fraction(0))
    if summary:
        assert d(root.find("cfdi:Impuestos", _NS), "TotalImpuestosTrasladados") == sums.transferred_taxes


@hypothesis_settings(80)
@given(valid_insumos())
def test_a_ticket_alone_in_the_global_cfdi_keeps_its_totals(generated):
    insumo = parse_insumo(generated.text)
    groups = decimal_groups(insumo).items()
    if insumo.subtotal <= 0 or insumo.payment_form == "99" or any(b == 0 and a for _, (b, a) in groups):
        return  # left out by the caller, or refused (see the test above)
    sums = cfdi40.totals(global_invoice([insumo]))
    assert (sums.subtotal, sums.discount) == (insumo.subtotal, insumo.discount)
    restated = any(a is not None and b > 0 and not in_sat_bounds(b, rate, a) for (_, _, rate), (b, a) in groups)
    if not restated:
        # docs/global-invoice-cfdi.md: "the same rule the insumo parser applies to one ticket".
        assert sums.transferred_taxes == insumo.transferred_taxes
        assert abs(sums.total - insumo.total) <= Decimal("0.01")
