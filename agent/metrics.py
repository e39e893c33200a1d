"""Prometheus metrics, written by hand in the text exposition format 0.0.4.

Two kinds of numbers: request durations, counted in this process as requests are answered
(`RequestMetrics`), and gauges read from the database when /metrics is asked (grouped
counts, a handful of cheap queries). The exposition format is a few lines of text; a
client library would add a dependency and a global registry for no saving here.

Nothing secret goes out: companies are labelled by RFC, branches by id, routes by their
pattern (`/<key>/tickets`, never the key itself).
"""
from __future__ import annotations

import math
import shutil
import threading
import time
from calendar import timegm
from datetime import datetime
from typing import Iterable

from peewee import fn

from agent.models import (
    EXPIRED,
    JOB_FAILED,
    JOB_PENDING,
    JOB_PRINTED,
    JOB_PRINTING,
    RUN_STAMPED,
    STORED,
    GlobalInvoice,
    PrintJob,
    Ticket,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. A ticket is answered in tens of milliseconds; the upper buckets catch a
# database waiting on a slow disk and the GET /cfdis or cancel calls that reach Facturapi.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Requests that matched no route share one label: a scanner probing random paths must
# not grow the metrics without bound.
UNMATCHED = "<unmatched>"


class RequestMetrics:
    """A histogram of request durations by route pattern, method and status class."""

    def __init__(self, buckets: Iterable[float] = BUCKETS):
        self.buckets = tuple(sorted(buckets))
        self.started = time.time()
        self._lock = threading.Lock()
        # (route, method, status class) -> [count per bucket (not cumulative)..., +Inf], sum
        self._series: dict[tuple[str, str, str], tuple[list[int], list[float]]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, f"{status // 100}xx")
        slot = next((i for i, bound in enumerate(self.buckets) if seconds <= bound), len(self.buckets))
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = ([0] * (len(self.buckets) + 1), [0.0])
            counts, total = series
            counts[slot] += 1
            total[0] += seconds

    def snapshot(self) -> dict[tuple[str, str, str], tuple[list[int], float]]:
        with self._lock:
            return {key: (list(counts), total[0]) for key, (counts, total) in self._series.items()}


class _Text:
    """Builds the exposition: every family gets its HELP and TYPE lines, then its samples."""

    def __init__(self):
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        shown = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{shown}}} {_number(value)}" if shown else f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(agent, requests: RequestMetrics | None, version: str) -> str:
    out = _Text()
    out.family("ticket_agent_info", "gauge", "The agent's version; always 1.")
    out.sample("ticket_agent_info", 1, version=version)
    if requests is not None:
        out.family("ticket_agent_start_time_seconds", "gauge", "When this agent process started (Unix time).")
        out.sample("ticket_agent_start_time_seconds", round(requests.started, 3))
        _requests(out, requests)
    try:
        free = shutil.disk_usage(agent.data_dir).free
    except OSError:
        free = None
    if free is not None:
        out.family("ticket_agent_data_dir_free_bytes", "gauge", "Free space on the data directory's disk.")
        out.sample("ticket_agent_data_dir_free_bytes", free)
    try:
        stored = _database(agent)
    except Exception:  # noqa: BLE001 - the metrics still answer, and say the database does not
        stored = None
    out.family("ticket_agent_database_up", "gauge", "1 when the database answered the metrics' queries.")
    out.sample("ticket_agent_database_up", 0 if stored is None else 1)
    if stored is not None:
        out.lines.extend(stored.lines)
    return out.text()


def _requests(out: _Text, requests: RequestMetrics) -> None:
    name = "ticket_agent_request_duration_seconds"
    out.family(name, "histogram", "Time to answer an HTTP request (until the response is ready; for the streamed "
                                  "GET /cfdis, until it starts), by route pattern, method and status class.")
    for (route, method, status), (counts, total) in sorted(requests.snapshot().items()):
        labels = {"route": route, "method": method, "status": status}
        cumulative = 0
        for bound, count in zip((*requests.buckets, math.inf), counts, strict=True):
            cumulative += count
            out.sample(f"{name}_bucket", cumulative, **labels, le="+Inf" if bound == math.inf else _number(bound))
        out.sample(f"{name}_sum", round(total, 6), **labels)
        out.sample(f"{name}_count", cumulative, **labels)


