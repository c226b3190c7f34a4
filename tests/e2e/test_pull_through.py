"""Issue 16: Dockyard as a pull-through cache, end to end with real processes only. The upstreams run on
127.0.0.1: the reference registry (Debian's docker-registry) with htpasswd auth, a second `dockyard serve` in
token mode (the Docker Hub-style flow), and for the lying upstream a small HTTP server of this module's own. What
reached an upstream is counted in its access log.

One cache serves the module's client tests (skopeo, podman, dockerd with --registry-mirror); the tests that stop
an upstream, cap the cache or pull 256 MiB sixteen times over start servers of their own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from e2e_reference import reference_config

pytestmark = pytest.mark.e2e

USER, PASSWORD = "mirror", f"pw-{uuid.uuid4().hex}"
FRESHNESS = 10  # seconds the module's cache trusts a tag of its token-mode upstream
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"])
ACCESS_LINE = re.compile(r'"(GET|HEAD) (/v2/[^ ?]+)[^"]* HTTP/1\.\d" (\d{3})')

REFERENCE_AUTH = """\
auth:
  htpasswd:
    realm: reference
    path: {htpasswd}
"""

TOKEN_UPSTREAM_CONFIG = """\
[[middleware]]
name = "logging"
[middleware.options]
file = "{log}"

[[middleware]]
name = "auth"
[middleware.options]
htpasswd = "{htpasswd}"
rules = [{{ users = ["*"], repositories = ["*"], actions = ["pull", "push", "delete"] }}]
[middleware.options.token]
service = "upstream-hub"
expires_in = 120
"""


class Upstream:
    """An upstream registry process and what its access log says reached it."""

    def __init__(self, kind: str, server, log_path: Path):
        self.kind = kind
        self.server = server  # the conftest's Registry (host, url, proc)
        self.host, self.url = server.host, server.url
        self.log_path = log_path

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request answered so far."""
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace")
        if self.kind == "reference":
            return [(m, p, int(s)) for m, p, s in ACCESS_LINE.findall(text)]
        entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return [(e["method"], e["path"].split("?")[0], e["status"]) for e in entries]

    def blob_gets(self, repository: str) -> list[str]:
        """Digests of the blob GETs of `repository` that were answered with the blob."""
        prefix = f"/v2/{repository}/blobs/"
        return [p[len(prefix):] for m, p, s in self.requests() if m == "GET" and p.startswith(prefix)
                and s in (200, 206, 307)]


def start_reference(e2e, workdir: Path) -> tuple[subprocess.Popen, Upstream]:
    binary = e2e.need("docker-registry")
    e2e.need("htpasswd")
    e2e.run(["htpasswd", "-Bbc", workdir / "htpasswd", USER, PASSWORD])
    port = e2e.free_port()
    (workdir / "config.yml").write_text(reference_config(workdir / "data", port,
                                                         REFERENCE_AUTH.format(htpasswd=workdir / "htpasswd")))
    log_path = workdir / "reference.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(workdir / "config.yml")], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = e2e.Registry("reference", port, proc, log_path)
    deadline = time.monotonic() + 30
    while True:
        try:
            if server.request("GET", "/v2/", timeout=2).status_code == 401:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"docker-registry did not come up:\n{server.log_since(0)}", pytrace=False)
        time.sleep(0.1)
    return proc, Upstream("reference", server, log_path)


