"""The grammar of names, tags and digests, and what bad ones get over HTTP."""

import hashlib

import pytest

from dockyard.server.errors import DigestInvalid, NameInvalid, TagInvalid
from dockyard.server.names import parse_digest, parse_reference, validate_name, validate_tag

GOOD_HEX = "a" * 64


@pytest.mark.parametrize("name", ["a", "library/nginx", "a-b/c.d/e__f", "x" * 255, "a0/b1/c2/d3", "a--b"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "a/", "/a", "a//b", "..", "a/../b", "a..b", "-a", "a_", "x" * 256,
                                  "a/B", "a b", "a___b", "a/./b"])
def test_invalid_names(name):
    with pytest.raises(NameInvalid):
        validate_name(name)


@pytest.mark.parametrize("tag", ["latest", "v1.0.0", "_x", "A" * 128, "1"])
def test_valid_tags(tag):
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "A" * 129, "a/b", "a:b", "a b"])
def test_invalid_tags(tag):
    with pytest.raises(TagInvalid):
        validate_tag(tag)


def test_digest_parsing():
    assert str(parse_digest("sha256:" + GOOD_HEX)) == "sha256:" + GOOD_HEX
    sha512 = "sha512:" + hashlib.sha512(b"x").hexdigest()
    assert str(parse_digest(sha512)) == sha512


@pytest.mark.parametrize("value", [None, "", "sha256", "sha256:", ":" + GOOD_HEX, "sha256:" + "a" * 63,
                                   "sha256:" + "a" * 65, "sha256:" + "A" * 64, "md5:" + "a" * 32,
                                   "sha256:../../etc/passwd", "sha512:" + "a" * 64, "SHA256:" + GOOD_HEX,
                                   "sha256:" + "g" * 64])
def test_invalid_digests(value):
    with pytest.raises(DigestInvalid):
        parse_digest(value)


def test_reference_is_digest_or_tag():
    assert parse_reference("latest") == "latest"
    assert str(parse_reference("sha256:" + GOOD_HEX)) == "sha256:" + GOOD_HEX


@pytest.mark.parametrize("path", [
    "/v2/Upper/tags/list",
    "/v2/a..b/tags/list",
    "/v2/" + "a" * 256 + "/tags/list",
    "/v2/a__b__/manifests/latest",
])
def test_bad_names_over_http_are_name_invalid(client, path):
    resp = client.get(path, status=400)
    assert resp.json["errors"][0]["code"] == "NAME_INVALID"


@pytest.mark.parametrize("path", ["/v2//etc/passwd/tags/list", "/v2/a/../b/tags/list", "/v2/./a/tags/list"])
def test_paths_not_in_canonical_form_are_refused_before_routing(client, path):
    """Issue 11, finding 1: empty, '.' and '..' segments are refused, never routed as another spelling."""
    resp = client.get(path, status=400)
    assert resp.json["errors"][0]["code"] == "BAD_REQUEST" and "canonical" in resp.json["errors"][0]["message"]


def test_encoded_slash_in_path_is_refused(client):
    # gunicorn passes the raw request line as RAW_URI; an encoded slash must not smuggle in a path separator.
    resp = client.get("/v2/a/b/tags/list", extra_environ={"RAW_URI": "/v2/a%2Fb/tags/list"}, status=400)
    assert resp.json["errors"][0]["code"] == "NAME_INVALID"


@pytest.mark.parametrize("digest,code", [
    ("sha256:short", "DIGEST_INVALID"),
    ("md5:" + "a" * 32, "DIGEST_INVALID"),
    ("sha256:" + "A" * 64, "DIGEST_INVALID"),
])
def test_bad_digests_over_http(client, digest, code):
    for method in (client.get, client.delete):
        resp = method(f"/v2/repo/blobs/{digest}", status=400)
        assert resp.json["errors"][0]["code"] == code
    resp = client.head(f"/v2/repo/blobs/{digest}", status=400)
    assert resp.body == b""


@pytest.mark.parametrize("path", ["/v2/repo/blobs/sha256:..%2F..%2Fetc%2Fpasswd", "/v2/repo/blobs/../../../etc/passwd",
                                  "/v2/repo/manifests/..%2F..%2Fregistry.db", "/v2/repo/blobs/uploads/..%2F..%2Fx"])
def test_path_tricks_get_an_error_code_and_never_a_file(client, path):
    for method in ("get", "put", "delete", "patch"):
        resp = getattr(client, method)(path, expect_errors=True)
        assert resp.status_int in (400, 404, 405), (method, resp.status)
        assert resp.json["errors"][0]["code"]
        assert b"root:" not in resp.body and b"SQLite" not in resp.body
