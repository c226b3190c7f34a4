"""The blob store's contract: nothing is visible before it is verified, failures leave nothing, content is shared."""

import hashlib
import os
import threading

import pytest

from dockyard.server.errors import BlobUnknown, BlobUploadUnknown, DigestInvalid, SizeInvalid
from dockyard.server.names import Digest
from dockyard.server.storage import BlobStore, read_body

DATA = os.urandom(5 * 1024 + 7)
DIGEST = Digest("sha256", hashlib.sha256(DATA).hexdigest())


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path, block_size=1024)


def files_under(path):
    return sorted(p for p in path.rglob("*") if p.is_file())


def test_ingest_then_read(store):
    blob = store.ingest([DATA[:100], DATA[100:]], DIGEST)
    assert blob.size == len(DATA)
    with store.open(DIGEST) as fh:
        assert fh.read() == DATA
    assert store.stat(DIGEST) == len(DATA)
    assert store.blob_path(DIGEST).parent.name == DIGEST.hex[:2]


def test_wrong_digest_leaves_nothing(store, tmp_path):
    with pytest.raises(DigestInvalid):
        store.ingest([DATA], Digest("sha256", "0" * 64))
    assert files_under(tmp_path) == []


def test_blob_not_visible_before_commit(store):
    upload_id = store.new_upload()
    with store.open_upload(upload_id) as writer:
        writer.append([DATA])
        assert store.stat(DIGEST) is None
        with pytest.raises(BlobUnknown):
            store.open(DIGEST)
        writer.commit(DIGEST)
    assert store.stat(DIGEST) == len(DATA)


def test_failed_append_rolls_back_to_previous_offset(store):
    upload_id = store.new_upload()

    def chunks_then_disconnect():
        yield DATA[:500]
        raise ConnectionResetError("client went away")

    with store.open_upload(upload_id) as writer:
        writer.append([DATA[:1000]])
        with pytest.raises(ConnectionResetError):
            writer.append(chunks_then_disconnect())
        assert writer.offset == 1000
        writer.append([DATA[1000:]])
        writer.commit(DIGEST)
    with store.open(DIGEST) as fh:
        assert fh.read() == DATA


def test_session_continued_by_another_store_rehashes_once(tmp_path):
    first, second = BlobStore(tmp_path), BlobStore(tmp_path)
    upload_id = first.new_upload()
    with first.open_upload(upload_id) as writer:
        offset = writer.append([DATA[:3000]])
    with second.open_upload(upload_id) as writer:
        writer.offset = offset
        writer.append([DATA[3000:]])
        assert writer.commit(DIGEST).size == len(DATA)


def test_bytes_past_the_recorded_offset_are_discarded(store):
    """A worker killed mid-chunk leaves bytes nobody acknowledged; the next chunk starts at the recorded offset."""
    upload_id = store.new_upload()
    with store.open_upload(upload_id) as writer:
        writer.append([DATA[:1000]])
    with open(store._upload_path(upload_id), "ab") as fh:
        fh.write(b"garbage from a dead worker")
    store._forget_hash(upload_id)
    with store.open_upload(upload_id) as writer:
        writer.offset = 1000
        writer.append([DATA[1000:]])
        writer.commit(DIGEST)
    with store.open(DIGEST) as fh:
        assert fh.read() == DATA


def test_concurrent_commits_of_same_content(store):
    errors = []

    def upload():
        try:
            store.ingest([DATA[i:i + 777] for i in range(0, len(DATA), 777)], DIGEST)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert files_under(store.root / "blobs") == [store.blob_path(DIGEST)]
    assert list((store.root / "uploads").iterdir()) == []


def test_sha512_commit(store):
    digest = Digest("sha512", hashlib.sha512(DATA).hexdigest())
    assert store.ingest([DATA], digest).digest == digest


def test_upload_ids_cannot_form_paths(store):
    for bad in ("../x", "/etc/passwd", "", "A" * 10):
        with pytest.raises(BlobUploadUnknown):
            with store.open_upload(bad):
                pass


def test_cancelled_upload_leaves_nothing(store):
    upload_id = store.new_upload()
    with store.open_upload(upload_id) as writer:
        writer.append([DATA])
    store.remove_upload(upload_id)
    assert files_under(store.root) == []


def test_read_body_exact_and_short():
    import io
    assert b"".join(read_body(io.BytesIO(DATA), len(DATA), 1000)) == DATA
    assert b"".join(read_body(io.BytesIO(DATA), None, 1000)) == DATA
    with pytest.raises(SizeInvalid):
        b"".join(read_body(io.BytesIO(DATA[:10]), 20, 1000))
