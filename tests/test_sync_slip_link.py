"""The slip of a Facturapi ticket carries the receipt's own self-invoice link when it
arrives within the short wait, and the company's portal URL when it does not."""
from __future__ import annotations

import io
from datetime import timedelta

import pytest
import zxingcpp
from PIL import Image

from helpers import AUTH_A, BRANCH_A, KEY_A, put_json, ticket_body, write_config

from agent.app import create_app
from agent.config import load_config
from agent.slips import render_job
from agent.store import utcnow
from service.background import Sync

pytestmark = pytest.mark.both_databases  # tests/postgres.py


@pytest.fixture
def waiting(tmp_path, facturapi):
    config = load_config(write_config(tmp_path, facturapi_url=facturapi.url, qr_wait=3))
    app = create_app(config)
    agent = app.config["AGENT"]
    links = []
    sync = Sync(agent, on_link=lambda: links.append(True))
    sync.app, sync.agent, sync.fake, sync.links = app, agent, facturapi, links
    yield sync
    sync.pusher.stop()
    agent.close()


def sell(sync, number):
    response = put_json(sync.app.test_client(), f"/{KEY_A}/tickets", ticket_body(number, "116.00"), AUTH_A)
    assert response.status_code == 200


def printed_url(config, job) -> str:
    rendered = render_job(config, job)
    [result] = zxingcpp.read_barcodes(Image.open(io.BytesIO(rendered.preview)).convert("L"))
    return result.text


def test_the_slip_waits_for_the_receipts_link_and_prints_it(waiting):
    sell(waiting, "S-1")
    assert waiting.agent.print_queue.claim_due(utcnow()) == []  # the slip waits for its link
    assert waiting.pusher.run_once().pushed == 1
    assert waiting.links == [True]  # the print worker is woken at once
    [job] = waiting.agent.print_queue.claim_due(utcnow())
    url = next(iter(waiting.fake.organization("sk_test_companyA0000000000000000").receipts.values()))["self_invoice_url"]
    assert job.link == url
    assert printed_url(waiting.agent.config, job) == url
    # a POS that prints by itself gets the same link
    response = waiting.app.test_client().get(f"/{KEY_A}/tickets/{BRANCH_A}/S-1/qr", headers=AUTH_A)
    assert response.headers["X-Portal-URL"] == url


def test_without_the_link_in_time_the_slip_prints_the_portal_url(waiting):
    waiting.fake.down()
    sell(waiting, "S-2")
    waiting.pusher.run_once()
    assert waiting.agent.print_queue.claim_due(utcnow()) == []
    [job] = waiting.agent.print_queue.claim_due(utcnow() + timedelta(seconds=3))
    assert job.link is None
    assert printed_url(waiting.agent.config, job) == f"https://facturacion.example.com/{KEY_A}/{BRANCH_A}/S-2"


def test_only_facturapi_companies_make_their_slips_wait(waiting):
    # company B is on the sandbox: no link will come, so its slip does not wait
    from helpers import AUTH_B, BRANCH_B, KEY_B

    body = ticket_body("S-3", "116.00", branch=BRANCH_B)
    assert put_json(waiting.app.test_client(), f"/{KEY_B}/tickets", body, AUTH_B).status_code == 200
    assert waiting.agent.link_wait(KEY_B) == 0 and waiting.agent.link_wait(KEY_A) == 3
