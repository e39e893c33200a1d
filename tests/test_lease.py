"""Agent processes sharing a PostgreSQL database take turns at the scheduled sweeps: a
lease the server drops when its holder's connection goes (agent/db.py PgPresence)."""
from __future__ import annotations

import time

import pytest

import postgres

from agent.db import PgPresence
from service.scheduler import Lease, Scheduler


@pytest.fixture
def url():
    return postgres.fresh_url()


def eventually(check, seconds=10.0):
    """Poll until check() is true; the server ends a closed session a moment later."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "still not true after %s s" % seconds
        time.sleep(0.02)
    return True


def test_one_process_holds_the_lease_and_another_takes_it_when_it_dies(url):
    first, second = PgPresence(url, "host:1:a"), PgPresence(url, "host:2:b")
    try:
        assert first.try_lease("scheduler")
        assert not second.try_lease("scheduler")
        assert second.alive("host:1:a") and first.alive("host:2:b")
        first.close()  # what the server sees when the process is killed: its socket closes
        eventually(lambda: second.try_lease("scheduler"))
        assert not second.alive("host:1:a")
        assert second.alive("host:2:b")  # itself
    finally:
        first.close()
        second.close()


def test_a_lease_lost_with_its_connection_stops_the_sweeps_there(url):
    ran = []
    holder = PgPresence(url, "host:1:a")
    other = PgPresence(url, "host:2:b")
    scheduler = Scheduler(None, {"sweep": (lambda: ran.append(1), 3600)}, lock=Lease(holder))
    try:
        scheduler.start()
        eventually(lambda: ran == [1])  # taken at start, run at once
        # The server restarts, or an administrator ends the session: the lease is gone.
        with postgres.connect(url) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (holder._conn.info.backend_pid,))
        eventually(lambda: other.try_lease("scheduler"))  # another process may take it now...
        scheduler.run_now()
        scheduler._runner("sweep", lambda: ran.append(2))()  # ...so the next sweep here does not run
        assert ran == [1]
        assert not scheduler.running_jobs  # it waits for its turn again...
        other.close()
        eventually(scheduler._take_jobs)  # ...what its take-over check does every 10 s
        eventually(lambda: ran == [1, 1])  # and then sweeps again, on its new connection
    finally:
        scheduler.stop()
        holder.close()
        other.close()


def test_a_process_whose_connection_dropped_can_still_take_the_lease_later(url):
    waiting, holder = PgPresence(url, "host:1:a"), PgPresence(url, "host:2:b")
    try:
        assert holder.try_lease("scheduler")
        with postgres.connect(url) as admin:  # a server restart, as the waiting process sees it
            admin.execute("SELECT pg_terminate_backend(%s)", (waiting._conn.info.backend_pid,))
        with pytest.raises(Exception):
            waiting.try_lease("scheduler")  # the take-over check that met the dropped connection
        holder.close()  # then the holder dies
        eventually(lambda: waiting.try_lease("scheduler"))  # on a new connection
        assert waiting.still_holds("scheduler")
        assert not waiting.alive("host:2:b")
    finally:
        waiting.close()
        holder.close()
