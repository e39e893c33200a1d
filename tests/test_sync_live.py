"""A real `ticket-agent serve` on Facturapi (the fake): the POS never waits on the
internet, the background pusher catches up by itself, and `sync --once` and `status`
show the backlog."""
from __future__ import annotations

import requests
from click.testing import CliRunner

from helpers import AUTH_A, FACTURAPI_KEY_A, KEY_A, dumps, free_port, start_server, stop_server, ticket_body, write_config

from agent.app import create_app
from agent.config import DEFAULT_CONFIG_ENV, load_config
from service.cli import cli


def put(port, number):
    return requests.put(f"http://127.0.0.1:{port}/{KEY_A}/tickets", data=dumps(ticket_body(number, "116.00")),
                        headers={**AUTH_A, "Content-Type": "application/json"}, timeout=10)  # fmt: skip


def test_sales_are_stored_while_facturapi_hangs_and_reach_it_once_it_answers(tmp_path, facturapi):
    port = free_port()
    config = write_config(tmp_path, port=port, facturapi_url=facturapi.url, qr_wait=1)
    facturapi.stall(path="/receipts")
    proc = start_server(["--config", str(config)], tmp_path, port)
    try:
        assert put(port, "W-1").status_code == 200
        facturapi.wait_for(lambda f: f.stalled >= 1)  # the pusher is stuck inside Facturapi
        for i in range(2, 6):  # and the POS goes on selling, answered at once
            response = put(port, f"W-{i}")
            assert (response.status_code, response.text.strip()) == (200, "se guardo correctamente")
        assert facturapi.stalled >= 1  # still hanging: none of those waited for it
        facturapi.release()
        facturapi.wait_for(lambda f: len(f.receipts_by_idempotency_key(FACTURAPI_KEY_A)) == 5, timeout=30)
    finally:
        facturapi.release()
        stop_server(proc)
    assert set(facturapi.receipts_by_idempotency_key(FACTURAPI_KEY_A).values()) == {1}


def test_sync_once_and_status_show_the_backlog_per_branch(tmp_path, facturapi):
    config = write_config(tmp_path, facturapi_url=facturapi.url)
    runner = CliRunner(env={DEFAULT_CONFIG_ENV: None})
    app = create_app(load_config(config))
    client = app.test_client()
    for number in ("Y-1", "Y-2"):
        assert client.put(f"/{KEY_A}/tickets", data=dumps(ticket_body(number, "116.00")),
                          headers={**AUTH_A, "Content-Type": "application/json"}).status_code == 200  # fmt: skip
    app.config["AGENT"].close()

    facturapi.down()
    result = runner.invoke(cli, ["sync", "--once", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "Sent 0 receipts" in result.output
    assert "backlog 0 unsent, 2 retrying, 0 stopped" in result.output
    assert "last push never" in result.output and "cannot connect" in result.output

    status = runner.invoke(cli, ["status", "--config", str(config)])
    assert status.exit_code == 0, status.output
    assert "facturapi (test key), backlog 0 unsent, 2 retrying" in status.output
    assert FACTURAPI_KEY_A not in status.output and FACTURAPI_KEY_A not in result.output

    facturapi.up()
    # the line is back: --once sends them now, not at their retry time
    result = runner.invoke(cli, ["sync", "--once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "Sent 2 receipts, 0 stopped" in result.output
    assert "backlog 0 unsent, 0 retrying, 0 stopped; last push 20" in result.output
    assert len(facturapi.receipts_by_idempotency_key(FACTURAPI_KEY_A)) == 2


def test_a_missing_key_stops_serve_at_start_with_a_clear_message(tmp_path, facturapi):
    port = free_port()
    config = write_config(tmp_path, port=port, facturapi_url=facturapi.url)
    (tmp_path / "facturapi.key").write_text("", encoding="utf-8")
    result = CliRunner(env={DEFAULT_CONFIG_ENV: None}).invoke(cli, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "Cannot use Facturapi: no Facturapi secret key in the file" in result.output
