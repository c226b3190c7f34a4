"""Fixtures shared by the WSGI-level tests: a fresh app, data directory and database per test; and the real S3 store
(OpenStack Swift, tests/swift_store.py) that the contract and end-to-end tests of the s3 driver use: one per test
session, started on first use, a bucket of its own for each test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import webtest

from swift_store import SwiftStore

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
