"""`dockyard fsck` (dockyard.server.fsck) over the two interfaces, so on every pair of drivers: each thing a crash or
a lost disk can leave is found, and `--repair` fixes what is safe."""

from __future__ import annotations

import hashlib
import io

import pytest

from dockyard.server.bodies import StreamSource
from dockyard.server.fsck import fsck
from dockyard.server.model import NewManifest, StoredBlob
from dockyard.server.names import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def commit(store, session_id: str, data: bytes) -> StoredBlob:
    state = store.open_upload(session_id)
    with store.upload_lock(session_id):
        state = store.append(session_id, state, StreamSource(io.BytesIO(data), len(data)))
        return store.commit(session_id, state, Digest("sha256", hashlib.sha256(data).hexdigest()))


def session(n: int) -> str:
    return f"0f0f0f0f-0000-4000-8000-{n:012d}"


@pytest.fixture
def registry(store, metadata):
    """An image in `repo`: its layer committed in the store and recorded, a manifest using it, tagged v1."""
    layer = commit(store, session(1), b"the layer")
    metadata.record_blob("repo", layer)
    data = b'{"schemaVersion": 2, "layers": ["the layer"]}'
    manifest = NewManifest("sha256:" + hashlib.sha256(data).hexdigest(), OCI_MANIFEST, data, [layer.digest], [])
    metadata.put_manifest("repo", manifest, "v1")
    return store, metadata, layer, manifest


def kinds(report) -> list[str]:
    return sorted(p.kind for p in report.problems)


def test_a_consistent_registry_is_clean(registry):
    store, metadata, _, _ = registry
    report = fsck(store, metadata, verify_digests=True)
    assert report.clean and report.problems == [] and report.blobs_checked == 1 and report.digests_verified == 1


def test_a_blob_whose_bytes_are_gone(registry):
    store, metadata, layer, manifest = registry
    store.delete(layer.key)
    report = fsck(store, metadata)
    assert kinds(report) == ["missing blob"] and not report.clean
    repaired = fsck(store, metadata, repair=True)
    assert [p.kind for p in repaired.problems if p.repaired] == ["missing blob"]
    # Now the manifest names a blob the repository does not hold: reported, for a push or a delete to settle.
    (broken,) = fsck(store, metadata).problems
    assert broken.kind == "broken reference" and broken.subject == f"repo@{manifest.digest}"
    # Forgotten: the same content pushed again is stored afresh, not answered "already stored".
    again = commit(store, session(2), b"the layer")
    assert metadata.record_blob("repo", again) is None
    assert fsck(store, metadata).clean


def test_bytes_that_do_not_match_their_digest(registry):
    store, metadata, _, _ = registry
    other = commit(store, session(3), b"bytes of another digest")
    metadata.record_blob("repo", StoredBlob("sha256:" + "1" * 64, other.size, other.key))  # the row lies
    assert fsck(store, metadata).clean  # sizes agree: only reading the bytes tells
    report = fsck(store, metadata, verify_digests=True)
    assert kinds(report) == ["corrupt blob"] and report.problems[0].subject == "sha256:" + "1" * 64
    fsck(store, metadata, verify_digests=True, repair=True)
    assert fsck(store, metadata, verify_digests=True).clean and store.stat(other.key) is None


def test_orphans_of_a_crash_and_interrupted_deletes(registry):
    store, metadata, _, _ = registry
    orphan = commit(store, session(4), b"committed, never recorded")  # its session row is gone: garbage
    metadata.create_upload("repo", session(8))
    in_flight = commit(store, session(8), b"committed a moment ago")  # its row is still there: a commit in flight
    # Upload data whose session row never came (bytes appended: a driver may store nothing when a session opens).
    store.append(session(5), store.open_upload(session(5)), StreamSource(io.BytesIO(b"stray"), 5))
    metadata.create_upload("repo", session(6))
    from dockyard.server.model import UploadState
    metadata.save_upload(session(6), 0, UploadState(100))  # a session whose bytes the store lost
    forgotten = commit(store, session(7), b"collected")
    metadata.record_blob("repo", forgotten)
    metadata.unlink_blob("repo", forgotten.digest)
    with metadata.lifecycle() as step:
        step.sweep_blobs(10)  # a collection that died before deleting the bytes
    report = fsck(store, metadata)
    assert kinds(report) == ["lost upload", "orphan blob", "orphan upload", "pending delete"]
    assert [p.subject for p in report.problems if p.kind == "orphan blob"] == [orphan.key]
    fsck(store, metadata, repair=True)
    assert fsck(store, metadata).clean
    assert store.stat(orphan.key) is None and store.stat(forgotten.key) is None
    assert store.stat(in_flight.key) is not None  # never touched while its session lives
    metadata.delete_upload(session(8))  # the session goes (purged): its object is garbage now
    assert [p.subject for p in fsck(store, metadata).problems] == [in_flight.key]


def test_a_session_whose_commit_stored_its_object_is_not_lost(store, metadata):
    """Between a commit's store step and its transaction (or after a crash there), the session's bytes are the
    stored object, not upload data: neither a lost upload nor an orphan while its row lives."""
    from dockyard.server.model import UploadState

    metadata.create_upload("repo", session(9))
    data = b"committed, not yet recorded"
    state = store.append(session(9), store.open_upload(session(9)), StreamSource(io.BytesIO(data), len(data)))
    assert metadata.save_upload(session(9), 0, state)
    blob = store.commit(session(9), UploadState.from_json(state.length, state.to_json()),
                        Digest("sha256", hashlib.sha256(data).hexdigest()))
    assert fsck(store, metadata).problems == []
    assert fsck(store, metadata, repair=True).problems == [] and store.stat(blob.key) == len(data)
    metadata.record_blob("repo", blob, session_id=session(9))  # the commit finishes (its row is still there)
    assert fsck(store, metadata).clean
