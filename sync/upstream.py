"""The upstream invoicing service, seen through one small interface.

The agent asks the upstream to stamp and cancel CFDIs; which service does it (the local
sandbox or Facturapi) is one config line. Nothing here knows about HTTP requests coming
from the POS.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

CANCELLED = "canceled"
CANCEL_PENDING = "pending"

MOTIVES = {
    "01": "Comprobante emitido con errores con relación",
    "02": "Comprobante emitido con errores sin relación",
    "03": "No se llevó a cabo la operación",
    "04": "Operación nominativa relacionada en una factura global",
}


class UpstreamError(RuntimeError):
    """The upstream refused or could not be reached; nothing changed locally."""


@dataclass(frozen=True)
class CancelResult:
    status: str  # CANCELLED, or CANCEL_PENDING while the receiver must accept
    at: datetime  # naive UTC


class Upstream(Protocol):
    kind: str

    def stamp(self, xml: bytes, *, key: str):
        """Stamp a signed CFDI; `key` is stable per CFDI so a retry never stamps twice.
        Returns a sync.sandbox.Stamp (uuid, stamped_at, xml, production)."""
        ...

    def cancel(
        self, uuid: str, motive: str, substitute: str | None = None, *, production: bool, upstream_id: str | None = None
    ) -> CancelResult:
        """`upstream_id`: the CFDI's id at the upstream that issued it, when it has one."""
        ...


class SandboxUpstream:
    """Runs the whole flow with no network. It never claims anything is real: it refuses
    to touch a production CFDI, since only the PAC that stamped one can cancel it."""

    kind = "sandbox"

    def stamp(self, xml: bytes, *, key: str):
        # A local TimbreFiscalDigital marked as a test; stamping again makes a new test
        # UUID, harmless because only a recorded stamp counts.
        from sync.sandbox import stamp_sandbox

        return stamp_sandbox(xml)

    def cancel(
        self, uuid: str, motive: str, substitute: str | None = None, *, production: bool, upstream_id: str | None = None
    ) -> CancelResult:
        if motive not in MOTIVES:
            raise UpstreamError(f"motivo {motive} no existe")
        if production:
            raise UpstreamError("el modo sandbox no puede cancelar un CFDI de producción ante el SAT")
        return CancelResult(CANCELLED, datetime.now(timezone.utc).replace(tzinfo=None))


class FacturapiUpstream:
    """A company's Facturapi organization. Its global CFDIs are built by Facturapi from
    the receipts (sync/cloud_global.py), so it stamps nothing the agent signed."""

    kind = "facturapi"

    def __init__(self, client):
        self.client = client  # sync.facturapi.FacturapiClient

    def stamp(self, xml: bytes, *, key: str):
        raise UpstreamError("Facturapi issues global invoices from receipts, not from a CFDI the agent signed")

    def cancel(
        self, uuid: str, motive: str, substitute: str | None = None, *, production: bool, upstream_id: str | None = None
    ) -> CancelResult:
        from sync.facturapi import FacturapiError, parse_time

        if not upstream_id:
            raise UpstreamError(f"el CFDI {uuid} no se emitió en Facturapi; no se puede cancelar ahí")
        try:
            invoice = self.client.cancel_invoice(upstream_id, motive, substitute)
        except FacturapiError as exc:
            raise UpstreamError(str(exc)) from None
        if invoice.get("status") == "canceled":
            at = parse_time(invoice.get("canceled_at")) or datetime.now(timezone.utc).replace(tzinfo=None)
            return CancelResult(CANCELLED, at)
        # The receiver must accept (SAT's rule above a certain amount): the agent records
        # the cancellation when a later poll sees it.
        return CancelResult(CANCEL_PENDING, datetime.now(timezone.utc).replace(tzinfo=None))


def make_upstream(kind: str) -> Upstream:
    if kind == "sandbox":
        return SandboxUpstream()
    raise ValueError(f"unknown upstream kind {kind!r}")