def cache_config(*upstreams: dict) -> str:
    lines = ["[[middleware]]", 'name = "logging"', ""]
    for upstream in upstreams:
        lines.append("[[upstreams]]")
        for key, value in upstream.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def reference(e2e, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference-upstream")
    proc, upstream = start_reference(e2e, workdir)
    yield upstream
    upstream.server.close()
    complaint = e2e.stop_process(proc, "docker-registry")
    assert complaint is None, complaint


@pytest.fixture(scope="module")
def token_upstream(e2e, start_dockyard_module, tmp_path_factory):
    home = tmp_path_factory.mktemp("token-upstream")
    e2e.need("htpasswd")
    e2e.run(["htpasswd", "-Bbc", home / "htpasswd", USER, PASSWORD])
    server = start_dockyard_module(config=TOKEN_UPSTREAM_CONFIG.format(log=home / "access.log",
                                                                       htpasswd=home / "htpasswd"))
    return Upstream("dockyard", server, home / "access.log")


@pytest.fixture(scope="module")
def cache(reference, token_upstream, start_dockyard_module):
    """Dockyard caching both: `ref/` from the reference, `tok/` from the token-mode Dockyard (freshness 10 s),
    and `library/...` from the reference without a prefix, for dockerd's registry-mirrors."""
    credentials = {"username": USER, "password": PASSWORD}
    return start_dockyard_module(config=cache_config(
        {"name": "reference", "url": reference.url, "prefix": "ref/", **credentials},
        {"name": "hub", "url": token_upstream.url, "prefix": "tok/", "freshness": FRESHNESS, **credentials},
        {"name": "library", "url": reference.url, "namespaces": ["library"], **credentials}))


def skopeo_for(e2e, home: Path, *servers):
    return e2e.Skopeo(home, servers[0])


def push(skopeo, source: str, upstream: Upstream, ref: str, *extra):
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", f"{USER}:{PASSWORD}", "--preserve-digests", *extra,
           source, f"docker://{upstream.host}/{ref}")


def pull(skopeo, host: str, ref: str, dest: Path, *extra, check: bool = True):
    return skopeo("copy", "--src-tls-verify=false", *extra, f"docker://{host}/{ref}", f"oci:{dest}:out",
                  check=check)


def layout_blobs(path: Path) -> dict[str, bytes]:
    return {f"sha256:{p.name}": p.read_bytes() for p in (path / "blobs" / "sha256").iterdir()}


# -- skopeo and podman, single- and multi-arch, through both upstreams ---------------------------------------------

@pytest.mark.parametrize("which", ["reference", "token"])
def test_skopeo_and_podman_pull_through_and_the_second_pull_asks_the_upstream_for_no_blob(
        e2e, which, reference, token_upstream, cache, workdir):
    upstream, prefix = (reference, "ref/") if which == "reference" else (token_upstream, "tok/")
    skopeo = e2e.Skopeo(workdir / "skopeo", cache)
    layout = e2e.OCILayout(workdir / "src")
    single = layout.add_image(tag="single")
    amd = layout.add_image(arch="amd64")
    arm = layout.add_image(arch="arm64", layer_sizes=(32 * 1024,))
    layout.add_index([amd, arm], tag="multi")
    repository = f"e2e/app-{uuid.uuid4().hex[:8]}"
    push(skopeo, layout.ref("single"), upstream, f"{repository}:1")
    push(skopeo, layout.ref("multi"), upstream, f"{repository}:multi", "--all")
    every_blob = set(single.blob_digests) | set(amd.blob_digests) | set(arm.blob_digests)
    assert upstream.blob_gets(repository) == []

    # First pulls: skopeo (the single image, then the whole index) and podman (its platform of the index).
    pull(skopeo, cache.host, f"{prefix}{repository}:1", workdir / "one")
    pulled = layout_blobs(workdir / "one")
    assert set(single.blob_digests) <= set(pulled) and single.digest in pulled
    pull(skopeo, cache.host, f"{prefix}{repository}:multi", workdir / "all", "--all")
    pulled = layout_blobs(workdir / "all")
    assert set(amd.blob_digests) | set(arm.blob_digests) | {amd.digest, arm.digest} <= set(pulled)
    index = cache.get_manifest(f"{prefix}{repository}", "multi")
    assert index.headers["Content-Type"] == OCI_INDEX and index.headers["X-Dockyard-Cache"] == "hit"
    for digest, data in pulled.items():
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    podman = e2e.Podman(workdir / "podman", cache)
    for tag in ("1", "multi"):
        podman("pull", "--tls-verify=false", f"{cache.host}/{prefix}{repository}:{tag}", timeout=180)
    inspected = json.loads(podman("image", "inspect", f"{cache.host}/{prefix}{repository}:multi").out)[0]
    assert inspected["Architecture"] == "amd64"
    gets = upstream.blob_gets(repository)
    assert sorted(gets) == sorted(every_blob)  # each blob fetched exactly once, whoever asked first

    # Second pulls: every blob from the cache, none from the upstream.
    pull(skopeo, cache.host, f"{prefix}{repository}:1", workdir / "again")
    pull(skopeo, cache.host, f"{prefix}{repository}:multi", workdir / "all-again", "--all")
    assert layout_blobs(workdir / "all-again") == layout_blobs(workdir / "all")
    for tag in ("1", "multi"):
        podman("rmi", f"{cache.host}/{prefix}{repository}:{tag}")
        podman("pull", "--tls-verify=false", f"{cache.host}/{prefix}{repository}:{tag}", timeout=180)
    assert sorted(upstream.blob_gets(repository)) == sorted(every_blob)
    listed = {r["name"]: r for r in cache.request("GET", "/v2/_dockyard/repositories?n=1000").json()["repositories"]}
    assert listed[f"{prefix}{repository}"]["upstream"]["url"] == upstream.url


