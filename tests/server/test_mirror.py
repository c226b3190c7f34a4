"""The pull-through cache (issue 16) through the WSGI app, with a real upstream: another Dockyard (or a few lines of
a test's own) served over HTTP on 127.0.0.1, whose requests are counted."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest
import webtest

from dockyard.server.app import create_app
from dockyard.server.config import Config
from dockyard.server.errors import UpstreamError
from dockyard.server.upstream import Upstream
from helpers import OCI_INDEX, OCI_MANIFEST, digest_of, image_manifest, push_blob, put_manifest
from upstreams import ServedApp

ACCEPT = {"Accept": ", ".join([OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
                               "application/vnd.docker.distribution.manifest.list.v2+json"])}


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def upstream_app(tmp_path):
    # A database of its own (never the test's PostgreSQL one, which the cache uses).
    app = create_app(Config(data=str(tmp_path / "upstream"), database=f"sqlite:///{tmp_path / 'upstream.db'}"))
    yield app
    app.registry.close()


@pytest.fixture
def upstream(upstream_app):
    served = ServedApp(upstream_app)
    yield served
    served.stop()


@pytest.fixture
def up(upstream_app) -> webtest.TestApp:
    """Pushes straight into the upstream (not counted as its requests)."""
    return webtest.TestApp(upstream_app)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_cache(tmp_path, test_database, clock):
    """make_cache(*upstreams, **settings) -> (webtest client, app) of a Dockyard caching those upstreams."""
    apps = []

    def make(*upstreams: Upstream, **settings):
        config = Config(data=str(tmp_path / f"cache{len(apps)}"), database=test_database, upstreams=upstreams,
                        **settings)
        app = create_app(config, clock=clock)
        apps.append(app)
        return webtest.TestApp(app), app

    yield make
    for app in apps:
        app.registry.close()


def hub(upstream: ServedApp, **options) -> Upstream:
    return Upstream(**{"name": "hub", "url": upstream.url, "prefix": "hub/", "library": True, **options})


def push_image(up, name: str, tag: str | None, layers=(b"layer one", b"layer two"), **extra) -> tuple[bytes, str]:
    data = image_manifest(up, name, layers=list(layers), **extra)
    put_manifest(up, name, tag or digest_of(data), data)
    return data, digest_of(data)


def blobs_of(manifest: bytes) -> list[str]:
    document = json.loads(manifest)
    return [document["config"]["digest"]] + [layer["digest"] for layer in document["layers"]]


# -- pulls -----------------------------------------------------------------------------------------------------------

def test_a_pull_fills_the_cache_and_the_second_pull_asks_the_upstream_nothing(upstream, up, make_cache):
    layers = (b"alpine layer " * 1000, b"second layer")
    data, digest = push_image(up, "library/alpine", "3", layers=layers)
    client, app = make_cache(hub(upstream))

    first = client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    assert first.body == data and first.headers["Docker-Content-Digest"] == digest
    assert first.headers["X-Dockyard-Cache"] == "miss"
    for blob_digest in blobs_of(data):
        got = client.get(f"/v2/hub/alpine/blobs/{blob_digest}")
        assert digest_of(got.body) == blob_digest and got.headers["X-Dockyard-Cache"] == "miss"
    assert upstream.count("GET", "/v2/library/alpine/blobs/") == 3
    assert upstream.count("GET", "/v2/library/alpine/manifests/3") == 1

    upstream.clear()
    again = client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    assert again.body == data and again.headers["X-Dockyard-Cache"] == "hit"
    assert client.get(f"/v2/hub/alpine/manifests/{digest}", headers=ACCEPT).headers["X-Dockyard-Cache"] == "hit"
    for blob_digest in blobs_of(data):
        got = client.get(f"/v2/hub/alpine/blobs/{blob_digest}")
        assert digest_of(got.body) == blob_digest and got.headers["X-Dockyard-Cache"] == "hit"
        head = client.head(f"/v2/hub/alpine/blobs/{blob_digest}")
        assert int(head.headers["Content-Length"]) == len(got.body)
        ranged = client.get(f"/v2/hub/alpine/blobs/{blob_digest}", headers={"Range": "bytes=1-4"}, status=206)
        assert ranged.body == got.body[1:5]
    assert upstream.requests == []  # nothing at all: the tag is fresh, the rest immutable
    # What was cached is ordinary content: in the catalog and the admin API, with where it comes from.
    assert client.get("/v2/_catalog").json["repositories"] == ["hub/alpine"]
    (listed,) = client.get("/v2/_dockyard/repositories").json["repositories"]
    assert listed["upstream"] == {"name": "hub", "url": upstream.url, "repository": "library/alpine"}
    assert listed["manifests"] == 1 and listed["unique_bytes"] == sum(len(b) for b in layers) + len(b'{"os":"linux"}')


def test_an_uncached_blob_head_asks_the_upstream_and_fetches_nothing(upstream, up, make_cache):
    data, _ = push_image(up, "library/alpine", "3")
    client, app = make_cache(hub(upstream))
    layer = blobs_of(data)[1]
    head = client.head(f"/v2/hub/alpine/blobs/{layer}")
    assert int(head.headers["Content-Length"]) == len(b"layer one")
    assert upstream.count("HEAD", layer) == 1 and upstream.count("GET", layer) == 0
    assert app.registry.storage_totals()["blobs"] == 0
    client.head(f"/v2/hub/alpine/blobs/{digest_of(b'nowhere')}", status=404)


def test_a_namespace_upstream_serves_names_as_they_are(upstream, up, make_cache):
    data, digest = push_image(up, "library/alpine", "3")
    client, _ = make_cache(Upstream("mirror", upstream.url, namespaces=("library",)))
    assert client.get("/v2/library/alpine/manifests/3", headers=ACCEPT).body == data
    assert upstream.count("GET", "/v2/library/alpine/manifests/3") == 1
    # Names outside the namespaces are this registry's own: a push works, no upstream is asked.
    own, own_digest = push_image(client, "team/app", "1")
    assert client.get("/v2/team/app/manifests/1", headers=ACCEPT).body == own
    client.get("/v2/team/nothing/manifests/1", headers=ACCEPT, status=404)
    assert upstream.count("GET", "/v2/team/") == 0


def test_an_index_is_cached_as_an_index_and_its_children_on_demand(upstream, up, make_cache):
    amd, amd_digest = push_image(up, "library/multi", None, layers=(b"amd64",))
    arm, arm_digest = push_image(up, "library/multi", None, layers=(b"arm64",))
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd_digest, "size": len(amd), "platform": {"architecture": "amd64",
                                                                                         "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": arm_digest, "size": len(arm), "platform": {"architecture": "arm64",
                                                                                         "os": "linux"}}]}).encode()
    put_manifest(up, "library/multi", "1", index, media_type=OCI_INDEX)
    client, _ = make_cache(hub(upstream))
    # A client that accepts only image manifests still never makes the cache store one platform's manifest.
    client.get("/v2/hub/multi/manifests/1", headers={"Accept": OCI_MANIFEST}, status=404)
    ((_, _, headers),) = [r for r in upstream.requests if r[1].endswith("/manifests/1")]
    assert OCI_INDEX in headers["accept"] and "manifest.list.v2+json" in headers["accept"]
    got = client.get("/v2/hub/multi/manifests/1", headers=ACCEPT)
    assert got.body == index and got.headers["Content-Type"] == OCI_INDEX
    assert got.headers["X-Dockyard-Cache"] == "hit"
    child = client.get(f"/v2/hub/multi/manifests/{arm_digest}", headers=ACCEPT)
    assert child.body == arm and child.headers["X-Dockyard-Cache"] == "miss"
    layer = blobs_of(arm)[1]
    assert client.get(f"/v2/hub/multi/blobs/{layer}").body == b"arm64"


def test_tags_list_and_referrers_come_from_the_upstream(upstream, up, make_cache):
    data, digest = push_image(up, "library/app", "1")
    for tag in ("2", "10", "latest"):
        put_manifest(up, "library/app", tag, data)
    signature_blob = push_blob(up, "library/app", b"signature")
    signature = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.sig",
                            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                       "digest": push_blob(up, "library/app", b"{}"), "size": 2},
                            "layers": [{"mediaType": "application/x.sig", "digest": signature_blob, "size": 9}],
                            "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(data)}}).encode()
    put_manifest(up, "library/app", digest_of(signature), signature)
    client, _ = make_cache(hub(upstream))
    assert client.get("/v2/hub/app/tags/list").json == {"name": "hub/app", "tags": ["1", "10", "2", "latest"]}
    page = client.get("/v2/hub/app/tags/list?n=2&last=1")
    assert page.json["tags"] == ["10", "2"] and 'rel="next"' in page.headers["Link"]
    referrers = client.get(f"/v2/hub/app/referrers/{digest}").json["manifests"]
    assert [(r["digest"], r["artifactType"]) for r in referrers] == [(digest_of(signature), "application/x.sig")]
    assert client.get(f"/v2/hub/app/referrers/{digest}?artifactType=other").json["manifests"] == []
    # The referrer itself is pulled through like any manifest.
    assert client.get(f"/v2/hub/app/manifests/{digest_of(signature)}", headers=ACCEPT).body == signature
    client.get("/v2/hub/nothing-here/tags/list", status=404)


# -- freshness -------------------------------------------------------------------------------------------------------

def test_a_tag_moved_upstream_is_seen_after_the_freshness_window_not_before(upstream, up, make_cache, clock):
    old, old_digest = push_image(up, "library/alpine", "3", layers=(b"old",))
    client, _ = make_cache(hub(upstream, freshness=60))
    assert client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT).body == old
    new, new_digest = push_image(up, "library/alpine", "3", layers=(b"new",))
    upstream.clear()
    clock.now += 59
    assert client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT).body == old
    assert upstream.requests == []  # trusted within the window: not even a HEAD
    clock.now += 2
    moved = client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    assert moved.body == new and moved.headers["X-Dockyard-Cache"] == "revalidated"
    assert upstream.count("HEAD", "/manifests/3") == 1 and upstream.count("GET", "/manifests/3") == 1
    # Unchanged after the next window: a HEAD only, and the tag is fresh again.
    upstream.clear()
    clock.now += 61
    same = client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    assert same.body == new and same.headers["X-Dockyard-Cache"] == "revalidated"
    assert [(m, p) for m, p, _ in upstream.requests] == [("HEAD", "/v2/library/alpine/manifests/3")]
    assert client.head("/v2/hub/alpine/manifests/3", headers=ACCEPT).headers["X-Dockyard-Cache"] == "hit"
    # The old manifest stays pullable by digest until it is evicted.
    assert client.get(f"/v2/hub/alpine/manifests/{old_digest}", headers=ACCEPT).body == old


# -- the upstream down -----------------------------------------------------------------------------------------------

def test_the_upstream_down_cached_content_is_served_and_the_rest_is_a_clear_error(upstream, up, make_cache, clock,
                                                                                   caplog):
    data, digest = push_image(up, "library/alpine", "3")
    push_image(up, "library/other", "1")
    client, _ = make_cache(hub(upstream, freshness=10, timeout=2))
    client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    for blob_digest in blobs_of(data):
        client.get(f"/v2/hub/alpine/blobs/{blob_digest}")
    client.get("/v2/hub/alpine/tags/list")
    upstream.stop()
    clock.now += 3600
    stale = client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    assert stale.body == data and stale.headers["X-Dockyard-Cache"] == "stale"
    assert "serving hub/alpine:3" in caplog.text and "stale" in caplog.text
    for blob_digest in blobs_of(data):
        assert digest_of(client.get(f"/v2/hub/alpine/blobs/{blob_digest}").body) == blob_digest
    assert client.get("/v2/hub/alpine/tags/list").json["tags"] == ["3"]
    missing = client.get("/v2/hub/other/manifests/1", headers=ACCEPT, status=502).json["errors"][0]
    assert missing["code"] == "UPSTREAM_ERROR" and upstream.url in missing["message"] and "hub" in missing["message"]
    assert missing["detail"]["upstream"] == "hub"
    error = client.get(f"/v2/hub/other/blobs/{digest_of(b'x')}", status=502).json["errors"][0]
    assert error["code"] == "UPSTREAM_ERROR"
    client.get("/v2/hub/other/tags/list", status=502)


def test_upstream_404s_are_the_spec_s_unknowns(upstream, up, make_cache):
    push_image(up, "library/alpine", "3")
    client, _ = make_cache(hub(upstream))
    body = client.get("/v2/hub/alpine/manifests/4", headers=ACCEPT, status=404).json["errors"][0]
    assert body["code"] == "MANIFEST_UNKNOWN" and body["detail"]["upstream"] == "hub"
    assert client.get("/v2/hub/nothing/manifests/1", headers=ACCEPT, status=404).json["errors"][0]["code"] in (
        "NAME_UNKNOWN", "MANIFEST_UNKNOWN")
    client.get(f"/v2/hub/alpine/blobs/{digest_of(b'nope')}", status=404)


# -- writes ----------------------------------------------------------------------------------------------------------

def test_a_cached_name_is_read_only_and_pushes_elsewhere_work(upstream, up, make_cache):
    data, digest = push_image(up, "library/alpine", "3")
    client, _ = make_cache(hub(upstream))
    client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    refusals = [
        client.post("/v2/hub/alpine/blobs/uploads/", status=403),
        client.post(f"/v2/hub/alpine/blobs/uploads/?digest={digest_of(b'x')}", b"x", status=403),
        client.post(f"/v2/hub/evil/blobs/uploads/?mount={digest_of(b'x')}&from=team/app", status=403),
        client.put("/v2/hub/alpine/manifests/3", data, headers={"Content-Type": OCI_MANIFEST}, status=403),
        client.delete(f"/v2/hub/alpine/manifests/{digest}", status=403),
        client.delete("/v2/hub/alpine/manifests/3", status=403),
        client.delete(f"/v2/hub/alpine/blobs/{blobs_of(data)[0]}", status=403),
        client.patch("/v2/hub/alpine/blobs/uploads/00000000-0000-4000-8000-000000000000", b"x", status=403),
        client.put("/v2/hub/alpine/blobs/uploads/00000000-0000-4000-8000-000000000000?digest=" + digest_of(b"x"),
                   status=403),
    ]
    for refused in refusals:
        error = refused.json["errors"][0]
        assert error["code"] == "DENIED" and "read-only mirror" in error["message"] and upstream.url in error[
            "message"]
    assert client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT).body == data  # unchanged
    own, _ = push_image(client, "team/app", "1")
    assert client.get("/v2/team/app/manifests/1", headers=ACCEPT).body == own
    # The admin API may empty a cached repository: the next pull fills it again.
    client.delete("/v2/_dockyard/repositories/hub/alpine", status=202)
    assert client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT).headers["X-Dockyard-Cache"] == "miss"


# -- hostile or broken upstreams -------------------------------------------------------------------------------------

class LyingUpstream:
    """A registry API of a few lines: one image, whose layer it serves with wrong bytes of the right length (or
    whatever a test sets)."""

    def __init__(self):
        self.layer = b"the real layer bytes"
        self.config = b'{"os":"linux"}'
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(self.config),
                       "size": len(self.config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(self.layer),
                        "size": len(self.layer)}]}).encode()
        self.served_layer = b"X" * len(self.layer)
        self.manifest_headers: list = []
        self.manifest_body: bytes | None = None
        self.blob_headers: list = []

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/v2/":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b"{}"]
        if "/manifests/" in path:
            body = self.manifest if self.manifest_body is None else self.manifest_body
            start_response("200 OK", [("Content-Type", OCI_MANIFEST), ("Content-Length", str(len(body))),
                                      *self.manifest_headers])
            return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [body]
        if path.endswith(digest_of(self.config)):
            start_response("200 OK", [("Content-Length", str(len(self.config)))])
            return [self.config]
        if "/blobs/" in path:
            start_response("200 OK", [*(self.blob_headers or [("Content-Length", str(len(self.served_layer)))])])
            half = len(self.served_layer) // 2  # two parts: wsgiref adds no Content-Length of its own
            return iter([self.served_layer[:half], self.served_layer[half:]])
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"errors":[{"code":"NAME_UNKNOWN","message":"no","detail":{}}]}']


@pytest.fixture
def liar():
    app = LyingUpstream()
    served = ServedApp(app)
    served.lies = app
    yield served
    served.stop()


def test_a_blob_whose_bytes_do_not_match_its_digest_is_an_error_and_caches_nothing(liar, make_cache):
    client, app = make_cache(hub(liar))
    assert client.get("/v2/hub/app/manifests/1", headers=ACCEPT).body == liar.lies.manifest
    layer = digest_of(liar.lies.layer)
    for attempt in (1, 2):
        with pytest.raises(UpstreamError, match="do not match the blob's digest"):
            client.get(f"/v2/hub/app/blobs/{layer}")  # the body is cut short: the client sees an error
        assert liar.count("GET", layer) == attempt  # nothing was cached: the next pull asks again
    assert app.registry.storage_totals()["blobs"] == 0
    assert app.registry.usage().upload_sessions == 0
    assert app.registry.fsck().clean  # the manifest's layer not fetched yet is no problem of a cache
    # A well-behaved blob of the same image goes through.
    assert client.get(f"/v2/hub/app/blobs/{digest_of(liar.lies.config)}").body == liar.lies.config


def test_a_blob_cut_short_or_over_the_cap_caches_nothing(liar, make_cache):
    client, app = make_cache(hub(liar, max_size=10))
    layer = digest_of(liar.lies.layer)
    liar.lies.served_layer = liar.lies.layer[:-4]  # the connection closes before Content-Length bytes came
    liar.lies.blob_headers = [("Content-Length", str(len(liar.lies.layer)))]
    with pytest.raises(UpstreamError, match="broke off"):
        client.get(f"/v2/hub/app/blobs/{layer}")
    liar.lies.served_layer = liar.lies.layer  # no Content-Length: bounded by max_size
    liar.lies.blob_headers = [("Content-Type", "application/octet-stream")]
    error = client.get(f"/v2/hub/app/blobs/{layer}", status=502).json["errors"][0]
    assert "more than 10 bytes" in error["message"]
    assert app.registry.storage_totals()["blobs"] == 0 and app.registry.usage().upload_sessions == 0


def test_a_blob_without_content_length_is_served_once_stored(liar, make_cache):
    client, app = make_cache(hub(liar))
    liar.lies.served_layer = liar.lies.layer
    liar.lies.blob_headers = [("Content-Type", "application/octet-stream")]
    got = client.get(f"/v2/hub/app/blobs/{digest_of(liar.lies.layer)}")
    assert got.body == liar.lies.layer and got.headers["X-Dockyard-Cache"] == "hit"
    assert app.registry.storage_totals()["blobs"] == 1


@pytest.mark.parametrize("lie,headers,message", [
    (b"not json", [], "cannot read"),
    (b'{"schemaVersion": 2, "mediaType": "application/x.unknown"}', [], "cannot read"),
    (None, [("Docker-Content-Digest", digest_of(b"other"))], "does not match its Docker-Content-Digest"),
    (None, [("Docker-Content-Digest", "sha256:short")], "invalid digest"),
    (b"x" * 5000, [], "larger than"),
])
def test_a_manifest_the_upstream_garbles_is_a_502_and_is_not_cached(liar, make_cache, lie, headers, message):
    client, app = make_cache(hub(liar), max_manifest_size=4096)
    liar.lies.manifest_body = lie
    liar.lies.manifest_headers = headers
    error = client.get("/v2/hub/app/manifests/1", headers=ACCEPT, status=502).json["errors"][0]
    assert error["code"] == "UPSTREAM_ERROR" and message in error["message"]
    assert app.registry.catalog(10, None) == ([], False)


def test_a_manifest_by_digest_must_match_the_digest(liar, make_cache):
    client, _ = make_cache(hub(liar))
    error = client.get(f"/v2/hub/app/manifests/{digest_of(b'something else')}", headers=ACCEPT,
                       status=502).json["errors"][0]
    assert "does not match the digest asked for" in error["message"]


# -- concurrency -----------------------------------------------------------------------------------------------------

def test_concurrent_pulls_of_one_uncached_blob_make_one_upstream_fetch(upstream, up, make_cache):
    big = hashlib.sha256(b"seed").digest() * (4 * 1024 * 1024 // 32)  # 4 MiB
    data, _ = push_image(up, "library/big", "1", layers=(big,))
    client, app = make_cache(hub(upstream), io_block_size=64 * 1024)
    client.get("/v2/hub/big/manifests/1", headers=ACCEPT)
    layer = blobs_of(data)[1]
    results, errors = [], []

    def pull():
        try:
            got = webtest.TestApp(app).get(f"/v2/hub/big/blobs/{layer}")
            results.append((digest_of(got.body), got.headers["X-Dockyard-Cache"]))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(results) == 8
    assert {d for d, _ in results} == {layer}
    assert sorted(c for _, c in results).count("miss") == 1
    assert upstream.count("GET", layer) == 1


class SlowBlobs:
    """An upstream whose blob bodies leave in 64 KiB pieces `delay` seconds apart, so one fetch lasts long enough
    for every concurrent request to arrive while it runs."""

    def __init__(self, app, delay: float):
        self.app = app
        self.delay = delay

    def __call__(self, environ, start_response):
        body = self.app(environ, start_response)
        if environ["REQUEST_METHOD"] != "GET" or "/blobs/" not in environ["PATH_INFO"]:
            return body

        def slowly():
            try:
                for chunk in body:
                    for at in range(0, len(chunk), 64 * 1024):
                        time.sleep(self.delay)
                        yield chunk[at:at + 64 * 1024]
            finally:
                if hasattr(body, "close"):
                    body.close()

        return slowly()


def test_concurrent_pulls_of_one_uncached_blob_on_two_nodes_on_s3_make_one_upstream_fetch(
        tmp_path, upstream_app, up, postgresql_url, swift, s3_bucket):
    from dockyard.server.config import StorageConfig
    from dockyard.server.storage.s3 import MIN_PART_SIZE

    big = hashlib.sha256(b"nodes").digest() * (6 * 1024 * 1024 // 32)  # 6 MiB: a multipart upload on S3
    data, _ = push_image(up, "library/big", "1", layers=(big,))
    layer = blobs_of(data)[1]
    served = ServedApp(SlowBlobs(upstream_app, delay=0.02))  # about 2 s for the layer
    storage = StorageConfig(driver="s3", bucket=s3_bucket, endpoint_url=swift.endpoint, region=swift.region,
                            path_style=True, access_key_id=swift.access_key, secret_access_key=swift.secret_key,
                            part_size=MIN_PART_SIZE, timeout=5)
    committed = {}  # node -> when its metadata recorded the blob (the end of the leader's commit)
    started = {}  # thread -> when its response started
    nodes = []
    try:
        for node in ("a", "b"):  # two nodes: one database, one bucket, a data directory and an app each
            app = create_app(Config(data=str(tmp_path / f"node-{node}"), database=postgresql_url, storage=storage,
                                    upstreams=(hub(served),), io_block_size=64 * 1024))
            metadata = app.registry.mirror.metadata

            def record_blob(*args, _record=metadata.record_blob, _node=node, **kwargs):
                result = _record(*args, **kwargs)
                committed[_node] = time.monotonic()
                return result

            metadata.record_blob = record_blob
            nodes.append(app)
        assert webtest.TestApp(nodes[0]).get("/v2/hub/big/manifests/1", headers=ACCEPT).body == data
        served.clear()

        def timed(app):
            def respond(environ, start_response):
                def start(status, headers, exc_info=None):
                    started[threading.get_ident()] = time.monotonic()
                    return start_response(status, headers, exc_info)
                return app(environ, start)
            return webtest.TestApp(respond)

        results, errors = [], []
        barrier = threading.Barrier(16)

        def pull(node: str, app):
            try:
                client = timed(app)
                barrier.wait(30)
                got = client.get(f"/v2/hub/big/blobs/{layer}")
                results.append((node, digest_of(got.body), len(got.body), got.headers["X-Dockyard-Cache"],
                                started[threading.get_ident()]))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=pull, args=(node, app)) for node, app in zip("ab", nodes)
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == [] and len(results) == 16
        assert {(d, n) for _, d, n, _, _ in results} == {(layer, len(big))}  # every client: the verified bytes
        assert served.count("GET", layer) == 1  # one upstream fetch, across both nodes
        (leader,) = [r for r in results if r[3] == "miss"]
        followers = [r for r in results if r[3] != "miss"]
        assert {cache for *_, cache, _ in followers} == {"hit"}
        assert {node for node, *_ in followers} == {"a", "b"}
        assert list(committed) == [leader[0]]  # the leader's node stored it; the other never fetched
        # The leader's client was streamed to while the blob was stored; every follower, on either node, only
        # once the leader's commit was done: an unfinished multipart upload cannot be read back.
        assert leader[4] < committed[leader[0]]
        assert all(at >= committed[leader[0]] for *_, at in followers)
        for app in nodes:
            assert app.registry.storage_totals()["blobs"] == 1
            assert app.registry.usage().upload_sessions == 0
        assert nodes[1].registry.fsck(grace=0).clean
    finally:
        served.stop()
        for app in nodes:
            app.registry.close()


# -- authentication upstream -----------------------------------------------------------------------------------------

def htpasswd_file(tmp_path, user: str, password: str):
    import bcrypt

    path = tmp_path / "htpasswd"
    path.write_text(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n")
    return path


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_an_upstream_that_asks_for_credentials(tmp_path, make_cache, mode):
    options = {"htpasswd": str(htpasswd_file(tmp_path, "mirror", "pw")), "rules": [
        {"users": ["mirror"], "repositories": ["*"], "actions": ["pull"]}], "admins": ["admin"]}
    if mode == "token":
        options["token"] = {"expires_in": 60}
    guarded = create_app(Config(data=str(tmp_path / "guarded"), database=f"sqlite:///{tmp_path / 'g.db'}",
                                middleware=({"name": "auth", "options": options},)))
    served = ServedApp(guarded)
    try:
        # Content straight into the guarded registry's domain (its HTTP API wants credentials).
        registry = guarded.registry
        pushes = webtest.TestApp(create_app(Config(data=str(tmp_path / "guarded"),
                                                   database=f"sqlite:///{tmp_path / 'g.db'}")))
        data, digest = push_image(pushes, "library/alpine", "3")
        anonymous, _ = make_cache(hub(served))
        error = anonymous.get("/v2/hub/alpine/manifests/3", headers=ACCEPT, status=502).json["errors"][0]
        assert "asks for credentials and none are configured" in error["message"]
        wrong, _ = make_cache(hub(served, username="mirror", password="wrong"))
        assert "refused" in wrong.get("/v2/hub/alpine/manifests/3", headers=ACCEPT, status=502).json[
            "errors"][0]["message"]
        served.clear()
        client, _ = make_cache(hub(served, username="mirror", password="pw"))
        assert client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT).body == data
        for blob_digest in blobs_of(data):
            assert digest_of(client.get(f"/v2/hub/alpine/blobs/{blob_digest}").body) == blob_digest
        if mode == "token":  # one token for the repository's scope, used for every request after it
            assert served.count("GET", "/auth/token") == 1
        registry.close()
    finally:
        served.stop()
        guarded.registry.close()


# -- an https upstream -----------------------------------------------------------------------------------------------

@pytest.fixture
def tls_upstream(tmp_path, upstream_app):
    """`upstream_app` over HTTPS, its certificate (for IP 127.0.0.1) signed by a CA made for this test alone;
    `served.ca` is the CA's certificate."""
    import shutil
    import ssl

    from e2e.e2e_nginx import make_certificates

    openssl = shutil.which("openssl")
    assert openssl, "the openssl CLI is needed"
    directory = tmp_path / "tls"
    ca = make_certificates(directory, openssl, ca_name="Dockyard mirror test CA")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "fullchain.pem", directory / "privkey.pem")
    served = ServedApp(upstream_app, tls=context)
    served.ca = str(ca)
    yield served
    served.stop()


