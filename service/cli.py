"""The `ticket-agent` command."""
from __future__ import annotations

import os
import sys
from datetime import UTC
from pathlib import Path

import click

from agent import passwords
from agent.config import (
    DEFAULT_CONFIG_ENV,
    ConfigError,
    load_config,
    starter_config_text,
)
from service import __version__

CONFIG_HELP = f"TOML configuration file (default: ${DEFAULT_CONFIG_ENV}, else the embedded demo defaults)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="ticket-agent")
def cli():
    """pos-ticket-agent: keeps a store's POS tickets, prints their self-invoice QR and
    issues the factura global. See docs/cli.md."""


def _load(config_path: str | None):
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"Configuration error: {exc}", err=True)
        sys.exit(2)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Log verbosity (logs go to standard error and data_dir/logs/ticket-agent.log).")
def serve(config_path, log_level):
    """Start the agent and serve the POS contract until stopped (Ctrl-C or SIGTERM)."""
    from service.runner import (
        CannotListen,
        CannotOpenStore,
        CannotSign,
        CannotSync,
        setup_logging,
    )
    from agent.config import mask_password
    from service.runner import serve as run_server

    config = _load(config_path)
    setup_logging(log_level.upper())
    try:
        run_server(config)
    except CannotListen as exc:  # port taken, address not on this machine
        click.echo(f"Cannot listen on {config.server.listen}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except CannotOpenStore as exc:
        where = (f"the database at {config.database.shown}" if config.database.is_postgresql
                 else f"the data directory {config.data_dir_path}")  # fmt: skip
        click.echo(f"Cannot open {where}: {mask_password(str(exc.strerror or exc))}", err=True)
        sys.exit(1)
    except CannotSign as exc:
        click.echo(f"Cannot use a CSD: {exc}", err=True)
        sys.exit(2)
    except CannotSync as exc:
        click.echo(f"Cannot use Facturapi: {exc}", err=True)
        sys.exit(2)


@cli.command()
@click.argument("path", default="ticket-agent.toml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def init(path, force):
    """Write a commented starter configuration with random credentials to PATH
    (default: ticket-agent.toml)."""
    target = Path(path)
    if target.exists() and not force:
        click.echo(f"{target} already exists; use --force to overwrite it.", err=True)
        sys.exit(1)
    if not target.parent.is_dir():
        click.echo(f"Folder {target.parent} does not exist; create it first.", err=True)
        sys.exit(1)
    # The file holds the POS credentials: it is created private, never readable first.
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(starter_config_text())
    click.echo(f"Wrote {target}. Edit the company and branch data, then run:")
    click.echo(f"  ticket-agent serve --config {target}")


@cli.command("hash-password")
@click.option("--stdin", "from_stdin", is_flag=True,
              help="Read the password from the first line of standard input instead of asking.")
def hash_password(from_stdin):
    """Print a password_hash for the configuration, so the file need not hold the POS
    password itself."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("POS password", hide_input=True, confirmation_prompt=True)
    if not password:
        click.echo("The password is empty; nothing to hash.", err=True)
        sys.exit(2)
    click.echo(f'password_hash = "{passwords.make(password)}"')


@cli.command("print-test")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--company", "company_key", help="Company key (default: the first company).")
@click.option("--branch", "branch_id", help="Branch id (default: the company's first branch).")
@click.option("--printer", "printer_name", default="", help="A name from the branch's printers "
              "(default: the branch's own printer).")
@click.option("--preview", type=click.Path(dir_okay=False), help="Also write the slip as a PNG image here.")
def print_test(config_path, company_key, branch_id, printer_name, preview):
    """Print a sample slip on a branch's printer and say whether the printer answered."""
    from datetime import datetime
    from decimal import Decimal

    from agent.slips import layout_of, printer_of, slip_for
    from printer.connections import PrinterError, parse_printer, send, status
    from printer.slip import render_escpos, render_png

    config = _load(config_path)
    company, branch = _company_and_branch(config, company_key, branch_id)
    try:
        spec = printer_of(branch, printer_name)
    except ValueError:
        _fail(f"Branch {branch.id} has no printer named {printer_name} (printers: "
              f"{', '.join(branch.printers) or 'none configured'}).", 2)
    slip = slip_for(company, branch, "PRUEBA-0001", datetime.now(branch.zone).replace(tzinfo=None, microsecond=0),
                    Decimal("123.45"))
    if preview:
        Path(preview).write_bytes(render_png(slip, layout_of(branch)))
        click.echo(f"Preview written to {preview}")
    if spec == "none":
        click.echo(f"Branch {branch.id} does not print (printer = \"none\").")
        return
    target = parse_printer(spec)
    try:
        send(target, render_escpos(slip, layout_of(branch)), name="print-test",
             preview=render_png(slip, layout_of(branch)) if target.kind == "folder" else None)
    except PrinterError as exc:
        _fail(f"Printing on {spec} failed: {exc}", 1)
    click.echo(f"Sample slip sent to {spec}.")
    try:
        answer = status(target)
    except PrinterError as exc:
        answer = f"no answer ({exc})"
    click.echo(f"Printer status: {answer}" if answer else "Printer status: this kind of printer cannot report it.")


@cli.command("expire")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--now", "now", is_flag=True, required=True,
              help="Expire now every ticket whose self-invoicing window is over (what the scheduler does every minute).")
def expire(config_path, now):
    """Expire the tickets whose self-invoicing window closed."""
    from sync.expiry import expire_overdue

    with _agent(config_path) as agent:
        count = expire_overdue(agent.store, agent.config)
    click.echo(f"Expired {count} ticket{'s' if count != 1 else ''}.")


@cli.command("global-invoice")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--company", "company_key", help="Company key (default: the first company).")
@click.option("--branch", "branch_id", required=True, help="Branch id.")
@click.option("--period", "day", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), metavar="AAAA-MM-DD",
              help="Any day of the period, AAAA-MM-DD; the company's periodicity gives the period.")
