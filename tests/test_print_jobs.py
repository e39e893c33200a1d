"""Every stored ticket gets its slip queued in the same transaction, exactly once."""
from __future__ import annotations

from datetime import timedelta

import pytest

from helpers import AUTH_A, BRANCH_A, KEY_A, dumps, put_json, ticket_body

from agent.models import JOB_FAILED, JOB_PENDING, JOB_PRINTED, JOB_PRINTING, PrintJob
from agent.store import utcnow
from printer.worker import JobOutcome

pytestmark = pytest.mark.both_databases  # tests/postgres.py


def jobs(store, number, branch=BRANCH_A):
    ticket = store.ticket(KEY_A, branch, number)
    return list(PrintJob.select().where(PrintJob.ticket == ticket.id).order_by(PrintJob.id))


def test_a_stored_ticket_has_one_pending_job(client, store):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P1"))
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P1"))  # identical re-send
    [job] = jobs(store, "P1")
    assert (job.state, job.reason, job.printer, job.attempts) == (JOB_PENDING, "sale", "", 0)


def test_a_refused_ticket_queues_nothing(client):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("bad number"))
    assert PrintJob.select().count() == 0


def test_a_replacement_reuses_a_pending_job_and_queues_one_after_printing(client, store, agent):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P2", "10.00"))
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P2", "20.00"))
    assert len(jobs(store, "P2")) == 1  # still pending: it will print the new amount
    [claimed] = agent.print_queue.claim_due(utcnow())
    agent.print_queue.finish([JobOutcome(claimed.id, printed_at=utcnow())])
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P2", "30.00"))
    assert [(j.reason, j.state) for j in jobs(store, "P2")] == [("sale", JOB_PRINTED), ("replaced", JOB_PENDING)]


def test_the_pos_picks_a_lane_printer(tmp_path):
    from helpers import write_config

    from agent.app import create_app
    from agent.config import load_config

    path = write_config(tmp_path)
    text = path.read_text().replace('global_series = "FG"\nprinter = "file:prints/"',
                                    'global_series = "FG"\nprinter = "none"\nprinters = { caja2 = "tcp://127.0.0.1:9" }')
    path.write_text(text)
    app = create_app(load_config(path))
    try:
        client, store = app.test_client(), app.config["AGENT"].store
        assert put_json(client, f"/{KEY_A}/tickets", ticket_body("L1", impresora="caja2")).status_code == 200
        assert [j.printer for j in jobs(store, "L1")] == ["caja2"]
        # The branch's own printer is "none": a ticket without impresora queues nothing.
        put_json(client, f"/{KEY_A}/tickets", ticket_body("L2"))
        assert jobs(store, "L2") == []
        response = put_json(client, f"/{KEY_A}/tickets", ticket_body("L3", impresora="caja9"))
        assert response.status_code == 400
        assert response.get_data(as_text=True) == (
            f"impresora: la impresora caja9 no existe en la sucursal {BRANCH_A} (impresoras: caja2)"
        )
    finally:
        app.config["AGENT"].close()


def test_claiming_marks_jobs_printing_and_counts_attempts(client, store, agent):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P3"))
    [due] = agent.print_queue.claim_due(utcnow())
    assert (due.number, due.branch, due.attempts, str(due.total)) == ("P3", BRANCH_A, 1, "12.360000")
    assert jobs(store, "P3")[0].state == JOB_PRINTING
    assert agent.print_queue.claim_due(utcnow()) == []  # nobody claims it twice


def test_a_failed_try_waits_for_its_retry_time(client, store, agent):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P4"))
    now = utcnow()
    [due] = agent.print_queue.claim_due(now)
    agent.print_queue.finish([JobOutcome(due.id, error="refused", retry_at=now + timedelta(seconds=30))])
    assert agent.print_queue.claim_due(now + timedelta(seconds=29)) == []
    [again] = agent.print_queue.claim_due(now + timedelta(seconds=30))
    assert again.attempts == 2
    [job] = jobs(store, "P4")
    assert job.last_error == "refused"


def started_again(agent):
    """A crash and a start-up, as the print queue sees them: the process that claimed the
    jobs is gone, and this one has a new identity."""
    from agent.db import presence

    agent.presence.close()
    agent.presence = agent.print_queue.presence = presence(agent.config.database.url, "after-the-crash")


def test_a_job_cut_off_by_a_crash_is_not_printed_twice(client, store, agent):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P5"))
    agent.print_queue.claim_due(utcnow())  # ...and the agent dies before recording the outcome
    started_again(agent)
    assert agent.print_queue.recover_interrupted() == 1
    [job] = jobs(store, "P5")
    assert job.state == JOB_FAILED
    assert "not printed again automatically" in job.last_error
    assert agent.print_queue.claim_due(utcnow() + timedelta(days=1)) == []


def test_reprint_queues_another_job(client, store, agent):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P6"))
    woken = []
    agent.on_print_job = lambda: woken.append(True)
    response = client.post(f"/{KEY_A}/tickets/{BRANCH_A}/P6/reimprimir", headers=AUTH_A)
    assert (response.status_code, response.get_data(as_text=True)) == (
        202, f"Se reimprimira el ticket P6 de la sucursal {BRANCH_A}"
    )
    assert [j.reason for j in jobs(store, "P6")] == ["sale", "reprint"]
    assert woken


@pytest.mark.parametrize(
    "path, status, text",
    [
        (f"/{KEY_A}/tickets/{BRANCH_A}/NOPE/reimprimir", 404, f"Ticket numero: NOPE, sucursal: {BRANCH_A}, no existe"),
        (f"/{KEY_A}/tickets/otra/P7/reimprimir", 400, "sucursal: la sucursal otra no existe para esta empresa"),
    ],
)
def test_reprint_of_what_does_not_exist(client, path, status, text):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P7"))
    response = client.post(path, headers=AUTH_A)
    assert (response.status_code, response.get_data(as_text=True)) == (status, text)


def test_reprint_needs_the_company_credentials(client):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P8"))
    assert client.post(f"/{KEY_A}/tickets/{BRANCH_A}/P8/reimprimir").status_code == 401


def test_reprint_on_a_named_printer_must_exist(client):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("P9"))
    response = client.post(f"/{KEY_A}/tickets/{BRANCH_A}/P9/reimprimir", data=dumps({"impresora": "x"}),
                           headers={**AUTH_A, "Content-Type": "application/json"})
    assert response.status_code == 400


def test_an_idle_queue_is_polled_without_writing(client, agent):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("I1"))
    [due] = agent.print_queue.claim_due(utcnow())
    commits = agent.writer.commits
    for _ in range(5):
        assert agent.print_queue.claim_due(utcnow()) == []
    assert agent.writer.commits == commits