def test_an_https_upstream_is_verified_with_its_ca_bundle_and_refused_without_it(tls_upstream, up, make_cache,
                                                                                 monkeypatch):
    data, digest = push_image(up, "library/alpine", "3")
    assert tls_upstream.url.startswith("https://")

    def pulls(client, name: str) -> None:  # each cache its own image (on PostgreSQL they share one database)
        data, digest = push_image(up, f"library/{name}", "3", layers=(name.encode(), b"layer"))
        got = client.get(f"/v2/hub/{name}/manifests/3", headers=ACCEPT)
        assert got.body == data and got.headers["Docker-Content-Digest"] == digest
        assert got.headers["X-Dockyard-Cache"] == "miss"
        for blob_digest in blobs_of(data):
            assert digest_of(client.get(f"/v2/hub/{name}/blobs/{blob_digest}").body) == blob_digest
        assert tls_upstream.count("GET", f"/v2/library/{name}/blobs/") == 3

    # Default tls_verify = true, the system's CAs: a certificate of an unknown CA is refused, nothing is cached.
    refusing, app = make_cache(hub(tls_upstream))
    for path in ("/v2/hub/alpine/manifests/3", f"/v2/hub/alpine/manifests/{digest}",
                 f"/v2/hub/alpine/blobs/{blobs_of(data)[1]}"):
        error = refusing.get(path, headers=ACCEPT, status=502).json
        assert list(error) == ["errors"] and {"code", "message", "detail"} <= set(error["errors"][0])
        (error,) = error["errors"]
        assert error["code"] == "UPSTREAM_ERROR" and error["detail"]["upstream"] == "hub"
        assert error["message"].startswith(f"upstream hub ({tls_upstream.url}): unreachable")
        assert "CERTIFICATE_VERIFY_FAILED" in error["message"]
    assert tls_upstream.requests == []  # no request ever got past the handshake
    assert app.registry.catalog(10, None) == ([], False)
    assert app.registry.storage_totals()["blobs"] == 0 and app.registry.usage().upload_sessions == 0

    # With the CA as ca_bundle: verified, pulled through.
    trusting, _ = make_cache(hub(tls_upstream, ca_bundle=tls_upstream.ca))
    pulls(trusting, "debian")

    # tls_verify = false: any certificate, pulled through too.
    unverified, _ = make_cache(hub(tls_upstream, tls_verify=False))
    pulls(unverified, "busybox")

    # No ca_bundle: the machine's CA store, as docker uses it (a company CA installed there is trusted), not a
    # bundle shipped with a Python package. SSL_CERT_FILE points OpenSSL's default store at the test's CA.
    monkeypatch.setenv("SSL_CERT_FILE", tls_upstream.ca)
    system, _ = make_cache(hub(tls_upstream))
    pulls(system, "ubuntu")
    # ... and a CA known only to certifi's bundle (httpx's default) is not trusted.
    import certifi

    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)  # httpx would read these too, hiding which store is used
    monkeypatch.setattr(certifi, "where", lambda: tls_upstream.ca)
    certifi_only, _ = make_cache(hub(tls_upstream))
    certifi_only.get("/v2/hub/alpine/manifests/3", headers=ACCEPT, status=502)