@click.option("--dry-run", is_flag=True, help="Print the totals and the XML; reserve, sign and stamp nothing.")
def global_invoice(config_path, company_key, branch_id, day, dry_run):
    """Issue a closed period's factura global now; --dry-run previews it."""
    from datetime import datetime

    from agent.periods import period_of
    from service.background import global_invoicing
    from sync.expiry import expire_overdue

    with _agent(config_path) as agent:
        company, branch = _company_and_branch(agent.config, company_key, branch_id)
        period = period_of(day.date(), company.periodicity)
        closes = period.closes_at(branch.zone)
        if datetime.now(UTC) < closes:
            _fail(f"The period {period.first}..{period.last} is not over: it closes {closes:%Y-%m-%d %H:%M %Z}.", 1)
        expire_overdue(agent.store, agent.config)
        invoicing = global_invoicing(agent)
        nothing = f"Nothing to invoice for {period.first}..{period.last}: no expired tickets left outside a CFDI."
        if dry_run:
            previews = invoicing.preview(company, branch, period)
            if not previews:
                click.echo(nothing)
            for preview in previews:
                t = preview.totals
                click.echo(f"Part {preview.part}: {t.concepts} tickets, SubTotal {t.subtotal}, Descuento {t.discount}, "
                           f"impuestos {t.transferred_taxes}, Total {t.total}, FormaPago {t.payment_form}")
                click.echo(preview.xml.decode("utf-8"))
            return
        invoicing.reserve(company, branch, period)
        # A manual run also retries this period's failed parts at once.
        for run in agent.global_runs.to_stamp(datetime.max, company.key):
            if run.branch == branch.id and run.period_first == period.first:
                invoicing.stamp(run)
        runs = [r for r in agent.global_runs.runs(company.key, branch.id) if r.period_first == period.first]
        if not runs:
            click.echo(nothing)
        failed = False
        for run in runs:
            status = f"stamped, UUID {agent.store.cfdi(company.key, run.cfdi).uuid}" if run.cfdi else \
                f"{run.state}: {run.last_error}"
            failed |= run.cfdi is None
            click.echo(f"{run.series}-{run.folio}: {run.tickets} tickets, {status}")
        if failed:
            sys.exit(1)


@cli.command("sync")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--once", is_flag=True, required=True,
              help="One round now: send unsent tickets to Facturapi, fetch what customers invoiced, show the backlog.")
def sync(config_path, once):
    """Sync the Facturapi companies with the cloud once, now (serve does it by itself).
    Every waiting ticket is sent at once, whatever its retry time. Exits 1 when tickets
    are still waiting or stopped."""
    from service.background import Sync

    with _agent(config_path) as agent:
        worker = Sync(agent)
        if worker.problem:
            _fail(f"Cannot use Facturapi: {worker.problem}", 2)
        if not worker.clients:
            click.echo("No company uses the facturapi upstream: nothing to sync.")
            return
        pushed = stopped = 0
        while True:  # until a round sends nothing new: the whole backlog, not one batch
            result = worker.pusher.run_once(everything=True)
            pushed, stopped = pushed + result.pushed, stopped + result.stopped
            if not result.pushed and not result.stopped:
                break
        polled = worker.invoices.run_once()
        click.echo(f"Sent {pushed} receipt{'s' if pushed != 1 else ''}, {stopped} stopped; "
                   f"checked {polled.checked}, {polled.invoiced} invoiced by customers.")
        waiting = False
        for company in agent.config.companies:
            if company.key not in worker.clients:
                continue
            click.echo(f"company {company.rfc} {company.legal_name}")
            for line, behind in _sync_lines(agent, company, worker.clients[company.key]):
                click.echo(f"  {line}")
                waiting |= behind
        worker.pusher.stop()
        if waiting:
            sys.exit(1)


