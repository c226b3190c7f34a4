"""Garbage collection over the reference graph, repository delete, upload purging, accounting, quotas and
read-only mode (issue 4). Three regression tests name the Distribution issues whose data loss they guard against."""

import io
import json
import os
import time

import pytest
import webtest

from dockyard.server.app import create_app
from dockyard.server.bodies import StreamSource
from dockyard.server.config import Config
from dockyard.server.metadata import open_metadata
from dockyard.server.names import parse_digest
from dockyard.server.storage.filesystem import FilesystemStore
from helpers import OCI_INDEX, OCI_MANIFEST, digest_of, image_manifest, push_blob, put_manifest


def blob_files(config):
    """The hex digests of the blob files on disk (a file is named <hex>.<upload session id>)."""
    return sorted(p.name.split(".")[0] for p in (config.data_path / "blobs").rglob("*") if p.is_file())


def gc(client, **options):
    return client.post_json("/v2/_dockyard/gc", {"grace_seconds": 0, **options}).json


def pull_all(client, name, reference):
    """Pull an image or index completely, verifying every digest; return the set of blob digests read."""
    resp = client.get(f"/v2/{name}/manifests/{reference}")
    document = json.loads(resp.body)
    assert digest_of(resp.body) == resp.headers["Docker-Content-Digest"]
    read = set()
    for child in document.get("manifests", []):
        read |= pull_all(client, name, child["digest"])
    for descriptor in [document.get("config")] + document.get("layers", []):
        if descriptor:
            body = client.get(f"/v2/{name}/blobs/{descriptor['digest']}").body
            assert digest_of(body) == descriptor["digest"]
            read.add(descriptor["digest"])
    return read


def index_of(children):
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest_of(c), "size": len(c),
         "platform": {"os": "linux", "architecture": arch}} for c, arch in zip(children, ["amd64", "arm64"])]}).encode()


def test_regression_distribution_3178_untagged_children_of_a_tagged_index_survive(client, config):
    children = [image_manifest(client, "multi", layers=[os.urandom(100)]) for _ in range(2)]
    for child in children:
        put_manifest(client, "multi", digest_of(child), child)  # pushed by digest: untagged
    put_manifest(client, "multi", "latest", index_of(children), media_type=OCI_INDEX)
    before = blob_files(config)
    report = gc(client, delete_untagged=True)
    assert report["manifests_removed"] == 0 and report["blobs_removed"] == 0
    assert blob_files(config) == before
    assert len(pull_all(client, "multi", "latest")) == 3  # two layers and the config they share


def test_regression_distribution_3004_layer_shared_by_two_repositories_survives_a_delete(client, config):
    shared = os.urandom(300)
    for name in ("team-a/app", "team-b/app"):
        put_manifest(client, name, "v1", image_manifest(client, name, layers=[shared, os.urandom(50)]))
    client.delete("/v2/_dockyard/repositories/team-a/app", status=202)
    report = gc(client, delete_untagged=True)
    assert digest_of(shared) not in report["blobs"]
    assert len(report["blobs"]) == 1  # team-a's own layer; its config ('{"os":"linux"}') is shared too
    assert digest_of(shared) in pull_all(client, "team-b/app", "v1")
    assert client.get("/v2/_catalog").json["repositories"] == ["team-b/app"]


def test_regression_distribution_4939_signature_of_a_live_manifest_survives(client):
    image = image_manifest(client, "signed")
    put_manifest(client, "signed", "v1", image)
    push_blob(client, "signed", b"{}")
    signature_payload = push_blob(client, "signed", b"signature bytes")
    signature = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.dev.cosign.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": signature_payload, "size": 15}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest_of(image), "size": len(image)}}).encode()
    put_manifest(client, "signed", digest_of(signature), signature)
    report = gc(client, delete_untagged=True)
    assert report["manifests_removed"] == 0 and report["blobs_removed"] == 0
    referrers = client.get(f"/v2/signed/referrers/{digest_of(image)}").json["manifests"]
    assert [r["digest"] for r in referrers] == [digest_of(signature)]
    assert client.get(f"/v2/signed/blobs/{signature_payload}").body == b"signature bytes"

    # Once the subject goes, its signature is garbage too, and so are their blobs.
    client.delete(f"/v2/signed/manifests/{digest_of(image)}", status=202)
    report = gc(client, delete_untagged=True)
    assert report["manifests"] == [{"repository": "signed", "digest": digest_of(signature)}]
    assert signature_payload in report["blobs"]


