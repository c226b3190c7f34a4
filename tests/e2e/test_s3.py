"""Dockyard with `storage.driver = "s3"` against a real S3-compatible store (issue 13): OpenStack Swift with s3api,
one per test session (tests/swift_store.py), a bucket per test module or test. Every `dockyard serve` here is a real
gunicorn process; docker, podman and skopeo push and pull through it.

The store's proxy logs one line per request (`swift.requests_since(offset)`): the tests count in it what the
registry asked of the store (no server-side copy, no read of an upload's earlier parts beyond a leftover smaller
than a part). Everything is bounded in time: each client call has a timeout, each loop a deadline.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
S3_SITE = ROOT / "deploy" / "nginx" / "dockyard-s3.conf"
IN_CI = os.environ.get("CI", "").lower() == "true"
MIB = 1024 * 1024
PART = 8 * MIB  # the part_size every server here uses (the default)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")
RSS_GROWTH_LIMIT = 64 * MIB


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def storage_toml(swift, bucket: str, **extra) -> str:
    """A dockyard.toml on the s3 driver, for `start_dockyard(config=...)`."""
    top = {key: extra.pop(key) for key in list(extra) if key in ("accel_redirect", "trusted_proxies",
                                                                  "upload_max_age", "log_level")}
    lines = [f"{key} = {json.dumps(value)}" for key, value in top.items()]
    lines += ["[storage]", 'driver = "s3"', f'bucket = "{bucket}"', f'endpoint_url = "{swift.endpoint}"',
              f'region = "{swift.region}"', "path_style = true", f'access_key_id = "{swift.access_key}"',
              f'secret_access_key = "{swift.secret_key}"', "timeout = 5"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def new_bucket(swift) -> str:
    name = f"e2e-{uuid.uuid4().hex[:16]}"
    swift.create_bucket(name)
    return name


class Bucket:
    """What the store holds for a registry: blob objects, leftovers, multipart uploads in progress."""

    def __init__(self, swift, name: str):
        self.swift, self.name = swift, name
        self.client = swift.client()

    def keys(self, prefix: str) -> set[str]:
        found = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            found.update(obj["Key"] for obj in page.get("Contents", []))
        return found

    def blob_keys(self) -> set[str]:
        return self.keys("blobs/")

    def leftovers(self) -> set[str]:
        return self.keys("uploads/")

    def multipart_uploads(self) -> list[dict]:
        return self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])


@pytest.fixture(scope="module")
def s3_server(swift, start_dockyard_module):
    """One `dockyard serve` (2 workers) on a bucket of the module's own, for the client tests."""
    bucket = new_bucket(swift)
    server = start_dockyard_module(config=storage_toml(swift, bucket), workers=2)
    server.bucket = Bucket(swift, bucket)
    return server


def session_of(location: str) -> str:
    return location.split("?")[0].rstrip("/").rsplit("/", 1)[1]


def worker_pids(server) -> list[int]:
    pid = server.proc.pid
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def vm_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssWatch:
    """The largest growth of any one worker's RSS over its value when the watch started, sampled every 50 ms."""

    def __init__(self, server):
        self.pids = worker_pids(server)
        self.start = {pid: vm_rss(pid) for pid in self.pids}
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(0.05):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], vm_rss(pid))

    @property
    def growth(self) -> int:
        return max(self.peak[pid] - self.start[pid] for pid in self.pids)


def absolute(server, location: str) -> str:
    return location if location.startswith("http") else server.url + location


def with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def start_upload(server, repo: str) -> str:
    r = server.http.post(f"{server.url}/v2/{repo}/blobs/uploads/", timeout=30)
    assert r.status_code == 202, r.text
    return absolute(server, r.headers["Location"])


def patch(server, location: str, data: bytes, start: int) -> str:
    r = server.http.patch(location, data=data, timeout=120, headers={
        "Content-Type": "application/octet-stream", "Content-Range": f"{start}-{start + len(data) - 1}"})
    assert r.status_code == 202, f"PATCH {len(data)} bytes at {start}: {r.status_code} {r.text[:500]}"
    return absolute(server, r.headers["Location"])


def pull_blob(server, repo: str, digest: str, **kwargs) -> bytes:
    r = server.http.get(f"{server.url}/v2/{repo}/blobs/{digest}", timeout=120, **kwargs)
    assert r.status_code == 200, f"GET blob {digest}: {r.status_code} {r.text[:300]}"
    assert sha256(r.content) == digest
    return r.content


def no_copies(requests_) -> None:
    copies = [r for r in requests_ if r.is_copy]
    assert not copies, f"server-side copies in the store's log: {copies[:5]}"


def earlier_reads(requests_, session_id: str) -> list:
    """GETs of a session's objects: only its leftovers may ever be read back, each smaller than a part."""
    reads = [r for r in requests_ if r.method == "GET" and session_id in r.key]
    assert all(r.key.startswith("uploads/") and r.sent < PART for r in reads), reads
    return reads


