"""The agent's log: one line per request, per scheduled job run and per printed slip, in a
rotating file in the data directory; never a credential, a company key, a Facturapi key
or an insumo at INFO."""
from __future__ import annotations

import base64
import logging
import logging.handlers

import pytest

from helpers import AUTH_A, BRANCH_A, KEY_A, put_json, ticket_body

from agent import ops
from service import logs

HTTP = "pos-ticket-agent.http"


@pytest.fixture
def client(app):
    if "ops" not in app.blueprints:
        app.register_blueprint(ops.bp)
    ops.install(app)
    return app.test_client()


@pytest.fixture
def log_file(tmp_path):
    """The rotating file `serve` writes, on this test's data directory."""
    root = logging.getLogger()
    level = root.level
    file_log = logs.log_to_file(tmp_path / "data")
    assert file_log is not None
    root.setLevel(logging.INFO)
    yield LogFile(tmp_path / "data" / "logs" / "ticket-agent.log", file_log)
    logs.stop_file(file_log)
    root.setLevel(level)


class LogFile:
    def __init__(self, path, file_log):
        self.path, self.file_log = path, file_log

    def read_text(self, encoding="utf-8") -> str:
        self.file_log.flush()  # lines are written by the log's own thread
        return self.path.read_text(encoding=encoding)


def lines(caplog, level=logging.INFO, name=HTTP):
    return [r.getMessage() for r in caplog.records if r.name == name and r.levelno == level]


def test_one_line_per_request_with_route_status_duration_company_and_client(client, caplog):
    caplog.set_level(logging.DEBUG)
    body = ticket_body("L1")
    assert put_json(client, f"/{KEY_A}/tickets", body).status_code == 200
    assert client.get(f"/{KEY_A}/cfdis?ticket=L1&sucursal={BRANCH_A}", headers=AUTH_A).status_code == 400
    assert put_json(client, f"/{KEY_A}/tickets", body, headers={}).status_code == 401

    client.get(f"/autofactura/{KEY_A}/{BRANCH_A}/L1")  # the customer's self-invoice page, from the QR

    put_line, get_line, refused, page = lines(caplog)
    assert put_line.startswith("PUT /<key>/tickets 200 ") and " ms company=b391655a client=127.0.0.1" in put_line
    assert get_line.startswith("GET /<key>/cfdis 400 ")
    assert refused.startswith("PUT /<key>/tickets 401 ")
    assert page.startswith("GET /autofactura/<company_key>/<branch_id>/<number> ") and "company=b391655a " in page
    everything = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    credentials = base64.b64encode(b"tepox:tepox").decode()
    for secret in (KEY_A, credentials, "tepox", "ticket=L1", body["insumo"].splitlines()[1]):
        assert secret not in everything, f"{secret!r} reached the log at INFO"


def test_monitoring_requests_are_logged_at_debug_only(client, caplog):
    caplog.set_level(logging.DEBUG)
    client.get("/healthz")
    client.get("/metrics")
    assert lines(caplog) == []
    assert [line.split(" ")[:2] for line in lines(caplog, logging.DEBUG)] == [["GET", "/healthz"], ["GET", "/metrics"]]


def test_an_unknown_path_is_logged_with_its_key_cut_and_no_forged_lines(client, caplog):
    caplog.set_level(logging.INFO)
    assert client.get(f"/{KEY_A}/ticket%0A2026-11-22 INFO forged").status_code == 404
    assert client.delete(f"/autofactura/{KEY_A}/{BRANCH_A}/T1/xml").status_code == 405
    forged, wrong_method = lines(caplog)
    assert forged.startswith("GET /b391655a.../ticket\\x0a2... 404 ")  # the newline cannot start a line
    assert wrong_method.startswith("DELETE /autofact.../b391655a.../dsfhjkaj.../T1/xml 405 ")
    assert "\n" not in forged and KEY_A not in forged + wrong_method


