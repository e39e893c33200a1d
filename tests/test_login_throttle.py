"""Repeated failed logins from one address are slowed down without locking the real POS out."""
from __future__ import annotations

import logging

import pytest
from helpers import AUTH_A, KEY_A, basic, dumps, ticket_body

from agent.models import Ticket

TICKETS = f"/{KEY_A}/tickets"
ATTACKER = {"REMOTE_ADDR": "10.0.0.66"}
POS = {"REMOTE_ADDR": "10.0.0.7"}
WAIT_TEXT = "Demasiados intentos de acceso fallidos desde esta dirección. Intente de nuevo en {} segundos."


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(agent):
    clock = Clock()
    agent.logins.clock = clock
    return clock


def guess(client, password, environ=ATTACKER, number="G1"):
    return client.put(TICKETS, data=dumps(ticket_body(number)), environ_base=environ,
                      headers={**basic("tepox", password), "Content-Type": "application/json"})


def sell(client, number, environ=POS):
    return client.put(TICKETS, data=dumps(ticket_body(number)), environ_base=environ,
                      headers={**AUTH_A, "Content-Type": "application/json"})


def test_the_eleventh_wrong_password_in_a_minute_waits(client, clock):
    for n in range(10):
        assert guess(client, f"wrong{n}").status_code == 401
    clock.now += 15
    response = guess(client, "wrong10")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "45"  # a minute after the first failure
    assert response.get_data(as_text=True) == WAIT_TEXT.format(45)


def test_a_guess_during_the_wait_is_not_even_checked(client, clock):
    for n in range(10):
        guess(client, f"wrong{n}")
    # The right password from the attacking address gets the same 429: a throttled
    # address learns nothing about its guesses.
    response = guess(client, "tepox")
    assert response.status_code == 429
    assert Ticket.select().count() == 0


def test_after_the_minute_passes_guesses_are_checked_again(client, clock):
    for n in range(10):
        guess(client, f"wrong{n}")
    clock.now += 61
    assert guess(client, "tepox").status_code == 200


def test_the_pos_on_another_address_keeps_selling(client, clock):
    for n in range(30):
        guess(client, f"wrong{n}")
    assert sell(client, "P1").status_code == 200


def test_a_pos_that_sold_from_the_attacked_address_keeps_selling(client, clock):
    # The POS and something misbehaving share one address (a NAT, a terminal beside it).
    assert sell(client, "P1", environ=ATTACKER).status_code == 200
    for n in range(30):
        guess(client, f"wrong{n}")
    assert guess(client, "wrong-again").status_code == 429
    assert sell(client, "P2", environ=ATTACKER).status_code == 200
    assert Ticket.select().count() == 2


def test_a_missing_header_is_not_a_failed_login(client, clock):
    # A browser opening the URL, a health probe: not an attempt at a password.
    for _ in range(20):
        assert client.get(f"/{KEY_A}/cfdis", environ_base=ATTACKER).status_code == 401
    assert guess(client, "tepox").status_code == 200


def test_malformed_headers_and_unknown_keys_count(client, clock):
    for _ in range(5):
        client.get(f"/{KEY_A}/cfdis", environ_base=ATTACKER, headers={"Authorization": "Basic !!!"})
    for _ in range(5):
        client.get("/" + "f" * 40 + "/cfdis", environ_base=ATTACKER, headers=AUTH_A)
    assert client.get(f"/{KEY_A}/cfdis", environ_base=ATTACKER, headers=basic("x", "y")).status_code == 429


def test_the_throttle_is_logged_once_not_per_attempt(client, clock, caplog):
    caplog.set_level(logging.WARNING, logger="agent.logins")
    for n in range(40):
        guess(client, f"wrong{n}")
    throttled = [r for r in caplog.records if "login throttled for 10.0.0.66" in r.getMessage()]
    refused = [r for r in caplog.records if "login refused from 10.0.0.66" in r.getMessage()]
    assert len(throttled) == 1 and len(refused) == 9
    assert "wrong" not in caplog.text  # passwords never reach the log


def test_the_panel_login_is_throttled_too(client, clock):
    for n in range(10):
        response = client.post("/panel/entrar", data={"usuario": "tepox", "contrasena": f"wrong{n}"},
                               environ_base=ATTACKER)
        assert response.status_code == 401
    response = client.post("/panel/entrar", data={"usuario": "tepox", "contrasena": "tepox"}, environ_base=ATTACKER)
    assert response.status_code == 429 and response.headers["Retry-After"] == "60"
    assert WAIT_TEXT.format(60) in response.get_data(as_text=True)
    # The manager at the office PC logs in.
    response = client.post("/panel/entrar", data={"usuario": "tepox", "contrasena": "tepox"}, environ_base=POS)
    assert response.status_code == 302


def test_what_the_agent_remembers_is_bounded(agent, clock, monkeypatch):
    import agent.logins as logins_module

    monkeypatch.setattr(logins_module, "MAX_ADDRESSES", 100)
    for n in range(1000):
        agent.logins.failed(f"10.1.{n // 250}.{n % 250}", "bad credentials")
        agent.logins.succeeded(f"10.2.{n // 250}.{n % 250}", agent.logins.digest(str(n)))
    assert len(agent.logins._failures) == 100 and len(agent.logins._good) == 100

