"""Running the agent under waitress until SIGTERM or Ctrl-C."""
from __future__ import annotations

import logging
import signal
import sys
from typing import Callable

from waitress import create_server

from agent.app import create_app
from agent.config import Config

log = logging.getLogger("pos-ticket-agent")


def serve(config: Config, announce: Callable[[str], None] | None = None) -> None:
    announce = announce or (lambda line: print(line, flush=True))
    app = create_app(config)
    agent = app.config["AGENT"]
    server = create_server(
        app,
        host=config.server.host,
        port=config.server.port,
        threads=config.server.threads,
        # waitress must refuse an oversized body before buffering it, not just Flask.
        max_request_body_size=config.server.max_body_kb * 1024,
        ident="pos-ticket-agent",
        # The POS holds one connection per terminal; a dead one is dropped after 2 min.
        channel_timeout=120,
        clear_untrusted_proxy_headers=True,
    )

    def stop(signum, _frame):
        log.info("signal %s: finishing requests in flight and stopping", signum)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    for line in banner(config, server.effective_port):
        announce(line)
    try:
        server.run()  # returns after SystemExit, once worker threads finished their request
    finally:
        server.close()
        agent.close()
        log.info("stopped")


def banner(config: Config, port: int) -> list[str]:
    host = config.server.host
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{shown}:{port}"
    lines = [f"pos-ticket-agent listening on http://{host}:{port} (data in {config.data_dir_path})"]
    if config.is_demo:
        company = config.companies[0]
        branch = company.branches[0]
        lines += [
            "",
            "DEMO configuration (embedded defaults): for trying the agent, not for a store.",
            "Write your own with `ticket-agent init ticket-agent.toml`.",
            f"  company key: {company.key}",
            f"  user: {company.username}   password: {company.password}",
            f"  branches: {', '.join(b.id for b in company.branches)}",
            "",
            "Try it:",
            f"  curl -u {company.username}:{company.password} -X PUT {url}/{company.key}/tickets \\",
            "    -H 'content-type: application/json' \\",
            f"    -d '{{\"fecha\": \"2026-11-20T11:09:46\", \"monto\": 12.36, \"numeroTicket\": \"12A31\", "
            f"\"sucursal\": \"{branch.id}\", \"insumo\": \"...\"}}'",
            f"  curl -u {company.username}:{company.password} '{url}/{company.key}/cfdis?ticket=12A31'",
            "  (docs/contract.md has complete examples with a valid insumo)",
        ]
    return lines


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