# -- real clients ---------------------------------------------------------------------------------------------------

def test_docker_pushes_and_pulls_a_multi_layer_image_and_a_manifest_list(s3_server, docker, repo, workdir):
    files = {"/data/a.bin": os.urandom(3 * MIB), "/data/b.bin": os.urandom(9 * MIB), "/etc/e2e.txt": b"s3\n"}
    name = f"{s3_server.host}/{repo}:1"
    context = workdir / "context"
    context.mkdir()
    lines = ["FROM scratch"]
    for path, data in files.items():
        (context / path.replace("/", "_")).write_bytes(data)
        lines.append(f"COPY {path.replace('/', '_')} {path}")
    (context / "Dockerfile").write_text("\n".join(lines + [f"LABEL nonce={uuid.uuid4().hex}"]) + "\n")
    docker("build", "-q", "-t", name, context)
    image_id = json.loads(docker("image", "inspect", name).out)[0]["Id"]
    out = docker("push", name).out
    pushed = re.search(r": digest: (sha256:[0-9a-f]{64})", out).group(1)
    assert s3_server.get_manifest(repo, "1").headers["Docker-Content-Digest"] == pushed
    manifest = json.loads(s3_server.manifest_bytes(repo, "1"))
    assert len(manifest["layers"]) == 3
    for layer in manifest["layers"]:
        s3_server.blob(repo, layer["digest"])
    docker("rmi", name)
    docker("pull", name)
    assert json.loads(docker("image", "inspect", name).out)[0]["Id"] == image_id
    container = docker("create", name, "/none").out.strip()
    try:
        for path, data in files.items():
            tar = docker("cp", f"{container}:{path}", "-").stdout
            assert data in tar, path
    finally:
        docker("rm", container)

    images, ids = [], []
    for arch in ("amd64", "arm64"):
        arch_name = f"{s3_server.host}/{repo}/{arch}:1"
        arch_context = workdir / arch
        arch_context.mkdir()
        (arch_context / "f").write_bytes(os.urandom(MIB))
        (arch_context / "Dockerfile").write_text(f"FROM scratch\nCOPY f /{arch}\nLABEL nonce={uuid.uuid4().hex}\n")
        docker("build", "-q", "-t", arch_name, arch_context)
        docker("push", arch_name)
        images.append(arch_name)
        ids.append(json.loads(docker("image", "inspect", arch_name).out)[0]["Id"])
    list_name = f"{s3_server.host}/{repo}:multi"
    docker("manifest", "create", "--insecure", list_name, *images)
    docker("manifest", "annotate", "--arch", "arm64", list_name, images[1])
    docker("manifest", "push", "--insecure", "--purge", list_name)
    index = json.loads(s3_server.manifest_bytes(repo, "multi"))
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    for image in images:
        docker("rmi", image)
    docker("pull", list_name)  # this host's platform: the amd64 image, through the index
    assert json.loads(docker("image", "inspect", list_name).out)[0]["Id"] == ids[0]


def test_podman_pushes_and_pulls_a_multi_layer_image_and_a_manifest_list(s3_server, clients_for, repo, workdir):
    _, podman = clients_for(s3_server)
    ids = {}
    for arch in ("amd64", "arm64"):  # FROM scratch with COPY only: no emulation needed for arm64
        context = workdir / arch
        context.mkdir()
        lines = ["FROM scratch"]
        for i, size in enumerate((2 * MIB, 700 * 1024, 9 * MIB)):  # three layers of fresh content
            (context / f"f{i}").write_bytes(os.urandom(size))
            lines.append(f"COPY f{i} /f{i}")
        (context / "Containerfile").write_text("\n".join(lines + [f"LABEL nonce={uuid.uuid4().hex}"]) + "\n")
        target = f"{s3_server.host}/{repo}:{arch}"
        podman("build", "--arch", arch, "-t", target, context, timeout=300)
        ids[arch] = json.loads(podman("image", "inspect", target).out)[0]["Id"]
        podman("push", "--tls-verify=false", target)
        manifest = json.loads(s3_server.manifest_bytes(repo, arch))
        assert manifest["config"]["digest"] == f"sha256:{ids[arch]}" and len(manifest["layers"]) == 3
    podman("manifest", "create", f"{repo}-list")
    for arch in ids:
        podman("manifest", "add", "--tls-verify=false", f"{repo}-list", f"docker://{s3_server.host}/{repo}:{arch}")
    podman("manifest", "push", "--all", "--tls-verify=false", f"{repo}-list", f"docker://{s3_server.host}/{repo}:multi")
    index = json.loads(s3_server.manifest_bytes(repo, "multi"))
    assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["amd64", "arm64"]
    podman("rmi", "-a", "-f")
    for arch, image_id in ids.items():
        podman("pull", "--tls-verify=false", "--arch", arch, f"{s3_server.host}/{repo}:multi")
        assert json.loads(podman("image", "inspect", f"{s3_server.host}/{repo}:multi").out)[0]["Id"] == image_id
        podman("rmi", "-f", f"{s3_server.host}/{repo}:multi")


