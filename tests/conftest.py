"""Fixtures shared by the WSGI-level tests: a fresh app, data directory and database per test.

`pytest --metadata=postgresql` runs them on PostgreSQL (tests/run.sh does that for tests/server and
tests/middleware after the main run): the `config` fixture then names a fresh PostgreSQL database of the test's own,
and so does every app a test builds from a Config of its own that names no database (`_metadata_backend`).
"""

from __future__ import annotations

import dataclasses

import pytest
import webtest

from dockyard.server.app import create_app
from dockyard.server.config import Config
from pg_server import new_postgresql_server, postgresql, postgresql_url  # noqa: F401  (fixtures for every test)


def pytest_addoption(parser):
    parser.addoption("--metadata", choices=("sqlite", "postgresql"), default="sqlite",
                     help="metadata backend of the WSGI-level tests' apps (default sqlite)")


@pytest.fixture
def metadata_backend(request) -> str:
    return request.config.getoption("--metadata")


@pytest.fixture
def test_database(request, metadata_backend) -> str:
    """The `database` setting of this test's apps: empty (SQLite in the data directory) or a fresh PostgreSQL."""
    if metadata_backend == "postgresql":
        return request.getfixturevalue("postgresql_url")
    return ""


@pytest.fixture(autouse=True)
def _metadata_backend(request, monkeypatch):
    """With --metadata=postgresql, apps built from a Config that names no database open this test's PostgreSQL
    database (the real driver, not a stand-in); their pools are closed when the test ends."""
    if request.config.getoption("--metadata") != "postgresql":
        yield
        return
    from dockyard.server import app as app_module
    from dockyard.server.metadata import open_metadata

    url = request.getfixturevalue("test_database")
    opened = []

    def open_on_postgresql(config, **kwargs):
        metadata = open_metadata(config if config.database else dataclasses.replace(config, database=url), **kwargs)
        opened.append(metadata)
        return metadata

    monkeypatch.setattr(app_module, "open_metadata", open_on_postgresql)
    yield
    for metadata in opened:
        metadata.close()


@pytest.fixture
def config(tmp_path, test_database) -> Config:
    return Config(data=str(tmp_path / "data"), database=test_database)


@pytest.fixture
def app(config):
    app = create_app(config)
    yield app
    app.registry.close()


@pytest.fixture
def client(app) -> webtest.TestApp:
    return webtest.TestApp(app)
