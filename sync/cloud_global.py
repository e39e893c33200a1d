"""A reserved global run issued by Facturapi from its tickets' receipts.

The agent decides which tickets are due (agent/global_runs.py reserves them, the same
rules as the sandbox); Facturapi builds and stamps the CFDI from the receipts listed in
POST /v2/receipts/global-invoice. That call has no idempotency key, so the agent never
sends a run twice blindly: a run that was sent before without a clear answer is first
looked up through its receipts, and a pending (202) invoice is polled, never re-sent.
See docs/sync.md.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from agent.global_runs import GlobalRuns
from agent.models import GLOBAL_CFDI, PUSH_SYNCED
from agent.receipts import Receipts
from sync import cfdi40
from sync.cloud_invoices import INVOICED_TO_CUSTOMER, CloudInvoices, cfdi_from
from sync.facturapi import FacturapiClient, Rejected

log = logging.getLogger(__name__)

PENDING_POLL = timedelta(minutes=2)
INVOICED_GLOBALLY = "invoiced_globally"


class RunNotReady(RuntimeError):
    """The run cannot be sent yet; the message says why, for status and the log."""


class CloudGlobal:
    def __init__(self, runs: GlobalRuns, receipts: Receipts, invoices: CloudInvoices):
        self.runs = runs
        self.receipts = receipts
        self.invoices = invoices

    def issue(self, run, client: FacturapiClient, now: datetime):
        """One step for the run: record it, leave it waiting, or raise to retry later.
        `now` (naive UTC) is the global invoicing's clock, which times the retries."""
        if run.upstream_id:
            return self._settle(run, client, client.invoice(run.upstream_id), now)
        tickets = self.runs.tickets_of(run.id)
        by_ticket = self.receipts.of_tickets([t.id for t in tickets])
        unsent = [t.number for t in tickets if getattr(by_ticket.get(t.id), "state", None) != PUSH_SYNCED]
        if unsent:
            raise RunNotReady(f"{len(unsent)} of its tickets are not in Facturapi yet (first: {unsent[0]}); "
                              "it goes out once they are")  # fmt: skip
        receipt_ids = [by_ticket[t.id].upstream_id for t in tickets]
        # An earlier try (before a lost answer, or a crash) may have made the invoice: one
        # GET per run settles that before anything is sent.
        earlier = self._invoice_holding(client, receipt_ids[0])
        if earlier:
            log.info("global run %s-%s: found invoice %s made by an earlier try", run.series, run.folio, earlier)
            return self._settle(run, client, client.invoice(earlier), now)
        for _ in range(3):
            try:
                answer = client.global_invoice(self._body(run, receipt_ids))
            except Rejected as exc:
                if exc.code != "receipt_not_open":
                    raise
                answer = None
            if answer is not None and answer.body:
                return self._settle(run, client, answer.body, now)
            # Some receipts are no longer open (a customer invoiced them in the cloud) or
            # none is: find out which, keep their invoices, send the rest.
            receipt_ids = self._reconcile(run, client)
            if not receipt_ids:  # every ticket was invoiced by a customer: the run is VOID
                log.info("global run %s-%s: every ticket was invoiced by a customer first", run.series, run.folio)
                return None
        raise RunNotReady("Facturapi keeps refusing the receipts of this run as not open")

    # -- steps ---------------------------------------------------------------------------

    def _body(self, run, receipt_ids: list[str]) -> dict:
        return {
            "periodicity": run.periodicity,
            "from": run.period_first.isoformat(),
            "to": run.period_last.isoformat(),
            "months": cfdi40.months_code(run.periodicity, run.period_first),
            "series": run.series,
            "folio_number": run.folio,
            "receipts": receipt_ids,
        }

    def _invoice_holding(self, client: FacturapiClient, receipt_id: str) -> str | None:
        receipt = client.receipt(receipt_id)
        if receipt.get("status") == INVOICED_GLOBALLY and receipt.get("invoice"):
            return receipt["invoice"]
        return None

    def _settle(self, run, client: FacturapiClient, invoice: dict, now: datetime):
        status = invoice.get("status")
        if status == "valid":
            return self._record(run, client, invoice)
        if status == "pending":
            retry_at = now + PENDING_POLL
            self.runs.waiting(run.id, invoice["id"], retry_at, "Facturapi is still stamping it (pending)")
            log.info("global run %s-%s: invoice %s pending at Facturapi, polled again at %s UTC", run.series,
                     run.folio, invoice["id"], f"{retry_at:%H:%M}")  # fmt: skip
            return None
        # failed or canceled there: forget it; the next try starts from the receipts again
        self.runs.waiting(run.id, None, now + PENDING_POLL, f"Facturapi invoice {invoice.get('id')} {status}")
        raise RunNotReady(f"Facturapi's invoice {invoice.get('id')} for this run is {status}")

    def _record(self, run, client: FacturapiClient, invoice: dict):
        xml, pdf = client.download(invoice["id"], "xml"), client.download(invoice["id"], "pdf")
        cfdi = cfdi_from(invoice, xml, company_key=run.company, branch=run.branch, kind=GLOBAL_CFDI)
        done = self.runs.record(run.id, cfdi, xml=xml, pdf=pdf)
        if not isinstance(done, Exception):
            log.info("global invoice %s-%s issued by Facturapi: UUID %s, %d tickets, total %s", run.series, run.folio,
                     cfdi.uuid, run.tickets, cfdi.total)  # fmt: skip
        return done

    def _reconcile(self, run, client: FacturapiClient) -> list[str]:
        """Ask for each receipt of the run; record customer invoices and take those tickets
        out; return the receipt ids still open. A receipt in another global invoice, or
        cancelled, stops the run for a person to look at."""
        tickets = self.runs.tickets_of(run.id)
        by_ticket = self.receipts.of_tickets([t.id for t in tickets])
        still_open = []
        for ticket in tickets:
            row = by_ticket[ticket.id]
            answer = client.receipt(row.upstream_id)
            status = answer.get("status")
            if status == "open":
                still_open.append(row.upstream_id)
            elif status == INVOICED_TO_CUSTOMER and answer.get("invoice"):
                if not self.invoices.record(run.company, row, answer["invoice"]):
                    raise RunNotReady(f"ticket {ticket.number} was invoiced by a customer in Facturapi; "
                                      "its invoice is not stamped yet")  # fmt: skip
            else:
                raise RunNotReady(f"ticket {ticket.number}: its receipt {row.upstream_id} is {status} in Facturapi "
                                  f"(invoice {answer.get('invoice')}); the run needs a person")  # fmt: skip
        return still_open

