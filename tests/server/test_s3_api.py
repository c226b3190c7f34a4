"""The HTTP API on the s3 driver (a real store, tests/swift_store.py), through webtest: hostile input answers a 4xx
in the spec's error shape, a store that is down answers 503 with Retry-After, never a 500; and the download modes
(presigned redirect, X-Accel-Redirect) with Range requests."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import requests
import webtest

from dockyard.server.app import create_app
from dockyard.server.config import Config, StorageConfig
from dockyard.server.storage.s3 import MIN_PART_SIZE
from helpers import digest_of, push_blob

REPO = "team/app"


def s3_config(tmp_path, swift, bucket, **storage) -> Config:
    settings = StorageConfig(driver="s3", bucket=bucket, endpoint_url=swift.endpoint, region=swift.region,
                             path_style=True, access_key_id=swift.access_key, secret_access_key=swift.secret_key,
                             part_size=MIN_PART_SIZE, timeout=5)
    accel = "/_dockyard_s3" if storage.get("download") == "accel" else ""
    return Config(data=str(tmp_path / "data"), storage=dataclasses.replace(settings, **storage), accel_redirect=accel)


@pytest.fixture
def s3_client(tmp_path, swift, s3_bucket):
    app = create_app(s3_config(tmp_path, swift, s3_bucket))
    yield webtest.TestApp(app)
    app.registry.close()


def assert_error(resp, status: int | tuple, *codes: str) -> dict:
    assert resp.status_int in (status if isinstance(status, tuple) else (status,))
    assert resp.headers["Content-Type"] == "application/json"
    body = json.loads(resp.body)
    assert list(body) == ["errors"] and body["errors"][0]["code"] in codes and set(body["errors"][0]) == \
        {"code", "message", "detail"}
    return body["errors"][0]


def start(client) -> str:
    return client.post(f"/v2/{REPO}/blobs/uploads/", status=202).headers["Location"]


@pytest.mark.parametrize("session", ["..%2F..%2Fetc", "ZZZZ", "a" * 200, "%00", "blobs", "0f0f0f0f-0000-4000-8000-"
                                                                                        "000000000000"])
def test_hostile_upload_ids(s3_client, session):
    for method in ("get", "patch", "put", "delete"):
        resp = getattr(s3_client, method)(f"/v2/{REPO}/blobs/uploads/{session}?digest={digest_of(b'')}",
                                          expect_errors=True)
        # A path that is not canonical (a slash, a NUL, dots) is refused before routing; the others name no session.
        assert_error(resp, (400, 404), "BLOB_UPLOAD_UNKNOWN", "NOT_FOUND", "BAD_REQUEST")


def test_chunked_upload_with_parts_and_ranges(s3_client):
    data = os.urandom(MIN_PART_SIZE + 4321)
    location = start(s3_client)
    half = len(data) // 2
    location = s3_client.patch(location, data[:half], headers={"Content-Range": f"0-{half - 1}"},
                               status=202).headers["Location"]
    assert_error(s3_client.patch(location, b"x", headers={"Content-Range": "5-5"}, expect_errors=True),
                 416, "RANGE_INVALID")
    location = s3_client.patch(location, data[half:], status=202).headers["Location"]
    assert_error(s3_client.put(f"{location}&digest={digest_of(b'other')}" if "?" in location
                               else f"{location}?digest={digest_of(b'other')}", expect_errors=True),
                 400, "DIGEST_INVALID")
    digest = push_blob(s3_client, REPO, data)
    resp = s3_client.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": f"bytes={MIN_PART_SIZE - 5}-"}, status=206)
    assert resp.body == data[MIN_PART_SIZE - 5:]
    assert resp.headers["Content-Range"] == f"bytes {MIN_PART_SIZE - 5}-{len(data) - 1}/{len(data)}"
    for header in (f"bytes={len(data)}-", "bytes=-0"):
        resp = s3_client.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": header}, expect_errors=True)
        assert_error(resp, 416, "RANGE_INVALID")
        assert resp.headers["Content-Range"] == f"bytes */{len(data)}"
    assert s3_client.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=oops"}).body == data


def test_store_down_answers_503_with_retry_after(s3_client, swift):
    digest = push_blob(s3_client, REPO, b"stored before")
    location = s3_client.patch(start(s3_client), b"first chunk", status=202).headers["Location"]
    swift.stop_proxy()
    try:
        for resp in (s3_client.get(f"/v2/{REPO}/blobs/{digest}", expect_errors=True),
                     s3_client.patch(location, b"second chunk", expect_errors=True),
                     s3_client.post(f"/v2/{REPO}/blobs/uploads/?digest={digest_of(b'mono')}", b"mono",
                                    expect_errors=True),
                     s3_client.put(f"{location}{'&' if '?' in location else '?'}digest="
                                   f"{digest_of(b'first chunksecond chunk')}", b"second chunk",
                                   expect_errors=True)):
            error = assert_error(resp, 503, "UNAVAILABLE")
            assert resp.headers["Retry-After"] == "5" and error["detail"]["storage"] == "s3"
        ready = s3_client.get("/readyz", expect_errors=True)
        assert ready.status_int == 503 and "storage" in ready.text
    finally:
        swift.start_proxy()
    status = s3_client.get(location, status=204)
    assert status.headers["Range"] == "0-10"  # the chunk that failed left nothing
    location = s3_client.patch(location, b"second chunk", status=202).headers["Location"]
    s3_client.put(f"{location}{'&' if '?' in location else '?'}digest={digest_of(b'first chunksecond chunk')}",
                  status=201)
    assert s3_client.get(f"/v2/{REPO}/blobs/{digest_of(b'first chunksecond chunk')}").body == \
        b"first chunksecond chunk"


@pytest.mark.parametrize("mode", ["redirect", "accel"])
def test_download_modes(tmp_path, swift, s3_bucket, mode):
    app = create_app(s3_config(tmp_path, swift, s3_bucket, download=mode, presign_expiry=60))
    client = webtest.TestApp(app)
    try:
        data = os.urandom(10_000)
        digest = push_blob(client, REPO, data)
        resp = client.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=10-19"})
        assert resp.headers["Docker-Content-Digest"] == digest and resp.body == b""
        if mode == "redirect":
            assert resp.status_int == 307
            url = resp.headers["Location"]
        else:
            assert resp.status_int == 200 and resp.headers["X-Accel-Redirect"].startswith("/_dockyard_s3/")
            url = swift.endpoint + resp.headers["X-Accel-Redirect"].removeprefix("/_dockyard_s3")
        ranged = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=30)
        assert (ranged.status_code, ranged.content) == (206, data[10:20])
        assert client.head(f"/v2/{REPO}/blobs/{digest}").headers["Content-Length"] == str(len(data))
        assert_error(client.get(f"/v2/{REPO}/blobs/{digest_of(b'absent')}", expect_errors=True), 404, "BLOB_UNKNOWN")
    finally:
        app.registry.close()


def test_two_sessions_committing_the_same_digest_leave_one_object(s3_client, swift, s3_bucket):
    """The metadata settles it (the store refuses conditional PUTs): one key wins, the other is deleted."""
    data = os.urandom(MIN_PART_SIZE + 10)
    first, second = start(s3_client), start(s3_client)
    first = s3_client.patch(first, data, status=202).headers["Location"]
    second = s3_client.patch(second, data, status=202).headers["Location"]
    for location in (first, second):
        s3_client.put(f"{location}{'&' if '?' in location else '?'}digest={digest_of(data)}", status=201)
    listed = swift.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert len(listed) == 1 and listed[0]["Size"] == len(data)
    assert not swift.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert s3_client.get(f"/v2/{REPO}/blobs/{digest_of(data)}").body == data