# -- auth rules on cached repositories -------------------------------------------------------------------------------

def test_auth_rules_apply_to_cached_repositories_and_refused_callers_cost_the_upstream_nothing(tmp_path, upstream,
                                                                                               up, make_cache):
    import base64

    from dockyard.middleware.htpasswd import hash_password, write_users

    def basic(user: str, password: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    passwords = {"alice": "alice-pw", "bob": "bob-pw"}
    write_users(tmp_path / "htpasswd", {user: hash_password(pw, rounds=4) for user, pw in passwords.items()})
    auth = {"name": "auth", "options": {"htpasswd": str(tmp_path / "htpasswd"), "rules": [
        {"users": ["alice"], "repositories": ["hub/*"], "actions": ["pull"]},
        {"users": ["bob"], "repositories": ["team/*"], "actions": ["pull", "push"]}]}}
    data, digest = push_image(up, "library/alpine", "3", layers=(b"alpine layer " * 500, b"second layer"))
    client, app = make_cache(hub(upstream), middleware=(auth,))
    alice, bob = basic("alice", passwords["alice"]), basic("bob", passwords["bob"])
    layer = blobs_of(data)[-1]  # "second layer"
    paths = ["/v2/hub/alpine/manifests/3", f"/v2/hub/alpine/manifests/{digest}", f"/v2/hub/alpine/blobs/{layer}",
             "/v2/hub/alpine/tags/list", f"/v2/hub/alpine/referrers/{digest}"]

    def refused() -> None:
        for path in paths:
            for method in ("GET",) if "/tags/" in path or "/referrers/" in path else ("GET", "HEAD"):
                denied = client.request(path, method=method, headers={**ACCEPT, **bob}, expect_errors=True)
                assert denied.status_int == 403, (method, path, denied.status)
                if method == "GET":
                    assert denied.json["errors"][0]["code"] == "DENIED"
                challenged = client.request(path, method=method, headers=ACCEPT, expect_errors=True)
                assert challenged.status_int == 401, (method, path, challenged.status)
                assert challenged.headers["WWW-Authenticate"] == 'Basic realm="Dockyard"'
                if method == "GET":
                    assert challenged.json["errors"][0]["code"] == "UNAUTHORIZED"
        # A wrong password is anonymous too (once: the failed-login throttle answers 429 after a few).
        wrong = client.get(paths[0], headers={**ACCEPT, **basic("alice", "wrong")}, status=401)
        assert wrong.json["errors"][0]["code"] == "UNAUTHORIZED"

    # Nothing cached yet: a refused caller must not make the cache ask the upstream for anything.
    refused()
    assert upstream.requests == []
    assert app.registry.catalog(10, None)[0] == []

    # alice may: the image is pulled through, content verified.
    got = client.get("/v2/hub/alpine/manifests/3", headers={**ACCEPT, **alice})
    assert got.body == data and got.headers["Docker-Content-Digest"] == digest
    assert got.headers["X-Dockyard-Cache"] == "miss"
    for blob_digest in blobs_of(data):
        blob = client.get(f"/v2/hub/alpine/blobs/{blob_digest}", headers=alice)
        assert digest_of(blob.body) == blob_digest
    assert client.get("/v2/_catalog", headers=alice).json["repositories"] == ["hub/alpine"]
    fetched = len(upstream.requests)
    assert fetched > 0

    # Cached now: still refused to bob and to anonymous, and still not a single request upstream because of them.
    refused()
    assert len(upstream.requests) == fetched
    assert client.get("/v2/_catalog", headers=bob).json["repositories"] == []
    # alice's second pull is a hit; the refusals did not disturb the cache.
    assert client.get("/v2/hub/alpine/manifests/3", headers={**ACCEPT, **alice}).headers["X-Dockyard-Cache"] == "hit"
    assert client.get(f"/v2/hub/alpine/blobs/{layer}", headers=alice).body == b"second layer"


# -- PostgreSQL at the previous release's schema ---------------------------------------------------------------------

@pytest.fixture
def schema_1_url(postgresql) -> str:
    """A PostgreSQL database at schema 1: what the release before the cache left, `dockyard migrate` not run yet."""
    from dockyard.server.metadata.postgres import PostgresMetadata
    from dockyard.server.metadata.postgres_schema import MIGRATIONS

    url = postgresql.url(postgresql.new_database(template=None), pool_timeout=2)
    previous = PostgresMetadata(url, check_schema=False, migrations=MIGRATIONS[:1])
    assert previous.migrate() == [MIGRATIONS[0].name]
    previous.close()
    return url


@pytest.fixture
def cache_on(tmp_path, upstream, clock):
    """cache_on(url) -> (webtest client, app) caching `upstream` as hub/, on the metadata database at `url`."""
    apps = []

    def make(url: str):
        app = create_app(Config(data=str(tmp_path / "cache"), database=url, upstreams=(hub(upstream),)), clock=clock)
        apps.append(app)
        return webtest.TestApp(app), app

    yield make
    for app in apps:
        app.registry.close()


def assert_needs_migrate(response) -> None:
    assert response.status_int == 503
    assert response.headers["Retry-After"].isdigit()
    if response.request.method == "HEAD":
        return
    assert response.content_type == "application/json"
    (error,) = response.json["errors"]  # the spec's error shape
    assert set(error) <= {"code", "message", "detail"} and error["code"] == "UNAVAILABLE"
    assert "run `dockyard migrate`" in error["message"]


def test_on_a_schema_1_postgresql_cached_repositories_answer_503_until_dockyard_migrate(schema_1_url, cache_on,
                                                                                      upstream, up, capsys):
    from dockyard.server import cli
    from dockyard.server.metadata.postgres_schema import MIGRATIONS

    data, digest = push_image(up, "library/alpine", "3")
    client, app = cache_on(schema_1_url)  # this release starts on the previous release's schema

    def own_repository_serves() -> None:
        assert client.get("/v2/team/app/manifests/1", headers=ACCEPT).body == own
        for blob_digest in blobs_of(own):
            assert digest_of(client.get(f"/v2/team/app/blobs/{blob_digest}").body) == blob_digest
        assert client.get("/v2/team/app/tags/list").json["tags"] == ["1"]

    own, _ = push_image(client, "team/app", "1", layers=(b"own layer",))
    own_repository_serves()
    assert_needs_migrate(client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT, status=503))
    assert_needs_migrate(client.head("/v2/hub/alpine/manifests/3", headers=ACCEPT, status=503))
    assert_needs_migrate(client.get(f"/v2/hub/alpine/manifests/{digest}", headers=ACCEPT, status=503))
    assert upstream.count("GET", "/manifests/3") == upstream.count("HEAD", "/manifests/3") == 0
    own_repository_serves()  # the refused cache queries left the pool's connections usable
    assert client.get("/v2/_catalog").json["repositories"] == ["team/app"]  # nothing half-cached

    assert cli.main(["migrate", "--database", schema_1_url]) == 0
    assert capsys.readouterr().out.strip().endswith(", ".join(m.name for m in MIGRATIONS[1:]))
    # The same worker, not restarted: the same requests succeed.
    got = client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    assert got.body == data and got.headers["Docker-Content-Digest"] == digest
    assert client.get(f"/v2/hub/alpine/manifests/{digest}", headers=ACCEPT).headers["X-Dockyard-Cache"] == "hit"
    for blob_digest in blobs_of(data):
        assert digest_of(client.get(f"/v2/hub/alpine/blobs/{blob_digest}").body) == blob_digest
    assert client.get("/v2/_catalog").json["repositories"] == ["hub/alpine", "team/app"]
    own_repository_serves()


