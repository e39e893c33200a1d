"""GET /healthz: what a monitoring box or the store's IT sees, without credentials.

200 while everything works or only warns, 503 when something fails; each finding names a
company by RFC and a branch by id, and nothing secret ever appears in the answer."""
from __future__ import annotations

import json
from urllib.parse import urlsplit
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from csd_factory import make_csd
from helpers import BRANCH_A, BRANCH_A2, BRANCH_B, FACTURAPI_KEY_A, KEY_A, KEY_B, put_json, ticket_body, write_config

from agent import ops
from agent.app import create_app
from agent.config import load_config
from printer.worker import JobOutcome
from service.scheduler import Scheduler

pytestmark = pytest.mark.both_databases  # tests/postgres.py

RFC_A, RFC_B = "EKU9003173C9", "XIA190128J61"


def with_ops(app):
    """The app as create_app will serve it once ops is wired in (harmless if it is)."""
    if "ops" not in app.blueprints:
        app.register_blueprint(ops.bp)
    ops.install(app)
    return app


@pytest.fixture
def client(app):
    return with_ops(app).test_client()


def healthz(client):
    response = client.get("/healthz")
    assert response.content_type.startswith("application/json")
    return response.status_code, json.loads(response.data)


def findings(body, name=None, status=None):
    return [c for c in body["checks"] if (name is None or c["name"] == name) and (status is None or c["status"] == status)]


def assert_no_secrets(raw: str, *secrets: str):
    for secret in (KEY_A, KEY_B, "tepox", "otra-clave", *secrets):
        assert secret not in raw, f"/healthz shows {secret!r}"


def test_a_healthy_agent_answers_200_with_every_check_named_by_rfc_and_branch(client, agent):
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("H1")).status_code == 200
    response = client.get("/healthz")  # no Authorization header: monitoring has no credentials
    assert response.status_code == 200
    body = json.loads(response.data)
    assert body["status"] == "ok"
    assert {c["status"] for c in body["checks"]} == {"ok"}
    assert {c["name"] for c in body["checks"]} == {"database", "disk", "wal", "scheduler", "printer", "upstream", "csd"}
    printers = {(c["company"], c["branch"]) for c in findings(body, "printer")}
    assert printers == {(RFC_A, BRANCH_A), (RFC_A, BRANCH_A2), (RFC_B, BRANCH_B)}
    assert {(c["company"], c["detail"]) for c in findings(body, "upstream")} == {
        (RFC_A, "sandbox (no network)"), (RFC_B, "sandbox (no network)")}
    assert all("valid until" in c["detail"] for c in findings(body, "csd"))
    assert_no_secrets(response.get_data(as_text=True), str(agent.data_dir))
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("free_mb, code, status, shown", [
    (50, 503, "fail", "50.0 MB free"), (500, 200, "warn", "500.0 MB free"), (5000, 200, "ok", "4.9 GB free")])
def test_free_disk_space_warns_under_1_gb_and_fails_under_100_mb(client, monkeypatch, free_mb, code, status, shown):
    import agent.health

    real = agent.health.shutil.disk_usage
    monkeypatch.setattr(agent.health.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=free_mb * 1024**2))  # fmt: skip
    got, body = healthz(client)
    assert got == code
    assert body["status"] == status
    [disk] = findings(body, "disk")
    assert disk["status"] == status and disk["detail"].startswith(shown)


def test_an_unreadable_database_is_a_503_with_the_reason_not_a_500(client, agent, monkeypatch):
    from peewee import OperationalError

    def broken(*_a, **_k):
        raise OperationalError("disk I/O error")

    monkeypatch.setattr(agent.db, "execute_sql", broken)
    code, body = healthz(client)
    assert code == 503
    [database] = findings(body, "database")
    assert database["status"] == "fail" and "disk I/O error" in database["detail"]


def test_a_failed_commit_fails_the_database_check_until_one_works(client, agent):
    agent.writer.last_error = "database or disk is full"  # what the writer keeps after a failed group commit
    code, body = healthz(client)
    assert code == 503
    assert "the last commit failed: database or disk is full" in findings(body, "database")[0]["detail"]
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("H2")).status_code == 200
    assert healthz(client)[0] == 200


