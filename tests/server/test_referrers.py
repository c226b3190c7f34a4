"""The OCI 1.1 referrers API and the OCI-Subject header."""

import json

from helpers import OCI_INDEX, OCI_MANIFEST, digest_of, image_manifest, push_blob, put_manifest

EMPTY = b"{}"


def artifact(client, name, subject, artifact_type=None, annotations=None, config_type=None):
    empty = push_blob(client, name, EMPTY)
    payload = push_blob(client, name, json.dumps([artifact_type, config_type]).encode())
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": config_type or "application/vnd.oci.empty.v1+json", "digest": empty,
                           "size": 2},
                "layers": [{"mediaType": "application/octet-stream", "digest": payload, "size": 1}],
                "subject": {"mediaType": OCI_MANIFEST, "digest": digest_of(subject), "size": len(subject)}}
    if artifact_type:
        document["artifactType"] = artifact_type
    if annotations:
        document["annotations"] = annotations
    return json.dumps(document).encode()


def test_referrers_listing_and_filter(client):
    image = image_manifest(client, "repo")
    put_manifest(client, "repo", "v1", image)
    sig = artifact(client, "repo", image, "application/vnd.example.signature", {"who": "ci"})
    sbom = artifact(client, "repo", image, config_type="application/vnd.example.sbom")
    for data in (sig, sbom):
        resp = put_manifest(client, "repo", digest_of(data), data)
        assert resp.headers["OCI-Subject"] == digest_of(image)
    resp = client.get(f"/v2/repo/referrers/{digest_of(image)}")
    assert resp.headers["Content-Type"] == OCI_INDEX
    index = resp.json
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert by_digest[digest_of(sig)] == {"mediaType": OCI_MANIFEST, "digest": digest_of(sig), "size": len(sig),
                                         "artifactType": "application/vnd.example.signature",
                                         "annotations": {"who": "ci"}}
    # without artifactType, a manifest's config media type stands in
    assert by_digest[digest_of(sbom)]["artifactType"] == "application/vnd.example.sbom"
    assert "OCI-Filters-Applied" not in resp.headers

    resp = client.get(f"/v2/repo/referrers/{digest_of(image)}?artifactType=application/vnd.example.sbom")
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in resp.json["manifests"]] == [digest_of(sbom)]


def test_referrer_may_arrive_before_its_subject(client):
    missing = b'{"not": "pushed"}'
    sig = artifact(client, "repo", missing, "application/vnd.example.signature")
    resp = put_manifest(client, "repo", digest_of(sig), sig)
    assert resp.headers["OCI-Subject"] == digest_of(missing)
    assert [d["digest"] for d in client.get(f"/v2/repo/referrers/{digest_of(missing)}").json["manifests"]] == [
        digest_of(sig)]


def test_index_as_referrer_has_no_artifact_type_unless_set(client):
    image = image_manifest(client, "repo")
    put_manifest(client, "repo", "v1", image)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                        "subject": {"mediaType": OCI_MANIFEST, "digest": digest_of(image),
                                    "size": len(image)}}).encode()
    put_manifest(client, "repo", digest_of(index), index, media_type=OCI_INDEX)
    [descriptor] = client.get(f"/v2/repo/referrers/{digest_of(image)}").json["manifests"]
    assert descriptor == {"mediaType": OCI_INDEX, "digest": digest_of(index), "size": len(index)}


def test_referrers_of_unknown_digest_or_repository_are_empty(client):
    for path in (f"/v2/repo/referrers/{digest_of(b'x')}", f"/v2/nowhere/referrers/{digest_of(b'x')}"):
        resp = client.get(path, status=200)
        assert resp.json["manifests"] == [] and resp.headers["Content-Type"] == OCI_INDEX


def test_referrers_with_bad_digest_is_400(client):
    resp = client.get("/v2/repo/referrers/sha256:nope", status=400)
    assert resp.json["errors"][0]["code"] == "DIGEST_INVALID"


def test_deleted_referrer_leaves_the_list(client):
    image = image_manifest(client, "repo")
    put_manifest(client, "repo", "v1", image)
    sig = artifact(client, "repo", image, "application/vnd.example.signature")
    put_manifest(client, "repo", digest_of(sig), sig)
    client.delete(f"/v2/repo/manifests/{digest_of(sig)}", status=202)
    assert client.get(f"/v2/repo/referrers/{digest_of(image)}").json["manifests"] == []
