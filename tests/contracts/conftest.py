"""The implementations every contract suite runs against: one fixture per interface, parametrized by driver.

A driver joins by adding a factory here; the suites themselves never name a driver (habit 12: one contract suite
per interface, like Distribution's storage-driver suite).
"""

from __future__ import annotations

import pytest

from dockyard.server.metadata.sqlite import SqliteMetadata
from dockyard.server.storage.filesystem import FilesystemStore
from dockyard.server.storage.s3 import MIN_PART_SIZE, S3Store


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def filesystem_store(tmp_path, block_size: int):
    return FilesystemStore(tmp_path / "store", block_size=block_size)


def sqlite_metadata(request, tmp_path, clock):
    return SqliteMetadata(tmp_path / "registry.db", clock=clock)


def postgresql_metadata(request, tmp_path, clock):
    from dockyard.server.metadata.postgres import PostgresMetadata

    return PostgresMetadata(request.getfixturevalue("postgresql_url"), clock=clock)


METADATA = {"postgresql": postgresql_metadata, "sqlite": sqlite_metadata}


def s3_store(tmp_path, block_size: int, *, swift, s3_bucket):
    """The real store of the session (tests/swift_store.py), a bucket per test, the smallest part S3 allows."""
    return S3Store(s3_bucket, endpoint_url=swift.endpoint, region=swift.region, path_style=True,
                   access_key_id=swift.access_key, secret_access_key=swift.secret_key, part_size=MIN_PART_SIZE,
                   block_size=block_size, timeout=10)


s3_store.fixtures = ("swift", "s3_bucket")  # what the factory needs from pytest, asked for only when it runs

BLOB_STORES = {"filesystem": filesystem_store, "s3": s3_store}


@pytest.fixture(params=sorted(BLOB_STORES))
def make_store(request, tmp_path):
    """make_store(block_size=...) -> a fresh, empty store of the parametrized driver; every call in one test
    returns another handle on the same store (a second worker or host)."""
    created = []

    factory = BLOB_STORES[request.param]
    fixtures = {name: request.getfixturevalue(name) for name in getattr(factory, "fixtures", ())}

    def make(block_size: int = 4096):
        store = factory(tmp_path, block_size, **fixtures)
        created.append(store)
        return store

    yield make
    for store in created:
        store.close()


@pytest.fixture
def store(make_store):
    return make_store()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=sorted(METADATA))
def metadata(request, tmp_path, clock):
    md = METADATA[request.param](request, tmp_path, clock)
    yield md
    md.close()
