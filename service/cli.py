"""The `ticket-agent` command."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.config import DEFAULT_CONFIG_ENV, ConfigError, load_config, starter_config_text

CONFIG_HELP = f"TOML configuration file (default: ${DEFAULT_CONFIG_ENV}, else the embedded demo defaults)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pos-ticket-agent")
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
    from service.runner import serve as run_server, setup_logging

    config = _load(config_path)
    setup_logging(log_level.upper())
    try:
        run_server(config)
    except OSError as exc:  # port taken, address not on this machine
        click.echo(f"Cannot listen on {config.server.listen}: {exc.strerror or exc}", err=True)
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
    target.write_text(starter_config_text(), encoding="utf-8")
    target.chmod(0o600)  # it holds the POS credentials
    click.echo(f"Wrote {target}. Edit the company and branch data, then run:")
    click.echo(f"  ticket-agent serve --config {target}")


def main():
    cli(prog_name="ticket-agent")


if __name__ == "__main__":
    main()
