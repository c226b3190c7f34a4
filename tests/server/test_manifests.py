"""Manifest PUT, GET, HEAD and DELETE by tag and digest; validation; media types and content negotiation."""

import json

import pytest

from helpers import OCI_INDEX, OCI_MANIFEST, digest_of, image_manifest, push_blob, put_manifest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def test_put_by_tag_then_get_exact_bytes(client):
    data = image_manifest(client, "repo")
    data = data.replace(b"{", b"{ ", 1)  # whitespace matters: bytes are kept exactly as pushed
    digest = digest_of(data)
    resp = put_manifest(client, "repo", "v1", data)
    assert resp.headers["Location"] == f"http://localhost/v2/repo/manifests/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    for reference in ("v1", digest):
        got = client.get(f"/v2/repo/manifests/{reference}")
        assert got.body == data
        assert got.headers["Content-Type"] == OCI_MANIFEST
        assert got.headers["Docker-Content-Digest"] == digest
        head = client.head(f"/v2/repo/manifests/{reference}")
        assert head.headers["Content-Length"] == str(len(data)) and head.body == b""
        assert head.headers["Docker-Content-Digest"] == digest


def test_put_by_digest(client):
    data = image_manifest(client, "repo")
    put_manifest(client, "repo", digest_of(data), data)
    assert client.get(f"/v2/repo/manifests/{digest_of(data)}").body == data


def test_put_by_digest_that_does_not_match(client):
    data = image_manifest(client, "repo")
    resp = put_manifest(client, "repo", digest_of(b"other"), data, status=400)
    assert resp.json["errors"][0]["code"] == "DIGEST_INVALID"
    client.get(f"/v2/repo/manifests/{digest_of(data)}", status=404)


@pytest.mark.parametrize("body,reason", [
    (b"not json", "JSON"),
    (b"[]", "object"),
    (b'{"schemaVersion": 1}', "schemaVersion"),
    (b'{"schemaVersion": 2, "config": {"mediaType": "x", "size": 1}, "layers": []}', "digest"),
    (b'{"schemaVersion": 2, "config": {"mediaType": "x", "size": -1, "digest": "sha256:' + b"a" * 64 + b'"}}',
     "size"),
    (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": 3}', "list"),
    (b'\xff\xfe', "JSON"),
])
def test_invalid_manifests_are_manifest_invalid(client, body, reason):
    media_type = OCI_INDEX if b"index" in body else OCI_MANIFEST
    resp = put_manifest(client, "repo", "bad", body, media_type=media_type, status=400)
    error = resp.json["errors"][0]
    assert error["code"] == "MANIFEST_INVALID"
    assert reason in error["detail"]["reason"]


def test_media_type_must_match_content_type(client):
    data = image_manifest(client, "repo")
    resp = put_manifest(client, "repo", "v1", data, media_type=OCI_INDEX, status=400)
    assert resp.json["errors"][0]["code"] == "MANIFEST_INVALID"


def test_unsupported_media_type(client):
    resp = put_manifest(client, "repo", "v1", b'{"schemaVersion": 2, "mediaType": "text/plain"}',
                        media_type="text/plain", status=400)
    assert resp.json["errors"][0]["code"] == "MANIFEST_INVALID"


def test_missing_blobs_are_manifest_blob_unknown(client):
    config = push_blob(client, "repo", b"{}")
    missing = digest_of(b"missing layer")
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                                  "size": 2},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": missing,
                                   "size": 13}]}).encode()
    resp = put_manifest(client, "repo", "v1", data, status=400)
    error = resp.json["errors"][0]
    assert error["code"] == "MANIFEST_BLOB_UNKNOWN" and error["detail"]["missing"] == [missing]
    client.get("/v2/repo/manifests/v1", status=404)


def test_blobs_must_be_in_this_repository(client):
    data = image_manifest(client, "elsewhere")
    resp = put_manifest(client, "repo", "v1", data, status=400)
    assert resp.json["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


def test_foreign_layers_with_urls_need_no_blob(client):
    config = push_blob(client, "repo", b"{}")
    data = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                       "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config,
                                  "size": 2},
                       "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                                   "digest": digest_of(b"windows"), "size": 7,
                                   "urls": ["https://example.invalid/layer"]}]}).encode()
    put_manifest(client, "repo", "win", data, media_type=DOCKER_MANIFEST)


def index_of(client, name, children, media_type=OCI_INDEX, **extra):
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": [
        {"mediaType": child_type, "digest": digest_of(child), "size": len(child),
         "platform": {"os": "linux", "architecture": arch}}
        for (child, child_type), arch in zip(children, ["amd64", "arm64", "s390x"])], **extra}).encode()