def test_skopeo_pushes_and_pulls_a_multi_arch_index_byte_for_byte(s3_server, clients_for, new_layout, repo):
    skopeo, _ = clients_for(s3_server)
    src = new_layout("src")
    images = [src.add_image(arch=arch, layer_sizes=(3 * MIB, 64 * 1024, 11 * MIB)) for arch in ("amd64", "arm64")]
    index, index_digest = src.add_index(images, tag="1")
    skopeo.copy(src.ref("1"), skopeo.docker_ref(repo, "1"), "--all", "--preserve-digests")
    assert skopeo("inspect", "--tls-verify=false", "--raw", skopeo.docker_ref(repo, "1")).stdout == index
    out = new_layout("pulled")
    skopeo.copy(skopeo.docker_ref(repo, "1"), out.ref("1"), "--all", "--preserve-digests")
    assert out.resolve("1")["digest"] == index_digest
    for image in images:
        assert out.blob(image.digest) == image.manifest
        for digest in image.blob_digests:
            assert out.blob(digest) == src.blob(digest)


# -- a 1 GiB layer: streamed, copied never, memory flat ------------------------------------------------------------

def big_file(path: Path, size: int, label: str) -> str:
    """`size` bytes (a distinct header, then an 8 MiB random pattern repeated) and their digest."""
    pattern = os.urandom(8 * MIB)
    hasher = hashlib.sha256()
    with open(path, "wb") as fh:
        header = hashlib.sha256(label.encode()).digest()
        for block in [header, *(pattern for _ in range(size // len(pattern)))]:
            block = block[:size - fh.tell()]
            fh.write(block)
            hasher.update(block)
    assert path.stat().st_size == size
    return "sha256:" + hasher.hexdigest()


def send_file(server, method: str, location: str, path: Path) -> http.client.HTTPResponse:
    """One request whose body is the whole file, sent with sendfile(2) (the client must not be the bottleneck)."""
    url = location.removeprefix(server.url)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    size = path.stat().st_size
    conn.putrequest(method, url)
    conn.putheader("Content-Length", str(size))
    conn.putheader("Content-Type", "application/octet-stream")
    conn.endheaders()
    with open(path, "rb") as fh:
        sent = 0
        while sent < size:
            sent += conn.sock.sendfile(fh, sent, size - sent)
    response = conn.getresponse()
    response.body = response.read()
    conn.close()
    return response


def hash_download(server, repo: str, digest: str) -> tuple[str, int]:
    hasher, size = hashlib.sha256(), 0
    with server.http.get(f"{server.url}/v2/{repo}/blobs/{digest}", stream=True, timeout=120) as r:
        assert r.status_code == 200
        for block in r.iter_content(MIB):
            hasher.update(block)
            size += len(block)
    return "sha256:" + hasher.hexdigest(), size


def test_a_1gib_layer_in_8mib_chunks_and_in_one_put_copies_nothing_and_keeps_memory_flat(s3_server, swift, workdir,
                                                                                      repo):
    size = 1024 * MIB
    path = workdir / "layer"
    figures = {}

    # 1. 128 PATCHes of 8 MiB, then an empty PUT: the commit completes the multipart upload in place.
    digest = big_file(path, size, f"chunked {uuid.uuid4()}")
    offset = swift.log_size()
    with RssWatch(s3_server) as watch, open(path, "rb") as fh:
        location = start_upload(s3_server, repo)
        for start in range(0, size, 8 * MIB):
            location = patch(s3_server, location, fh.read(8 * MIB), start)
        before_put = swift.log_size()
        started = time.monotonic()
        r = s3_server.http.put(with_digest(location, digest), timeout=300)
        figures["chunked final PUT (s)"] = time.monotonic() - started
        assert r.status_code == 201, r.text
    figures["chunked worker RSS growth (MiB)"] = watch.growth / MIB
    time.sleep(1)  # the proxy logs a request once it is done: let the last ones land
    log = swift.requests_since(offset)
    no_copies(log)
    earlier_reads(log, session_of(location))
    commit = swift.requests_since(before_put)
    assert [r.method for r in commit if "uploadId" in r.query and r.method == "POST"] == ["POST"]  # Complete, once
    assert watch.growth < RSS_GROWTH_LIMIT, figures
    assert hash_download(s3_server, repo, digest) == (digest, size)

    # What a server-side copy of that blob costs on this store: the commit must be far cheaper.
    blob_key = f"blobs/{session_of(location)}"
    started = time.monotonic()
    s3_server.bucket.client.copy_object(Bucket=s3_server.bucket.name, Key="scratch-copy",
                                        CopySource={"Bucket": s3_server.bucket.name, "Key": blob_key})
    figures["server-side copy of 1 GiB (s)"] = time.monotonic() - started
    s3_server.bucket.client.delete_object(Bucket=s3_server.bucket.name, Key="scratch-copy")
    assert figures["chunked final PUT (s)"] < figures["server-side copy of 1 GiB (s)"] / 3, figures

    # 2. One PUT with the whole 1 GiB body.
    digest = big_file(path, size, f"monolithic {uuid.uuid4()}")
    offset = swift.log_size()
    with RssWatch(s3_server) as watch:
        location = start_upload(s3_server, repo)
        started = time.monotonic()
        response = send_file(s3_server, "PUT", with_digest(location, digest), path)
        figures["monolithic PUT, 1 GiB (s)"] = time.monotonic() - started
        assert response.status == 201, response.body[:500]
    figures["monolithic worker RSS growth (MiB)"] = watch.growth / MIB
    time.sleep(1)
    log = swift.requests_since(offset)
    no_copies(log)
    earlier_reads(log, session_of(location))
    assert watch.growth < RSS_GROWTH_LIMIT, figures
    assert hash_download(s3_server, repo, digest) == (digest, size)
    print(f"\n1 GiB on s3: {json.dumps({k: round(v, 2) for k, v in figures.items()})}")


# -- downloads: proxy, redirect, accel --------------------------------------------------------------------------

def nginx_front(workdir: Path, upstream_port: int, swift) -> tuple[subprocess.Popen, int]:
    """nginx on a free port: `/` proxied to Dockyard, and deploy/nginx/dockyard-s3.conf as shipped but for the
    store's address."""
    nginx = shutil.which("nginx")
    if nginx is None:
        (pytest.fail if IN_CI else pytest.skip)("`nginx` is not on PATH; install it with: apt-get install nginx")
    prefix = workdir / "nginx"
    for directory in ("logs", "temp"):
        (prefix / directory).mkdir(parents=True)
    snippet = S3_SITE.read_text()
    store = swift.endpoint.removeprefix("http://")
    for old, new in (("proxy_pass http://127.0.0.1:8080/;", f"proxy_pass {swift.endpoint}/;"),
                     ("proxy_set_header Host 127.0.0.1:8080;", f"proxy_set_header Host {store};")):
        assert old in snippet, f"{S3_SITE} no longer contains {old!r}: update this test's substitutions"
        snippet = snippet.replace(old, new)
    (prefix / "dockyard-s3.conf").write_text(snippet)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log info;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n  access_log {prefix}/logs/access.log;\n  client_body_temp_path {prefix}/temp/body;\n"
        f"  proxy_temp_path {prefix}/temp/proxy;\n  fastcgi_temp_path {prefix}/temp/fastcgi;\n"
        f"  uwsgi_temp_path {prefix}/temp/uwsgi;\n  scgi_temp_path {prefix}/temp/scgi;\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n"
        f"    location / {{\n      proxy_pass http://127.0.0.1:{upstream_port};\n      proxy_http_version 1.1;\n"
        "      proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n"
        "      proxy_set_header X-Forwarded-Host $http_host;\n      proxy_set_header X-Forwarded-Proto $scheme;\n"
        "      proxy_request_buffering off;\n      proxy_buffering off;\n    }\n"
        f"    include {prefix}/dockyard-s3.conf;\n  }}\n}}\n")
    with open(prefix / "logs" / "stderr.log", "wb") as log:
        proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200:
                return proc, port
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"nginx did not start:\n{(prefix / 'logs' / 'error.log').read_text()[-3000:]}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_downloads_in_each_mode_with_ranges(swift, start_dockyard, clients_for, new_layout, repo, workdir,
                                            tmp_path):
    """One data directory and bucket, three servers: proxy (Dockyard streams), redirect (307 to a presigned URL),
    accel (nginx fetches the presigned URL itself, without the client's Authorization header)."""
    bucket = new_bucket(swift)
    data = tmp_path / "data"
    servers = {
        "proxy": start_dockyard(data=data, config=storage_toml(swift, bucket), workers=1),
        "redirect": start_dockyard(data=data, config=storage_toml(swift, bucket, download="redirect"), workers=1),
        "accel": start_dockyard(data=data, config=storage_toml(swift, bucket, download="accel",
                                                               accel_redirect="/_dockyard_s3",
                                                               trusted_proxies="127.0.0.1"), workers=1),
    }
    nginx, nginx_port = nginx_front(workdir, servers["accel"].port, swift)
    try:
        skopeo, _ = clients_for(servers["proxy"])
        src = new_layout("src")
        image = src.add_image(tag="1", layer_sizes=(5 * MIB, 100 * 1024))
        skopeo.copy(src.ref("1"), skopeo.docker_ref(repo, "1"), "--preserve-digests")
        layer = image.layer_digests[0]
        blob = src.blob(layer)
        urls = {mode: f"{server.url}/v2/{repo}/blobs/{layer}" for mode, server in servers.items()}
        urls["accel"] = f"http://127.0.0.1:{nginx_port}/v2/{repo}/blobs/{layer}"

        redirect = requests.get(urls["redirect"], allow_redirects=False, timeout=30)
        assert redirect.status_code == 307 and redirect.headers["Location"].startswith(swift.endpoint)
        accel = requests.get(f"{servers['accel'].url}/v2/{repo}/blobs/{layer}", timeout=30)
        assert accel.headers["X-Accel-Redirect"].startswith(f"/_dockyard_s3/{bucket}/blobs/") and not accel.content

        for mode, url in urls.items():
            # The client's credentials: a store refuses a presigned URL that also carries an Authorization header,
            # so the accel download below only works because nginx removed it.
            headers = {"Authorization": "Bearer registry-token-not-for-the-store"}
            whole = requests.get(url, headers=headers, timeout=60)
            assert whole.status_code == 200 and sha256(whole.content) == layer, (mode, whole.status_code)
            ranged = requests.get(url, headers={**headers, "Range": "bytes=1000-2999"}, timeout=60)
            assert (ranged.status_code, ranged.content) == (206, blob[1000:3000]), mode
            tail = requests.get(url, headers={**headers, "Range": "bytes=-10"}, timeout=60)
            assert tail.content == blob[-10:], mode
            if mode != "redirect":  # the registry's headers, not the store's
                assert (whole.headers["Docker-Content-Digest"], whole.headers["ETag"],
                        whole.headers["Content-Type"]) == (layer, f'"{layer}"', "application/octet-stream"), \
                    (mode, dict(whole.headers))
                assert not [h for h in whole.headers if h.lower().startswith(("x-amz", "x-trans", "x-openstack"))]
        # The store saw no registry credentials from nginx (its log keeps the first 16 characters of an
        # Authorization header), though it would have logged them: the request below sends them straight to it.
        offset = swift.log_size()
        requests.get(urls["accel"], headers=headers, timeout=60)
        requests.get(redirect.headers["Location"], headers=headers, timeout=60)
        time.sleep(0.5)
        seen = [r.headers.get("authorization", "") for r in swift.requests_since(offset) if r.key.startswith("blobs/")]
        assert len(seen) == 2 and not seen[0].startswith("Bearer") and seen[1].startswith("Bearer"), seen

        # Real clients pull through each mode (skopeo follows the 307 to the store).
        for mode, server in servers.items():
            if mode == "accel":
                class Front:  # the registry as clients see it: nginx's address
                    host, port = f"127.0.0.1:{nginx_port}", nginx_port
                server = Front()
            puller, _ = clients_for(server)
            out = new_layout(f"pulled-{mode}")
            puller.copy(puller.docker_ref(repo, "1"), out.ref("1"), "--preserve-digests")
            assert out.blob(layer) == blob and out.blob(image.digest) == image.manifest
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=30)