def test_dry_run_reports_exactly_what_a_real_run_removes(client, config):
    keep_layer, gone_layer = os.urandom(1000), os.urandom(3000)
    keep = image_manifest(client, "repo", layers=[keep_layer], config=b'{"keep": 1}')
    gone = image_manifest(client, "repo", layers=[gone_layer], config=b'{"gone": 1}')
    put_manifest(client, "repo", "keep", keep)
    put_manifest(client, "repo", "gone", gone)
    client.delete("/v2/repo/manifests/gone", status=202)  # untagged now
    before = blob_files(config)

    dry = gc(client, delete_untagged=True, dry_run=True)
    expected_blobs = {digest_of(gone_layer), digest_of(b'{"gone": 1}')}
    assert dry["dry_run"] is True
    assert set(dry["blobs"]) == expected_blobs
    assert dry["manifests"] == [{"repository": "repo", "digest": digest_of(gone)}]
    assert dry["bytes_freed"] == len(gone_layer) + len(b'{"gone": 1}') + len(gone)
    assert blob_files(config) == before
    client.get(f"/v2/repo/manifests/{digest_of(gone)}", status=200)

    real = gc(client, delete_untagged=True)
    assert {k: real[k] for k in ("blobs", "manifests", "bytes_freed")} == \
        {k: dry[k] for k in ("blobs", "manifests", "bytes_freed")}
    assert set(before) - set(blob_files(config)) == {d.split(":")[1] for d in expected_blobs}
    client.get(f"/v2/repo/manifests/{digest_of(gone)}", status=404)
    assert pull_all(client, "repo", "keep") == {digest_of(keep_layer), digest_of(b'{"keep": 1}')}


def test_untagged_manifests_stay_unless_asked(client):
    image = image_manifest(client, "repo")
    put_manifest(client, "repo", digest_of(image), image)
    assert gc(client)["manifests_removed"] == 0
    client.get(f"/v2/repo/manifests/{digest_of(image)}", status=200)


def test_grace_protects_uploads_waiting_for_their_manifest(client):
    digest = push_blob(client, "repo", b"just uploaded")
    assert gc(client, grace_seconds=3600)["blobs_removed"] == 0
    client.get(f"/v2/repo/blobs/{digest}", status=200)
    assert gc(client, grace_seconds=0)["blobs"] == [digest]
    client.get(f"/v2/repo/blobs/{digest}", status=404)


def test_layers_of_deleted_images_go_at_once_despite_grace(client):
    layer = os.urandom(64)
    image = image_manifest(client, "repo", layers=[layer])
    put_manifest(client, "repo", "v1", image)
    client.delete(f"/v2/repo/manifests/{digest_of(image)}", status=202)
    assert digest_of(layer) in gc(client, grace_seconds=3600)["blobs"]