def _database(agent) -> _Text:
    """The gauges read from the store, into their own buffer: all or nothing."""
    out = _Text()
    config = agent.config
    rfc = {company.key: company.rfc for company in config.companies}

    # Rows are never deleted and ids are never reused, so the highest id is the number of
    # tickets ever stored in this file: a counter, read from the primary key's end.
    out.family("ticket_agent_tickets_stored_total", "counter",
               "Tickets stored in this database since it was created (a replaced ticket counts once).")
    out.sample("ticket_agent_tickets_stored_total", Ticket.select(fn.MAX(Ticket.id)).scalar() or 0)

    # Only the open tickets, per branch: stored ones whose self-invoicing window is open and
    # expired ones waiting for their global invoice. Counting the finished ones (invoiced,
    # in a global CFDI) per branch would scan the whole history at every scrape; the ids
    # of the open ones come from the (company, status) index, so this costs what is open.
    out.family("ticket_agent_tickets", "gauge", "Open tickets by company, branch and status: ALMACENADO "
               "(self-invoicing window open) and EXPIRADO (waiting for the global invoice).")
    open_ids = Ticket.select(Ticket.id).where(Ticket.company.in_(list(rfc)) & Ticket.status.in_([STORED, EXPIRED]))
    counts = dict(
        (((company, branch, status), count) for company, branch, status, count in
         Ticket.select(Ticket.company, Ticket.branch, Ticket.status, fn.COUNT(Ticket.id))
         .where(Ticket.id.in_(open_ids))
         .group_by(Ticket.company, Ticket.branch, Ticket.status)
         .tuples())
    )  # fmt: skip
    for company in config.companies:
        for branch in company.branches:
            for status in (STORED, EXPIRED):  # zeros too, so an alert sees the series
                out.sample("ticket_agent_tickets", counts.get((company.key, branch.id, status), 0),
                           company_rfc=company.rfc, branch=branch.id, status=status)

    out.family("ticket_agent_print_jobs", "gauge", "Slips in the print queue by state.")
    states = dict.fromkeys((JOB_PENDING, JOB_PRINTING, JOB_PRINTED, JOB_FAILED), 0)
    states.update(PrintJob.select(PrintJob.state, fn.COUNT(PrintJob.id)).group_by(PrintJob.state).tuples())
    for state, count in states.items():
        out.sample("ticket_agent_print_jobs", count, state=state)

    facturapi = [company for company in config.companies if agent.uses_facturapi(company.key)]
    if facturapi:
        out.family("ticket_agent_sync_backlog", "gauge",
                   "Tickets not yet in Facturapi: unsent, retrying after an error, stopped (a person must look).")
        for company in facturapi:
            for b in agent.receipts.backlog(company.key, [branch.id for branch in company.branches]):
                for kind, count in (("unsent", b.unsent), ("retrying", b.retrying), ("stopped", b.stopped)):
                    out.sample("ticket_agent_sync_backlog", count, company_rfc=company.rfc, branch=b.branch, kind=kind)

    last = (
        GlobalInvoice.select(GlobalInvoice.company, GlobalInvoice.branch, fn.MAX(GlobalInvoice.updated_at))
        .where(GlobalInvoice.state == RUN_STAMPED)
        .group_by(GlobalInvoice.company, GlobalInvoice.branch)
        .tuples()
    )
    out.family("ticket_agent_last_global_invoice_timestamp_seconds", "gauge",
               "When the branch's last global invoice was stamped (Unix time); absent before the first.")
    for company, branch, moment in sorted(last):
        out.sample("ticket_agent_last_global_invoice_timestamp_seconds", _unix(moment),
                   company_rfc=rfc.get(company, "unconfigured"), branch=branch)
    return out


def _unix(moment) -> float:
    if isinstance(moment, str):  # SQLite hands MAX() of a DATETIME column back as text
        moment = datetime.fromisoformat(moment)
    return float(timegm(moment.utctimetuple()))


def _number(value: float) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value)) if value != 0 else "0"
        return repr(value)
    return str(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


