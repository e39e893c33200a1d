from __future__ import annotations

import pytest

from helpers import write_config

from agent.app import create_app
from agent.config import load_config


@pytest.fixture
def runner():
    """The CLI, as `ticket-agent` runs it; the configuration variable is removed so only
    what a test sets is seen."""
    from click.testing import CliRunner

    from agent.config import DEFAULT_CONFIG_ENV

    return CliRunner(env={DEFAULT_CONFIG_ENV: None})


def pytest_generate_tests(metafunc):
    # A module marked both_databases runs each of its tests on SQLite and on PostgreSQL.
    if "database_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_databases"):
        chosen = any("database_url" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize"))
        if not chosen:  # a test that names its database itself keeps it
            metafunc.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def database_url(request):
    """"" for the SQLite file in the test's data directory, else the address of an empty
    PostgreSQL database (tests/postgres.py)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return ""
    import postgres

    return postgres.fresh_url()


@pytest.fixture
def config_path(tmp_path, database_url):
    return write_config(tmp_path, database_url=database_url)


@pytest.fixture
def config(config_path):
    return load_config(config_path)


@pytest.fixture
def app(config):
    app = create_app(config)
    app.config["TESTING"] = True
    yield app
    app.config["AGENT"].close()


@pytest.fixture
def agent(app):
    return app.config["AGENT"]


@pytest.fixture
def store(agent):
    return agent.store


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def facturapi():
    """A fake Facturapi on loopback; a request it had to refuse as invalid fails the test."""
    from fake_facturapi import FakeFacturapi

    with FakeFacturapi() as fake:
        yield fake
        fake.assert_no_invalid_requests()


@pytest.fixture
def cloud(tmp_path, facturapi, database_url):
    """Company A on Facturapi (the fake), company B on the sandbox: the agent and its
    sync parts, without background threads; tests run the rounds themselves."""
    from helpers import write_config
    from service.background import Sync

    config = load_config(write_config(tmp_path, facturapi_url=facturapi.url, database_url=database_url))
    app = create_app(config)
    app.config["TESTING"] = True
    agent = app.config["AGENT"]
    sync = Sync(agent)
    sync.app, sync.agent, sync.fake = app, agent, facturapi
    yield sync
    sync.pusher.stop()
    agent.close()