def _sync_lines(agent, company, client):
    """(text, has backlog) per branch of a Facturapi company."""
    def when(moment):
        return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else "never"

    mode = "live key" if client is not None and client.livemode else "test key"
    for b in agent.receipts.backlog(company.key, [branch.id for branch in company.branches]):
        line = (f"branch {b.branch}: facturapi ({mode}), backlog {b.unsent} unsent, {b.retrying} retrying, "
                f"{b.stopped} stopped; last push {when(b.last_push_at)}, last poll {when(b.last_poll_at)}")
        if b.last_error:
            line += f"; last error {when(b.last_error_at)}: {b.last_error}"
        yield line, bool(b.unsent or b.retrying or b.stopped)


@cli.command("status")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
def status(config_path):
    """Show, per company and branch, the tickets, the print queue, the global invoices
    and the CSD: what a store's IT person checks first."""
    from peewee import fn

    from agent.models import PrintJob, Ticket
    from sync.signing import Signers

    with _agent(config_path) as agent:
        signers = Signers(agent.config, agent.data_dir, agent.upstream.kind)
        click.echo(_health_line(agent))
        click.echo(f"data: {agent.data_dir}   upstream: {agent.config.upstream.kind}")
        for company in agent.config.companies:
            click.echo(f"\ncompany {company.rfc} {company.legal_name} (key {company.key[:8]}...)")
            if agent.uses_facturapi(company.key):
                click.echo("  CSD: the one uploaded to Facturapi, which signs this company's CFDIs")
                try:
                    client = agent.facturapi(company.key)
                except ValueError as exc:
                    client = None
                    click.echo(f"  Facturapi: {exc}")
                for line, _ in _sync_lines(agent, company, client):
                    click.echo(f"  {line}")
                for branch_id, number, error in agent.receipts.stopped(company.key)[-5:]:
                    click.echo(f"  stopped: ticket {number} of {branch_id}: {error}")
            else:
                click.echo(f"  CSD: {signers.describe(company)}")
            for branch in company.branches:
                click.echo(f"  branch {branch.id} {branch.name}")
                counts = dict(
                    Ticket.select(Ticket.status, fn.COUNT(Ticket.id))
                    .where((Ticket.company == company.key) & (Ticket.branch == branch.id))
                    .group_by(Ticket.status).tuples()
                )
                click.echo("    tickets: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))
                jobs = dict(
                    PrintJob.select(PrintJob.state, fn.COUNT(PrintJob.id)).join(Ticket)
                    .where((Ticket.company == company.key) & (Ticket.branch == branch.id))
                    .group_by(PrintJob.state).tuples()
                )
                click.echo("    slips: " + (", ".join(f"{n} {s}" for s, n in sorted(jobs.items())) or "none"))
                waiting = (
                    PrintJob.select(PrintJob.last_error).join(Ticket)
                    .where((Ticket.company == company.key) & (Ticket.branch == branch.id)
                           & PrintJob.last_error.is_null(False) & (PrintJob.state == "pending"))
                    .order_by(PrintJob.id.desc()).first()
                )
                if waiting:
                    click.echo(f"    printer: {waiting.last_error}")
                for run in agent.global_runs.runs(company.key, branch.id)[-5:]:
                    line = f"    global {run.series}-{run.folio} {run.period_first}..{run.period_last}: {run.tickets} tickets, {run.state}"
                    if run.cfdi:
                        line += f", total {run.total:.2f}, UUID {agent.store.cfdi(company.key, run.cfdi).uuid}"
                    elif run.last_error:
                        retry = f", retry at {run.retry_at:%Y-%m-%d %H:%M} UTC" if run.retry_at else ""
                        line += f": {run.last_error}{retry}"
                    click.echo(line)


@cli.command("backup")
@click.argument("path", type=click.Path())
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--force", is_flag=True, help="Overwrite PATH (and PATH.cfdi with --with-files) if it exists.")
@click.option("--with-files", is_flag=True, help="Also copy the CFDI files (XML, PDF) of data_dir/cfdi to the "
              "folder PATH.cfdi.")
def backup(path, config_path, force, with_files):
    """Copy the ticket database to PATH, safely while the agent runs, and check the
    copy."""
    from agent.health import human_bytes
    from service.backup import CFDI_DIR, BackupError
    from service.backup import backup as make_backup

    config = _load(config_path)
    if config.database.is_postgresql:
        _fail(f"The tickets are on PostgreSQL ({config.database.shown}), not in a file this command can copy: back "
              "them up with the server's own tools (pg_dump, or the server's backups), and copy the CFDI files of "
              f"{config.data_dir_path / 'cfdi'} with them.", 2)
    try:
        result = make_backup(config.data_dir_path, Path(path), force=force, with_files=with_files)
    except BackupError as exc:
        _fail(f"Backup failed: {exc}", 1)
    click.echo(f"Backup written to {result.path}: {human_bytes(result.size)}, {result.tickets} "
               f"ticket{'s' if result.tickets != 1 else ''}, integrity check: {result.integrity}.")
    if result.files_path is not None:
        click.echo(f"CFDI files: {result.files} copied to {result.files_path}.")
    else:
        click.echo(f"The CFDI files (XML, PDF) are not in it: back up {config.data_dir_path / CFDI_DIR} too, "
                   "or use --with-files.")


@cli.command("install-service")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default="/etc/ticket-agent/config.toml",
              show_default=True, help="The configuration the service runs with.")