def test_on_a_schema_1_postgresql_every_cached_request_is_a_503_that_costs_the_upstream_nothing(schema_1_url,
                                                                                                cache_on, upstream,
                                                                                                up):
    data, digest = push_image(up, "library/alpine", "3")
    client, _ = cache_on(schema_1_url)
    for path in [f"/v2/hub/alpine/manifests/{digest}", f"/v2/hub/alpine/blobs/{blobs_of(data)[1]}",
                 "/v2/hub/alpine/tags/list", f"/v2/hub/alpine/referrers/{digest}"]:
        assert_needs_migrate(client.get(path, headers=ACCEPT, expect_errors=True))
    assert upstream.requests == []


# -- eviction --------------------------------------------------------------------------------------------------------

def settle(timeout: float = 20) -> None:
    """Wait until no blob fetch is running (each runs in a thread of its own, past the response it streamed)."""
    deadline = time.monotonic() + timeout
    while any(t.name == "cache-fetch" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_over_its_cap_the_cache_evicts_the_least_recently_pulled_never_one_in_use(upstream, up, make_cache, clock):
    images = {}
    for name in ("a", "b", "c"):
        images[name] = push_image(up, f"library/{name}", "1", layers=(name.encode() * 1000,))
    client, app = make_cache(hub(upstream, max_size=2500))
    mirror = app.registry.mirror

    def pull(name):
        data, _ = images[name]
        client.get(f"/v2/hub/{name}/manifests/1", headers=ACCEPT)
        for blob_digest in blobs_of(data):
            client.get(f"/v2/hub/{name}/blobs/{blob_digest}")

    pull("a")
    clock.now += 100
    pull("b")
    clock.now += 100
    pull("a")  # a is now more recent than b
    clock.now += 100
    pull("c")  # over the cap (3 x 1000 bytes of layers): c is in use, b the least recently pulled
    settle()  # the fetch of c's last blob may have evicted already (it looks at the cap once a blob is cached)
    mirror.evict(mirror.upstreams[0])
    assert app.registry.catalog(10, None)[0] == ["hub/a", "hub/c"]
    assert mirror.evict(mirror.upstreams[0]) == []  # nothing more to do: within the cap once b went
    assert app.registry.storage_totals()["blob_bytes"] <= 2500 + 100
    # Pulled again, b comes back from the upstream; a is now the least recent, but in use (pulled just now).
    upstream.clear()
    clock.now += 100
    pull("a")
    pull("b")
    settle()
    mirror.evict(mirror.upstreams[0])
    assert app.registry.catalog(10, None)[0] == ["hub/a", "hub/b"]  # c went: a and b are in use
    assert upstream.count("GET", "/v2/library/b/blobs/") == 2


def test_a_repository_being_pulled_is_never_evicted(upstream, up, make_cache, clock):
    a, _ = push_image(up, "library/a", "1", layers=(b"a" * 3000,))
    b, _ = push_image(up, "library/b", "1", layers=(b"b" * 3000,))
    client, app = make_cache(hub(upstream, max_size=1000))
    client.get("/v2/hub/a/manifests/1", headers=ACCEPT)
    reading = app.registry.read_blob(app.registry.blob("hub/a", blobs_of(a)[1], pull=True))  # a client mid-read
    blocks = iter(reading)
    first = next(blocks)
    settle()  # the fetch's own look at the cap (a is in use: nothing goes) is over before the clock moves
    clock.now += 3600  # long ago, as far as the recorded pull times go
    client.get("/v2/hub/b/manifests/1", headers=ACCEPT)
    clock.now += 3600
    app.registry.mirror.pulls.flush()  # what the background job does every FLUSH_INTERVAL
    assert app.registry.mirror.evict(app.registry.mirror.upstreams[0]) == [("hub/b", digest_of(b))]
    assert app.registry.catalog(10, None)[0] == ["hub/a"]
    rest = b"".join(blocks)
    reading.close()
    assert first + rest == b"a" * 3000


# -- read-only mode, metrics -----------------------------------------------------------------------------------------

def test_in_read_only_mode_the_cache_serves_what_it_holds_and_fetches_nothing(upstream, up, make_cache, clock):
    data, _ = push_image(up, "library/alpine", "3")
    push_image(up, "library/other", "1")
    client, app = make_cache(hub(upstream, freshness=10))
    client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    app.registry.set_read_only(True)
    upstream.clear()
    clock.now += 60
    assert client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT).headers["X-Dockyard-Cache"] == "stale"
    client.get("/v2/hub/other/manifests/1", headers=ACCEPT, status=503)
    client.get(f"/v2/hub/alpine/blobs/{blobs_of(data)[0]}", status=503)
    assert upstream.requests == []


