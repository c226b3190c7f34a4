"""GET, HEAD and DELETE of blobs, with Range requests, per-repository visibility and bad digests."""

import hashlib
import os

import pytest

from helpers import digest_of, push_blob

DATA = os.urandom(1000)


def test_head_and_get_existing_blob(client):
    digest = push_blob(client, "repo", DATA)
    head = client.head(f"/v2/repo/blobs/{digest}", status=200)
    assert head.headers["Content-Length"] == "1000"
    assert head.headers["Docker-Content-Digest"] == digest
    assert head.body == b""
    get = client.get(f"/v2/repo/blobs/{digest}", status=200)
    assert get.body == DATA
    assert get.headers["Docker-Content-Digest"] == digest
    assert get.headers["Content-Type"] == "application/octet-stream"


def test_unknown_blob_is_404_blob_unknown(client):
    resp = client.get("/v2/repo/blobs/" + digest_of(b"nothing"), status=404)
    assert resp.json["errors"][0]["code"] == "BLOB_UNKNOWN"
    client.head("/v2/repo/blobs/" + digest_of(b"nothing"), status=404)


def test_blob_is_readable_only_where_pushed_or_mounted(client):
    digest = push_blob(client, "team-a/app", DATA)
    client.get(f"/v2/team-b/app/blobs/{digest}", status=404)
    client.head(f"/v2/team-b/app/blobs/{digest}", status=404)
    client.post(f"/v2/team-b/app/blobs/uploads/?mount={digest}&from=team-a/app", status=201)
    assert client.get(f"/v2/team-b/app/blobs/{digest}").body == DATA


def test_content_is_stored_once_across_repositories(client, config):
    digest = push_blob(client, "one", DATA)
    push_blob(client, "two", DATA)
    hex_ = digest.split(":")[1]
    found = [p for p in (config.data_path / "blobs").rglob("*") if p.is_file()]
    assert [p.name.split(".")[0] for p in found] == [hex_]  # a blob's file is <hex>.<upload session id>


@pytest.mark.parametrize("header,start,end", [
    ("bytes=0-99", 0, 99),
    ("bytes=100-", 100, 999),
    ("bytes=-10", 990, 999),
    ("bytes=990-5000", 990, 999),
    ("bytes=0-0", 0, 0),
])
def test_range_requests(client, header, start, end):
    digest = push_blob(client, "repo", DATA)
    resp = client.get(f"/v2/repo/blobs/{digest}", headers={"Range": header}, status=206)
    assert resp.body == DATA[start:end + 1]
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/1000"
    assert resp.headers["Content-Length"] == str(end - start + 1)


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=10-5"])
def test_unsatisfiable_range_is_416(client, header):
    digest = push_blob(client, "repo", DATA)
    resp = client.get(f"/v2/repo/blobs/{digest}", headers={"Range": header}, status=416)
    assert resp.headers["Content-Range"] == "bytes */1000"
    assert resp.json["errors"][0]["code"] == "RANGE_INVALID"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-1", "garbage"])
def test_unsupported_range_forms_serve_the_whole_blob(client, header):
    digest = push_blob(client, "repo", DATA)
    assert client.get(f"/v2/repo/blobs/{digest}", headers={"Range": header}, status=200).body == DATA


def test_delete_blob_unlinks_it_from_the_repository_only(client):
    digest = push_blob(client, "one", DATA)
    push_blob(client, "two", DATA)
    resp = client.delete(f"/v2/one/blobs/{digest}", status=202)
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    client.get(f"/v2/one/blobs/{digest}", status=404)
    assert client.get(f"/v2/two/blobs/{digest}").body == DATA
    resp = client.delete(f"/v2/one/blobs/{digest}", status=404)
    assert resp.json["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_sha512_blobs_are_accepted(client):
    digest = "sha512:" + hashlib.sha512(DATA).hexdigest()
    client.post(f"/v2/repo/blobs/uploads/?digest={digest}", DATA, status=201)
    resp = client.get(f"/v2/repo/blobs/{digest}")
    assert resp.body == DATA and resp.headers["Docker-Content-Digest"] == digest
