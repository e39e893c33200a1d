"""What the store's IT and its monitoring see: GET /healthz, GET /metrics, and one log line
per request.

Both routes answer without credentials, meant for the store's LAN (a monitoring box, a
load balancer, Prometheus), and show nothing secret: companies by RFC, branches by id,
routes by pattern. `app.register_blueprint(ops.bp)` adds the routes; `ops.install(app)`
adds the hooks that time and log every request (see docs/operations.md).
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

from flask import Blueprint, Flask, Response, current_app, g, request

from agent import health, metrics

log = logging.getLogger("pos-ticket-agent.http")

bp = Blueprint("ops", __name__)

EXTENSION = "ticket_agent_ops"
# Monitoring asks for these every few seconds: their lines go to DEBUG, or they would
# bury the sales in the log.
QUIET_ROUTES = frozenset({"/healthz", "/metrics"})


def _version() -> str:
    from service import __version__

    return __version__


@bp.route("/healthz", methods=["GET"])
def healthz():
    agent = current_app.config["AGENT"]
    results = health.checks(agent)
    status = health.overall(results)
    body = {
        "status": status,
        "version": _version(),
        "checked_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "checks": [check.as_dict() for check in results],
    }
    # 503 only for a failure: a warning is for a person to read, not for a load balancer
    # or a watchdog to take the agent out of service.
    response = Response(
        json.dumps(body, ensure_ascii=False, indent=2) + "\n",
        status=503 if status == health.FAIL else 200,
        content_type="application/json; charset=utf-8",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/metrics", methods=["GET"])
def prometheus_metrics():
    text = metrics.render(current_app.config["AGENT"], current_app.extensions.get(EXTENSION), _version())
    response = Response(text, content_type=metrics.CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    return response


# -- request hooks -------------------------------------------------------------------------


def install(app: Flask) -> metrics.RequestMetrics:
    """Time and log every request of `app`; /metrics reports the durations. Idempotent."""
    existing = app.extensions.get(EXTENSION)
    if existing is not None:
        return existing
    requests = app.extensions[EXTENSION] = metrics.RequestMetrics()
    app.before_request(_started)
    app.after_request(_answered)
    app.teardown_request(_torn_down)
    return requests


def _started() -> None:
    g.ops_started = time.perf_counter()


def _answered(response: Response) -> Response:
    _record(response.status_code)
    return response


def _torn_down(exc: BaseException | None) -> None:
    # Only when no response was made (an exception got past every error handler).
    if not g.get("ops_recorded", False):
        _record(500)


def _record(status: int) -> None:
    g.ops_recorded = True
    started = g.get("ops_started")
    seconds = time.perf_counter() - started if started is not None else None
    rule = request.url_rule.rule if request.url_rule is not None else None
    requests = current_app.extensions.get(EXTENSION)
    if requests is not None and seconds is not None:
        requests.observe(rule or metrics.UNMATCHED, request.method, status, seconds)
    arguments = request.view_args or {}
    key = arguments.get("key") or arguments.get("company_key")
    # Never the Authorization header, the query string or the body: the route pattern, the
    # company as the first 8 characters of its key (enough to tell companies apart, not
    # enough to use the URL), the answer and who asked.
    log.log(
        logging.DEBUG if rule in QUIET_ROUTES else logging.INFO,
        "%s %s %d %s company=%s client=%s",
        request.method,
        rule or shown_path(request.path),
        status,
        f"{seconds * 1000:.1f} ms" if seconds is not None else "- ms",
        _printable(key[:8]) if key else "-",
        request.remote_addr or "-",
    )


def shown_path(path: str) -> str:
    """A path that matched no route, as it may be logged: every segment longer than 8
    characters cut to 8 (a company key may be any of them: /<key>/..., /autofactura/<key>/...),
    control characters escaped so a crafted URL cannot forge log lines, at most 200
    characters."""
    segments = [s if len(s) <= 8 else s[:8] + "..." for s in path.split("/")]
    shown = _printable("/".join(segments))
    return shown if len(shown) <= 200 else shown[:200] + "..."


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() and c != " " else f"\\x{ord(c):02x}" for c in text)
