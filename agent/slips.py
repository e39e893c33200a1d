"""What a ticket's slip says and where it prints, from the configuration and the ticket.

The print worker and the HTTP pull routes both build slips here, so a reprint, a pulled
PNG and the printed slip always agree.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from agent.config import BranchConfig, CompanyConfig, Config
from agent.periods import self_invoice_deadline
from agent.portal import portal_url
from printer.connections import parse_printer
from printer.slip import Layout, Slip, render_escpos, render_png
from printer.worker import RenderedJob


def layout_of(branch: BranchConfig) -> Layout:
    return Layout(
        paper_mm=branch.paper_mm,
        native_qr=branch.native_qr,
        qr_size=branch.qr_size,
        qr_error_correction=branch.qr_error_correction,
    )


def slip_for(
    company: CompanyConfig, branch: BranchConfig, number: str, sold_at: datetime, total: Decimal, link: str | None = None
) -> Slip:
    """`link`: the upstream's own self-invoice URL for the ticket, which wins over the
    company's portal_url template."""
    return Slip(
        company_name=company.legal_name,
        branch_name=branch.name,
        ticket_number=number,
        sold_at=sold_at,
        total=total,
        deadline=self_invoice_deadline(sold_at, company.periodicity, company.self_invoice_days),
        url=link or portal_url(company, branch.id, number, total, sold_at),
    )


def printer_of(branch: BranchConfig, name: str) -> str:
    """The connection string of a job's printer; ValueError if the name left the config."""
    if not name:
        return branch.printer
    if name not in branch.printers:
        raise ValueError(f"printer {name!r} is no longer configured for branch {branch.id}")
    return branch.printers[name]


def render_job(config: Config, job) -> RenderedJob | None:
    """The bytes of a claimed print job, or None when its printer is "none"."""
    company = config.company(job.company)
    branch = company.branch(job.branch) if company else None
    if branch is None:
        raise ValueError(f"branch {job.branch} of company {job.company} is no longer configured")
    spec = printer_of(branch, job.printer)
    if spec == "none":
        return None
    slip = slip_for(company, branch, job.number, job.sold_at, job.total, job.link)
    layout = layout_of(branch)
    preview = render_png(slip, layout) if parse_printer(spec).kind == "folder" else None
    return RenderedJob(spec, render_escpos(slip, layout), preview, f"{job.branch}_{job.number}_{job.id}")
