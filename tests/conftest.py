"""Fixtures shared by the WSGI-level tests: a fresh app, data directory and database per test.

`pytest --metadata=postgresql` runs them on PostgreSQL (tests/run.sh does that for tests/server and
tests/middleware after the main run): the `config` fixture then names a fresh PostgreSQL database of the test's own,
and so does every app a test builds from a Config of its own that names no database (`_metadata_backend`).

The real S3 store (OpenStack Swift, tests/swift_store.py) that the contract and end-to-end tests of the s3 driver
use is here too: one per test session, started on first use, a bucket of its own for each test.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import webtest

from dockyard.server.app import create_app
from dockyard.server.config import Config
from pg_server import (  # noqa: F401  (fixtures for every test)
    module_postgresql_server, new_postgresql_server, postgresql, postgresql_url)
from swift_store import SwiftStore


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


@pytest.fixture(scope="session")
def swift():
    """One real Swift (s3api + tempauth) on 127.0.0.1 for the whole session, under a temp directory. Missing
    packages fail the test with CI=true and skip it elsewhere."""
    root = Path(tempfile.mkdtemp(prefix="dy-swift-"))
    try:
        store = SwiftStore.start(root)
    except FileNotFoundError as exc:
        shutil.rmtree(root, ignore_errors=True)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{exc} (CI=true: a missing tool is a failure)", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield store
    finally:
        complaints = store.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not complaints, complaints


@pytest.fixture
def s3_bucket(swift) -> str:
    """A new, empty bucket of this test's own in the session's Swift."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    swift.create_bucket(name)
    return name