def test_the_rotating_file_keeps_five_files_of_10_mb(client, log_file, caplog):
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("F1")).status_code == 200
    text = log_file.read_text(encoding="utf-8")
    assert "INFO pos-ticket-agent.http: PUT /<key>/tickets 200" in text
    handler = log_file.file_log.handler
    assert (handler.maxBytes, handler.backupCount) == (10 * 1024 * 1024, 5)


def test_rotation_really_rotates_and_keeps_at_most_five_old_files(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "MAX_BYTES", 2000)  # the real 10 MB would take a while to fill
    file_log = logs.log_to_file(tmp_path)
    try:
        log = logging.getLogger("pos-ticket-agent.rotation-test")
        log.setLevel(logging.INFO)
        for n in range(400):
            log.info("line %d %s", n, "x" * 60)
    finally:
        logs.stop_file(file_log)
    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert names == ["ticket-agent.log"] + [f"ticket-agent.log.{n}" for n in range(1, 6)]
    # Each file is rotated once it reaches the limit: at most one line over it.
    assert all(p.stat().st_size <= 2000 + 200 for p in (tmp_path / "logs").iterdir())
    assert "line 399" in (tmp_path / "logs" / "ticket-agent.log").read_text()


def test_facturapi_keys_are_masked_in_messages_and_tracebacks(log_file):
    log = logging.getLogger("sync.facturapi")
    log.warning("request failed with key %s", "sk_live_AbC123xyz789")
    try:
        raise ValueError("bad key sk_test_S3cr3tKey0000")
    except ValueError:
        log.exception("round failed")
    text = log_file.read_text(encoding="utf-8")
    assert "sk_live_AbC123xyz789" not in text and "S3cr3tKey0000" not in text
    assert "request failed with key sk_live_***" in text
    assert "ValueError: bad key sk_test_***" in text  # the traceback is still there, masked


def test_each_scheduled_job_run_is_logged_with_its_duration(tmp_path, caplog):
    from service.scheduler import Scheduler

    caplog.set_level(logging.INFO)
    scheduler = Scheduler(tmp_path, {})
    assert scheduler.lock.acquire()  # only the process holding the jobs runs them
    try:
        scheduler._runner("expire", lambda: None)()  # what APScheduler calls every sweep
    finally:
        scheduler.lock.release()
    [line] = lines(caplog, name="service.scheduler")
    assert line.startswith("scheduled job expire ran in ") and line.endswith(" s")


def test_each_printed_slip_is_logged(tmp_path, caplog):
    from datetime import datetime

    from printer.worker import PrintWorker, RenderedJob

    class Queue:
        outcomes = []

        def claim_due(self, now, limit=50):
            job = type("Job", (), {"id": 7, "attempts": 0, "created_at": now})()
            return [job] if not self.outcomes else []

        def finish(self, outcomes):
            self.outcomes.extend(outcomes)

    caplog.set_level(logging.INFO)
    folder = f"file:{tmp_path / 'prints'}/"
    worker = PrintWorker(Queue(), lambda job: RenderedJob(folder, b"\x1b@slip", None, "job-7"))
    try:
        assert worker.run_once() == 1
    finally:
        worker.stop()
    assert [line for line in lines(caplog, name="printer.worker")] == [f"print job 7 printed on {folder}"]
    assert isinstance(Queue.outcomes[0].printed_at, datetime)


def test_a_cfdi_pdf_adds_no_font_subsetting_lines_to_the_log(caplog):
    from datetime import datetime

    from sample_cfdi import global_cfdi
    from sync.pdf import render_pdf
    from sync.sandbox import stamp_sandbox

    logs.setup("INFO")
    caplog.set_level(logging.INFO)
    render_pdf(stamp_sandbox(global_cfdi(), now=datetime(2026, 11, 20, 12, 0, 0)).xml)
    assert [r for r in caplog.records if r.name.startswith("fontTools")] == []
