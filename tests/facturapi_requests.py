"""Request models of the Facturapi v2 endpoints that ``fake_facturapi`` serves.

Written by hand from Facturapi's OpenAPI v2 reference (schemas ``ReceiptInput``,
``ReceiptEditableProperties``, ``LineItemInput``, ``ProductProperties``, ``BaseTax``,
``IepsTax``, ``LocalTax``, ``GlobalInvoiceInput``; the query parameters of
``listReceipts`` and ``cancelInvoice``). Nothing here reads the spec at run time.

The fake validates every body and query string with these models, so a client bug
(a missing field, a number sent as a string, a value outside an enum) fails the test
that made the request instead of passing against a lenient double.

Bodies are validated in strict mode from JSON parsed with ``parse_float=Decimal``:
JSON numbers arrive as ``int`` or ``Decimal`` and nothing is coerced ("12.50" is not a
number, 1 is not a boolean, "5" is not an integer). Query strings are text by nature,
so their models are lax (``limit=5`` is the integer 5).

Where the spec is silent the models follow SAT's CFDI 4.0 rules, and the fake's
README-like docstring lists those choices: a non-empty ``items`` list, quantity > 0,
price/discount/rate >= 0, ``product_key`` of 8 digits, ``payment_form`` from c_FormaPago.
Fields the fake does not simulate (``customer``, ``address``, item ``parts``,
``complement``, ``third_party``, product IDs in place of product objects...) are
rejected as unknown rather than silently ignored.
"""
from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "PAYMENT_FORMS",
    "CancelInvoiceQuery",
    "GlobalInvoiceInput",
    "LineItemInput",
    "LocalTax",
    "ProductInput",
    "ReceiptInput",
    "ReceiptListQuery",
    "Tax",
    "error_message",
    "error_path",
]

# SAT catalog c_FormaPago (the "Payment Form catalog" the spec points to).
PAYMENT_FORMS = frozenset(
    ["01", "02", "03", "04", "05", "06", "08", "12", "13", "14", "15", "17", "23", "24", "25", "26", "27", "28", "29", "30", "31", "99"]
)

# SAT catalog c_Meses: 01..12 months, 13..18 bimesters (Ene-Feb .. Nov-Dic).
MONTHS = frozenset(f"{n:02d}" for n in range(1, 19))


def _json_number(value: object) -> Decimal:
    # bool is an int subclass, and JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise ValueError("must be a number")
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError("must be a finite number")
    return number


_DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?$"
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _iso_datetime(value: object) -> datetime:
    # A naive value is kept naive: the fake reads it in the organization's zone.
    if not isinstance(value, str) or not _DATETIME.match(value):
        raise ValueError("must be an ISO 8601 date-time, e.g. 2024-03-28T10:15:00Z")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a valid ISO 8601 date-time") from None


def _iso_date(value: object) -> date:
    if not isinstance(value, str) or not _DATE.match(value):
        raise ValueError("must be a date in the format YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a valid date (YYYY-MM-DD)") from None


def _payment_form(value: str) -> str:
    if value not in PAYMENT_FORMS:
        raise ValueError(f"{value!r} is not a code of the SAT catalog c_FormaPago")
    return value


Number = Annotated[Decimal, BeforeValidator(_json_number)]
NonNegative = Annotated[Decimal, BeforeValidator(_json_number), Field(ge=0)]
DateTime = Annotated[datetime, BeforeValidator(_iso_datetime)]
Date = Annotated[date, BeforeValidator(_iso_date)]
PaymentForm = Annotated[str, Field(min_length=2, max_length=2), AfterValidator(_payment_form)]
ReceiptId = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{24}$")]
Periodicity = Literal["day", "week", "fortnight", "month", "two_months"]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class Tax(_Body):
    """``BaseTax`` (and ``IepsTax``'s ``ieps_mode``): one tax of a product."""

    rate: NonNegative
    type: Literal["IVA", "ISR", "IEPS"] = "IVA"
    factor: Literal["Tasa", "Cuota", "Exento"] = "Tasa"
    withholding: bool = False
    base: NonNegative | None = None
    ieps_mode: Literal["sum_before_taxes", "break_down", "unit", "subtract_before_break_down"] | None = None

    @model_validator(mode="after")
    def _ieps_mode_only_for_ieps(self) -> Tax:
        if self.ieps_mode is not None and self.type != "IEPS":
            raise ValueError("ieps_mode is only allowed on IEPS taxes")
        return self


class LocalTax(_Body):
    """``LocalTax``: a state or municipal tax, named freely."""

    rate: NonNegative
    type: str = Field(min_length=1)
    withholding: bool = False
    base: NonNegative | None = None


