from __future__ import annotations

import pytest

from helpers import write_config

from agent.app import create_app
from agent.config import load_config


@pytest.fixture
def config_path(tmp_path):
    return write_config(tmp_path)


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