def test_metrics_count_hits_misses_revalidations_errors_and_bytes(upstream, up, make_cache, clock):
    data, _ = push_image(up, "library/alpine", "3")
    client, app = make_cache(hub(upstream, freshness=10))
    client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    for blob_digest in blobs_of(data):
        client.get(f"/v2/hub/alpine/blobs/{blob_digest}")
    clock.now += 60
    client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
    client.get("/v2/hub/alpine/manifests/nope", headers=ACCEPT, status=404)
    text = client.get("/metrics").text
    assert 'dockyard_cache_hits_total{upstream="hub",kind="manifest"} 1' in text
    assert 'dockyard_cache_misses_total{upstream="hub",kind="manifest"} 1' in text
    assert 'dockyard_cache_misses_total{upstream="hub",kind="blob"} 3' in text
    fetched = len(b'{"os":"linux"}') + len(b"layer one") + len(b"layer two")
    assert f'dockyard_cache_fetched_bytes_total{{upstream="hub",kind="blob"}} {fetched}' in text
    assert 'dockyard_cache_revalidations_total{upstream="hub",result="unchanged"} 1' in text
    assert "dockyard_cache_upstream_errors_total{" not in text  # a 404 is the upstream's answer, not a failure
    for blob_digest in blobs_of(data):
        client.get(f"/v2/hub/alpine/blobs/{blob_digest}")
    upstream.stop()
    client.get("/v2/hub/alpine/manifests/4", headers=ACCEPT, status=502)
    text = client.get("/metrics").text
    assert 'dockyard_cache_hits_total{upstream="hub",kind="blob"} 3' in text
    assert 'dockyard_cache_upstream_errors_total{upstream="hub",code="UPSTREAM_ERROR"} 1' in text