def test_a_tag_moved_upstream_is_seen_after_the_freshness_window_not_before(e2e, token_upstream, cache, workdir):
    skopeo = e2e.Skopeo(workdir / "skopeo", cache)
    layout = e2e.OCILayout(workdir / "src")
    first, second = layout.add_image(tag="first"), layout.add_image(tag="second")
    repository = f"e2e/moving-{uuid.uuid4().hex[:8]}"
    push(skopeo, layout.ref("first"), token_upstream, f"{repository}:latest")

    def digest_through_cache() -> str:
        raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{cache.host}/tok/{repository}:latest").stdout
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    assert digest_through_cache() == first.digest
    fetched_at = time.monotonic()
    push(skopeo, layout.ref("second"), token_upstream, f"{repository}:latest")
    asked_at = time.monotonic()
    seen = digest_through_cache()
    assert asked_at - fetched_at < FRESHNESS - 2, "the machine was too slow to ask within the window"
    assert seen == first.digest  # moved upstream, but within the window the cache trusts its copy
    time.sleep(max(0.0, fetched_at + FRESHNESS + 0.5 - time.monotonic()))
    assert digest_through_cache() == second.digest
    # Revalidated with a HEAD, refetched because the digest moved.
    heads = [p for m, p, _ in token_upstream.requests() if m == "HEAD" and p == f"/v2/{repository}/manifests/latest"]
    assert heads


