"""The blob-store contract (dockyard.server.storage): what every driver must do, run against every driver.

Nothing is visible before it is verified; a failed append or commit leaves the session as it was; a key is never
reused; a session continues from its saved state in another process or on another host; deletes are idempotent.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest

from dockyard.server.bodies import StreamSource
from dockyard.server.errors import BlobUnknown, BlobUploadUnknown, DigestInvalid, SizeInvalid
from dockyard.server.model import UploadState
from dockyard.server.names import Digest

DATA = os.urandom(5 * 4096 + 7)
DIGEST = Digest("sha256", hashlib.sha256(DATA).hexdigest())
SESSION = "0f0f0f0f-0000-4000-8000-000000000001"


def source(data: bytes, length: int | None = -1):
    return StreamSource(io.BytesIO(data), len(data) if length == -1 else length)


def saved(state: UploadState) -> UploadState:
    """The state as the metadata gives it back: through its JSON form."""
    return UploadState.from_json(state.length, state.to_json())


def upload(store, data: bytes, session_id: str = SESSION, chunks: int = 1) -> UploadState:
    state = store.open_upload(session_id)
    step = -(-len(data) // chunks) if data else 1
    with store.upload_lock(session_id):
        for start in range(0, len(data), step):
            state = saved(store.append(session_id, state, source(data[start:start + step])))
    return state


def read_all(store, key: str, start: int = 0, length: int | None = None) -> bytes:
    stream = store.read(key, start, length)
    try:
        out = b""
        while chunk := stream.read(65536):
            out += chunk
        return out
    finally:
        stream.close()


def test_commit_then_read_whole_and_ranges(store):
    state = upload(store, DATA, chunks=3)
    assert state.length == len(DATA)
    blob = store.commit(SESSION, state, DIGEST)
    assert (blob.digest, blob.size) == (str(DIGEST), len(DATA)) and blob.key
    assert read_all(store, blob.key) == DATA
    assert read_all(store, blob.key, 100, 50) == DATA[100:150]
    assert read_all(store, blob.key, len(DATA) - 10) == DATA[-10:]
    assert store.stat(blob.key) == len(DATA)
    assert [(o.key, o.size) for o in store.iterate()] == [(blob.key, len(DATA))]
    assert list(store.iterate_uploads()) == []  # the session's bytes became the blob


def test_nothing_is_visible_before_commit(store):
    state = upload(store, DATA)
    assert list(store.iterate()) == []
    assert list(store.iterate_uploads()) == [SESSION]
    store.commit(SESSION, state, DIGEST)
    assert len(list(store.iterate())) == 1


def test_wrong_digest_is_refused_and_abort_leaves_nothing(store):
    state = upload(store, DATA)
    with pytest.raises(DigestInvalid):
        store.commit(SESSION, state, Digest("sha256", "0" * 64))
    assert list(store.iterate()) == []
    store.abort_upload(SESSION, state)
    store.abort_upload(SESSION, state)  # idempotent
    assert list(store.iterate_uploads()) == [] and list(store.iterate()) == []


def test_a_failed_append_leaves_the_session_as_recorded(store):
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

    state = upload(store, DATA[:1000])
    with store.upload_lock(SESSION):
        with pytest.raises(ConnectionResetError):
            store.append(SESSION, state, Disconnecting())
        with pytest.raises(SizeInvalid):
            store.append(SESSION, state, source(DATA[1000:1100], 500))  # a body shorter than announced
        state = store.append(SESSION, state, source(DATA[1000:]))
    assert read_all(store, store.commit(SESSION, state, DIGEST).key) == DATA


def test_a_session_continues_from_its_saved_state_in_another_process(make_store):
    first, second = make_store(), make_store()
    state = upload(first, DATA[:3 * 4096])
    with second.upload_lock(SESSION):
        state = second.append(SESSION, saved(state), source(DATA[3 * 4096:]))
        blob = second.commit(SESSION, saved(state), DIGEST)
    assert read_all(first, blob.key) == DATA


def test_bytes_past_the_recorded_state_are_discarded(store):
    """A worker killed mid-chunk leaves bytes nobody acknowledged; the next append starts at the recorded state."""
    state = upload(store, DATA[:1000])
    with store.upload_lock(SESSION):
        store.append(SESSION, state, source(b"garbage from a request that was never acknowledged"))
        state = store.append(SESSION, state, source(DATA[1000:]))
    assert read_all(store, store.commit(SESSION, state, DIGEST).key) == DATA


def test_every_commit_gets_a_key_of_its_own(store):
    """Two sessions committing the same content get two keys (the metadata keeps one); a key is never reused, so
    deleting an old blob's key can never remove the same content committed again."""
    sessions = [f"0f0f0f0f-0000-4000-8000-{i:012d}" for i in range(8)]
    states = {sid: upload(store, DATA, sid) for sid in sessions}
    keys, errors = [], []

    def commit(sid):
        try:
            keys.append(store.commit(sid, states[sid], DIGEST).key)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(sid,)) for sid in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(keys)) == len(sessions)
    store.delete(keys[0])
    assert all(read_all(store, key) == DATA for key in keys[1:])