# -- hostile input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,headers,status", [
    ("get", "/v2/hub/alpine/manifests/sha256:1234", {}, 400),
    ("get", "/v2/hub/alpine/manifests/sha999:" + "a" * 64, {}, 400),
    ("get", "/v2/hub/alpine/manifests/" + "t" * 200, {}, 404),
    ("get", "/v2/hub/alpine/manifests/-bad", {}, 404),
    ("head", "/v2/hub/alpine/manifests/sha256:nothex", {}, 400),
    ("get", "/v2/hub/alpine/blobs/sha256:zz", {}, 400),
    ("get", "/v2/hub/alpine/blobs/md5:" + "a" * 32, {}, 400),
    ("get", "/v2/hub/ALPINE/manifests/3", {}, 400),
    ("get", "/v2/hub//alpine/manifests/3", {}, 400),
    ("get", "/v2/hub/alpine/referrers/sha256:x", {}, 400),
    ("get", "/v2/hub/alpine/tags/list?n=-1", {}, 400),
    ("get", "/v2/hub/alpine/tags/list?n=abc", {}, 400),
    ("get", "/v2/hub/alpine/tags/list?last=" + "%00" * 3, {}, 400),
    ("get", "/v2/hub/alpine/manifests/3", {"Accept": "x" * 10000}, 404),
    ("get", "/v2/hub/alpine/blobs/{layer}", {"Range": "bytes=99999-"}, 416),
    ("get", "/v2/hub/alpine/blobs/{layer}", {"Range": "bytes=5-2"}, 416),
    ("post", "/v2/hub/alpine/blobs/uploads/?mount=sha256:zz&from=../..", {}, 403),
])
def test_hostile_requests_to_a_cached_repository_are_4xx_in_the_spec_s_shape(upstream, up, make_cache, method, path,
                                                                              headers, status):
    data, _ = push_image(up, "library/alpine", "3")
    client, _ = make_cache(hub(upstream))
    path = path.replace("{layer}", blobs_of(data)[1])
    resp = getattr(client, method)(path, headers=headers, status=status, expect_errors=True)
    if method != "head":
        body = resp.json
        assert list(body) == ["errors"] and {"code", "message", "detail"} <= set(body["errors"][0])