# -- sessions that move between processes ------------------------------------------------------------------------

def test_chunks_alternate_between_two_servers_and_survive_a_killed_one(swift, start_dockyard, tmp_path):
    """Two `dockyard serve` on one data directory and bucket (two hosts, as far as a session can tell). One upload
    alternates its chunks between them; another's server is killed with SIGKILL between two chunks and the other
    server finishes it. Neither reads back more than a leftover smaller than a part."""
    bucket = new_bucket(swift)
    data = tmp_path / "data"
    a = start_dockyard(data=data, config=storage_toml(swift, bucket), workers=1)
    b = start_dockyard(data=data, config=storage_toml(swift, bucket), workers=1)
    blob = os.urandom(5 * 12 * MIB + 777)
    digest, chunk = sha256(blob), 12 * MIB

    offset = swift.log_size()
    location = start_upload(a, "alternate/app")
    session = session_of(location)
    for i, start in enumerate(range(0, len(blob), chunk)):
        server = (a, b)[i % 2]
        location = patch(server, location.replace((b, a)[i % 2].url, server.url), blob[start:start + chunk], start)
    r = b.http.put(with_digest(location.replace(a.url, b.url), digest), timeout=120)
    assert r.status_code == 201, r.text
    time.sleep(1)
    log = swift.requests_since(offset)
    no_copies(log)
    reads = earlier_reads(log, session)
    assert sum(r.sent for r in reads) < len(blob) // 2, reads  # leftovers only: 4 MiB after each 12 MiB chunk
    assert pull_blob(a, "alternate/app", digest) == blob

    offset = swift.log_size()
    location = start_upload(a, "killed/app")
    session = session_of(location)
    location = patch(a, location, blob[:chunk], 0)
    os.killpg(a.proc.pid, signal.SIGKILL)  # the master and its worker, between two chunks
    a.proc.wait(timeout=30)
    location = patch(b, location.replace(a.url, b.url), blob[chunk:], chunk)
    r = b.http.put(with_digest(location, digest), timeout=120)
    assert r.status_code == 201, r.text
    time.sleep(1)
    log = swift.requests_since(offset)
    no_copies(log)
    assert sum(r.sent for r in earlier_reads(log, session)) < PART
    assert pull_blob(b, "killed/app", digest) == blob


