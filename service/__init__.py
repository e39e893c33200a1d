"""Wiring: the `ticket-agent` command, the waitress runner and the install files."""

__version__ = "0.1.0"
