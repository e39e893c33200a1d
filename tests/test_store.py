"""The store's own promises: one valid CFDI per ticket, group commit, clean failures."""
from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import BRANCH_A, KEY_A, put_json, ticket_body
from helpers_cfdi import PDF, XML, attach_customer_cfdi, new_cfdi

from agent.models import Cfdi, Ticket
from agent.requests_in import parse_json_object, parse_ticket
from agent.store import REPLACED, STORED_NEW, UNCHANGED, TicketConflict
from agent.writer import StorageUnavailable, Writer

pytestmark = pytest.mark.both_databases  # tests/postgres.py


def new_ticket(config, number, total="12.36"):
    from helpers import dumps

    return parse_ticket(parse_json_object(dumps(ticket_body(number, total)).encode()), config.company(KEY_A), KEY_A)


def test_a_ticket_gets_at_most_one_valid_cfdi(client, store):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("E1"))
    attach_customer_cfdi(store, "E1")
    ticket = store.ticket(KEY_A, BRANCH_A, "E1")
    with pytest.raises(TicketConflict) as refused:
        store.record_cfdi(new_cfdi(kind="global"), [ticket.id], xml=XML, pdf=PDF)
    assert refused.value.status == "FACTURADO"
    assert Cfdi.select().count() == 1


def test_a_cfdi_over_a_taken_ticket_is_refused_whole(client, store):
    for number in ("E2", "E3"):
        put_json(client, f"/{KEY_A}/tickets", ticket_body(number))
    attach_customer_cfdi(store, "E3")
    ids = [store.ticket(KEY_A, BRANCH_A, n).id for n in ("E2", "E3")]
    with pytest.raises(TicketConflict):
        store.record_cfdi(new_cfdi(kind="global"), ids, xml=XML, pdf=PDF)
    assert store.ticket(KEY_A, BRANCH_A, "E2").status == "ALMACENADO"  # not half-applied


def test_concurrent_puts_share_commits_and_store_each_ticket_once(config, store, agent):
    tickets = [new_ticket(config, f"G{i}") for i in range(200)]
    before = agent.writer.commits
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(store.put_ticket, tickets + tickets))
    assert outcomes.count(STORED_NEW) == 200
    assert outcomes.count(UNCHANGED) == 200
    assert Ticket.select().count() == 200
    assert agent.writer.commits - before < 400  # groups formed: fewer commits than changes


def test_same_new_ticket_twice_in_one_group(config, agent):
    from agent.store import _put_tickets

    first, second = new_ticket(config, "S1", "10.00"), new_ticket(config, "S1", "20.00")
    with agent.db.atomic():
        assert _put_tickets([first, second, second]) == [STORED_NEW, REPLACED, UNCHANGED]
    assert Ticket.get(Ticket.number == "S1").total == second.total


class FlakyDb:
    """Wraps the real database; fails the commit on demand, as a full disk does."""

    def __init__(self, db, error):
        self.db, self.error = db, error

    def atomic(self):
        outer = self.db.atomic()
        error = self.error

        class Tx:
            def __enter__(self):
                return outer.__enter__()

            def __exit__(self, kind, value, tb):
                if kind is None:
                    outer.__exit__(sqlite3.OperationalError, error, None)
                    raise error
                return outer.__exit__(kind, value, tb)

        return Tx()


def test_a_failed_commit_answers_every_waiter_and_stores_nothing(config, agent):
    from agent.store import _put_tickets

    writer = Writer(FlakyDb(agent.db, sqlite3.OperationalError("database or disk is full")))
    with pytest.raises(StorageUnavailable) as failure:
        writer.submit(_put_tickets, new_ticket(config, "F1"))
    assert "disk is full" in str(failure.value)
    assert writer.last_error is not None
    assert Ticket.select().count() == 0


def test_one_bad_change_does_not_sink_its_group(agent):
    def op(payloads):
        if "bad" in payloads:
            raise ValueError("bad payload")
        return [p.upper() for p in payloads]

    writer = agent.writer
    slots = []
    barrier = threading.Barrier(3)

    def submit(value):
        barrier.wait()
        try:
            slots.append(writer.submit(op, value))
        except ValueError as exc:
            slots.append(exc)

    threads = [threading.Thread(target=submit, args=(v,)) for v in ("ok", "bad", "fine")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(str(s) for s in slots) == ["FINE", "OK", "bad payload"]


def test_a_stopped_writer_refuses_and_says_so(agent):
    agent.writer.stop()
    with pytest.raises(StorageUnavailable):
        agent.writer.submit(lambda payloads: payloads, 1)
    agent.writer.start()
    assert agent.writer.submit(lambda payloads: payloads, 1) == 1


def test_money_is_exact_in_the_database(client, store, agent):
    put_json(client, f"/{KEY_A}/tickets", ticket_body("M1", "1234567.89"))
    raw = agent.db.execute_sql("SELECT total FROM ticket WHERE number = 'M1'").fetchone()[0]
    assert raw == 1234567890000  # millionths of a peso, an integer
    assert str(store.ticket(KEY_A, BRANCH_A, "M1").total) == "1234567.890000"


def test_the_database_is_wal_and_fully_synchronous(agent):
    # What lets a 200 promise the ticket is on disk: every commit waits for its log.
    if agent.db.kind == "sqlite":
        assert agent.db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert agent.db.execute_sql("PRAGMA synchronous").fetchone()[0] == 2
    else:
        assert agent.db.execute_sql("SHOW synchronous_commit").fetchone()[0] == "on"
        assert agent.db.execute_sql("SHOW fsync").fetchone()[0] == "on"


def test_a_waiter_that_gives_up_gets_a_503_and_the_writer_does_not_jam(agent):
    # The leader is stuck in a slow write (a disk that hangs); a second change waits
    # behind it past its deadline. It is told so, its change is still written once the
    # disk answers, and the writer keeps working afterwards.
    writer = Writer(agent.db, wait_seconds=0.2)
    release, entered = threading.Event(), threading.Event()
    written = []

    def slow(payloads):
        entered.set()
        release.wait(10)
        written.extend(payloads)
        return payloads

    def quick(payloads):
        written.extend(payloads)
        return payloads

    leader = threading.Thread(target=writer.submit, args=(slow, "first"))
    leader.start()
    try:
        deadline_hit = False
        assert entered.wait(10)  # the leader is inside its write
        with pytest.raises(StorageUnavailable, match="did not answer in time"):
            writer.submit(quick, "second")
        deadline_hit = True
    finally:
        release.set()
        leader.join(10)
    assert deadline_hit
    assert writer.submit(quick, "third") == "third"
    assert written == ["first", "second", "third"]


def test_a_customer_name_as_long_as_sat_allows_is_kept_whole(client, store):
    # SAT's Receptor/Nombre takes 300 characters; PostgreSQL enforces a CharField's 255.
    assert put_json(client, f"/{KEY_A}/tickets", ticket_body("LONGNAME")).status_code == 200
    name = ("SOCIEDAD COOPERATIVA DE PRODUCCION PESQUERA Y ACUICOLA " * 6)[:300]
    cfdi = attach_customer_cfdi(store, "LONGNAME", receiver_name=name)
    assert Cfdi.get_by_id(cfdi.id).receiver_name == name
