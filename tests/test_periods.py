"""Periods and the self-invoicing deadline, in the branch's local calendar."""
from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from agent.periods import expires_at, period_of, self_invoice_deadline


@pytest.mark.parametrize(
    "day, periodicity, first, last",
    [
        (date(2026, 11, 20), "day", date(2026, 11, 20), date(2026, 11, 20)),
        (date(2026, 11, 20), "week", date(2026, 11, 16), date(2026, 11, 22)),  # Friday -> Mon..Sun
        (date(2026, 11, 16), "week", date(2026, 11, 16), date(2026, 11, 22)),
        (date(2026, 11, 22), "week", date(2026, 11, 16), date(2026, 11, 22)),
        (date(2026, 12, 30), "week", date(2026, 12, 28), date(2027, 1, 3)),  # across the year
        (date(2026, 11, 15), "fortnight", date(2026, 11, 1), date(2026, 11, 15)),
        (date(2026, 11, 16), "fortnight", date(2026, 11, 16), date(2026, 11, 30)),
        (date(2028, 2, 20), "fortnight", date(2028, 2, 16), date(2028, 2, 29)),  # leap February
        (date(2027, 2, 20), "fortnight", date(2027, 2, 16), date(2027, 2, 28)),
        (date(2026, 12, 31), "month", date(2026, 12, 1), date(2026, 12, 31)),
        (date(2028, 1, 31), "two_months", date(2028, 1, 1), date(2028, 2, 29)),
        (date(2026, 4, 1), "two_months", date(2026, 3, 1), date(2026, 4, 30)),
        (date(2026, 12, 1), "two_months", date(2026, 11, 1), date(2026, 12, 31)),
    ],
)
def test_period_boundaries(day, periodicity, first, last):
    period = period_of(day, periodicity)
    assert (period.first, period.last) == (first, last)
    assert (period.next().first - last).days == 1  # periods follow each other, no gap


def test_unknown_periodicity():
    with pytest.raises(ValueError):
        period_of(date(2026, 1, 1), "year")


@pytest.mark.parametrize(
    "sold, periodicity, days, deadline",
    [
        (datetime(2026, 11, 20, 10, 0), "month", 7, date(2026, 11, 27)),
        (datetime(2026, 11, 27, 10, 0), "month", 7, date(2026, 11, 30)),  # the month ends first
        (datetime(2026, 11, 20, 23, 30), "day", 7, date(2026, 11, 20)),  # daily: same day
        (datetime(2026, 11, 20, 9, 0), "week", 7, date(2026, 11, 22)),
        (datetime(2026, 11, 20, 9, 0), "month", 0, date(2026, 11, 20)),
    ],
)
def test_deadline_is_the_earlier_of_window_and_period_end(sold, periodicity, days, deadline):
    assert self_invoice_deadline(sold, periodicity, days) == deadline


def test_a_2330_sale_expires_at_local_midnight_not_utc():
    zone = ZoneInfo("America/Mexico_City")
    moment = expires_at(datetime(2026, 11, 20, 23, 30), "day", 7, zone)
    assert moment.isoformat() == "2026-11-21T00:00:00-06:00"
    assert moment.astimezone(ZoneInfo("UTC")).isoformat() == "2026-11-21T06:00:00+00:00"
