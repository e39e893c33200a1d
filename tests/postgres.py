"""The PostgreSQL server the tests that run on both databases use.

`.ci/run` starts Debian's PostgreSQL on loopback and names a database the tests may wipe
in TICKET_AGENT_TEST_POSTGRES; each test gets it with an empty schema, as a test on
SQLite gets an empty data directory.
"""
from __future__ import annotations

import os

import pytest

ENV = "TICKET_AGENT_TEST_POSTGRES"


def test_url() -> str:
    """The database's address, or the test skips (fails under CI, where it must exist)."""
    url = os.environ.get(ENV, "")
    if not url:
        message = f"no PostgreSQL for the tests: {ENV} names none (.ci/run starts one)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


def reset(url: str) -> None:
    """Drop every table: the next agent to open it migrates an empty database."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        # A leftover session of an earlier test holding a lock must fail this, not hang it.
        conn.execute("SET lock_timeout = '10s'")
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


def fresh_url() -> str:
    url = test_url()
    reset(url)
    return url


def connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)
