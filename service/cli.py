"""The `ticket-agent` command."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from service import __version__
from agent.config import DEFAULT_CONFIG_ENV, ConfigError, load_config, starter_config_text

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
              help="Log verbosity (logs go to standard error).")
def serve(config_path, log_level):
    """Start the agent and serve the POS contract until stopped (Ctrl-C or SIGTERM)."""
    from service.runner import CannotListen, CannotOpenStore, serve as run_server, setup_logging

    config = _load(config_path)
    setup_logging(log_level.upper())
    try:
        run_server(config)
    except CannotListen as exc:  # port taken, address not on this machine
        click.echo(f"Cannot listen on {config.server.listen}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except CannotOpenStore as exc:
        click.echo(f"Cannot open the data directory {config.data_dir_path}: {exc.strerror or exc}", err=True)
        sys.exit(1)


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
    company = config.company(company_key) if company_key else config.companies[0]
    if company is None:
        _fail(f"No company with key {company_key} in the configuration.", 2)
    branch = company.branch(branch_id) if branch_id else company.branches[0]
    if branch is None:
        _fail(f"Company {company.key} has no branch {branch_id}.", 2)
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


def _fail(message: str, code: int):
    click.echo(message, err=True)
    sys.exit(code)


def main():
    cli(prog_name="ticket-agent")


if __name__ == "__main__":
    main()