class HostileUpstream:
    """A registry API that answers what no registry should: its tag lists, links, referrers and challenges are
    whatever the test sets."""

    def __init__(self):
        self.routes: dict[str, tuple[str, list, bytes]] = {}

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"] + (f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else "")
        for prefix, (status, headers, body) in self.routes.items():
            if path.startswith(prefix):
                start_response(status, headers + [("Content-Length", str(len(body)))])
                return [body]
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"errors":[{"code":"NAME_UNKNOWN","message":"no","detail":{}}]}']


@pytest.fixture
def hostile():
    app = HostileUpstream()
    served = ServedApp(app)
    served.routes = app.routes
    yield served
    served.stop()


def test_a_hostile_tag_list_is_refused_or_cleaned(hostile, make_cache):
    client, _ = make_cache(hub(hostile))
    hostile.routes["/v2/library/a/tags/list"] = ("200 OK", [], b"not json")
    assert client.get("/v2/hub/a/tags/list", status=502).json["errors"][0]["code"] == "UPSTREAM_ERROR"
    hostile.routes["/v2/library/b/tags/list"] = ("200 OK", [], json.dumps(
        {"tags": ["ok", "../bad", "", 5, None, "x" * 200, "fine-2"]}).encode())
    assert client.get("/v2/hub/b/tags/list").json["tags"] == ["fine-2", "ok"]
    # A Link to another host is not followed (the cache never becomes anyone's HTTP client).
    hostile.routes["/v2/library/c/tags/list"] = ("200 OK", [("Link", '<http://169.254.169.254/v2/x?n=1>; rel="next"')],
                                                 b'{"tags": ["1"]}')
    assert client.get("/v2/hub/c/tags/list").json["tags"] == ["1"]
    assert hostile.count("GET", "/v2/x") == 0


