"""SAT's catalogs for the receiver (Receptor) of a customer's CFDI 4.0: RFC shape, tax
regimes (c_RegimenFiscal), CFDI uses (c_UsoCFDI) and which go together.

Names come from satcfdi's copy of SAT's catalogs (``satcfdi.catalogs``), the same
package whose XSD validates the CFDI. satcfdi ships only each key's description,
not the other columns of SAT's catCFDI workbook, so two of those columns are copied
here by hand (catCFDI 4.0, in force since 2022-01-01):

- c_RegimenFiscal "Física" / "Moral": who may be in the regime;
- c_UsoCFDI "Régimen Fiscal Receptor": which regimes may choose the use.

A PAC refuses a CFDI whose UsoCFDI does not match the receiver's regime and person type,
so the customer is told before anything is signed.
tests/test_customer_cfdi.py checks every key below against satcfdi's catalog and
SAT's XSD enumerations, so a future catalog that drops one is noticed.

No Flask, no database: plain lookups. UI texts live with the page (agent/self_invoice.py).
"""
from __future__ import annotations

import calendar
import re
import threading
from functools import cache

FISICA = "fisica"  # RFC of 13 characters: 4 letters, date, homoclave
MORAL = "moral"  # RFC of 12 characters: 3 letters, date, homoclave

# tdCFDI.xsd t_RFC, anchored. The date part is checked further by rfc_date_valid().
RFC_RE = re.compile(r"[A-Z&Ñ]{3,4}[0-9]{2}(0[1-9]|1[012])(0[1-9]|[12][0-9]|3[01])[A-Z0-9]{2}[0-9A]")
GENERIC_RFCS = {
    "XAXX010101000": "público en general",
    "XEXX010101000": "residentes en el extranjero",
}

# c_RegimenFiscal: code -> (física, moral). 609 (Consolidación) ended in 2019 and is left
# out; 628, 629 and 630 (2024) appear in no use's "Régimen Fiscal Receptor" list, so a
# customer in them could choose no use at all: they are left out too.
_REGIME_PERSONS: dict[str, tuple[bool, bool]] = {
    "601": (False, True),
    "603": (False, True),
    "605": (True, False),
    "606": (True, False),
    "607": (True, False),
    "608": (True, False),
    "610": (True, True),
    "611": (True, False),
    "612": (True, False),
    "614": (True, False),
    "615": (True, False),
    "616": (True, False),
    "620": (False, True),
    "621": (True, False),
    "622": (False, True),
    "623": (False, True),
    "624": (False, True),
    "625": (True, False),
    "626": (True, True),
}

_BUSINESS = ("601", "603", "606", "612", "620", "621", "622", "623", "624", "625", "626")
_PERSONAL = ("605", "606", "608", "611", "612", "614", "607", "615", "625")
_ANY = ("601", "603", "605", "606", "608", "610", "611", "612", "614", "616", "620", "621", "622", "623", "624",
        "607", "615", "625", "626")  # fmt: skip

# c_UsoCFDI: code -> regimes that may choose it. CP01 (Pagos) and CN01 (Nómina) belong
# to payment and payroll CFDIs, never to an invoice of a sale (TipoDeComprobante I), and
# P01 no longer exists in CFDI 4.0: none of them is offered.
_USE_REGIMES: dict[str, tuple[str, ...]] = {
    "G01": _BUSINESS,
    "G02": _BUSINESS,
    "G03": _BUSINESS,
    **{f"I0{n}": _BUSINESS for n in range(1, 9)},
    **{f"D{n:02d}": _PERSONAL for n in range(1, 11)},
    "S01": _ANY,
}
# The D uses (personal deductions) are for personas físicas only.
_USE_PERSONS: dict[str, tuple[bool, bool]] = {code: (True, not code.startswith("D")) for code in _USE_REGIMES}

_lock = threading.Lock()  # satcfdi shares one SQLite connection between threads


@cache
def _names(table: str) -> dict[str, str]:
    from satcfdi.catalogs import select_all

    with _lock:
        return {str(k): str(v) for k, v in select_all(table).items()}


def regime_name(code: str) -> str:
    return _names("C756_c_RegimenFiscal").get(code, "")


def use_name(code: str) -> str:
    return _names("C756_c_UsoCFDI").get(code, "")


def regimes() -> list[tuple[str, str]]:
    """(code, name) of every regime a customer may declare, in SAT's order."""
    return [(code, regime_name(code)) for code in _REGIME_PERSONS]


def uses() -> list[tuple[str, str]]:
    """(code, name) of every use a customer may choose for an invoice of a sale."""
    return [(code, use_name(code)) for code in _USE_REGIMES]


def is_regime(code: str) -> bool:
    return code in _REGIME_PERSONS


def is_use(code: str) -> bool:
    return code in _USE_REGIMES


def person_of(rfc: str) -> str:
    """FISICA or MORAL by the RFC's length (13 or 12); the RFC must match RFC_RE."""
    return FISICA if len(rfc) == 13 else MORAL


def rfc_date_valid(rfc: str) -> bool:
    """The RFC's YYMMDD is a real date (any century: SAT issues RFCs for both)."""
    digits = rfc[-9:-3]
    month, day = int(digits[2:4]), int(digits[4:6])
    # 2000 is a leap year, so 29 February is accepted for a year that may be 19xx or 20xx.
    return 1 <= month <= 12 and 1 <= day <= calendar.monthrange(2000, month)[1]


def regime_allows(regime: str, person: str) -> bool:
    fisica, moral = _REGIME_PERSONS[regime]
    return fisica if person == FISICA else moral


def use_allows(use: str, regime: str, person: str | None = None) -> bool:
    """SAT's matrix; without `person` (an RFC not yet valid) only the regime column."""
    if regime not in _USE_REGIMES[use]:
        return False
    if person is None:
        return True
    fisica, moral = _USE_PERSONS[use]
    return fisica if person == FISICA else moral


def uses_for(regime: str, person: str | None = None) -> list[str]:
    """The uses a receiver in `regime` may choose, in SAT's order."""
    return [use for use in _USE_REGIMES if use_allows(use, regime, person)]


def postal_code_exists(code: str) -> bool:
    """In SAT's c_CodigoPostal, which a PAC checks DomicilioFiscalReceptor against."""
    from satcfdi.catalogs import select

    with _lock:
        return select("C756_c_CodigoPostal", code) is not None


def catalog_keys() -> dict[str, set[str]]:
    """Every regime and use code this module offers, for the tests that hold them to
    satcfdi's catalogs and SAT's XSD."""
    regimes_used = set(_REGIME_PERSONS) | {r for rs in _USE_REGIMES.values() for r in rs}
    return {"c_RegimenFiscal": regimes_used, "c_UsoCFDI": set(_USE_REGIMES)}
