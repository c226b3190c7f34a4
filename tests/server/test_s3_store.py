"""What only the s3 driver has, against the real store (Swift with s3api, tests/swift_store.py): parts and leftovers,
sessions continued by another store handle without reading parts back, racing requests, multipart uploads nobody
recorded, store failures as 503, presigned and X-Accel downloads, request checksums. The blob-store contract suite
(tests/contracts/) runs on this driver too; these are the tests it cannot express."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
import requests

from dockyard.server.bodies import StreamSource
from dockyard.server.errors import BlobUnknown, BlobUploadInvalid, DigestInvalid, Unavailable
from dockyard.server.model import UploadState
from dockyard.server.names import Digest
from dockyard.server.storage.s3 import MIN_PART_SIZE, S3Store

PART = MIN_PART_SIZE
SESSION = "5e5e5e5e-0000-4000-8000-000000000001"


def make(swift, bucket: str, **options) -> S3Store:
    options = {"part_size": PART, "block_size": 1024 * 1024, "timeout": 5, **options}
    return S3Store(bucket, endpoint_url=swift.endpoint, region=swift.region, path_style=True,
                   access_key_id=swift.access_key, secret_access_key=swift.secret_key, **options)


@pytest.fixture
def store(swift, s3_bucket):
    store = make(swift, s3_bucket)
    yield store
    store.close()


def body(data: bytes):
    return StreamSource(io.BytesIO(data), len(data))


def saved(state: UploadState) -> UploadState:
    return UploadState.from_json(state.length, state.to_json())


def digest(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def read_all(store, key: str, start: int = 0, length: int | None = None) -> bytes:
    stream = store.read(key, start, length)
    try:
        return b"".join(iter(lambda: stream.read(1 << 20), b""))
    finally:
        stream.close()


def upload(stores, data: bytes, chunk: int, session_id: str = SESSION) -> UploadState:
    """Append `data` in chunks, each through the next of `stores` (workers or hosts), the state saved between."""
    state = stores[0].open_upload(session_id)
    for i, start in enumerate(range(0, len(data), chunk)):
        state = saved(stores[i % len(stores)].append(session_id, state, body(data[start:start + chunk])))
    return state


def test_chunks_alternating_between_stores_read_back_only_leftovers(swift, s3_bucket):
    """Three parts and a leftover, 3 MiB chunks through two store handles that share nothing but the bucket: every
    part goes up once, the only bytes read back are leftovers smaller than a part, and the commit copies nothing."""
    first, second = make(swift, s3_bucket), make(swift, s3_bucket)
    data = os.urandom(3 * PART + 12345)
    offset = swift.log_size()
    state = upload([first, second], data, 3 * 1024 * 1024)
    blob = second.commit(SESSION, state, digest(data))
    assert read_all(first, blob.key) == data and blob.key == f"blobs/{SESSION}" and blob.size == len(data)
    requests_ = swift.requests_since(offset)
    assert not [r for r in requests_ if r.is_copy]
    parts = [r for r in requests_ if r.method == "PUT" and "partNumber" in r.query]
    assert sorted(int(r.query["partNumber"]) for r in parts) == [1, 2, 3, 4]  # each part exactly once
    reads = [r for r in requests_ if r.method == "GET" and r.key.startswith("uploads/") and r.status < 300]
    assert reads and all(0 < r.sent < PART for r in reads), reads
    assert list(first.iterate_uploads()) == []


def test_a_session_ending_on_a_part_boundary_has_no_leftover(store, swift):
    data = os.urandom(2 * PART)
    offset = swift.log_size()
    state = upload([store], data, PART)
    assert "tail" not in state.driver and len(state.driver["parts"]) == 2
    assert list(store.iterate_uploads()) == [SESSION]  # found through its multipart upload alone
    blob = store.commit(SESSION, state, digest(data))
    assert read_all(store, blob.key) == data
    assert not [r for r in swift.requests_since(offset) if r.method == "GET" and "uploads/" in r.path]


def test_one_large_body_streams_part_after_part(store):
    """One request of several parts: uploaded while the body arrives, two part buffers at most."""
    data = os.urandom(4 * PART + 1)
    state = store.append(SESSION, store.open_upload(SESSION), body(data))
    assert state.length == len(data) and len(state.driver["parts"]) == 4
    assert read_all(store, store.commit(SESSION, state, digest(data)).key, 3 * PART - 10, 20) == \
        data[3 * PART - 10:3 * PART + 10]
    assert len(store._buffers) <= 2


def test_sha512_with_parts_is_verified_by_reading_the_object(store):
    data = os.urandom(PART + 99)
    state = upload([store], data, PART // 2)
    with pytest.raises(DigestInvalid):
        store.commit(SESSION, state, Digest("sha512", "0" * 128))
    assert list(store.iterate()) == []  # the assembled object did not match: deleted
    other = "5e5e5e5e-0000-4000-8000-000000000002"
    state = upload([store], data, PART // 2, other)
    blob = store.commit(other, state, Digest("sha512", hashlib.sha512(data).hexdigest()))
    assert read_all(store, blob.key) == data


def test_racing_appends_never_commit_other_bytes_than_were_hashed(swift, s3_bucket):
    """Two requests continue the same recorded state with different bytes (the metadata records only one). A part
    the loser overwrote makes the winner's commit fail; it never assembles bytes the saved hash does not cover."""
    a, b = make(swift, s3_bucket), make(swift, s3_bucket)
    first, mine = os.urandom(PART), os.urandom(PART + 10)
    start = upload([a], first, PART)
    winner = saved(a.append(SESSION, start, body(mine)))
    b.append(SESSION, start, body(os.urandom(PART + 10)))  # overwrites part 2 after the winner wrote it
    with pytest.raises(BlobUploadInvalid):
        a.commit(SESSION, winner, digest(first + mine))
    assert list(a.iterate()) == []
    # Leftovers are never overwritten: racing requests that only wrote leftovers each keep their own.
    other = "5e5e5e5e-0000-4000-8000-000000000003"
    base = upload([a], b"x" * 100, 100, other)
    mine, theirs = b"mine" * 10, b"theirs" * 10
    state = saved(a.append(other, base, body(mine)))
    b.append(other, base, body(theirs))
    assert read_all(a, a.commit(other, state, digest(b"x" * 100 + mine)).key) == b"x" * 100 + mine