def test_hostile_referrers_are_dropped_and_missing_ones_fall_back(hostile, make_cache):
    client, _ = make_cache(hub(hostile))
    subject = digest_of(b"subject")
    good = {"mediaType": OCI_MANIFEST, "digest": digest_of(b"sig"), "size": 3, "artifactType": "application/x.sig"}
    hostile.routes["/v2/library/a/referrers/"] = ("200 OK", [], json.dumps({"manifests": [
        good, {"digest": "sha256:bad"}, {"mediaType": 5, "digest": digest_of(b"x"), "size": 1},
        {"mediaType": OCI_MANIFEST, "digest": digest_of(b"y"), "size": -1}, "text"]}).encode())
    assert client.get(f"/v2/hub/a/referrers/{subject}").json["manifests"] == []  # not a list of descriptors: none
    hostile.routes["/v2/library/a/referrers/"] = ("200 OK", [], json.dumps({"manifests": [
        good, {"digest": "sha256:bad"}, {"mediaType": 5, "digest": digest_of(b"x"), "size": 1},
        {"mediaType": OCI_MANIFEST, "digest": digest_of(b"y"), "size": -1}]}).encode())
    assert client.get(f"/v2/hub/a/referrers/{subject}").json["manifests"] == [good]
    hostile.routes["/v2/library/b/referrers/"] = ("200 OK", [], b"[1, 2")
    assert client.get(f"/v2/hub/b/referrers/{subject}").json["manifests"] == []  # the cached ones: none
    assert client.get(f"/v2/hub/c/referrers/{subject}").json["manifests"] == []  # no referrers API upstream


@pytest.mark.parametrize("challenge,message", [
    ('Bearer realm="ftp://example.com/token"', "token realm is not an http(s) URL"),
    ('Bearer service="x"', "no challenge Dockyard can follow"),
    ("Negotiate", "no challenge Dockyard can follow"),
    ("", "no challenge Dockyard can follow"),
    ('Basic realm="x"', "asks for credentials and none are configured"),
])
def test_an_upstream_challenge_dockyard_cannot_follow_is_a_502(hostile, make_cache, challenge, message):
    client, _ = make_cache(hub(hostile))
    hostile.routes["/v2/library/a/"] = ("401 Unauthorized", [("WWW-Authenticate", challenge)] if challenge else [],
                                        b"{}")
    error = client.get("/v2/hub/a/manifests/1", headers=ACCEPT, status=502).json["errors"][0]
    assert error["code"] == "UPSTREAM_ERROR" and message in error["message"]


def test_a_token_service_that_misbehaves_is_a_502(hostile, make_cache):
    client, _ = make_cache(hub(hostile, username="u", password="p"))
    hostile.routes["/v2/library/a/"] = ("401 Unauthorized", [(
        "WWW-Authenticate", f'Bearer realm="{hostile.url}/token",service="s"')], b"{}")
    for body, message in ((b"<html>", "other than a JSON token"), (b'{"token": "a b"}', "no usable token"),
                          (b'{"token": ""}', "no usable token")):
        hostile.routes["/token"] = ("200 OK", [], body)
        error = client.get("/v2/hub/a/manifests/1", headers=ACCEPT, status=502).json["errors"][0]
        assert message in error["message"]
    hostile.routes["/token"] = ("401 Unauthorized", [], b"{}")
    assert "refused Dockyard's credentials" in client.get("/v2/hub/a/manifests/1", headers=ACCEPT,
                                                          status=502).json["errors"][0]["message"]
    hostile.routes["/v2/library/a/"] = ("429 Too Many Requests", [("Retry-After", "99999999999")], b"{}")
    limited = client.get("/v2/hub/a/manifests/1", headers=ACCEPT, status=429)
    assert limited.headers["Retry-After"] == "60" and limited.json["errors"][0]["code"] == "TOOMANYREQUESTS"


# -- pull times ------------------------------------------------------------------------------------------------------

def test_pull_times_are_written_in_batches_not_once_per_pull(upstream, up, make_cache, clock):
    data, digest = push_image(up, "library/alpine", "3")
    client, app = make_cache(hub(upstream))
    pulls = app.registry.mirror.pulls
    batches = []

    class Counting:  # the metadata as the pull log sees it, each of its writes recorded
        def __init__(self, metadata):
            self.metadata = metadata

        def record_pulls(self, batch):
            batches.append(sorted(batch))
            self.metadata.record_pulls(batch)

    pulls.metadata = Counting(pulls.metadata)
    for _ in range(20):
        client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)
        for blob_digest in blobs_of(data):
            client.get(f"/v2/hub/alpine/blobs/{blob_digest}")
    assert batches == []  # 80 pulls, no write yet
    clock.now += 2
    client.get("/v2/hub/alpine/manifests/3", headers=ACCEPT)  # the first pull after the interval writes them all
    assert batches == [[("hub/alpine", "", clock.now - 2), ("hub/alpine", digest, clock.now)]]
    app.registry.mirror.maintain()  # the background job: nothing new to write
    assert len(batches) == 1


def test_a_first_client_too_slow_to_read_does_not_hold_the_fill_back(upstream, up, make_cache):
    big = os.urandom(200 * 1024)
    data, _ = push_image(up, "library/slow", "1", layers=(big,))
    _, app = make_cache(hub(upstream), io_block_size=4096, body_timeout=1)
    registry, layer = app.registry, blobs_of(data)[1]
    body = registry.read_blob(registry.blob("hub/slow", layer, pull=True))
    blocks = iter(body)
    first = next(blocks)  # then it stops reading: the fill buffers 16 blocks, waits a second, goes on without it
    deadline = time.monotonic() + 20
    while registry.blob("hub/slow", layer).cache != "hit" and time.monotonic() < deadline:
        time.sleep(0.1)
    stored = registry.read_blob(registry.blob("hub/slow", layer, pull=True))
    assert b"".join(iter(lambda: stored.read(65536), b"")) == big  # cached whole, for everyone else
    stored.close()
    with pytest.raises(UpstreamError, match="read too slowly"):
        first += b"".join(blocks)  # its own copy would be short: it gets an error, never a wrong blob
    body.close()