def test_cancelled_expired_and_unrecorded_uploads_leave_nothing(swift, start_dockyard, tmp_path):
    bucket = new_bucket(swift)
    data = tmp_path / "data"
    server = start_dockyard(data=data, config=storage_toml(swift, bucket), workers=1)
    store = Bucket(swift, bucket)
    body = os.urandom(PART + MIB)  # a part and a leftover: a multipart upload and an object

    cancelled = patch(server, start_upload(server, "gone/app"), body, 0)
    expired = patch(server, start_upload(server, "gone/app"), body, 0)
    assert len(store.multipart_uploads()) == 2 and len(store.leftovers()) == 2
    assert server.http.delete(cancelled, timeout=30).status_code == 204
    assert [u["Key"] for u in store.multipart_uploads()] == [f"blobs/{session_of(expired)}"]

    # Idle for two days, as far as the metadata knows; and a multipart upload no session row names (a crash).
    with sqlite3.connect(data / "registry.db") as db:
        db.execute("UPDATE uploads SET updated_at = updated_at - 172800, created_at = created_at - 172800")
    unknown = f"blobs/{uuid.uuid4()}"
    store.client.create_multipart_upload(Bucket=bucket, Key=unknown)
    report = server.http.post(f"{server.url}/v2/_dockyard/gc", json={"grace_seconds": 3600}, timeout=120).json()
    assert report["uploads_purged"] == 2, report  # the expired session and the unknown upload
    assert store.multipart_uploads() == [] and store.leftovers() == set() and store.blob_keys() == set()
    assert server.http.get(expired, timeout=30).status_code == 404