def test_index_needs_its_children_in_the_repository(client):
    child = image_manifest(client, "repo", layers=[b"amd64"])
    index = index_of(client, "repo", [(child, OCI_MANIFEST)])
    resp = put_manifest(client, "repo", "multi", index, media_type=OCI_INDEX, status=400)
    assert resp.json["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    put_manifest(client, "repo", digest_of(child), child)
    put_manifest(client, "repo", "multi", index, media_type=OCI_INDEX)
    got = client.get("/v2/repo/manifests/multi")
    assert got.body == index and got.headers["Content-Type"] == OCI_INDEX


def test_docker_schema2_and_manifest_list(client):
    config = push_blob(client, "repo", b'{"architecture":"amd64"}')
    layer = push_blob(client, "repo", b"docker layer")
    data = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                       "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                  "digest": config, "size": 24},
                       "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                   "digest": layer, "size": 12}]}).encode()
    put_manifest(client, "repo", "docker", data, media_type=DOCKER_MANIFEST)
    listing = index_of(client, "repo", [(data, DOCKER_MANIFEST)], media_type=DOCKER_LIST)
    put_manifest(client, "repo", "list", listing, media_type=DOCKER_LIST)
    assert client.get("/v2/repo/manifests/list").headers["Content-Type"] == DOCKER_LIST
    assert client.get("/v2/repo/manifests/docker").headers["Content-Type"] == DOCKER_MANIFEST


def test_manifest_without_media_type_uses_content_type(client):
    document = json.loads(image_manifest(client, "repo"))
    del document["mediaType"]
    document["layers"] = []
    data = json.dumps(document).encode()
    put_manifest(client, "repo", "nolayers", data)
    assert client.get("/v2/repo/manifests/nolayers").headers["Content-Type"] == OCI_MANIFEST


def test_content_type_parameters_are_ignored(client):
    data = image_manifest(client, "repo")
    put_manifest(client, "repo", "v1", data, media_type=OCI_MANIFEST + "; charset=utf-8")
    assert client.get("/v2/repo/manifests/v1").headers["Content-Type"] == OCI_MANIFEST


def test_manifest_size_cap(client, config):
    big = b'{"schemaVersion": 2, "pad": "' + b"x" * config.max_manifest_size + b'"}'
    resp = put_manifest(client, "repo", "big", big, status=413)
    assert resp.json["errors"][0]["code"] == "TOO_LARGE"


def test_accept_negotiation_reads_every_line(client):
    data = image_manifest(client, "repo")
    put_manifest(client, "repo", "v1", data)
    # Several Accept header lines reach WSGI joined by commas; the stored type is in the second one.
    resp = client.get("/v2/repo/manifests/v1", headers=[("Accept", DOCKER_MANIFEST),
                                                        ("Accept", OCI_MANIFEST + ";q=0.9")])
    assert resp.body == data
    for accept in ("*/*", "application/*", f"{DOCKER_LIST}, {OCI_MANIFEST}"):
        client.get("/v2/repo/manifests/v1", headers={"Accept": accept}, status=200)
    resp = client.get("/v2/repo/manifests/v1", headers={"Accept": DOCKER_MANIFEST}, status=404)
    assert resp.json["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_retagging_moves_the_tag(client):
    one = image_manifest(client, "repo", layers=[b"one"])
    two = image_manifest(client, "repo", layers=[b"two"])
    put_manifest(client, "repo", "latest", one)
    put_manifest(client, "repo", "latest", two)
    assert client.get("/v2/repo/manifests/latest").body == two
    assert client.get(f"/v2/repo/manifests/{digest_of(one)}").body == one


def test_unknown_manifest_and_repository(client):
    resp = client.get("/v2/nowhere/manifests/latest", status=404)
    assert resp.json["errors"][0]["code"] == "NAME_UNKNOWN"
    put_manifest(client, "repo", "v1", image_manifest(client, "repo"))
    for reference in ("v2", digest_of(b"x"), ".INVALID_MANIFEST_NAME"):
        resp = client.get(f"/v2/repo/manifests/{reference}", status=404)
        assert resp.json["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        client.head(f"/v2/repo/manifests/{reference}", status=404)


@pytest.mark.parametrize("reference", ["sha256:totallywrong", "md5:abc"])
def test_malformed_digest_reference_is_400(client, reference):
    resp = client.get(f"/v2/repo/manifests/{reference}", status=400)
    assert resp.json["errors"][0]["code"] == "DIGEST_INVALID"


def test_put_to_malformed_tag_is_tag_invalid(client):
    data = image_manifest(client, "repo")
    resp = put_manifest(client, "repo", ".bad", data, status=400)
    assert resp.json["errors"][0]["code"] == "TAG_INVALID"


def test_delete_by_tag_removes_only_the_tag(client):
    data = image_manifest(client, "repo")
    put_manifest(client, "repo", "a", data)
    put_manifest(client, "repo", "b", data)
    client.delete("/v2/repo/manifests/a", status=202)
    client.get("/v2/repo/manifests/a", status=404)
    assert client.get("/v2/repo/manifests/b").body == data
    assert client.get(f"/v2/repo/manifests/{digest_of(data)}").body == data
    assert client.delete("/v2/repo/manifests/a", status=404).json["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_delete_by_digest_removes_manifest_and_its_tags(client):
    data = image_manifest(client, "repo")
    put_manifest(client, "repo", "a", data)
    put_manifest(client, "repo", "b", data)
    client.delete(f"/v2/repo/manifests/{digest_of(data)}", status=202)
    for reference in ("a", "b", digest_of(data)):
        client.get(f"/v2/repo/manifests/{reference}", status=404)
    assert client.get("/v2/repo/tags/list").json["tags"] == []
    client.delete(f"/v2/repo/manifests/{digest_of(data)}", status=404)
    client.delete(f"/v2/nowhere/manifests/{digest_of(data)}", status=404)


def test_same_manifest_in_two_repositories_is_independent(client):
    data = image_manifest(client, "one")
    image_manifest(client, "two")
    put_manifest(client, "one", "v1", data)
    put_manifest(client, "two", "v1", data)
    client.delete(f"/v2/one/manifests/{digest_of(data)}", status=202)
    assert client.get("/v2/two/manifests/v1").body == data