def test_printer_errors_warn_on_their_branch_only(client, agent):
    for number in ("P1", "P2", "P3"):
        assert put_json(client, f"/{KEY_A}/tickets", ticket_body(number)).status_code == 200
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    jobs = agent.print_queue.claim_due(now + timedelta(seconds=10))
    assert len(jobs) == 3
    agent.print_queue.finish([
        JobOutcome(jobs[0].id, error="tcp://192.168.1.50:9100: connection refused", retry_at=now + timedelta(minutes=1)),
        JobOutcome(jobs[1].id, error="tcp://192.168.1.50:9100: paper out", retry_at=now + timedelta(minutes=1)),
        JobOutcome(jobs[2].id, error="tcp://192.168.1.50:9100: not printed within 1:00:00, given up"),
    ])  # fmt: skip
    code, body = healthz(client)
    assert code == 200  # a printer problem does not stop sales: warn, not fail
    assert body["status"] == "warn"
    [warning] = findings(body, "printer", "warn")
    assert (warning["company"], warning["branch"]) == (RFC_A, BRANCH_A)
    assert "2 slips waiting for the printer, last error: tcp://192.168.1.50:9100: paper out" in warning["detail"]
    assert "1 slip not printed in the last 24 h" in warning["detail"]
    assert "given up" in warning["detail"]


def test_scheduler_a_failing_job_warns_and_another_process_holding_the_lock_is_fine(client, agent, tmp_path):
    from sync.signing import Signers

    signers = Signers(agent.config, agent.data_dir, "sandbox")
    scheduler = Scheduler(agent.data_dir, {"expire": (lambda: None, 60), "global-invoice": (lambda: None, 300)})
    assert scheduler.lock.acquire()
    try:
        # What service.background.Background gives the agent, its scheduler not started.
        agent.background = SimpleNamespace(scheduler=scheduler, signers=signers)
        # Not run yet: the agent is starting.
        assert {c["status"] for c in findings(healthz(client)[1], "scheduler")} == {"ok"}

        def broken():
            raise RuntimeError("the sandbox CSD expired")

        scheduler._runner("expire", lambda: None)()
        scheduler._runner("global-invoice", broken)()  # what APScheduler calls every sweep
        code, body = healthz(client)
        assert code == 200
        by_job = {c["detail"].split(":")[0]: c for c in findings(body, "scheduler")}
        assert by_job["job expire"]["status"] == "ok"
        assert by_job["job global-invoice"]["status"] == "warn"
        assert "failed: the sandbox CSD expired" in by_job["job global-invoice"]["detail"]

        # A second agent on the same data directory: the first one runs the jobs, that is fine.
        second = Scheduler(agent.data_dir, {"expire": (lambda: None, 60)})
        agent.background = SimpleNamespace(scheduler=second, signers=signers)
        [other] = findings(healthz(client)[1], "scheduler")
        assert other["status"] == "ok" and "another agent process" in other["detail"]
    finally:
        agent.background = None
        scheduler.lock.release()


def company_a_with_csd(tmp_path, **csd):
    """The test configuration with company A signing with a CSD from csd_factory; the
    password in a file, like a store keeps it."""
    cer, key, password = make_csd(tmp_path / "csd", **csd)
    (tmp_path / "csd" / "password.txt").write_text(password + "\n")
    path = write_config(tmp_path)
    text = path.read_text().replace(
        'portal_url = "https://facturacion.example.com/{company}/{branch}/{ticket}"\n',
        'portal_url = "https://facturacion.example.com/{company}/{branch}/{ticket}"\n'
        f'csd = {{ cer = "{cer.as_posix()}", key = "{key.as_posix()}", password_file = "csd/password.txt" }}\n', 1)
    path.write_text(text)
    return path, cer, key, password


def ops_client_for(config_path):
    app = with_ops(create_app(load_config(config_path)))
    app.config["TESTING"] = True
    return app


def test_a_csd_close_to_its_end_warns_with_the_date(tmp_path):
    path, cer, key, password = company_a_with_csd(tmp_path, days_valid=20)
    app = ops_client_for(path)
    try:
        response = app.test_client().get("/healthz")
        body = json.loads(response.data)
        assert response.status_code == 200
        [csd] = findings(body, "csd", "warn")
        assert csd["company"] == RFC_A
        ends = (datetime.now(timezone.utc) - timedelta(days=1) + timedelta(days=20)).strftime("%Y-%m-%d")
        assert f"expires on {ends}" in csd["detail"]
        assert_no_secrets(response.get_data(as_text=True), str(cer), str(key), password)
    finally:
        app.config["AGENT"].close()


