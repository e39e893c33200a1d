from decimal import ROUND_DOWN, Decimal, localcontext

import pytest

from agent.money import (
    CENT,
    amount_bounds,
    decimals_of,
    parse_amount,
    round_money,
    tax_bounds,
)

D = Decimal


# -- parse_amount ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["0", "7", "10.5", "10.655172", "007.10", "123456789012345678.123456"]
)
def test_parse_amount_accepts_plain_numbers(text):
    assert parse_amount(text) == Decimal(text)


def test_parse_amount_keeps_trailing_zeros_because_sat_bounds_depend_on_them():
    assert str(parse_amount("1.50")) == "1.50"
    assert decimals_of(parse_amount("0.160000")) == 6


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "no es un número"),
        (" 1", "no es un número"),
        ("1 ", "no es un número"),
        ("1,000.00", "no es un número"),
        ("1e3", "no es un número"),
        ("1E-2", "no es un número"),
        ("1e999", "no es un número"),
        ("NaN", "no es un número"),
        ("nan", "no es un número"),
        ("Infinity", "no es un número"),
        ("-Infinity", "no es un número"),
        ("+1", "no es un número"),
        ("1.", "no es un número"),
        (".5", "no es un número"),
        ("1_000", "no es un número"),
        ("0x10", "no es un número"),
        ("١٢", "no es un número"),  # Arabic-Indic digits: Decimal() would take them
        ("--1", "no es un número"),
        ("-1", "negativo"),
        ("-0.00", "negativo"),
        ("1.1234567", "más de 6 decimales"),
        ("1" * 19, "más de 18 dígitos enteros"),
    ],
)
def test_parse_amount_rejects_with_a_spanish_reason(text, reason):
    with pytest.raises(ValueError) as err:
        parse_amount(text)
    assert reason in str(err.value)


@pytest.mark.parametrize("value", [None, 1, 1.5, b"1.00", Decimal("1")])
def test_parse_amount_rejects_non_text(value):
    with pytest.raises(ValueError, match="se esperaba texto"):
        parse_amount(value)


def test_parse_amount_max_decimals():
    assert parse_amount("1.23", max_decimals=2) == D("1.23")
    with pytest.raises(ValueError, match="más de 2 decimales"):
        parse_amount("1.234", max_decimals=2)
    assert parse_amount("12", max_decimals=0) == 12
    with pytest.raises(ValueError, match="más de 0 decimales"):
        parse_amount("12.0", max_decimals=0)


def test_parse_amount_negative_only_when_allowed():
    assert parse_amount("-1.50", allow_negative=True) == D("-1.50")
    assert parse_amount("1.50", allow_negative=True) == D("1.50")
    with pytest.raises(ValueError, match="negativo"):
        parse_amount("-1.50")


def test_parse_amount_quotes_and_truncates_a_huge_value_in_the_message():
    with pytest.raises(ValueError) as err:
        parse_amount("9" * 100_000 + "x")
    assert len(str(err.value)) < 150


# -- decimals_of, round_money -------------------------------------------------------------


@pytest.mark.parametrize(
    "value, places",
    [
        (D("1.50"), 2),
        (D("3"), 0),
        (D("-2.5"), 1),
        (D("0.000001"), 6),
        (D("1E-7"), 7),  # str() switches to exponent notation here
        (D("1E+2"), 0),
        (D("0"), 0),
        (D("0.00"), 2),
    ],
)
def test_decimals_of_counts_places_as_written(value, places):
    assert decimals_of(value) == places


@pytest.mark.parametrize("value", [D("NaN"), D("Infinity"), D("-Infinity")])
def test_decimals_of_rejects_non_finite(value):
    with pytest.raises(ValueError):
        decimals_of(value)


@pytest.mark.parametrize(
    "value, places, expected",
    [
        ("2.675", 2, "2.68"),  # float arithmetic would give 2.67
        ("2.665", 2, "2.67"),
        ("2.6749999", 2, "2.67"),
        ("-2.675", 2, "-2.68"),
        ("1.7048285", 6, "1.704829"),
        ("10.5", 0, "11"),
        ("3", 2, "3.00"),
    ],
)
def test_round_money_rounds_half_up(value, places, expected):
    result = round_money(D(value), places)
    assert str(result) == expected


