"""The PostgreSQL driver's digest cache (server/metadata/postgres_cache.py): reads by digest cost no round trip, and
a record taken away by any process on the database (another worker, another node) stops being served as soon as
its notification arrives; a read racing a delete never keeps what it read; without a listener, no cache.

Two `PostgresMetadata` on one database stand for two processes (two nodes): each has its own cache and listener.
"""

from __future__ import annotations

import hashlib
import json
import time

import psycopg
import pytest

from dockyard.server.metadata.postgres import PostgresMetadata, split_url
from dockyard.server.metadata.postgres_cache import LISTENER_NAME, wait_until_live
from dockyard.server.model import NewManifest, StoredBlob

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(name: str) -> StoredBlob:
    return StoredBlob(digest(name.encode()), 10, f"key-{name}")


def manifest_of(*blobs: StoredBlob) -> NewManifest:
    data = json.dumps({"schemaVersion": 2, "layers": [b.digest for b in blobs]}).encode()
    return NewManifest(digest(data), OCI_MANIFEST, data, [b.digest for b in blobs], [])


def eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def nodes(postgresql_url):
    one, two = PostgresMetadata(postgresql_url), PostgresMetadata(postgresql_url)
    yield one, two
    for metadata in (one, two):
        metadata.close()


def cached(metadata: PostgresMetadata, kind: str, repository: str, key: str):
    return metadata.digests.get(kind, repository, key)


def test_reads_by_digest_come_from_the_cache_and_deletes_elsewhere_reach_it(nodes):
    one, two = nodes
    blob, shared = layer("a"), layer("shared")
    two.record_blob("team/app", blob)
    two.record_blob("team/app", shared)
    manifest = manifest_of(shared)
    two.put_manifest("team/app", manifest, "v1")
    assert wait_until_live(one.digests)
    assert one.blob("team/app", blob.digest).size == 10 and one.manifest("team/app", digest=manifest.digest)
    # Now served without asking the database: its answer is in the cache.
    assert cached(one, "b", "team/app", blob.digest) is not None
    assert cached(one, "m", "team/app", manifest.digest) is not None
    assert one.manifest("team/app", tag="v1") and cached(one, "m", "team/app", "v1") is None  # tags move: never

    assert two.unlink_blob("team/app", blob.digest)
    assert eventually(lambda: one.blob("team/app", blob.digest) is None)
    assert two.delete_manifest("team/app", manifest.digest)
    assert eventually(lambda: one.manifest("team/app", digest=manifest.digest) is None)
    # The process that deleted never serves its own delete, not even for a moment.
    assert wait_until_live(two.digests)
    assert two.blob("team/app", shared.digest) is not None and cached(two, "b", "team/app", shared.digest)
    two.delete_repository("team/app")
    assert two.blob("team/app", shared.digest) is None


def test_garbage_collection_empties_every_cache(nodes):
    one, two = nodes
    blob = layer("orphan")
    two.record_blob("team/app", blob)
    assert wait_until_live(one.digests)
    assert one.blob("team/app", blob.digest) is not None and len(one.digests) == 1
    with two.lifecycle() as step:
        assert step.sweep_links(cutoff=time.time() + 60) == 1
    assert eventually(lambda: len(one.digests) == 0)
    assert one.blob("team/app", blob.digest) is None


def test_a_read_racing_a_delete_never_keeps_what_it_read(nodes):
    """The miss noted the generation before its query; the delete's notification arrives before the answer is
    stored: the answer is dropped, or it would be served until the next eviction."""
    one, two = nodes
    blob = layer("racy")
    two.record_blob("team/app", blob)
    assert wait_until_live(one.digests)
    before = one.digests.generation()
    record = one.blob("team/app", blob.digest)  # the query of the read in flight...
    one.digests.gone("*")  # (what one.blob stored is gone: replay the store below as the race has it)
    two.unlink_blob("team/app", blob.digest)  # ...the delete commits...
    assert eventually(lambda: one.digests.generation() > before + 1)  # ...its notification arrives...
    one.digests.put("b", "team/app", blob.digest, record, before)  # ...then the read stores its answer
    assert cached(one, "b", "team/app", blob.digest) is None
    assert one.blob("team/app", blob.digest) is None


def test_without_its_listener_the_cache_is_not_used_until_it_listens_again(nodes, postgresql_url):
    one, two = nodes
    blob = layer("b")
    two.record_blob("team/app", blob)
    assert wait_until_live(one.digests) and wait_until_live(two.digests)
    one.blob("team/app", blob.digest)
    assert len(one.digests) == 1
    with psycopg.connect(split_url(postgresql_url)[0], autocommit=True) as admin:
        killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
                               "AND datname = current_database()", (LISTENER_NAME,)).fetchall()
    assert len(killed) == 2  # one listener per process
    assert eventually(lambda: not one.digests.live, timeout=5)
    assert len(one.digests) == 0 and cached(one, "b", "team/app", blob.digest) is None
    two.unlink_blob("team/app", blob.digest)  # while nobody listens: must not be served from anything stale
    assert one.blob("team/app", blob.digest) is None
    assert eventually(lambda: one.digests.live, timeout=10)  # back, empty
    two.record_blob("team/app", blob)
    assert one.blob("team/app", blob.digest) is not None and cached(one, "b", "team/app", blob.digest)


def test_closing_the_metadata_stops_its_listener(postgresql_url):
    metadata = PostgresMetadata(postgresql_url)
    assert wait_until_live(metadata.digests)
    metadata.close()
    with psycopg.connect(split_url(postgresql_url)[0], autocommit=True) as admin:
        assert eventually(lambda: not admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            (LISTENER_NAME,)).fetchall(), timeout=5)
