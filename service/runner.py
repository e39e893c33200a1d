"""Running the agent under waitress until SIGTERM or Ctrl-C."""
from __future__ import annotations

import json
import logging
import signal
import socket
import time
from typing import Callable

from peewee import DatabaseError
from waitress import create_server, wasyncore

from agent.app import create_app
from agent.config import Config
from service import logs
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


# Seconds a stop waits for the requests already received to be answered. Under systemd
# the whole stop must fit in TimeoutStopSec (30 s in the unit this project ships), and
# the background work still has to finish after this.
DRAIN_SECONDS = 10.0


def serve(config: Config, announce: Callable[[str], None] | None = None) -> None:
    announce = announce or (lambda line: print(line, flush=True))
    # starting -> serving -> draining -> closing; what a SIGTERM or Ctrl-C does depends on it.
    phase = ["starting"]

    def stop(signum, _frame):
        if phase[0] == "serving":
            log.info("signal %s: finishing requests in flight and stopping", signum)
            phase[0] = "draining"  # the serving loop sees it within a second
        elif phase[0] == "closing":
            log.info("signal %s: already stopping; the background work is finishing", signum)
        else:
            # During start-up nothing is in flight: stop right here. A second signal while
            # draining means "now" (what was answered 200 is on disk all the same).
            log.info("signal %s: stopping now", signum)
            raise SystemExit(0)

    # Installed before the port is taken: a stop asked for during start-up is a clean stop.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Bind the port first: an agent that cannot listen must not touch the data directory.
    try:
        sock = _listening_socket(config.server.host, config.server.port)
    except OSError as exc:
        raise CannotListen(exc.errno, exc.strerror or str(exc)) from exc
    # Processes sharing a PostgreSQL database share the data directory too: one log file each.
    shared = config.database.is_postgresql
    log_file = logs.log_to_file(config.data_dir_path, logs.file_name_of(socket.gethostname(), config.server.port)
                                if shared else logs.LOG_FILE)
    try:
        app = create_app(config)
    except (OSError, DatabaseError) as exc:
        logs.stop_file(log_file)
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
        logs.stop_file(log_file)
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
        phase[0] = "serving"
        _serve_until(server, lambda: phase[0] != "serving")
        # A stopping process does not take over the sweeps from one that died meanwhile:
        # it would hold them only to hand them over again in a moment.
        background.scheduler.stand_down()
        _drain(server, DRAIN_SECONDS)
    finally:
        phase[0] = "closing"
        if server is not None:
            # Waits (5 s at most) for the worker threads; after a drain they are idle.
            server.task_dispatcher.shutdown()
            server.close()
        else:
            sock.close()
        # Then the background work: the scheduler lets a running job finish, the receipt
        # pusher and the print worker finish their round; last, the writer commits what
        # it holds and the database is closed.
        background.stop()
        agent.close()
        log.info("stopped")
        logs.stop_file(log_file)


def _serve_until(server, stop_asked: Callable[[], bool]) -> None:
    """waitress's own loop (server.run()), one poll at a time, until a stop is asked.
    server.run() would end on SystemExit from the signal handler and drop the answers of
    the requests in flight: they are computed but only this loop sends them."""
    adj = server.adj
    while not stop_asked():
        server.asyncore.loop(timeout=adj.asyncore_loop_timeout, map=server._map, use_poll=adj.asyncore_use_poll,
                             count=1)  # fmt: skip


def _drain(server, seconds: float) -> None:
    """Stop taking connections, answer every request already received, and close each
    connection once its answer is out; give up after `seconds`.

    A POS that connects from now on is refused at once and sends again later; a request
    still in the network buffer of an idle keep-alive connection is cut off unanswered
    (never stored), which the POS also retries. What was answered 200 is on disk."""
    # The listening socket alone (the waitress server's close() would also close the
    # trigger the worker threads use to wake this loop).
    wasyncore.dispatcher.close(server)
    deadline = time.monotonic() + seconds
    while True:
        busy = 0
        for channel in list(server.active_channels.values()):
            if not getattr(channel, "_draining", False):
                channel._draining = True
                # No new request on this connection; one whose first bytes arrived is read to its end.
                readable = channel.readable
                channel.readable = lambda c=channel, r=readable: c.request is not None and r()
            if channel.requests or channel.request is not None or channel.total_outbufs_len:
                busy += 1  # a request being read, run, or its answer being sent
            elif not channel.will_close:
                channel.will_close = True  # idle: closed by the loop's next pass
        if not busy and not server.active_channels:
            return
        if time.monotonic() >= deadline:
            log.warning("%d connection(s) still busy after %.0f s; stopping anyway", busy, seconds)
            return
        server.asyncore.loop(timeout=0.05, map=server._map, use_poll=server.adj.asyncore_use_poll, count=1)


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
    if config.database.is_postgresql:
        lines.append(f"tickets kept on PostgreSQL at {config.database.shown}")
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
    """Log lines to standard error, Facturapi keys masked; `serve` adds the rotating file
    in the data directory once it holds its port (service/logs.py)."""
    logs.setup(level)
    # Our jobs log what they did; APScheduler's line per run would drown it.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLevelName(level)))
