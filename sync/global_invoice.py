"""The factura global: at each period's close, every expired ticket nobody invoiced goes
into exactly one global CFDI, built, signed, validated, stamped and recorded here.

Two steps, each safe to repeat: `reserve` takes a closed period's tickets and folios in
one transaction (a run per CFDI part), `stamp` turns each reserved run into a recorded
CFDI. A crash between the two, or in the middle of `stamp`, leaves a reserved run that
the next round stamps; a run recorded once is never stamped again. See
docs/global-invoice.md.
"""
from __future__ import annotations

import logging
import uuid as uuidlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable

from lxml import etree

from agent.insumo import parse_insumo
from agent.periods import Period, period_of
from sync import cfdi40
from sync.cfdi40 import GlobalInvoice as CfdiInput
from sync.cfdi40 import GlobalTicket, Issuer
from sync.expiry import expire_overdue
from sync.pdf import render_pdf

log = logging.getLogger(__name__)

CFDI_NS = {"cfdi": "http://www.sat.gob.mx/cfd/4"}


def retry_delay(attempts: int) -> timedelta:
    """1, 2, 4 ... minutes, at most an hour: well inside SAT's 24 hours for a PAC that is
    down for a while, without hammering it."""
    return timedelta(minutes=min(60, 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class Preview:
    """What a run would issue, for --dry-run: nothing is reserved, signed or stamped."""

    period: Period
    part: int
    totals: cfdi40.Totals
    xml: bytes


class GlobalInvoicing:
    def __init__(self, config, runs, upstream, csd_for: Callable, *, clock: Callable[[], datetime] | None = None,
                 cloud=None, client_for: Callable[[str], object | None] = lambda key: None):  # fmt: skip
        self.config = config
        self.runs = runs  # agent.global_runs.GlobalRuns
        self.upstream = upstream
        self.csd_for = csd_for  # company config -> sync.csd.Csd
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        # Companies on Facturapi: their runs are issued there from the receipts.
        self.cloud = cloud  # sync.cloud_global.CloudGlobal
        self.client_for = client_for  # company key -> FacturapiClient, or None

    # -- the scheduled round -------------------------------------------------------------

    def run(self) -> list:
        """Expire what is overdue, reserve every closed period that has tickets waiting,
        then stamp every run due.

        Expiring first: the expiry sweep runs beside this one (both at start-up, and
        together every fifth minute), and a ticket it expires a moment after this round
        looked would otherwise wait for the next round, five minutes on."""
        now = self.clock()
        expire_overdue(self.runs.store, self.config, now)
        for company in self.config.companies:
            for branch in company.branches:
                for period in self.closed_periods(company, branch, now):
                    self.reserve(company, branch, period)
        return self.stamp_due()

    def closed_periods(self, company, branch, now: datetime) -> list[Period]:
        """Periods of the branch's expired, uninvoiced tickets that are over locally."""
        days = self.runs.waiting_days(company.key, branch.id)
        periods = {period_of(day, company.periodicity) for day in days}
        return sorted(p for p in periods if now >= p.closes_at(branch.zone))

    # -- one period ---------------------------------------------------------------------

    def reserve(self, company, branch, period: Period) -> list:
        tickets = self.runs.candidates(company.key, branch.id, period.first, period.last)
        if not tickets:
            return []
        global_tickets = [GlobalTicket(t.number, parse_insumo(t.insumo)) for t in tickets]
        ids = {t.number: t.id for t in tickets}
        parts = [[ids[t.number] for t in part] for part in cfdi40.split(global_tickets)]
        runs = self.runs.reserve(
            company.key, branch.id, company.periodicity, period.first, period.last, branch.global_series, parts
        )
        for run in runs:
            log.info("global invoice %s-%s reserved: %s, branch %s, %d tickets", run.series, run.folio, period,
                     branch.id, run.tickets)
        return runs

    def preview(self, company, branch, period: Period) -> list[Preview]:
        tickets = self.runs.candidates(company.key, branch.id, period.first, period.last)
        global_tickets = [GlobalTicket(t.number, parse_insumo(t.insumo)) for t in tickets]
        previews = []
        for part, chunk in enumerate(cfdi40.split(global_tickets) if global_tickets else [], start=1):
            data = self._cfdi_input(company, branch, period, "(dry-run)", chunk)
            previews.append(Preview(period, part, cfdi40.totals(data), cfdi40.build_xml(data)))
        return previews

    # -- stamping -----------------------------------------------------------------------

    def stamp_due(self) -> list:
        results = []
        for run in self.runs.to_stamp(_naive_utc(self.clock())):
            results.append(self.stamp(run))
        return results

    def stamp(self, run):
        """Build, sign, validate, stamp and record one run; on failure the run waits for
        its retry, its tickets stay reserved for it."""
        company = self.config.company(run.company)
        branch = company.branch(run.branch) if company else None
        client = self.client_for(run.company) if self.cloud is not None else None
        if client is not None:
            try:
                return self.cloud.issue(run, client, _naive_utc(self.clock()))
            except Exception as exc:  # noqa: BLE001 - any failure: keep the run, retry later
                return self._failed(run, exc)
        try:
            if branch is None:
                raise ValueError(f"branch {run.branch} of company {run.company} is no longer configured")
            period = Period(run.periodicity, run.period_first, run.period_last)
            tickets = [GlobalTicket(t.number, parse_insumo(t.insumo)) for t in self.runs.tickets_of(run.id)]
            data = self._cfdi_input(company, branch, period, str(run.folio), tickets, series=run.series)
            xml = cfdi40.build_xml(data, self.csd_for(company))
            cfdi40.validate(xml)
            stamped = self.upstream.stamp(xml, key=f"{run.company}-global-{run.id}")
            pdf = render_pdf(stamped.xml)
            totals = cfdi40.totals(data)
            record = _new_cfdi(run, data, totals, stamped)
            done = self.runs.record(run.id, record, xml=stamped.xml, pdf=pdf)
        except Exception as exc:  # noqa: BLE001 - any failure: keep the run, retry later
            return self._failed(run, exc)
        if isinstance(done, Exception):
            return done
        log.info("global invoice %s-%s stamped: UUID %s, %d tickets, total %s", run.series, run.folio, stamped.uuid,
                 run.tickets, totals.total)
        return done

    def _failed(self, run, exc: Exception) -> Exception:
        attempts = run.attempts + 1
        wait = retry_delay(attempts)
        if getattr(exc, "retry_after", None) is not None:  # the upstream said how long (429)
            wait = timedelta(seconds=exc.retry_after)
        retry_at = _naive_utc(self.clock()) + wait
        log.error("global invoice %s-%s failed (try %d, next at %s UTC): %s", run.series, run.folio, attempts,
                  f"{retry_at:%Y-%m-%d %H:%M}", exc)
        self.runs.failed(run.id, str(exc), retry_at)
        return exc

    def _cfdi_input(self, company, branch, period: Period, folio: str, tickets, *, series: str | None = None):
        issued_at = self.clock().astimezone(branch.zone).replace(tzinfo=None, microsecond=0)
        return CfdiInput(
            issuer=Issuer(company.rfc, company.legal_name, company.tax_regime),
            series=series or branch.global_series,
            folio=folio,
            issued_at=issued_at,
            postal_code=branch.postal_code,
            periodicity=period.periodicity,
            months=cfdi40.months_code(period.periodicity, period.first),
            year=period.first.year,
            tickets=tickets,
        )


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def _new_cfdi(run, data: CfdiInput, totals, stamped):
    from agent.store import NewCfdi

    return NewCfdi(
        id=uuidlib.uuid4().hex,
        company=run.company,
        branch=run.branch,
        kind="global",
        uuid=stamped.uuid,
        issued_at=data.issued_at,
        receiver_rfc="XAXX010101000",
        receiver_name="PUBLICO EN GENERAL",
        subtotal=totals.subtotal,
        discount=totals.discount,
        total=totals.total,
        iva=summary_iva(stamped.xml),
        serie=run.series,
        folio=str(run.folio),
        production=stamped.production,
    )


def summary_iva(xml: bytes) -> Decimal:
    """IVA of the CFDI: its summary Traslados of Impuesto 002."""
    root = etree.fromstring(xml)
    amounts = root.xpath("cfdi:Impuestos/cfdi:Traslados/cfdi:Traslado[@Impuesto='002']/@Importe", namespaces=CFDI_NS)
    return sum((Decimal(a) for a in amounts), Decimal(0))