@click.option("--user", default="ticket-agent", show_default=True, help="The user the service runs as.")
@click.option("--unit-dir", type=click.Path(file_okay=False), default="/etc/systemd/system", show_default=True,
              help="Where to write ticket-agent.service.")
@click.option("--dry-run", is_flag=True, help="Print the unit instead of writing it.")
@click.option("--force", is_flag=True, help="Overwrite a ticket-agent.service that differs.")
def install_service(config_path, user, unit_dir, dry_run, force):
    """Write the systemd unit that runs `ticket-agent serve` as a service (Linux)."""
    from service.systemd import UNIT_NAME, render

    try:
        unit = render(Path(config_path), user)
    except ValueError as exc:
        _fail(f"Cannot write the unit: {exc}", 2)
    notes = list(unit.notes)
    if not _user_exists(user):
        notes.append(f"User {user} does not exist; create it: useradd --system --home-dir /var/lib/ticket-agent "
                     f"--shell /usr/sbin/nologin {user}")
    if dry_run:
        click.echo(unit.text, nl=False)
        for note in notes:  # on standard error, so `--dry-run > ticket-agent.service` is the unit alone
            click.echo(f"Note: {note}", err=True)
        return
    target = Path(unit_dir) / UNIT_NAME
    if not target.parent.is_dir():
        _fail(f"Folder {target.parent} does not exist.", 1)
    if target.exists() and target.read_text(encoding="utf-8") != unit.text and not force:
        _fail(f"{target} already exists and differs; use --force to overwrite it (or --dry-run to compare).", 1)
    try:
        target.write_text(unit.text, encoding="utf-8")
    except OSError as exc:
        _fail(f"Cannot write {target}: {exc.strerror or exc} (run it as root, or use --dry-run).", 1)
    click.echo(f"Wrote {target}.")
    for note in notes:
        click.echo(f"Note: {note}")
    click.echo("Then run:")
    click.echo("  systemctl daemon-reload")
    click.echo("  systemctl enable --now ticket-agent")
    click.echo("  systemctl status ticket-agent")


def _user_exists(name: str) -> bool:
    try:
        import pwd
    except ImportError:  # Windows: no systemd either
        return True
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _health_line(agent) -> str:
    """One line: the worst of agent.health's checks and where the others are not ok."""
    from agent import health

    results = health.checks(agent)
    bad = [c for c in results if c.status != health.OK]
    if not bad:
        return f"health: ok ({len(results)} checks; GET /healthz on the running agent for details)"
    where = "; ".join(
        f"{c.status} {c.name}" + (f" {c.company}" if c.company else "") + (f"/{c.branch}" if c.branch else "") for c in bad
    )
    return f"health: {health.overall(results)}: {where} (details below and in GET /healthz)"


class _agent:
    """The agent's store for a one-off command, closed after it."""

    def __init__(self, config_path):
        self.config = _load(config_path)

    def __enter__(self):
        from agent.app import Agent

        self.agent = Agent(self.config)
        return self.agent

    def __exit__(self, *exc):
        self.agent.close()


def _company_and_branch(config, company_key: str | None, branch_id: str | None):
    """The named company (default: the first) and branch (default: its first), or exit 2."""
    company = config.company(company_key) if company_key else config.companies[0]
    if company is None:
        _fail(f"No company with key {company_key} in the configuration.", 2)
    branch = company.branch(branch_id) if branch_id else company.branches[0]
    if branch is None:
        _fail(f"Company {company.key} has no branch {branch_id}.", 2)
    return company, branch


def _fail(message: str, code: int):
    click.echo(message, err=True)
    sys.exit(code)


def main():
    cli(prog_name="ticket-agent")


if __name__ == "__main__":
    main()