class ProductInput(_Body):
    """``LineItemProductInput`` (``ProductProperties``) sent inline in an item."""

    description: str = Field(min_length=1, max_length=1000)
    product_key: str = Field(pattern=r"^\d{8}$")
    price: NonNegative
    tax_included: bool = True
    taxability: Literal["01", "02", "03", "04", "05", "06", "07", "08"] = "02"
    taxes: list[Tax] | None = None
    local_taxes: list[LocalTax] = Field(default_factory=list)
    unit_key: str = Field("H87", min_length=1, max_length=3)
    unit_name: str = Field("Elemento", min_length=1)
    sku: str | None = Field(None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _resolve_default_taxes(self) -> ProductInput:
        # The spec's own rule for an omitted or null `taxes`.
        if self.taxes is None:
            if self.taxability == "07":
                raise ValueError(
                    'taxes: taxability "07" needs at least one transferred IEPS tax'
                )
            self.taxes = [Tax(rate=Decimal("0.16"))] if self.taxability == "02" else []
        return self


class LineItemInput(_Body):
    """``LineItemInput``: a concept of the receipt."""

    product: ProductInput
    quantity: Annotated[Decimal, BeforeValidator(_json_number), Field(gt=0)] = Decimal(1)
    discount: NonNegative = Decimal(0)

    @model_validator(mode="after")
    def _discount_within_amount(self) -> LineItemInput:
        if self.discount > self.product.price * self.quantity:
            raise ValueError("discount: must not exceed price x quantity")
        return self


class ReceiptInput(_Body):
    """Body of ``POST /receipts`` (createReceipt): ``ReceiptInput``."""

    items: list[LineItemInput] = Field(min_length=1, max_length=5000)
    payment_form: PaymentForm
    date: DateTime | None = None
    folio_number: int | None = Field(None, ge=0)
    currency: str = Field("MXN", pattern=r"^[A-Z]{3}$")
    exchange: NonNegative | None = None
    branch: str | None = None
    external_id: str | None = None
    idempotency_key: str | None = None


def _same_period(periodicity: str, start: date, end: date) -> bool:
    if periodicity == "day":
        return start == end
    if periodicity == "week":
        return (end - start).days <= 6
    same_month = (start.year, start.month) == (end.year, end.month)
    if periodicity == "fortnight":
        return same_month and (start.day <= 15) == (end.day <= 15)
    if periodicity == "month":
        return same_month
    return start.year == end.year and (start.month + 1) // 2 == (end.month + 1) // 2


class GlobalInvoiceInput(_Body):
    """Body of ``POST /receipts/global-invoice`` (createGlobalInvoice).

    Field order matters: the validators of ``from``/``to``/``months`` read the fields
    declared before them.
    """

    periodicity: Periodicity
    # No maxItems here on purpose: over 5,000 the API answers its own error code
    # (global_invoice_too_many_items), which the fake reproduces.
    receipts: list[ReceiptId] | None = None
    from_: Date | None = Field(None, alias="from", validate_default=True)
    to: Date | None = Field(None, validate_default=True)
    months: str | None = None
    folio_number: int | None = Field(None, ge=0)
    series: str | None = Field(None, max_length=25)
    date: Date | None = None
    payment_form: PaymentForm | None = None

    @field_validator("receipts")
    @classmethod
    def _no_duplicates(cls, receipts: list[str] | None) -> list[str] | None:
        if receipts is not None and len(set(receipts)) != len(receipts):
            raise ValueError("lists the same receipt more than once")
        return receipts

    @field_validator("from_", "to")
    @classmethod
    def _range(cls, value: date | None, info: ValidationInfo) -> date | None:
        with_receipts = info.data.get("receipts") is not None
        if value is None:
            if with_receipts:
                raise ValueError("is required when receipts is sent")
            return value
        start = info.data.get("from_")
        if info.field_name == "to" and start is not None:
            if value < start:
                raise ValueError("must not be before from")
            # The spec asks this only of an explicit receipts list.
            periodicity = info.data.get("periodicity")
            if with_receipts and periodicity and not _same_period(periodicity, start, value):
                raise ValueError(f"from and to must lie within one {periodicity} period")
        return value

    @field_validator("months")
    @classmethod
    def _months_in_catalog(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if value not in MONTHS:
            raise ValueError("must be a code of the SAT catalog c_Meses (01..18)")
        bimester = value >= "13"
        if info.data.get("periodicity") == "two_months" and not bimester:
            raise ValueError("must be a bimester (13..18) when periodicity is two_months")
        if info.data.get("periodicity") not in (None, "two_months") and bimester:
            raise ValueError("bimesters (13..18) need periodicity two_months")
        return value


class _Query(BaseModel):
    # Lax: every query value arrives as text.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ReceiptListQuery(_Query):
    """Query string of ``GET /receipts`` (listReceipts)."""

    q: str | None = None
    customer: str | None = Field(None, min_length=24, max_length=24)
    payment_form: PaymentForm | None = None
    invoice: str | None = None
    date_gt: DateTime | None = Field(None, alias="date[gt]")
    date_gte: DateTime | None = Field(None, alias="date[gte]")
    date_lt: DateTime | None = Field(None, alias="date[lt]")
    date_lte: DateTime | None = Field(None, alias="date[lte]")
    page: int = Field(1, ge=1, le=30)
    limit: int = Field(50, ge=1, le=100)


class CancelInvoiceQuery(_Query):
    """Query string of ``DELETE /invoices/{id}`` (cancelInvoice)."""

    motive: Literal["01", "02", "03", "04"]
    substitution: str | None = Field(None, min_length=1, validate_default=True)

    @field_validator("substitution")
    @classmethod
    def _required_for_motive_01(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("motive") == "01":
            raise ValueError('is required when motive is "01"')
        return value


# A field validated from its default reports its Python name: show the wire name.
_WIRE_NAMES = {
    name: field.alias
    for model in (GlobalInvoiceInput, ReceiptListQuery, CancelInvoiceQuery)
    for name, field in model.model_fields.items()
    if field.alias
}


def error_path(loc: tuple) -> str:
    """``("items", 0, "product", "price")`` -> ``"items[0].product.price"``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            part = _WIRE_NAMES.get(part, part)
            path += f".{part}" if path else part
    return path


def error_message(error: dict) -> str:
    """One readable line for one pydantic error, naming the field."""
    path = error_path(error["loc"]) or "body"
    if error["type"] == "extra_forbidden":
        return f"{path} is not allowed"
    if error["type"] == "missing":
        return f"{path} is required"
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message}"
