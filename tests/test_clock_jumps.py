"""The system clock jumping back an hour or forward a day: no period's global invoice runs
twice or is skipped, and the sweeps neither stall nor pile up."""
from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import apscheduler.schedulers.base
import pytest
from helpers import KEY_A, put_json, ticket_body
from helpers import LocalClock as Clock

from agent.models import Cfdi, GlobalInvoice, Ticket
from service.background import global_invoicing
from service.scheduler import Scheduler
from sync.expiry import expire_overdue

# -- the sweeps under a jumping clock (the real APScheduler) ------------------------------


class WallClock:
    """The system clock as the scheduler and APScheduler read it, moved by `offset`."""

    offset = timedelta(0)

    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + cls.offset


@pytest.fixture
def wall(monkeypatch):
    WallClock.offset = timedelta(0)

    class JumpingDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return WallClock.now(tz)

    monkeypatch.setattr(apscheduler.schedulers.base, "datetime", JumpingDatetime)
    return WallClock


def counting_sweep():
    runs: list[datetime] = []
    ran = threading.Event()

    def sweep():
        runs.append(WallClock.now(UTC))
        ran.set()

    return sweep, runs, ran


def test_a_clock_set_back_an_hour_does_not_stall_the_sweeps(tmp_path, wall, caplog):
    caplog.set_level(logging.WARNING, logger="service.scheduler")
    sweep, runs, ran = counting_sweep()
    scheduler = Scheduler(tmp_path, {"sweep": (sweep, 300)}, clock=lambda: WallClock.now(UTC),
                          clock_check_every=0.1)
    scheduler.start()
    try:
        assert ran.wait(10)
        ran.clear()
        wall.offset = timedelta(hours=-1)
        # Without the watch the next sweep would wait 300 s plus the hour.
        assert ran.wait(10), "the sweep did not run again after the clock went back an hour"
        assert len(runs) == 2
        next_run = scheduler._scheduler.get_job("sweep").next_run_time
        assert abs((next_run - runs[-1]).total_seconds() - 300) < 1  # timed from the new clock
    finally:
        scheduler.stop()
    assert "the system clock jumped back by 3600 s" in caplog.text
    assert [round(seconds) for _, seconds in scheduler.clock_jumps] == [-3600]


def test_a_clock_jump_shows_on_the_health_page(client, agent):
    from types import SimpleNamespace

    now = datetime.now(UTC)
    scheduler = SimpleNamespace(running_jobs=True, jobs={}, last_run={}, last_error={},
                                clock_jumps=[(now - timedelta(minutes=5), -3600.0)])
    agent.background = SimpleNamespace(scheduler=scheduler)
    checks = client.get("/healthz").get_json()["checks"]
    assert {"name": "scheduler", "status": "warn", "company": None, "branch": None,
            "detail": f"the system clock jumped back 3600 s at {(now - timedelta(minutes=5)):%Y-%m-%d %H:%M:%S} UTC; "
                      "check the computer's time settings (NTP)"} in checks


def test_a_clock_jumping_a_day_forward_runs_each_sweep_once_not_once_per_missed_interval(tmp_path, wall):
    sweep, runs, ran = counting_sweep()
    scheduler = Scheduler(tmp_path, {"sweep": (sweep, 300)}, clock=lambda: WallClock.now(UTC),
                          clock_check_every=0.1)
    scheduler.start()
    try:
        assert ran.wait(10)
        ran.clear()
        wall.offset = timedelta(days=1)
        assert ran.wait(10), "the sweep did not run after the clock jumped a day"
        # One run for the 288 intervals skipped, and the next one a full interval later.
        next_run = scheduler._scheduler.get_job("sweep").next_run_time
        assert abs((next_run - runs[-1]).total_seconds() - 300) < 1
        assert len(runs) == 2
    finally:
        scheduler.stop()


# -- the global invoice sweep under a jumping clock ---------------------------------------


@pytest.fixture
def invoicing(agent):
    return global_invoicing(agent)


def sell(client, number, fecha):
    response = put_json(client, f"/{KEY_A}/tickets", ticket_body(number, "50.00", fecha=fecha))
    assert response.status_code == 200, response.get_data(as_text=True)


def sweep_at(agent, invoicing, local_time: str):
    """Both sweeps, as the scheduler runs them, at a wall-clock time in Mexico City."""
    invoicing.clock = Clock(local_time)
    expire_overdue(agent.store, agent.config, invoicing.clock())
    return invoicing.run()


def global_of_each_ticket() -> dict[str, tuple[int, str]]:
    """ticket number -> (its global invoice run, its CFDI); a ticket has room for one."""
    return {t.number: (t.global_invoice, t.cfdi_id) for t in Ticket.select()}


def issued_days() -> list[str]:
    return sorted(str(run.period_first) for run in GlobalInvoice.select())


def test_back_an_hour_after_the_close_issues_the_day_once(client, agent, invoicing):
    sell(client, "D1", "2026-11-20T12:00:00")
    assert len(sweep_at(agent, invoicing, "2026-11-21T00:05:00")) == 1
    # NTP or a person sets the clock back an hour: the day looks open again.
    assert sweep_at(agent, invoicing, "2026-11-20T23:05:00") == []
    assert sweep_at(agent, invoicing, "2026-11-20T23:59:59") == []
    # The clock is right again: nothing left to issue.
    assert sweep_at(agent, invoicing, "2026-11-21T00:10:00") == []
    assert GlobalInvoice.select().count() == 1 and Cfdi.select().count() == 1
    run = GlobalInvoice.get()
    assert global_of_each_ticket() == {"D1": (run.id, run.cfdi)}


def test_a_sale_made_in_the_repeated_hour_goes_into_a_part_of_its_own(client, agent, invoicing):
    sell(client, "E1", "2026-11-20T12:00:00")
    sweep_at(agent, invoicing, "2026-11-21T00:05:00")
    sweep_at(agent, invoicing, "2026-11-20T23:20:00")
    sell(client, "E2", "2026-11-20T23:25:00")  # the POS shares the wrong clock
    runs = sweep_at(agent, invoicing, "2026-11-21T00:10:00")
    assert [(r.part, r.tickets) for r in runs] == [(2, 1)]
    first, second = GlobalInvoice.select().order_by(GlobalInvoice.part)
    assert global_of_each_ticket() == {"E1": (first.id, first.cfdi), "E2": (second.id, second.cfdi)}
    assert first.cfdi != second.cfdi


def test_forward_a_day_issues_every_closed_period_once_and_skips_none(client, agent, invoicing):
    sell(client, "F1", "2026-11-20T12:00:00")
    sell(client, "F2", "2026-11-21T12:00:00")
    sell(client, "F3", "2026-11-22T09:00:00")  # a POS with the right clock
    assert sweep_at(agent, invoicing, "2026-11-20T23:00:00") == []
    # The clock leaps from the 20th, 23:00 to the 23rd, 01:00: three days closed at once.
    runs = sweep_at(agent, invoicing, "2026-11-23T01:00:00")
    assert sorted(str(r.period_first) for r in runs) == ["2026-11-20", "2026-11-21", "2026-11-22"]
    # Back to the right time (the 21st): the closed days are not issued again.
    assert sweep_at(agent, invoicing, "2026-11-21T00:30:00") == []
    assert sweep_at(agent, invoicing, "2026-11-23T00:30:00") == []
    assert issued_days() == ["2026-11-20", "2026-11-21", "2026-11-22"]
    placed = global_of_each_ticket()
    assert len({cfdi for _, cfdi in placed.values()}) == 3 and None not in {cfdi for _, cfdi in placed.values()}