def test_a_changed_leftover_is_refused(store, swift):
    state = upload([store], b"a" * 1000, 1000)
    name = f"uploads/{SESSION}/{state.driver['tail']}"
    swift.client().put_object(Bucket=store.bucket, Key=name, Body=b"b" * 1000)  # same size, other bytes
    fresh = S3Store.__new__(S3Store)
    fresh.__dict__.update(store.__dict__)
    fresh._tails = type(store._tails)(1 << 20)  # another worker: nothing cached
    with pytest.raises(BlobUploadInvalid):
        fresh.append(SESSION, state, body(b"c"))
    with pytest.raises(BlobUploadInvalid):
        fresh.commit(SESSION, state, digest(b"a" * 1000))


def test_a_retried_commit_finds_the_blob_an_earlier_attempt_completed(store):
    """The answer of a commit was lost (its leftover already deleted): the next attempt recognises the object."""
    data = os.urandom(PART + 500)
    state = upload([store], data, PART + 500)
    first = store.commit(SESSION, state, digest(data))
    assert store.commit(SESSION, state, digest(data)) == first
    small = "5e5e5e5e-0000-4000-8000-000000000004"
    state = upload([store], b"tiny", 4, small)
    assert store.commit(small, state, digest(b"tiny")) == store.commit(small, state, digest(b"tiny"))


def test_abort_finds_multipart_uploads_nobody_recorded_and_spares_the_blob(store, swift):
    """Garbage collection calls abort_upload(id, None) for sessions no row knows: every multipart upload of the key
    goes (a racing request may have made a second one), leftovers go, a committed blob stays."""
    data = os.urandom(PART + 1)
    blob = store.commit(SESSION, upload([store], data, PART + 1), digest(data))
    client = swift.client()
    stray = client.create_multipart_upload(Bucket=store.bucket, Key=blob.key)["UploadId"]
    client.upload_part(Bucket=store.bucket, Key=blob.key, UploadId=stray, PartNumber=1, Body=b"z" * 10)
    client.put_object(Bucket=store.bucket, Key=f"uploads/{SESSION}/9.0123456789abcdef", Body=b"z")
    assert list(store.iterate_uploads()) == [SESSION]
    store.abort_upload(SESSION)
    assert list(store.iterate_uploads()) == []
    assert not client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")
    assert read_all(store, blob.key) == data


def test_cancelling_aborts_the_multipart_upload(store, swift):
    state = upload([store], os.urandom(PART + 7), PART + 7)
    assert swift.client().list_multipart_uploads(Bucket=store.bucket).get("Uploads")
    store.abort_upload(SESSION, state)
    assert not swift.client().list_multipart_uploads(Bucket=store.bucket).get("Uploads")
    assert list(store.iterate_uploads()) == [] and list(store.iterate()) == []


def test_a_damaged_state_is_a_client_error(store):
    for driver in ({"parts": ["nonsense"], "upload": "x"}, {"part_size": 12}, {"tail": "../../x", "tail_etag": "e"},
                   {"parts": ['"' + "0" * 32 + '"']}):
        with pytest.raises(BlobUploadInvalid):
            store.append(SESSION, UploadState(PART, b"\0" * 112, driver), body(b"x"))


