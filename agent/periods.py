"""Periods of the factura global and the self-invoicing deadline of a ticket.

All dates here are the branch's local calendar dates: a 23:30 sale belongs to the day it
was made where it was made, whatever the UTC date. Periods (see docs/periods.md):

- day: one calendar day;
- week: Monday to Sunday;
- fortnight: the 1st to the 15th, and the 16th to the last day of the month (quincena);
- month: a calendar month;
- two_months: January-February, March-April, ..., November-December (SAT's bimesters).
"""
from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

PERIODICITIES = ("day", "week", "fortnight", "month", "two_months")


@dataclass(frozen=True, order=True)
class Period:
    periodicity: str
    first: date
    last: date

    def __str__(self) -> str:
        return f"{self.periodicity} {self.first.isoformat()}..{self.last.isoformat()}"

    def contains(self, day: date) -> bool:
        return self.first <= day <= self.last

    def closes_at(self, zone: ZoneInfo) -> datetime:
        """The instant (aware, in the branch's zone) the period is over: midnight after it."""
        return datetime.combine(self.last + timedelta(days=1), time(0), tzinfo=zone)

    def next(self) -> "Period":
        return period_of(self.last + timedelta(days=1), self.periodicity)


def period_of(day: date, periodicity: str) -> Period:
    if periodicity == "day":
        return Period(periodicity, day, day)
    if periodicity == "week":
        monday = day - timedelta(days=day.weekday())
        return Period(periodicity, monday, monday + timedelta(days=6))
    if periodicity == "fortnight":
        if day.day <= 15:
            return Period(periodicity, day.replace(day=1), day.replace(day=15))
        return Period(periodicity, day.replace(day=16), _month_end(day.year, day.month))
    if periodicity == "month":
        return Period(periodicity, day.replace(day=1), _month_end(day.year, day.month))
    if periodicity == "two_months":
        first_month = day.month - (day.month - 1) % 2
        return Period(periodicity, date(day.year, first_month, 1), _month_end(day.year, first_month + 1))
    raise ValueError(f"unknown periodicity {periodicity!r}")


def self_invoice_deadline(sold_at: datetime, periodicity: str, self_invoice_days: int) -> date:
    """Last local day the customer may self-invoice the ticket: the earlier of the sale
    date plus the company's window and the last day of the ticket's period (Facturapi's
    rule, so the ticket can still go into its own period's global CFDI)."""
    day = sold_at.date()
    return min(day + timedelta(days=self_invoice_days), period_of(day, periodicity).last)


def expires_at(sold_at: datetime, periodicity: str, self_invoice_days: int, zone: ZoneInfo) -> datetime:
    """The instant (aware) the ticket's window closes: midnight after its deadline day."""
    deadline = self_invoice_deadline(sold_at, periodicity, self_invoice_days)
    return datetime.combine(deadline + timedelta(days=1), time(0), tzinfo=zone)


def _month_end(year: int, month: int) -> date:
    return date(year, month, calendar.monthrange(year, month)[1])
