"""Garbage collection and a commit under way: between the store's commit and the metadata's transaction, the new
object is named only by its session row. The orphan sweep must leave it alone however old the object looks (an
idle session's file keeps its last write's time through the rename; on AWS S3 a completed multipart upload's
LastModified is when the upload began)."""

import hashlib
import io
import os
import time

from dockyard.server.bodies import StreamSource
from dockyard.server.gc import GarbageCollector
from dockyard.server.metadata.sqlite import SqliteMetadata
from dockyard.server.model import StoredBlob
from dockyard.server.names import Digest
from dockyard.server.storage.filesystem import FilesystemStore

SESSION = "0c0c0c0c-0000-4000-8000-000000000001"
DATA = os.urandom(10_000)
DIGEST = Digest("sha256", hashlib.sha256(DATA).hexdigest())


def committed_in_store(tmp_path) -> tuple[SqliteMetadata, FilesystemStore, StoredBlob]:
    """A session two hours idle whose closing PUT has done the store's step and not yet the metadata's."""
    metadata, store = SqliteMetadata(tmp_path / "registry.db"), FilesystemStore(tmp_path / "store")
    metadata.create_upload("team/app", SESSION)
    state = store.append(SESSION, store.open_upload(SESSION), StreamSource(io.BytesIO(DATA), len(DATA)))
    assert metadata.save_upload(SESSION, 0, state)
    stored = store.commit(SESSION, state, DIGEST)
    two_hours_ago = time.time() - 7200
    os.utime(store.path_of(stored.key), (two_hours_ago, two_hours_ago))
    return metadata, store, stored


def test_the_object_of_a_commit_under_way_survives_a_collection(tmp_path):
    metadata, store, stored = committed_in_store(tmp_path)
    report = GarbageCollector(metadata, store).run(grace=3600)
    assert report.orphan_files_removed == 0 and store.stat(stored.key) == len(DATA)
    assert metadata.record_blob("team/app", stored, session_id=SESSION) is None  # the commit finishes
    assert metadata.blob("team/app", str(DIGEST)).key == stored.key
    metadata.close()


def test_once_its_session_is_gone_the_object_is_an_orphan(tmp_path):
    metadata, store, stored = committed_in_store(tmp_path)
    metadata.delete_upload(SESSION)  # the request died before its transaction, and the session was purged
    report = GarbageCollector(metadata, store).run(grace=3600)
    assert report.orphan_files_removed == 1 and store.stat(stored.key) is None
    metadata.close()
