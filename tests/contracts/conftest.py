"""The implementations every contract suite runs against: one fixture per interface, parametrized by driver.

A driver joins by adding a factory here; the suites themselves never name a driver (habit 12: one contract suite
per interface, like Distribution's storage-driver suite).
"""

from __future__ import annotations

import pytest

from dockyard.server.metadata.sqlite import SqliteMetadata
from dockyard.server.storage.filesystem import FilesystemStore


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


BLOB_STORES = {"filesystem": filesystem_store}
METADATA = {"postgresql": postgresql_metadata, "sqlite": sqlite_metadata}


@pytest.fixture(params=sorted(BLOB_STORES))
def make_store(request, tmp_path):
    """make_store(block_size=...) -> a fresh, empty store of the parametrized driver; every call in one test
    returns another handle on the same store (a second worker or host)."""
    created = []

    def make(block_size: int = 4096):
        store = BLOB_STORES[request.param](tmp_path, block_size)
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
