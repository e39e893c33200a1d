"""POS passwords may be kept hashed in the configuration, and are compared in constant time."""
from __future__ import annotations

import pytest
from helpers import KEY_A, basic, dumps, ticket_body, write_config

from agent import passwords
from agent.app import create_app
from agent.config import ConfigError, load_config
from service.cli import cli

TICKETS = f"/{KEY_A}/tickets"


def hashed_config(tmp_path, password_hash: str):
    path = write_config(tmp_path)
    text = path.read_text()
    # Company A's password is "tepox" in the test configuration.
    assert text.count('password = "tepox"') == 1
    path.write_text(text.replace('password = "tepox"', f'password_hash = "{password_hash}"'))
    return path


@pytest.fixture
def hashed_app(tmp_path):
    app = create_app(load_config(hashed_config(tmp_path, passwords.make("tepox"))))
    yield app
    app.config["AGENT"].close()


def sell(client, number, password="tepox"):
    return client.put(TICKETS, data=dumps(ticket_body(number)),
                      headers={**basic("tepox", password), "Content-Type": "application/json"})


def test_the_pos_sends_the_password_the_file_holds_its_hash(hashed_app):
    client = hashed_app.test_client()
    assert sell(client, "H1").status_code == 200
    assert sell(client, "H2", password="tepox ").status_code == 401
    assert sell(client, "H3", password="").status_code == 401


def test_the_key_derivation_is_paid_once_per_credential(hashed_app, monkeypatch):
    calls = []
    real = passwords.matches
    monkeypatch.setattr(passwords, "matches", lambda h, p: calls.append(p) or real(h, p))
    client = hashed_app.test_client()
    for n in range(5):
        assert sell(client, f"H{n}").status_code == 200
    assert calls == ["tepox"]
    # A wrong password is derived every time: nothing wrong is remembered.
    for n in range(3):
        sell(client, f"W{n}", password="nope")
    assert calls == ["tepox", "nope", "nope", "nope"]


def test_the_panel_accepts_the_hashed_password(hashed_app):
    response = hashed_app.test_client().post("/panel/entrar", data={"usuario": "tepox", "contrasena": "tepox"})
    assert response.status_code == 302


def test_the_cli_prints_a_line_to_paste(runner, tmp_path):
    result = runner.invoke(cli, ["hash-password", "--stdin"], input="tepox\n")
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith('password_hash = "scrypt:') and "tepox" not in line
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('password = "tepox"', line))
    app = create_app(load_config(path))
    try:
        assert sell(app.test_client(), "C1").status_code == 200
    finally:
        app.config["AGENT"].close()


def test_the_cli_asks_twice_without_echo(runner):
    result = runner.invoke(cli, ["hash-password"], input="tepox\ntepox\n")
    assert result.exit_code == 0 and "tepox" not in result.output.replace("POS password", "")
    result = runner.invoke(cli, ["hash-password"], input="tepox\notra\ntepox\ntepox\n")
    assert "do not match" in result.output


def test_an_empty_password_is_refused(runner):
    result = runner.invoke(cli, ["hash-password", "--stdin"], input="\n")
    assert result.exit_code == 2 and "empty" in result.output


@pytest.mark.parametrize("value, problem", [
    ("tepox", "ticket-agent hash-password"),
    ("scrypt:32768:8:1$onlysalt", "ticket-agent hash-password"),
])
def test_something_that_is_not_a_hash_is_named(tmp_path, value, problem):
    with pytest.raises(ConfigError) as failure:
        load_config(hashed_config(tmp_path, value))
    assert "companies[0].password_hash" in str(failure.value) and problem in str(failure.value)
    assert value not in str(failure.value)  # a misplaced password is never echoed


def test_both_password_and_hash_is_refused(tmp_path):
    path = write_config(tmp_path)
    text = path.read_text().replace('password = "tepox"', f'password = "tepox"\npassword_hash = "{passwords.make("x")}"')
    path.write_text(text)
    with pytest.raises(ConfigError, match="exactly one of password or password_hash"):
        load_config(path)


def test_a_wrong_user_name_still_compares_the_password(config, monkeypatch):
    # No early exit on the user name: both comparisons run whatever the first gave, so
    # the time an answer takes does not say which part of a guess was wrong.
    import agent.config as config_module

    compared = []
    real = config_module.secrets.compare_digest
    monkeypatch.setattr(config_module.secrets, "compare_digest", lambda a, b: compared.append(a) or real(a, b))
    company = config.company(KEY_A)
    assert not company.check_credentials("wrong-user", "wrong-password")
    assert compared == [b"wrong-user", b"wrong-password"]