def test_an_expired_csd_fails_without_showing_its_files_or_password(tmp_path):
    path, cer, key, password = company_a_with_csd(
        tmp_path, not_before=datetime.now(timezone.utc) - timedelta(days=400), days_valid=365)
    app = ops_client_for(path)
    try:
        response = app.test_client().get("/healthz")
        body = json.loads(response.data)
        assert response.status_code == 503
        [csd] = findings(body, "csd", "fail")
        assert csd["company"] == RFC_A
        assert "expired" in csd["detail"] and "the .cer file" in csd["detail"]
        raw = response.get_data(as_text=True)
        assert_no_secrets(raw, str(cer), str(key), cer.name, password, str(tmp_path))
    finally:
        app.config["AGENT"].close()


def test_facturapi_sync_failing_and_stopped_tickets_warn_without_calling_facturapi(tmp_path, facturapi):
    app = ops_client_for(write_config(tmp_path, facturapi_url=facturapi.url))
    agent = app.config["AGENT"]
    client = app.test_client()
    try:
        code, body = healthz(client)
        assert code == 200
        ok = {c["branch"]: c for c in findings(body, "upstream") if c["company"] == RFC_A}
        assert set(ok) == {BRANCH_A, BRANCH_A2}
        assert "facturapi (test key" in ok[BRANCH_A]["detail"] and ok[BRANCH_A]["status"] == "ok"

        assert put_json(client, f"/{KEY_A}/tickets", ticket_body("S1")).status_code == 200
        pushed = datetime(2026, 11, 21, 17, 0)
        agent.receipts.note(KEY_A, BRANCH_A, pushed=pushed)
        agent.receipts.note(KEY_A, BRANCH_A, error="POST /receipts: cannot connect (connection refused)",
                            at=pushed + timedelta(minutes=40))  # fmt: skip
        agent.receipts.claim([KEY_A], datetime.now(timezone.utc).replace(tzinfo=None))
        [claimed] = agent.receipts.due([KEY_A], datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=1))
        agent.receipts.stop(claimed.ticket_id, "Facturapi's receipt totals 10.00, the ticket 12.36")

        code, body = healthz(client)
        assert code == 200
        [warning] = findings(body, "upstream", "warn")
        assert (warning["company"], warning["branch"]) == (RFC_A, BRANCH_A)
        assert "1 ticket stopped" in warning["detail"]
        assert ("sync failing since 2026-11-21 17:00:00 UTC: last error 2026-11-21 17:40:00 UTC: POST /receipts: "
                "cannot connect") in warning["detail"]
        assert_no_secrets(client.get("/healthz").get_data(as_text=True), FACTURAPI_KEY_A, "sk_test_")
        assert facturapi.requests == []  # /healthz reads what the sync noted; it never asks Facturapi
    finally:
        agent.close()


def test_only_get(client):
    assert client.post("/healthz").status_code == 405
    assert client.head("/healthz").status_code in (200, 503)


def test_status_starts_with_the_same_health_summary(config_path, monkeypatch):
    from click.testing import CliRunner

    import agent.health
    from agent.config import DEFAULT_CONFIG_ENV
    from service.cli import cli

    real = agent.health.shutil.disk_usage
    monkeypatch.setattr(agent.health.shutil, "disk_usage", lambda path: real(path)._replace(free=50 * 1024**2))
    result = CliRunner(env={DEFAULT_CONFIG_ENV: None}).invoke(cli, ["status", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "health: fail: fail disk (details below and in GET /healthz)"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_on_postgresql_the_wal_check_is_the_servers_durability(client, agent, database_url):
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("H9")).status_code == 200
    code, body = healthz(client)
    assert code == 200 and body["status"] == "ok"
    [wal] = findings(body, "wal")
    assert wal["status"] == "ok" and "fsync and synchronous_commit on" in wal["detail"]
    password = urlsplit(database_url).password
    assert f":{password}@" not in json.dumps(body)
    # A server that acknowledges commits before they reach its disk breaks the 200's
    # promise: said, on this connection's own setting.
    agent.db.execute_sql("SET synchronous_commit = off")
    code, body = healthz(client)
    [wal] = findings(body, "wal")
    assert wal["status"] == "warn" and "synchronous_commit = off" in wal["detail"]