def test_manifest_put_after_its_blob_was_collected_fails_cleanly(client):
    layer = push_blob(client, "repo", b"orphan layer")
    config = push_blob(client, "repo", b"{}")
    gc(client, grace_seconds=0)
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                                  "size": 2},
                       "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": 12}]}).encode()
    resp = put_manifest(client, "repo", "v1", data, status=400)
    assert resp.json["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


def test_repository_delete(client):
    put_manifest(client, "doomed", "v1", image_manifest(client, "doomed"))
    put_manifest(client, "doomed", "v2", image_manifest(client, "doomed", layers=[b"2"]))
    resp = client.delete("/v2/_dockyard/repositories/doomed", status=202)
    assert resp.json == {"repository": "doomed", "manifests": 2, "tags": 2}
    assert client.get("/v2/_catalog").json["repositories"] == []
    client.get("/v2/doomed/tags/list", status=404)
    resp = client.delete("/v2/_dockyard/repositories/doomed", status=404)
    assert resp.json["errors"][0]["code"] == "NAME_UNKNOWN"
    assert gc(client)["blobs_removed"] == 3


def test_idle_upload_sessions_are_purged(config):
    now = [1_700_000_000.0]
    client = webtest.TestApp(create_app(config, clock=lambda: now[0]))
    location = client.post("/v2/repo/blobs/uploads/", status=202).headers["Location"]
    client.patch(location, b"partial", status=202)
    now[0] += 10 * 86400  # ten days later, a session starts; the first has been idle since
    fresh = client.post("/v2/repo/blobs/uploads/", status=202).headers["Location"]
    assert gc(client)["uploads_purged"] == 1
    client.get(location, status=404)
    client.get(fresh, status=204)
    assert sorted(os.listdir(config.data_path / "uploads")) == [fresh.rsplit("/", 1)[1]]


def test_storage_accounting(client):
    shared, own_a, own_b = os.urandom(700), os.urandom(100), os.urandom(200)
    cfg = b'{"os":"linux"}'
    put_manifest(client, "a", "v1", image_manifest(client, "a", layers=[shared, own_a]))
    put_manifest(client, "b", "v1", image_manifest(client, "b", layers=[shared, own_b]))
    storage = client.get("/v2/_dockyard/storage").json
    usage = {r["name"]: (r["unique_bytes"], r["shared_bytes"]) for r in storage["repositories"]}
    assert usage == {"a": (100, 700 + len(cfg)), "b": (200, 700 + len(cfg))}
    assert storage["blob_bytes"] == 700 + 100 + 200 + len(cfg) and storage["blobs"] == 4
    repositories = client.get("/v2/_dockyard/repositories").json["repositories"]
    assert [(r["name"], r["tags"], r["manifests"], r["unique_bytes"]) for r in repositories] == [
        ("a", 1, 1, 100), ("b", 1, 1, 200)]


def test_admin_tag_details_and_pagination(client):
    layer = os.urandom(500)
    image = image_manifest(client, "repo", layers=[layer])
    for tag in ("a", "b", "c"):
        put_manifest(client, "repo", tag, image)
    resp = client.get("/v2/_dockyard/repositories/repo/tags?n=2")
    assert [t["tag"] for t in resp.json["tags"]] == ["a", "b"] and "last=b" in resp.headers["Link"]
    detail = resp.json["tags"][0]
    assert detail["digest"] == digest_of(image) and detail["media_type"] == OCI_MANIFEST
    assert detail["size"] == len(image) + len(layer) + len(b'{"os":"linux"}')
    assert detail["updated_at"].endswith("Z")
    client.get("/v2/_dockyard/repositories/nowhere/tags", status=404)


def test_index_size_counts_children_and_each_blob_once(client):
    shared = os.urandom(400)
    children = [image_manifest(client, "multi", layers=[shared, os.urandom(10)]) for _ in range(2)]
    for child in children:
        put_manifest(client, "multi", digest_of(child), child)
    index = index_of(children)
    put_manifest(client, "multi", "latest", index, media_type=OCI_INDEX)
    [detail] = client.get("/v2/_dockyard/repositories/multi/tags").json["tags"]
    assert detail["size"] == len(index) + sum(map(len, children)) + 400 + 10 + 10 + len(b'{"os":"linux"}')


@pytest.fixture
def quota_client(tmp_path):
    config = Config(data=str(tmp_path), quotas=(("team/", 1000), ("solo", 500)))
    return webtest.TestApp(create_app(config))


def test_quota_refuses_a_push_that_would_pass_it(quota_client):
    client = quota_client
    push_blob(client, "team/one", os.urandom(600))
    resp = client.post(f"/v2/team/two/blobs/uploads/?digest={digest_of(b'x' * 500)}", b"x" * 500, status=403)
    error = resp.json["errors"][0]
    assert error["code"] == "DENIED" and error["detail"]["quota"] == "team/" and "quota" in error["message"]
    # chunked: refused at the PATCH that would pass it, and at the commit
    location = client.post("/v2/team/two/blobs/uploads/", status=202).headers["Location"]
    client.patch(location, b"y" * 500, status=403)
    # what is already in scope may be linked again; pulls and deletes always work
    data = image_manifest(client, "team/one", layers=[], config=b"{}")
    put_manifest(client, "team/one", "v1", data)
    client.get("/v2/team/one/manifests/v1", status=200)
    client.delete("/v2/team/one/manifests/v1", status=202)
    push_blob(client, "other", os.urandom(2000))  # no quota there


def test_quota_mount_counts_too(quota_client):
    client = quota_client
    digest = push_blob(client, "big", os.urandom(800))
    client.post(f"/v2/solo/blobs/uploads/?mount={digest}&from=big", status=403)


def test_read_only_mode(client):
    put_manifest(client, "repo", "v1", image_manifest(client, "repo"))
    assert client.put_json("/v2/_dockyard/read-only", {"read_only": True}).json == {"read_only": True}
    for method, path in [("post", "/v2/repo/blobs/uploads/"), ("put", "/v2/repo/manifests/v2"),
                         ("delete", "/v2/repo/manifests/v1")]:
        resp = getattr(client, method)(path, status=503)
        assert resp.json["errors"][0]["code"] == "UNAVAILABLE" and "read-only" in resp.json["errors"][0]["message"]
        assert resp.headers["Retry-After"] == "60"
    client.get("/v2/repo/manifests/v1", status=200)
    client.get("/v2/_catalog", status=200)
    assert client.put_json("/v2/_dockyard/read-only", {"read_only": False}).json == {"read_only": False}
    client.post("/v2/repo/blobs/uploads/", status=202)


def test_read_only_from_config(tmp_path):
    client = webtest.TestApp(create_app(Config(data=str(tmp_path), read_only=True)))
    client.post("/v2/repo/blobs/uploads/", status=503)
    client.get("/v2/_catalog", status=200)


def test_crash_leftovers_are_reconciled(config):
    """Each state a crash can leave (the protocol in dockyard.server.storage) is finished or cleaned up at the next
    start: a pending delete whose bytes are still stored is carried out; upload data no session records goes; and
    then a stored object of a session that is gone (a crash between the store's commit and the metadata's); a live
    blob is untouched by all of it."""
    store, metadata = FilesystemStore(config.data_path), open_metadata(config, clock=time.time)
    client = webtest.TestApp(create_app(config, store=store, metadata=metadata))
    put_manifest(client, "repo", "v1", image_manifest(client, "repo", layers=[b"kept layer"]))
    doomed = push_blob(client, "repo", b"doomed blob")
    client.delete(f"/v2/repo/blobs/{doomed}", status=202)
    with metadata.lifecycle() as step:  # a collection that died right after its transaction committed
        (forgotten,) = step.sweep_blobs(limit=10)
    assert forgotten.digest == doomed and store.stat(forgotten.key) == len(b"doomed blob")
    stray_upload = config.data_path / "uploads" / "0123abcd-0000-4000-8000-000000000000"
    stray_upload.write_bytes(b"a worker died before recording this session")
    orphan = store.commit("feedface-0000-4000-8000-000000000000", *_uploaded(store, b"nobody knows me"))

    restarted = webtest.TestApp(create_app(config))
    assert store.stat(forgotten.key) is None and metadata.pending_deletes() == []
    assert not stray_upload.exists()
    # A crash was evidently there (upload data nobody recorded): start-up also looked for blobs stored by sessions
    # that are gone, and removed the one the interrupted commit left.
    assert store.stat(orphan.key) is None
    assert pull_all(restarted, "repo", "v1") == {digest_of(b"kept layer"), digest_of(b'{"os":"linux"}')}
    assert gc(restarted)["orphan_files_removed"] == 0


def _uploaded(store, data):
    """(state, digest) of a store-level session holding `data`, as a crashed commit would leave it."""
    session_id = "feedface-0000-4000-8000-000000000000"
    state = store.open_upload(session_id)
    with store.upload_lock(session_id):
        state = store.append(session_id, state, StreamSource(io.BytesIO(data), len(data)))
    return state, parse_digest(digest_of(data))


@pytest.mark.parametrize("body", [b"[1]", b"not json", b'{"dry_run": "maybe"}', b'{"grace_seconds": -1}'])
def test_gc_rejects_bad_options(client, body):
    resp = client.post("/v2/_dockyard/gc", body, headers={"Content-Type": "application/json"}, status=400)
    assert resp.json["errors"][0]["code"] == "BAD_REQUEST"


def test_regression_issue_12_finding_1_a_blob_uploaded_again_survives_gc(client):
    """A layer whose manifest was deleted, uploaded again (201): the default grace period protects it until its
    manifest arrives, as it protects any fresh upload; GC used to take it, and the manifest PUT then failed."""
    layer = os.urandom(500)
    image = image_manifest(client, "repo", layers=[layer])
    put_manifest(client, "repo", "v1", image)
    client.delete(f"/v2/repo/manifests/{digest_of(image)}", status=202)
    push_blob(client, "repo", layer)  # uploaded again: 201
    push_blob(client, "repo", b'{"os":"linux"}')
    report = client.post_json("/v2/_dockyard/gc", {}).json  # the default grace period
    assert digest_of(layer) not in report["blobs"]
    put_manifest(client, "repo", "v1", image)
    assert digest_of(layer) in pull_all(client, "repo", "v1")


def test_a_monolithic_upload_between_its_commit_and_its_blob_row_is_never_purged(config):
    """A monolithic POST commits its file into blobs/ and then writes the blob row, which may wait for the database.
    Meanwhile its session row names no upload file: purging (periodic, and at the next start) must not judge it
    abandoned, or the orphan sweep takes the object that the request is about to acknowledge with 201."""
    now = [1_700_000_000.0]
    store, metadata = FilesystemStore(config.data_path), open_metadata(config, clock=lambda: now[0])
    client = webtest.TestApp(create_app(config, store=store, metadata=metadata, clock=lambda: now[0]))
    session_id = "feedface-0000-4000-8000-000000000000"
    metadata.create_upload("repo", session_id, monolithic=True)
    stored = store.commit(session_id, *_uploaded(store, b"committed, not recorded yet"))
    now[0] += 3600 - 1  # long past any "young session" allowance, short of the hour a driver that cannot tell waits
    assert gc(client)["uploads_purged"] == 0
    webtest.TestApp(create_app(config, clock=lambda: now[0]))  # a restart reconciles leftovers
    assert store.stat(stored.key) == len(b"committed, not recorded yet")
    metadata.record_blob("repo", stored, session_id=session_id)
    assert client.get(f"/v2/repo/blobs/{stored.digest}").body == b"committed, not recorded yet"
