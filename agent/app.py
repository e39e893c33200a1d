"""The Flask application factory and the objects one running agent holds."""
from __future__ import annotations

import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Callable

from flask import Flask, redirect
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from agent import messages
from agent.config import Config, load_config
from agent.db import open_database, presence
from agent.http import text_response
from agent.global_runs import GlobalRuns
from agent.logins import Logins
from agent.print_queue import PrintQueue
from agent.store import Store
from agent.writer import StorageUnavailable, Writer, is_storage_failure
from agent.receipts import Receipts
from sync.facturapi import FacturapiClient
from sync.upstream import FacturapiUpstream, Upstream, make_upstream

log = logging.getLogger(__name__)


class Agent:
    """One running agent: its configuration, database, writer, store and upstream."""

    def __init__(self, config: Config, upstream: Upstream | None = None):
        self.config = config
        self.data_dir = config.data_dir_path
        self.db = open_database(self.data_dir, config.database.url)
        # Which process this is, among the agents that may share a PostgreSQL database.
        self.instance = instance_id()
        self.presence = presence(config.database.url, self.instance)
        self.writer = Writer(self.db)
        self.writer.start()
        self.store = Store(self.db, self.writer, self.data_dir)
        self.print_queue = PrintQueue(self.writer, self.presence)
        self.global_runs = GlobalRuns(self.writer, self.store)
        self.receipts = Receipts(self.writer)
        self.logins = Logins()
        # The sandbox, for every company that does not use Facturapi.
        self.upstream = upstream or make_upstream("sandbox")
        self._clients: dict[str, FacturapiClient] = {}
        # Called after a print job is queued / a ticket stored; service/ points them at
        # the print worker and the receipt pusher.
        self.on_print_job: Callable[[], None] = lambda: None
        self.on_ticket_stored: Callable[[], None] = lambda: None
        # The running background work (service.background.Background), for health pages;
        # None in a one-off command or a test without it.
        self.background = None

    def uses_facturapi(self, company_key: str) -> bool:
        company = self.config.company(company_key)
        return company is not None and self.config.upstream_of(company) == "facturapi"

    def facturapi(self, company_key: str) -> FacturapiClient:
        """The company's Facturapi client; ValueError if its key cannot be read."""
        client = self._clients.get(company_key)
        if client is None:
            company = self.config.company(company_key)
            upstream = self.config.upstream
            client = FacturapiClient(upstream.facturapi_url, company.facturapi.read_key(), timeout=upstream.timeout)
            self._clients[company_key] = client
        return client

    def facturapi_clients(self) -> dict[str, FacturapiClient]:
        return {c.key: self.facturapi(c.key) for c in self.config.companies if self.uses_facturapi(c.key)}

    def upstream_for(self, company_key: str) -> Upstream:
        if self.uses_facturapi(company_key):
            return FacturapiUpstream(self.facturapi(company_key))
        return self.upstream

    def link_wait(self, company_key: str) -> float:
        """Seconds a new slip waits for the upstream's self-invoice link (0: none comes)."""
        return self.config.upstream.qr_wait if self.uses_facturapi(company_key) else 0.0

    def close(self) -> None:
        """Finish the writes in flight, then close the database."""
        self.writer.stop()
        self.presence.close()
        self.db.close()


def instance_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def create_app(config: Config | None = None, *, upstream: Upstream | None = None) -> Flask:
    config = config if config is not None else load_config(None)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_kb * 1024
    app.config["AGENT"] = Agent(config, upstream)

    from agent import contract, openapi, ops, panel, printing, self_invoice

    ops.install(app)  # first: its timing hook must run before any other
    app.register_blueprint(ops.bp)
    app.register_blueprint(contract.bp)
    app.register_blueprint(printing.bp)
    app.register_blueprint(panel.bp)
    app.register_blueprint(self_invoice.bp)
    app.register_blueprint(openapi.bp)
    app.secret_key = _session_secret(app.config["AGENT"].data_dir)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_NAME="panel")
    app.add_url_rule("/", "home", lambda: redirect("/panel/"))
    _register_error_texts(app, config.server.max_body_kb)
    # Database connections stay open per waitress thread on purpose: opening one and
    # setting its pragmas costs more than the query it would serve.
    return app


def _session_secret(data_dir: Path) -> bytes:
    """The key that signs the panel's session cookie: made once, kept beside the store, so
    a restart does not log every manager out."""
    path = data_dir / "panel-secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
        return secret


def _register_error_texts(app: Flask, max_body_kb: int) -> None:
    @app.errorhandler(NotFound)
    def not_found(_exc):
        return text_response(messages.NOT_FOUND, 404)

    @app.errorhandler(MethodNotAllowed)
    def method_not_allowed(exc):
        from flask import request

        allowed = ", ".join(sorted(exc.valid_methods or []))
        response = text_response(messages.method_not_allowed(request.method, allowed), 405)
        response.headers["Allow"] = allowed
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc):
        return text_response(messages.body_too_large(max_body_kb), 413)

    @app.errorhandler(StorageUnavailable)
    def storage_unavailable(exc):
        # A sale, an expiry, a reprint: the POS routes' 503. The panel and the
        # self-invoice page answer with pages of their own.
        log.error("storage unavailable: %s", exc)
        response = text_response(messages.storage_unavailable(), 503)
        response.headers["Retry-After"] = "30"
        return response

    @app.errorhandler(HTTPException)
    def other_http(exc):
        return text_response(exc.description or exc.name, exc.code or 400)

    @app.errorhandler(Exception)
    def unexpected(exc):
        if is_storage_failure(exc):
            # A read on a connection the database server dropped: the next statement of
            # this thread opens a new one (agent/db.py), so the POS should try again.
            return storage_unavailable(exc)
        log.exception("unexpected error")
        return text_response(messages.INTERNAL, 500)