def test_dockerd_with_registry_mirror_pulls_alpine_through_dockyard(e2e, reference, cache, tmp_path_factory):
    home = tmp_path_factory.mktemp("dockerd-mirror")
    docker = e2e.Docker(home, {"registry-mirrors": [cache.url]})
    try:
        context = home / "context"
        context.mkdir()
        (context / "hello.txt").write_text(f"alpine of this test {uuid.uuid4()}\n")
        (context / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
        name = f"{reference.host}/library/alpine:3"
        docker("build", "-q", "-t", name, context)
        built = json.loads(docker("image", "inspect", name).out)[0]["Id"]
        docker("login", "--username", USER, "--password-stdin", reference.host, input=PASSWORD.encode())
        docker("push", name)
        docker("rmi", name)
        pulled = docker("pull", "alpine:3")  # docker.io/library/alpine:3: only the mirror can answer it here
        assert "Downloaded newer image for alpine:3" in pulled.out
        assert json.loads(docker("image", "inspect", "alpine:3").out)[0]["Id"] == built
        manifest = cache.get_manifest("library/alpine", "3")
        assert manifest.status_code == 200 and manifest.headers["X-Dockyard-Cache"] == "hit"
        assert reference.blob_gets("library/alpine")  # fetched from the upstream by the cache
    finally:
        complaint = docker.stop()
    assert complaint is None, complaint


def test_a_push_to_a_cached_name_is_refused_and_one_elsewhere_works(e2e, cache, workdir):
    skopeo = e2e.Skopeo(workdir / "skopeo", cache)
    layout = e2e.OCILayout(workdir / "src")
    layout.add_image(tag="1")
    refused = skopeo.copy(layout.ref("1"), f"docker://{cache.host}/ref/library/alpine:3", check=False)
    assert refused.returncode != 0
    assert "denied" in refused.err.lower() and "read-only mirror" in refused.err, refused.err[-2000:]
    mine = f"team/own-{uuid.uuid4().hex[:8]}"
    skopeo.copy(layout.ref("1"), f"docker://{cache.host}/{mine}:1")
    pull(skopeo, cache.host, f"{mine}:1", workdir / "back")
    assert cache.get_manifest(mine, "1").status_code == 200


# -- the upstream stopped --------------------------------------------------------------------------------------------

def test_with_the_upstream_stopped_cached_images_pull_and_others_fail_clearly(e2e, start_dockyard, workdir):
    upstream_server = start_dockyard()
    upstream = Upstream("dockyard", upstream_server, workdir / "none.log")
    cache = start_dockyard(config=cache_config({"name": "gone", "url": upstream.url, "prefix": "gone/",
                                                "freshness": 1, "timeout": 3}))
    skopeo = e2e.Skopeo(workdir / "skopeo", cache)
    layout = e2e.OCILayout(workdir / "src")
    layout.add_image(tag="a")
    layout.add_index([layout.add_image(arch="amd64"), layout.add_image(arch="arm64")], tag="m")
    layout.add_image(tag="b")
    for tag, extra in (("a", ()), ("m", ("--all",)), ("b", ())):
        skopeo.copy(layout.ref(tag), f"docker://{upstream.host}/e2e/app:{tag}", "--preserve-digests", *extra)
    podman = e2e.Podman(workdir / "podman", cache)
    pull(skopeo, cache.host, "gone/e2e/app:a", workdir / "a1")
    pull(skopeo, cache.host, "gone/e2e/app:m", workdir / "m1", "--all")
    podman("pull", "--tls-verify=false", f"{cache.host}/gone/e2e/app:m", timeout=180)

    complaint = e2e.stop_process(upstream_server.proc, "upstream dockyard")
    assert complaint is None, complaint
    time.sleep(1.5)  # past the freshness: the cache has to ask, and cannot
    pull(skopeo, cache.host, "gone/e2e/app:a", workdir / "a2")
    pull(skopeo, cache.host, "gone/e2e/app:m", workdir / "m2", "--all")
    assert layout_blobs(workdir / "m2") == layout_blobs(workdir / "m1")
    podman("rmi", f"{cache.host}/gone/e2e/app:m")
    podman("pull", "--tls-verify=false", f"{cache.host}/gone/e2e/app:m", timeout=180)
    stale = cache.get_manifest("gone/e2e/app", "a")
    assert stale.status_code == 200 and stale.headers["X-Dockyard-Cache"] == "stale"
    assert "stale" in cache.log_since(0)

    failed = pull(skopeo, cache.host, "gone/e2e/app:b", workdir / "b", check=False)
    assert failed.returncode != 0 and "502" in failed.err, failed.err[-2000:]
    error = cache.get_manifest("gone/e2e/app", "b")
    body = error.json()["errors"][0]
    assert error.status_code == 502 and body["code"] == "UPSTREAM_ERROR"
    assert upstream.url in body["message"] and "gone" in body["message"]


# -- 16 clients, one uncached 256 MiB image --------------------------------------------------------------------------

def big_layout(e2e, path: Path, layers: int, layer_size: int) -> tuple[str, list[str]]:
    """An OCI layout of one image whose layers are uncompressed tars of random bytes (fast to make, no gzip)."""
    layout = e2e.OCILayout(path)
    descriptors, diff_ids = [], []
    for i in range(layers):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo(f"data-{i}.bin")
            info.size = layer_size
            tar.addfile(info, io.BytesIO(os.urandom(layer_size)))
        data = raw.getvalue()
        digest = layout.put_blob(data)
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest,
                            "size": len(data)})
        diff_ids.append(digest)
    config = e2e.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
                        "config": {"Labels": {"nonce": uuid.uuid4().hex}}})
    config_digest = layout.put_blob(config)
    manifest = e2e.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                     "digest": config_digest, "size": len(config)}, "layers": descriptors})
    digest = layout.put_blob(manifest)
    layout.tag("big", {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest)})
    return digest, [config_digest] + [d["digest"] for d in descriptors]