def test_store_down_is_unavailable_and_the_session_continues(store, swift):
    """The store stops mid-session: requests fail with UNAVAILABLE and Retry-After, nothing changes; once it is
    back, the session goes on from its recorded state."""
    data = os.urandom(PART + 2000)
    state = upload([store], data[:1000], 1000)
    blob_state = upload([store], b"kept", 4, "5e5e5e5e-0000-4000-8000-000000000005")
    kept = store.commit("5e5e5e5e-0000-4000-8000-000000000005", blob_state, digest(b"kept"))
    swift.stop_proxy()
    try:
        for call in (lambda: store.append(SESSION, state, body(data[1000:])),
                     lambda: store.commit(SESSION, state, digest(data[:1000])),
                     lambda: store.read(kept.key), store.check, lambda: list(store.iterate()),
                     lambda: list(store.iterate_uploads())):
            with pytest.raises(Unavailable) as failure:
                call()
            assert failure.value.status == 503 and failure.value.headers["Retry-After"].isdigit()
    finally:
        swift.start_proxy()
    state = store.append(SESSION, state, body(data[1000:]))
    assert read_all(store, store.commit(SESSION, state, digest(data)).key) == data
    store.check()


def test_refused_credentials_and_a_missing_bucket_are_unavailable(swift, s3_bucket):
    wrong = S3Store(s3_bucket, endpoint_url=swift.endpoint, region=swift.region, path_style=True,
                    access_key_id=swift.access_key, secret_access_key="wrong", timeout=5)
    with pytest.raises(Unavailable, match="unavailable"):
        wrong.append(SESSION, wrong.open_upload(SESSION), body(b"x"))
    with pytest.raises(Unavailable) as failure:
        make(swift, "no-such-bucket-here").check()
    assert "NoSuchBucket" in failure.value.message


def test_read_of_a_missing_key_and_ranges(store):
    with pytest.raises(BlobUnknown):
        store.read("blobs/0000")
    with pytest.raises(BlobUnknown):
        store.read("../etc/passwd")
    data = os.urandom(3000)
    blob = store.commit(SESSION, upload([store], data, 3000), digest(data))
    assert read_all(store, blob.key, 2990) == data[2990:] and read_all(store, blob.key, 10, 0) == b""
    assert read_all(store, blob.key, 100, 200) == data[100:300]


def test_presigned_redirect_serves_ranges(swift, s3_bucket):
    store = make(swift, s3_bucket, download="redirect", presign_expiry=60)
    data = os.urandom(70_000)
    blob = store.commit(SESSION, upload([store], data, 70_000), digest(data))
    redirect = store.redirect(blob.key, str(digest(data)), len(data))
    assert redirect.kind == "temporary" and redirect.location.startswith(swift.endpoint)
    assert "X-Amz-Signature=" in redirect.location and "X-Amz-Expires=60" in redirect.location
    whole = requests.get(redirect.location, timeout=30)
    part = requests.get(redirect.location, headers={"Range": "bytes=100-199"}, timeout=30)
    assert whole.content == data and (part.status_code, part.content) == (206, data[100:200])
    assert requests.get(redirect.location.replace("X-Amz-Signature=", "X-Amz-Signature=0"), timeout=30) \
        .status_code == 403


def test_accel_redirect_names_the_presigned_path_under_the_nginx_location(swift, s3_bucket):
    store = make(swift, s3_bucket, download="accel", accel_prefix="/_dockyard_s3/")
    data = b"accel"
    blob = store.commit(SESSION, upload([store], data, 5), digest(data))
    redirect = store.redirect(blob.key, str(digest(data)), len(data))
    path, _, query = redirect.location.partition("?")
    assert redirect.kind == "accel" and path == f"/_dockyard_s3/{s3_bucket}/blobs/{SESSION}"
    assert requests.get(f"{swift.endpoint}/{s3_bucket}/blobs/{SESSION}?{query}", timeout=30).content == data


def test_a_prefix_keeps_everything_inside_it(swift, s3_bucket):
    store = make(swift, s3_bucket, prefix="/team/registry/")
    data = b"prefixed"
    blob = store.commit(SESSION, upload([store], data, 4), digest(data))
    store.check()
    names = [o["Key"] for o in swift.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert names == [f"team/registry/blobs/{SESSION}"] and blob.key == f"blobs/{SESSION}"
    assert [o.key for o in store.iterate()] == [blob.key]
    assert list(make(swift, s3_bucket).iterate()) == []  # another prefix (none) sees nothing of it


def test_requests_carry_no_checksum_unless_required(store):
    """Recent boto3 adds CRC checksums to every request by default; several S3-compatible stores refuse them
    (Swift refuses DeleteObjects with one and no Content-MD5). `checksums = "when_required"` sends none."""
    sent = []
    store._s3().meta.events.register("before-send.s3", lambda request, **_: sent.append(dict(request.headers)))
    data = os.urandom(PART + 5)
    store.commit(SESSION, upload([store], data, PART // 2 + 1), digest(data))
    assert len(sent) >= 6
    assert not [h for headers in sent for h in headers if h.lower().startswith(("x-amz-checksum",
                                                                                 "x-amz-sdk-checksum"))]


def test_clients_are_made_per_process(store):
    """A client made before a fork is not reused after it: the pid is part of the check."""
    client = store._s3()
    assert store._s3() is client
    store._client_pid = -1  # what a forked child sees: another pid than the client's
    assert store._s3() is not client