def test_round_money_defaults_to_cents():
    assert round_money(D("1.005")) == D("1.01")
    assert CENT == D("0.01")


# -- tax_bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base, iva, low, high",
    [
        # SAT's worked example of the global CFDI guide: three tickets at IVA 16%.
        ("130.00", "20.80", "20.79", "20.81"),
        ("359.98", "57.60", "57.59", "57.60"),
        ("355.00", "56.80", "56.79", "56.81"),
    ],
)
def test_tax_bounds_on_sat_worked_example(base, iva, low, high):
    bounds = tax_bounds(D(base), D("0.160000"), 2)
    assert bounds == (D(low), D(high))
    assert bounds[0] <= D(iva) <= bounds[1]


def test_tax_bounds_rejects_what_sat_rejects():
    low, high = tax_bounds(D("359.98"), D("0.160000"), 2)
    # 359.98 x 0.16 = 57.5968: 57.58 and 57.61 are off by more than the rounding of Base.
    assert not low <= D("57.58") <= high
    assert not low <= D("57.61") <= high


def test_tax_bounds_narrow_as_base_carries_more_decimals():
    # A 2-decimal Base may have been rounded by up to half a cent; a 6-decimal one barely.
    assert tax_bounds(D("100.00"), D("0.16"), 6) == (D("15.999200"), D("16.000800"))
    assert tax_bounds(D("100.000000"), D("0.16"), 6) == (D("15.999999"), D("16.000001"))
    assert tax_bounds(D("100.00"), D("0.16"), 2) == (D("15.99"), D("16.01"))
    assert tax_bounds(D("100.000000"), D("0.16"), 2) == (D("15.99"), D("16.01"))


def test_tax_bounds_of_the_insumo_example():
    assert tax_bounds(D("10.655172"), D("0.160000"), 6) == (D("1.704827"), D("1.704828"))
    assert tax_bounds(D("10.655172"), D("0.160000"), 2) == (D("1.70"), D("1.71"))


def test_tax_bounds_upper_excludes_the_exact_half_unit():
    # The 10^-12 makes (Base + half unit) itself fall outside, as SAT specifies.
    assert tax_bounds(D("10"), D("1"), 12) == (D("9.500000000000"), D("10.499999999999"))


def test_tax_bounds_zero_rate_and_zero_base():
    assert tax_bounds(D("53.00"), D("0.000000"), 2) == (D("0.00"), D("0.00"))
    low, high = tax_bounds(D("0.00"), D("0.16"), 2)
    assert low <= D("0.00") <= high


# -- amount_bounds ------------------------------------------------------------------------


def test_amount_bounds_whole_quantity_is_loose_as_sat_says():
    # Cantidad 1 (0 decimals) stands for anything in [0.5, 1.5).
    assert amount_bounds(D("1"), D("10.655172"), 6) == (D("5.327585"), D("15.982759"))


def test_amount_bounds_with_decimal_quantity_is_tight():
    low, high = amount_bounds(D("1.000"), D("12.00"), 2)
    assert (low, high) == (D("11.98"), D("12.02"))
    assert not low <= D("10.00") <= high


def test_amount_bounds_edge_values():
    assert amount_bounds(D("2.000"), D("26.50"), 2) == (D("52.97"), D("53.03"))
    low, high = amount_bounds(D("1"), D("0.00"), 2)
    assert low <= D("0.00") <= high


def test_bounds_ignore_the_callers_decimal_context():
    big = D("123456789012345678.123456")  # the largest amounts the insumo admits
    with localcontext() as ctx:
        ctx.prec = 200
        half = D("0.0000005")
        expected_low = ((big - half) * (big - half)).quantize(D("0.000001"), ROUND_DOWN)
    with localcontext() as ctx:
        ctx.prec = 5  # a caller with a small precision must not change the bounds
        low, _ = amount_bounds(big, big, 6)
        tax = tax_bounds(D("10.655172"), D("0.160000"), 6)
        rounded = round_money(big)
    assert low == expected_low
    assert tax == (D("1.704827"), D("1.704828"))
    assert rounded == D("123456789012345678.12")
