"""The blob store's contract: nothing is visible before it is verified, failures leave nothing, content is shared."""

import hashlib
import io
import os
import threading

import pytest

from dockyard.server.bodies import StreamSource
from dockyard.server.errors import BlobUnknown, BlobUploadUnknown, DigestInvalid, SizeInvalid
from dockyard.server.names import Digest
from dockyard.server.storage import BlobStore

DATA = os.urandom(5 * 1024 + 7)
DIGEST = Digest("sha256", hashlib.sha256(DATA).hexdigest())


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path, block_size=1024)


def source(data: bytes, length: int | None = -1):
    return StreamSource(io.BytesIO(data), len(data) if length == -1 else length)


def files_under(path):
    return sorted(p for p in path.rglob("*") if p.is_file())


def test_ingest_then_read(store):
    blob = store.ingest(source(DATA), DIGEST)
    assert blob.size == len(DATA)
    with store.open(DIGEST) as fh:
        assert fh.read() == DATA
    assert store.stat(DIGEST) == len(DATA)
    assert store.blob_path(DIGEST).parent.name == DIGEST.hex[:2]


def test_wrong_digest_leaves_nothing(store, tmp_path):
    with pytest.raises(DigestInvalid):
        store.ingest(source(DATA), Digest("sha256", "0" * 64))
    assert files_under(tmp_path) == []


def test_blob_not_visible_before_commit(store):
    upload_id = store.new_upload()
    with store.open_upload(upload_id) as writer:
        writer.append(source(DATA))
        assert store.stat(DIGEST) is None
        with pytest.raises(BlobUnknown):
            store.open(DIGEST)
        writer.commit(DIGEST)
    assert store.stat(DIGEST) == len(DATA)


def test_failed_append_rolls_back_to_previous_offset(store):
    upload_id = store.new_upload()

    class Disconnecting:
        """Two full blocks, then the client goes away."""

        def __init__(self):
            self.calls = 0

        def readinto(self, buf):
            self.calls += 1
            if self.calls > 2:
                raise ConnectionResetError("client went away")
            buf[:] = b"x" * len(buf)
            return len(buf)

    with store.open_upload(upload_id) as writer:
        writer.append(source(DATA[:1000]))
        with pytest.raises(ConnectionResetError):
            writer.append(Disconnecting())
        assert writer.offset == 1000
        writer.append(source(DATA[1000:]))
        writer.commit(DIGEST)
    with store.open(DIGEST) as fh:
        assert fh.read() == DATA


def test_session_continued_by_another_store_rehashes_once(tmp_path):
    first, second = BlobStore(tmp_path), BlobStore(tmp_path)
    upload_id = first.new_upload()
    with first.open_upload(upload_id) as writer:
        offset = writer.append(source(DATA[:3000]))
    with second.open_upload(upload_id) as writer:
        writer.offset = offset
        writer.append(source(DATA[3000:]))
        assert writer.commit(DIGEST).size == len(DATA)


def test_bytes_past_the_recorded_offset_are_discarded(store):
    """A worker killed mid-chunk leaves bytes nobody acknowledged; the next chunk starts at the recorded offset."""
    upload_id = store.new_upload()
    with store.open_upload(upload_id) as writer:
        writer.append(source(DATA[:1000]))
    with open(store._upload_path(upload_id), "ab") as fh:
        fh.write(b"garbage from a dead worker")
    store._forget_hash(upload_id)
    with store.open_upload(upload_id) as writer:
        writer.offset = 1000
        writer.append(source(DATA[1000:]))
        writer.commit(DIGEST)
    with store.open(DIGEST) as fh:
        assert fh.read() == DATA


def test_concurrent_commits_of_same_content(store):
    errors = []

    def upload():
        try:
            store.ingest(source(DATA), DIGEST)
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
    assert store.ingest(source(DATA), digest).digest == digest


def test_upload_ids_cannot_form_paths(store):
    for bad in ("../x", "/etc/passwd", "", "A" * 10):
        with pytest.raises(BlobUploadUnknown):
            with store.open_upload(bad):
                pass


def test_cancelled_upload_leaves_nothing(store):
    upload_id = store.new_upload()
    with store.open_upload(upload_id) as writer:
        writer.append(source(DATA))
    store.remove_upload(upload_id)
    assert files_under(store.root) == []


def test_stream_source_exact_chunked_and_short():
    buf = memoryview(bytearray(len(DATA) + 10))
    assert buf[:source(DATA).readinto(buf)] == DATA
    assert buf[:source(DATA, None).readinto(buf)] == DATA
    with pytest.raises(SizeInvalid):
        source(DATA[:10], 20).readinto(buf)


def test_large_body_through_the_hashing_thread(tmp_path):
    store = BlobStore(tmp_path, block_size=4096)
    data = os.urandom(4096 * 50 + 123)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    assert store.ingest(source(data), digest).size == len(data)
    with store.open(digest) as fh:
        assert fh.read() == data