def test_sha512_digests(store):
    state = upload(store, DATA, chunks=2)
    digest = Digest("sha512", hashlib.sha512(DATA).hexdigest())
    assert read_all(store, store.commit(SESSION, state, digest).key) == DATA


def test_an_empty_blob(store):
    state = upload(store, b"")
    blob = store.commit(SESSION, state, Digest("sha256", hashlib.sha256(b"").hexdigest()))
    assert blob.size == 0 and read_all(store, blob.key) == b"" and store.stat(blob.key) == 0


def test_session_ids_that_could_form_paths_are_refused(store):
    for bad in ("../x", "/etc/passwd", "", "A" * 10, "a/b"):
        with pytest.raises(BlobUploadUnknown):
            with store.upload_lock(bad):
                pass


def test_missing_keys(store):
    blob = store.commit(SESSION, upload(store, DATA), DIGEST)
    store.delete(blob.key)
    store.delete(blob.key)  # idempotent
    assert store.stat(blob.key) is None
    with pytest.raises(BlobUnknown):
        store.read(blob.key)
    assert list(store.iterate()) == []


def test_a_large_body_through_the_hashing_thread(make_store):
    store = make_store(block_size=4096)
    data = os.urandom(4096 * 50 + 123)
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    state = store.open_upload(SESSION)
    with store.upload_lock(SESSION):
        state = store.append(SESSION, state, source(data))
        assert read_all(store, store.commit(SESSION, state, digest).key) == data


def test_the_store_takes_a_write(store):
    store.check()


def test_stream_source_exact_chunked_and_short():
    buf = memoryview(bytearray(len(DATA) + 10))
    assert buf[:source(DATA).readinto(buf)] == DATA
    assert buf[:source(DATA, None).readinto(buf)] == DATA
    with pytest.raises(SizeInvalid):
        source(DATA[:10], 20).readinto(buf)


def test_a_session_held_by_a_request_is_never_reported_idle(store):
    """Purging asks this before removing a monolithic session: False only when no request holds it."""
    store.open_upload(SESSION)
    with store.upload_lock(SESSION):
        assert store.upload_in_progress(SESSION) in (True, None)
    assert store.upload_in_progress(SESSION) in (False, None)
    store.abort_upload(SESSION)
    assert store.upload_in_progress(SESSION) in (False, None)


def test_a_committed_key_names_its_session(store):
    """Garbage collection spares a key while its session row exists: that session's commit may be under way (its
    object stored, its blob row not written yet), and the object's modification time may be old."""
    blob = store.commit(SESSION, upload(store, DATA), DIGEST)
    assert store.session_of(blob.key) == SESSION
    assert store.session_of("../../etc/passwd") is None
