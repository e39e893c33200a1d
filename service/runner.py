"""Running the agent under waitress until SIGTERM or Ctrl-C."""
from __future__ import annotations

import json
import logging
import signal
import socket
import sys
from typing import Callable

from peewee import DatabaseError
from waitress import create_server

from agent.app import create_app
from agent.config import Config
from service.background import Background, SyncKeyError
from sync.csd import CsdError

log = logging.getLogger("pos-ticket-agent")


# A valid 12.36 MXN ticket, so the banner's curl line works as printed.
DEMO_TICKET = {
    "fecha": "2019-01-25T11:09:46",
    "monto": 12.36,
    "numeroTicket": "12A31",
    "insumo": "00|CFD33BASE|QA|4.0|\n"
    "01|A|12A31|2019-01-25T11:09:46|01|MXN|1|10.66|0.00|12.36|68050|\n"
    "02|50202306|REF-600|1|H87|Pieza|Refresco 600 ml|10.655172|10.655172|0.00|02|\n"
    "03|002|Tasa|0.160000|10.655172|1.704828|",
}


class CannotListen(OSError):
    pass


class CannotOpenStore(OSError):
    pass


class CannotSign(RuntimeError):
    """A configured CSD cannot be used: found at start-up, not in the night."""


class CannotSync(RuntimeError):
    """A company's Facturapi key cannot be read."""


def serve(config: Config, announce: Callable[[str], None] | None = None) -> None:
    announce = announce or (lambda line: print(line, flush=True))

    def stop(signum, _frame):
        log.info("signal %s: finishing requests in flight and stopping", signum)
        raise SystemExit(0)

    # Installed before the port is taken: a stop asked for during start-up is a clean stop.
    signal.signal(signal.SIGTERM, stop)
    # Bind the port first: an agent that cannot listen must not touch the data directory.
    try:
        sock = _listening_socket(config.server.host, config.server.port)
    except OSError as exc:
        raise CannotListen(exc.errno, exc.strerror or str(exc)) from exc
    try:
        app = create_app(config)
    except (OSError, DatabaseError) as exc:
        raise CannotOpenStore(getattr(exc, "errno", None), str(exc)) from exc
    finally:
        if "app" not in locals():
            sock.close()
    agent = app.config["AGENT"]
    background = Background(agent)
    try:
        background.check()
    except (CsdError, SyncKeyError) as exc:
        sock.close()
        agent.close()
        raise (CannotSync if isinstance(exc, SyncKeyError) else CannotSign)(str(exc)) from None
    server = None
    try:
        background.start()
        for line in banner(config, sock.getsockname()[1]):
            announce(line)
        # waitress starts listening here: a client that can connect finds the agent ready.
        server = create_server(
            app,
            sockets=[sock],
            threads=config.server.threads,
            # waitress refuses a huge body before buffering it; its limit sits a little above
            # Flask's so that an oversized ticket gets Flask's Spanish 413, not waitress's.
            max_request_body_size=config.server.max_body_kb * 1024 + 64 * 1024,
            ident="pos-ticket-agent",
            # The POS holds one connection per terminal; a dead one is dropped after 2 min.
            channel_timeout=120,
            clear_untrusted_proxy_headers=True,
        )
        server.run()  # returns after SystemExit, once worker threads finished their request
    finally:
        if server is not None:
            server.close()
        else:
            sock.close()
        background.stop()
        agent.close()
        log.info("stopped")


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


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
            "Try it (a 12.36 MXN sale):",
            f"  curl -u {company.username}:{company.password} -X PUT {url}/{company.key}/tickets \\",
            "    -H 'content-type: application/json' \\",
            f"    -d '{json.dumps(DEMO_TICKET | {'sucursal': branch.id})}'",
            f"  curl -u {company.username}:{company.password} '{url}/{company.key}/cfdis?ticket=12A31'",
            "  (docs/contract.md has every call of the contract)",
        ]
    return lines


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Our jobs log what they did; APScheduler's line per run would drown it.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLevelName(level)))