def test_sixteen_clients_pulling_one_uncached_image_cause_one_upstream_fetch_per_blob(e2e, reference,
                                                                                       start_dockyard, workdir):
    cache = start_dockyard(config=cache_config({"name": "reference", "url": reference.url, "prefix": "ref/",
                                                "username": USER, "password": PASSWORD}), workers=None)
    skopeo = e2e.Skopeo(workdir / "skopeo", cache)
    manifest_digest, blobs = big_layout(e2e, workdir / "src", layers=4, layer_size=64 * 1024 * 1024)
    repository = f"e2e/big-{uuid.uuid4().hex[:8]}"
    push(skopeo, e2e.OCILayout(workdir / "src").ref("big"), reference, f"{repository}:1")
    assert reference.blob_gets(repository) == []

    started = time.monotonic()
    procs = []
    for i in range(16):
        home = workdir / f"client-{i}"
        (home / "tmp").mkdir(parents=True)
        procs.append(subprocess.Popen(
            [e2e.need("skopeo"), "--policy", skopeo.policy, "--tmpdir", home / "tmp", "copy", "--src-tls-verify=false",
             "--preserve-digests", f"docker://{cache.host}/ref/{repository}:1", f"oci:{home / 'out'}:big"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=skopeo.env))
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append((proc.returncode, err.decode(errors="replace")[-1500:]))
    elapsed = time.monotonic() - started
    assert [code for code, _ in results] == [0] * 16, [err for code, err in results if code][:2]
    for i in range(16):  # every client's copy verified, byte for byte, against the digests
        for digest in blobs + [manifest_digest]:
            path = workdir / f"client-{i}" / "out" / "blobs" / "sha256" / digest.split(":")[1]
            hasher = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(8 * 1024 * 1024):
                    hasher.update(block)
            assert "sha256:" + hasher.hexdigest() == digest
    gets = reference.blob_gets(repository)
    print(f"16 clients x 256 MiB through the cache in {elapsed:.1f} s; upstream blob GETs: {len(gets)}")
    assert sorted(gets) == sorted(blobs)  # exactly one GET per blob reached the upstream
    for i in range(16):
        shutil_rmtree(workdir / f"client-{i}")


def shutil_rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


# -- an upstream that lies about a blob ------------------------------------------------------------------------------

class Liar(BaseHTTPRequestHandler):
    """The registry API for one image whose layer comes back as other bytes of the same length."""

    protocol_version = "HTTP/1.1"
    layer = b"the layer's real bytes " * 1000
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                                       "size": len(layer)}]}).encode()
    layer_gets: list = []

    def _send(self, status: int, body: bytes, content_type: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v2/":
            return self._send(200, b"{}", "application/json")
        if "/manifests/" in self.path:
            return self._send(200, self.manifest, OCI_MANIFEST)
        if self.path.endswith(hashlib.sha256(self.config).hexdigest()):
            return self._send(200, self.config)
        if "/blobs/" in self.path:
            Liar.layer_gets.append(self.path)
            return self._send(200, b"X" * len(self.layer))
        self._send(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no","detail":{}}]}', "application/json")

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


def test_an_upstream_serving_wrong_bytes_gives_an_error_and_caches_nothing(e2e, start_dockyard, workdir):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Liar)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        cache = start_dockyard(config=cache_config({"name": "liar", "url": url, "prefix": "liar/"}))
        skopeo = e2e.Skopeo(workdir / "skopeo", cache)
        failed = pull(skopeo, cache.host, "liar/app:1", workdir / "out", check=False)
        assert failed.returncode != 0, failed.out
        layer = "sha256:" + hashlib.sha256(Liar.layer).hexdigest()
        before = len(Liar.layer_gets)
        with pytest.raises(requests.RequestException):  # cut short: the client cannot take it for the blob
            response = requests.get(f"{cache.url}/v2/liar/app/blobs/{layer}", timeout=30)
            response.raise_for_status()
            assert "sha256:" + hashlib.sha256(response.content).hexdigest() == layer
        assert len(Liar.layer_gets) == before + 1  # nothing was cached: it asked again
        storage = cache.request("GET", "/v2/_dockyard/storage").json()
        assert storage["blob_bytes"] <= len(Liar.config)  # at most the good config blob
        fsck = e2e.run([e2e.need("dockyard"), "fsck", "--json", "--data", cache.log_path.parent / "data",
                        "--config", cache.log_path.parent / "dockyard.toml"], check=False)
        assert json.loads(fsck.out)["clean"], fsck.out
    finally:
        server.shutdown()
        server.server_close()


# -- the cap ---------------------------------------------------------------------------------------------------------

def test_over_the_cap_the_least_recently_pulled_images_go_never_one_being_pulled(e2e, start_dockyard, workdir):
    upstream = start_dockyard()
    mib = 1024 * 1024
    cache = start_dockyard(config=cache_config({"name": "capped", "url": upstream.url, "prefix": "capped/",
                                                "max_size": int(16.5 * mib)}))
    skopeo = e2e.Skopeo(workdir / "skopeo", cache)
    images = {}
    for name, size in (("a", mib), ("b", mib), ("c", 16 * mib), ("d", mib)):
        digest, blobs = big_layout(e2e, workdir / f"src-{name}", layers=1, layer_size=size)
        skopeo.copy(e2e.OCILayout(workdir / f"src-{name}").ref("big"), f"docker://{upstream.host}/e2e/{name}:1",
                    "--preserve-digests")
        images[name] = (digest, blobs)

    def catalog() -> list[str]:
        return cache.request("GET", "/v2/_catalog").json()["repositories"]

    pull(skopeo, cache.host, "capped/e2e/a:1", workdir / "a")
    pull(skopeo, cache.host, "capped/e2e/b:1", workdir / "b")
    # c is being pulled: its manifest, then its 16 MiB layer, read a little every second, never finished.
    assert cache.get_manifest("capped/e2e/c", "1").status_code == 200
    c_layer = images["c"][1][1]
    slow = requests.get(f"{cache.url}/v2/capped/e2e/c/blobs/{c_layer}", stream=True, timeout=60)
    chunks = slow.iter_content(16 * 1024)
    received, done = [next(chunks)], threading.Event()

    def trickle():
        while not done.wait(1.0):
            received.append(next(chunks))

    reader = threading.Thread(target=trickle, daemon=True)
    reader.start()
    time.sleep(12)  # past the active window: only the open download keeps c in use now
    pull(skopeo, cache.host, "capped/e2e/d:1", workdir / "d")  # a, b, c, d: 19 MiB, over 16.5 MiB
    deadline = time.monotonic() + 30
    while ("capped/e2e/a" in catalog() or "capped/e2e/b" in catalog()) and time.monotonic() < deadline:
        time.sleep(0.5)
    # a and b went, least recently pulled first; c, the largest and next in line, is being pulled; d is new.
    assert catalog() == ["capped/e2e/c", "capped/e2e/d"]
    deadline = time.monotonic() + 30
    while "capped/e2e/d" in catalog() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert catalog() == ["capped/e2e/c"]  # once d is no longer in use it goes too; c never, while it is read
    done.set()
    reader.join(5)
    received.extend(chunks)
    assert "sha256:" + hashlib.sha256(b"".join(received)).hexdigest() == c_layer
    slow.close()
    assert "evicted" in cache.log_since(0)
    # An evicted image pulls again, from the upstream.
    pull(skopeo, cache.host, "capped/e2e/a:1", workdir / "a-again")
    assert "capped/e2e/a" in catalog()
