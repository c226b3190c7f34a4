"""Fixtures shared by the WSGI-level tests: a fresh app, data directory and database per test."""

from __future__ import annotations

import pytest
import webtest

from dockyard.server.app import create_app
from dockyard.server.config import Config


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data=str(tmp_path / "data"))


@pytest.fixture
def app(config):
    return create_app(config)


@pytest.fixture
def client(app) -> webtest.TestApp:
    return webtest.TestApp(app)
