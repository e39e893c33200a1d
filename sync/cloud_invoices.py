"""Down: what customers invoiced in Facturapi, brought into the store.

No webhook reaches a store, so the agent polls: the receipts of the period by date
(newest first, as many pages as the API serves), then, one by one, the open ones that
list did not reach, least recently checked first. For each receipt a customer invoiced,
the invoice is fetched with its XML and PDF and recorded as the ticket's CFDI, so
GET /cfdis and the downloads answer from the store even offline. See docs/sync.md.
"""
from __future__ import annotations

import logging
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable

from lxml import etree

from agent.models import CUSTOMER_CFDI, Receipt
from agent.receipts import Receipts
from agent.store import NewCfdi, Store, TicketConflict
from sync.facturapi import FacturapiClient, FacturapiError, parse_time

log = logging.getLogger(__name__)

CFDI_NS = {"cfdi": "http://www.sat.gob.mx/cfd/4", "tfd": "http://www.sat.gob.mx/TimbreFiscalDigital"}
INVOICED_TO_CUSTOMER = "invoiced_to_customer"
BY_ID_PER_ROUND = 200  # receipts asked for one by one per round, beyond the listed pages


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class PollResult:
    checked: int = 0
    invoiced: int = 0
    errors: list[str] = field(default_factory=list)


class CloudInvoices:
    def __init__(self, config, receipts: Receipts, store: Store, clients: dict[str, FacturapiClient], *,
                 clock: Callable[[], datetime] = utcnow):  # fmt: skip
        self.config = config
        self.receipts = receipts
        self.store = store
        self.clients = clients
        self.clock = clock

    def run_once(self) -> PollResult:
        result = PollResult()
        for company_key in self.clients:
            try:
                self.poll(company_key, result)
            except FacturapiError as exc:
                result.errors.append(f"{company_key[:8]}: {exc}")
                log.warning("polling Facturapi for company %s...: %s", company_key[:8], exc)
                for branch in self.config.company(company_key).branches:
                    self.receipts.note(company_key, branch.id, error=f"poll: {exc}", at=self.clock())
        return result

    def poll(self, company_key: str, result: PollResult) -> None:
        client = self.clients[company_key]
        company = self.config.company(company_key)
        watched = {r.upstream_id: r for r in self.receipts.to_watch(company_key) if r.upstream_id}
        now = self.clock()
        if watched:
            oldest = min(r.ticket.sold_at.replace(tzinfo=company.branch(r.branch).zone) for r in watched.values())
            found: dict[str, dict] = {}
            for receipt in client.receipts_between(oldest - timedelta(days=1), now.replace(tzinfo=timezone.utc)):
                if receipt.get("id") in watched:
                    found[receipt["id"]] = receipt
            missing = sorted((r for rid, r in watched.items() if rid not in found),
                             key=lambda r: r.checked_at or datetime.min)  # fmt: skip
            for receipt in missing[:BY_ID_PER_ROUND]:
                found[receipt.upstream_id] = client.receipt(receipt.upstream_id)
            self.receipts.seen_many(
                (watched[rid].ticket_id, answer.get("status") or "", answer.get("invoice"), now)
                for rid, answer in found.items()
            )
            result.checked += len(found)
            for rid, answer in found.items():
                if answer.get("status") == INVOICED_TO_CUSTOMER and answer.get("invoice"):
                    if self.record(company_key, watched[rid], answer["invoice"]):
                        result.invoiced += 1
        for branch in company.branches:
            self.receipts.note(company_key, branch.id, polled=now)

    def record(self, company_key: str, receipt: Receipt, invoice_id: str) -> bool:
        """Keep a customer's invoice of one receipt as its ticket's CFDI. False while the
        invoice is not stamped yet (a later poll takes it) or when the store refuses it."""
        client = self.clients[company_key]
        invoice = client.invoice(invoice_id)
        if invoice.get("status") != "valid":
            return False
        xml, pdf = client.download(invoice_id, "xml"), client.download(invoice_id, "pdf")
        cfdi = cfdi_from(invoice, xml, company_key=company_key, branch=receipt.branch, kind=CUSTOMER_CFDI)
        # A customer invoice made in the cloud before the period's global invoice wins: the
        # ticket leaves the global run it was waiting in (docs/sync.md).
        self.receipts.release_from_run([receipt.ticket_id])
        try:
            self.store.record_cfdi(cfdi, [receipt.ticket_id], xml=xml, pdf=pdf)
        except TicketConflict as exc:
            error = f"Facturapi invoice {invoice_id} of ticket {exc.number} not recorded: it already has CFDI {exc.cfdi_uuid}"
            log.error(error)
            self.receipts.note(company_key, receipt.branch, error=error, at=self.clock())
            return False
        log.info("ticket %s/%s invoiced by a customer in Facturapi: UUID %s", receipt.branch,
                 receipt.ticket.number if receipt.ticket_id else "?", cfdi.uuid)  # fmt: skip
        return True


def cfdi_from(invoice: dict, xml: bytes, *, company_key: str, branch: str, kind: str) -> NewCfdi:
    """A store CFDI from a Facturapi invoice and its stamped XML: amounts as the XML states
    them, since that document is what SAT has."""
    root = etree.fromstring(xml)
    receiver = root.find("cfdi:Receptor", CFDI_NS)
    stamp = root.find("cfdi:Complemento/tfd:TimbreFiscalDigital", CFDI_NS)
    iva = sum(
        (Decimal(a) for a in root.xpath("cfdi:Impuestos/cfdi:Traslados/cfdi:Traslado[@Impuesto='002']/@Importe",
                                        namespaces=CFDI_NS)),
        Decimal(0),
    )  # fmt: skip
    uuid = (stamp.get("UUID") if stamp is not None else None) or invoice.get("uuid") or ""
    customer = invoice.get("customer") or {}
    return NewCfdi(
        id=uuidlib.uuid4().hex,
        company=company_key,
        branch=branch,
        kind=kind,
        uuid=uuid.upper(),
        issued_at=datetime.fromisoformat(root.get("Fecha")) if root.get("Fecha") else parse_time(invoice.get("date")),
        receiver_rfc=(receiver.get("Rfc") if receiver is not None else None) or customer.get("tax_id", ""),
        receiver_name=(receiver.get("Nombre") if receiver is not None else None) or customer.get("legal_name", ""),
        subtotal=Decimal(root.get("SubTotal", "0")),
        discount=Decimal(root.get("Descuento", "0")),
        total=Decimal(root.get("Total", "0")),
        iva=iva,
        serie=root.get("Serie") or str(invoice.get("series") or ""),
        folio=root.get("Folio") or str(invoice.get("folio_number") or ""),
        production=bool(invoice.get("livemode")),
        upstream_id=invoice.get("id"),
    )