# -- faults ----------------------------------------------------------------------------------------------------------

def raw_request(port: int, head: bytes, body_parts, on_sent=None) -> tuple[int, dict, bytes]:
    """Send a request from a thread while reading the answer here, so an answer given before the whole body was
    read (the server failing mid-body) is seen, not lost in a reset."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)

    def send():
        try:
            sock.sendall(head)
            for i, part in enumerate(body_parts):
                sock.sendall(part)
                if on_sent:
                    on_sent(i)
        except OSError:
            pass  # the server stopped reading: its answer says why

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = b""
    try:
        while chunk := sock.recv(65536):  # to the end: the server must close a connection it stopped reading
            received += chunk
    except OSError:
        pass  # reset after the answer: what was received stays received
    finally:
        sock.close()
        sender.join(timeout=60)
    head_text, _, body = received.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", len(body)))
    # Anything after the answer would be the rest of our body parsed as another request (a desync).
    assert body[length:] == b"", f"the server answered more than once: {body[length:200]!r}"
    return int(lines[0].split()[1]), headers, body[:length]


def test_store_stopped_mid_upload_and_mid_download(swift, start_dockyard, tmp_path):
    """The store goes away in the middle of a request body, of a commit and of a download: the client gets 503 with
    Retry-After (a download already under way is cut short), nothing is half-committed, and once the store is back
    the session continues from where it was recorded and the download resumes with a Range request."""
    bucket = new_bucket(swift)
    server = start_dockyard(data=tmp_path / "data", config=storage_toml(swift, bucket), workers=1)
    store = Bucket(swift, bucket)
    blob = os.urandom(6 * PART + 999)
    digest = sha256(blob)

    location = patch(server, start_upload(server, "fault/app"), blob[:PART + 10], 0)
    session = session_of(location)
    second = blob[PART + 10:]
    path = location.removeprefix(server.url)
    head = (f"PATCH {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: {PART + 10}-{len(blob) - 1}\r\nContent-Length: {len(second)}\r\n\r\n").encode()
    pieces = [second[i:i + MIB] for i in range(0, len(second), MIB)]
    stopped = threading.Event()

    def stop_store_after_some_parts(i):
        if i == 2 * PART // MIB and not stopped.is_set():  # two parts in: the store goes away mid-body
            stopped.set()
            swift.stop_proxy()

    try:
        status, headers, body = raw_request(server.port, head, pieces, stop_store_after_some_parts)
        assert stopped.is_set()
        assert status == 503 and headers["retry-after"] == "5", (status, body[:300])
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
        r = server.http.put(with_digest(location, sha256(blob[:PART + 10])), timeout=60)
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"  # a commit while it is down
    finally:
        if stopped.is_set():
            swift.start_proxy()
    assert store.blob_keys() == set()  # nothing committed, not even half
    status = server.http.get(location, timeout=30)
    assert status.status_code == 204 and status.headers["Range"] == f"0-{PART + 9}"  # as recorded before the fault
    location = patch(server, location, second, PART + 10)
    assert server.http.put(with_digest(location, digest), timeout=120).status_code == 201
    assert store.blob_keys() == {f"blobs/{session}"}

    # A download cut by the store going away, then resumed.
    received = b""
    with server.http.get(f"{server.url}/v2/fault/app/blobs/{digest}", stream=True, timeout=60) as r:
        assert r.status_code == 200
        try:
            for chunk in r.iter_content(MIB):
                received += chunk
                if len(received) >= 2 * PART and "proxy" in swift.processes:
                    swift.stop_proxy()
        except requests.RequestException:
            pass  # cut short: the body ends before Content-Length
    try:
        assert len(received) < len(blob)
        r = server.http.get(f"{server.url}/v2/fault/app/blobs/{digest}", timeout=60)
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    finally:
        swift.start_proxy()
    r = server.http.get(f"{server.url}/v2/fault/app/blobs/{digest}", headers={"Range": f"bytes={len(received)}-"},
                        timeout=60)
    assert r.status_code == 206 and sha256(received + r.content) == digest


def test_worker_killed_between_the_store_commit_and_the_metadata_commit(swift, start_dockyard, tmp_path):
    """Two uploads whose multipart upload is completed in the store, each followed by a SIGKILL of the worker
    before the metadata records the blob (held back by taking the metadata's write lock): a stray object each, no
    blob row. While its session row lives, neither `dockyard fsck` nor garbage collection counts it as garbage (the
    client may retry), and the first client's retried PUT completes the commit without sending a byte again; the
    second client cancels its session, and then fsck finds the stray object and garbage collection removes it."""
    bucket = new_bucket(swift)
    data = tmp_path / "data"
    server = start_dockyard(data=data, config=storage_toml(swift, bucket), workers=1)
    store = Bucket(swift, bucket)
    blobs = {name: os.urandom(2 * PART + 5) for name in ("retried", "abandoned")}
    locations = {name: patch(server, start_upload(server, "crash/app"), blob, 0) for name, blob in blobs.items()}
    sessions = {name: session_of(location) for name, location in locations.items()}

    for name, location in locations.items():
        lock = os.open(f"{data / 'registry.db'}.writelock", os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(lock, fcntl.LOCK_EX)  # every metadata write now waits, the commit's included
        try:
            offset = swift.log_size()
            committing = threading.Thread(target=lambda: _swallow(lambda: requests.put(
                with_digest(location, sha256(blobs[name])), timeout=60)), daemon=True)
            committing.start()
            deadline = time.monotonic() + 60
            while not [r for r in swift.requests_since(offset) if r.method == "POST" and "uploadId" in r.query]:
                assert time.monotonic() < deadline, "the store's commit never came"
                time.sleep(0.01)
            assert f"blobs/{sessions[name]}" in store.blob_keys()
            pids = worker_pids(server)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)
        committing.join(timeout=60)
        deadline = time.monotonic() + 60
        while not worker_pids(server) or worker_pids(server) == pids:  # gunicorn starts another worker
            assert time.monotonic() < deadline
            time.sleep(0.1)
    with sqlite3.connect(data / "registry.db") as db:
        assert db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 0
    assert store.blob_keys() == {f"blobs/{sid}" for sid in sessions.values()}  # two stray objects

    time.sleep(1.5)  # s3api rounds LastModified up to the second: let the objects be older than grace 0
    report = gc_until_up(server, grace_seconds=0)
    assert report["orphan_files_removed"] == 0, report  # their sessions may still complete
    code, found = fsck(server, data)
    assert code == 0 and found["clean"], found["problems"]

    offset = swift.log_size()
    r = requests.put(with_digest(locations["retried"], sha256(blobs["retried"])), timeout=60)
    assert r.status_code == 201, r.text
    time.sleep(1)
    assert not [r for r in swift.requests_since(offset) if r.method in ("PUT", "POST")]  # nothing sent again
    assert pull_blob(server, "crash/app", sha256(blobs["retried"])) == blobs["retried"]
    config = b'{"architecture": "amd64", "os": "linux"}'
    Pusher(server.url).push_blob("crash/app", config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(blobs["retried"]),
                    "size": len(blobs["retried"])}]}).encode()
    r = server.http.put(f"{server.url}/v2/crash/app/manifests/v1", data=manifest,
                        headers={"Content-Type": OCI_MANIFEST}, timeout=30)
    assert r.status_code == 201, r.text

    assert server.http.delete(locations["abandoned"], timeout=30).status_code == 204  # the other client gives up
    code, found = fsck(server, data)
    assert code == 1 and [(p["kind"], p["subject"]) for p in found["problems"]] == \
        [("orphan blob", f"blobs/{sessions['abandoned']}")], found
    report = gc_until_up(server, grace_seconds=0)
    assert report["orphan_files_removed"] == 1, report
    code, found = fsck(server, data)
    assert code == 0 and found["problems"] == [], found
    assert f"blobs/{sessions['abandoned']}" not in store.blob_keys() and store.leftovers() == set()
    assert f"blobs/{sessions['retried']}" in store.blob_keys() and report["blobs_removed"] == 0


def fsck(server, data: Path) -> tuple[int, dict]:
    """`dockyard fsck --json` on the server's configuration: (exit status, report)."""
    result = subprocess.run([shutil.which("dockyard") or "dockyard", "fsck", "--json", "--data", str(data),
                             "--config", str(server.log_path.parent / "dockyard.toml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def gc_until_up(server, **options) -> dict:
    deadline = time.monotonic() + 60
    while True:
        try:
            r = server.http.post(f"{server.url}/v2/_dockyard/gc", json=options, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()
        except requests.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def _swallow(fn):
    try:
        fn()
    except requests.RequestException:
        pass


# -- garbage collection under load -----------------------------------------------------------------------------------

class Pusher:
    """Images of small random layers over the API, each pushed as POST ?digest= (a session of one request)."""

    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()

    def push_blob(self, name: str, data: bytes) -> None:
        r = self.http.post(f"{self.url}/v2/{name}/blobs/uploads/", params={"digest": sha256(data)}, data=data,
                           timeout=60)
        assert r.status_code == 201, r.text

    def push_image(self, name: str, tag: str, layers: list[bytes]) -> None:
        config = json.dumps({"tag": tag, "nonce": os.urandom(8).hex()}).encode()
        for _ in range(10):
            for blob in (config, *layers):
                self.push_blob(name, blob)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                           "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                            "size": len(layer)} for layer in layers]}).encode()
            r = self.http.put(f"{self.url}/v2/{name}/manifests/{tag}", data=manifest,
                              headers={"Content-Type": OCI_MANIFEST}, timeout=60)
            if r.status_code == 201:
                return
            assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN", r.text
        raise AssertionError(f"could not push {name}:{tag}")

    def pull_image(self, name: str, tag: str) -> list[str]:
        r = self.http.get(f"{self.url}/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}, timeout=60)
        assert r.status_code == 200, f"{name}:{tag}: {r.status_code} {r.text}"
        document = r.json()
        digests = [document["config"]["digest"]] + [layer["digest"] for layer in document["layers"]]
        for digest in digests:
            blob = self.http.get(f"{self.url}/v2/{name}/blobs/{digest}", timeout=60)
            assert blob.status_code == 200 and sha256(blob.content) == digest, f"{name}:{tag} {digest}"
        return digests


def test_gc_in_a_loop_while_clients_push_pull_and_delete(swift, start_dockyard, tmp_path):
    bucket = new_bucket(swift)
    data = tmp_path / "data"
    server = start_dockyard(data=data, config=storage_toml(swift, bucket), workers=2)
    client = Pusher(server.url)
    shared = os.urandom(4096)
    stable = [f"stable/{i}" for i in range(3)]
    for name in stable:
        client.push_image(name, "v1", [shared, os.urandom(2048)])
    stop = threading.Event()
    errors: list[str] = []
    counts = {"gc": 0, "pulls": 0, "pushes": 0}

    def guarded(fn):
        def run():
            try:
                while not stop.is_set():
                    fn()
            except Exception as exc:  # reported by the main thread
                errors.append(f"{fn.__name__}: {exc!r}")
                stop.set()
        return threading.Thread(target=run)

    def collector(c=Pusher(server.url)):
        r = c.http.post(f"{server.url}/v2/_dockyard/gc", json={"grace_seconds": 30, "delete_untagged": True},
                        timeout=300)
        assert r.status_code == 200, r.text
        counts["gc"] += 1

    def puller(c=Pusher(server.url)):
        for name in stable:
            c.pull_image(name, "v1")
            counts["pulls"] += 1

    def churner(c=Pusher(server.url), n=[0]):
        n[0] += 1
        tag = f"t{n[0]}"
        c.push_image("churn/app", tag, [shared, os.urandom(1024)])
        counts["pushes"] += 1
        if n[0] % 2:
            r = c.http.delete(f"{server.url}/v2/churn/app/manifests/{tag}", timeout=30)
            assert r.status_code == 202, r.text

    threads = [guarded(collector), guarded(puller), guarded(churner), guarded(churner)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stop.is_set() and (counts["gc"] < 10 or counts["pushes"] < 20):
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert counts["gc"] >= 3 and counts["pushes"] >= 6 and counts["pulls"] >= 6, counts

    referenced = set()
    catalog = client.http.get(f"{server.url}/v2/_catalog", timeout=30).json()["repositories"]
    for name in catalog:
        for tag in client.http.get(f"{server.url}/v2/{name}/tags/list", timeout=30).json()["tags"] or []:
            referenced.update(client.pull_image(name, tag))
    time.sleep(1.5)  # s3api rounds LastModified up to the second: every object older than grace 0
    r = client.http.post(f"{server.url}/v2/_dockyard/gc", json={"grace_seconds": 0, "delete_untagged": True},
                         timeout=300)
    assert r.status_code == 200, r.text
    with sqlite3.connect(data / "registry.db") as db:
        rows = dict(db.execute("SELECT key, digest FROM blobs"))
        pending = db.execute("SELECT COUNT(*) FROM pending_deletes").fetchone()[0]
    store = Bucket(swift, bucket)
    assert store.blob_keys() == set(rows), "the bucket must hold exactly the blobs the metadata records"
    assert set(rows.values()) == referenced, "a final GC must leave exactly the referenced blobs"
    assert pending == 0 and store.multipart_uploads() == [] and store.leftovers() == set()
