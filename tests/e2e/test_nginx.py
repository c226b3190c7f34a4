"""Dockyard behind real nginx with TLS, as deployed (issue 6): deploy/nginx/dockyard.conf in front of `dockyard serve`.

One nginx and one dockyard serve for the module. nginx runs in the foreground with its own prefix, pid file and temp
directories under a temp dir, on free 127.0.0.1 ports, with a certificate for IP 127.0.0.1 signed by a CA made here
with the openssl CLI. docker (its daemon trusts the CA through /etc/docker/certs.d/127.0.0.1:<port>/ca.crt), podman
and skopeo (`--cert-dir` with TLS verification on) push and pull through it. When the `auth` middleware is built in,
the server requires htpasswd logins and every client logs in first.

The 512 MiB layer test watches for buffering while it runs: nginx must open no temp file (it unlinks them at once,
so its workers' open file descriptors are checked, as well as the temp directories and its error log), and no
gunicorn worker's RSS may grow by more than 64 MiB.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

import e2e_nginx
from e2e_nginx import free_port, main_config, missing, sh, tool

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "nginx" / "dockyard.conf"
UNIT = ROOT / "deploy" / "systemd" / "dockyard.service"
USER, PASSWORD = "deployer", f"pw-{uuid.uuid4().hex}"
LARGE = 512 * 1024 * 1024
RSS_GROWTH_LIMIT = 64 * 1024 * 1024
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")










def auth_available() -> bool:
    """Whether the `auth` middleware (issue 3) is a built-in of this checkout."""
    try:
        from dockyard.middleware import BUILTINS
    except ImportError:
        return False
    return "auth" in BUILTINS


# -- configuration files as deployed, with this test's paths ------------------------------------------------------

def site_config(*, https_port: int, http_port: int, upstream_port: int, certs: Path, blobs: Path,
                timeouts: tuple[int, int] | None = None) -> str:
    """deploy/nginx/dockyard.conf with only addresses and paths replaced: everything else is tested as shipped
    (`timeouts`: the header and body timeouts shortened, for a test that waits for them)."""
    text = SITE.read_text()
    shorter = () if timeouts is None else (("client_header_timeout 10s;", f"client_header_timeout {timeouts[0]}s;"),
                                           ("client_body_timeout 60s;", f"client_body_timeout {timeouts[1]}s;"))
    for old, new in (("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
                     ("listen 80;", f"listen 127.0.0.1:{http_port};"),
                     ("server 127.0.0.1:5000;", f"server 127.0.0.1:{upstream_port};"),
                     ("/etc/ssl/dockyard/", f"{certs}/"),
                     ("/var/lib/dockyard/blobs/", f"{blobs}/"), *shorter):
        assert old in text, f"{SITE} no longer contains {old!r}: update this test's substitutions"
        text = text.replace(old, new)
    return text




def make_certificates(directory: Path) -> Path:
    return e2e_nginx.make_certificates(directory, tool("openssl", "apt-get install openssl"), "Dockyard e2e CA")


# -- the deployment under test -----------------------------------------------------------------------------------

class Deployment:
    """dockyard serve (2 workers) behind nginx with TLS; `url` is what clients use."""

    def __init__(self, home: Path, timeouts: tuple[int, int] | None = None):
        self.home = home
        self.timeouts = timeouts  # (header, body) seconds, for nginx and Dockyard alike; None: as shipped
        self.nginx_bin = tool("nginx", "apt-get install nginx")
        self.dockyard_bin = shutil.which("dockyard") or missing("`dockyard` is not on PATH (pip install -e .)")
        self.certs = home / "certs"
        self.ca = make_certificates(self.certs)
        self.cert_dir = home / "client-certs"  # what skopeo/podman --cert-dir read: *.crt are CAs
        self.cert_dir.mkdir()
        shutil.copy(self.ca, self.cert_dir / "ca.crt")
        self.data = home / "data"
        self.prefix = home / "nginx"
        for d in ("logs", "temp"):
            (self.prefix / d).mkdir(parents=True)
        self.upstream_port, self.port, self.http_port = free_port(), free_port(), free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"https://{self.host}"
        self.auth = auth_available()
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.http = requests.Session()
        self.http.trust_env = False  # else REQUESTS_CA_BUNDLE overrides `verify`, and proxies could apply
        self.http.verify = str(self.ca)
        if self.auth:
            self.http.auth = (USER, PASSWORD)

    def dockyard_config(self) -> str:
        config = ('trusted_proxies = "127.0.0.1"\naccel_redirect = "/_dockyard_blobs"\n'
                  'log_level = "warning"\n')
        if self.timeouts:
            config += f"header_timeout = {self.timeouts[0]}\nbody_timeout = {self.timeouts[1]}\n"
        if self.auth:
            htpasswd = self.home / "htpasswd"
            sh(tool("htpasswd", "apt-get install apache2-utils"), "-Bbc", htpasswd, USER, PASSWORD)
            config += (f'\n[[middleware]]\nname = "auth"\n[middleware.options]\nhtpasswd = "{htpasswd}"\n'
                       f'rules = [{{ users = ["*"], repositories = ["e2e/*"], actions = ["pull", "push", "delete"] }}]\n')
        return config

    def start(self) -> None:
        (self.home / "dockyard.toml").write_text(self.dockyard_config())
        self._spawn("dockyard", [self.dockyard_bin, "serve", "--bind", f"127.0.0.1:{self.upstream_port}",
                                 "--data", self.data, "--config", self.home / "dockyard.toml", "--workers", "2"])
        self._wait(f"http://127.0.0.1:{self.upstream_port}/healthz", "dockyard serve", verify=False)
        site = self.home / "site.conf"
        site.write_text(site_config(https_port=self.port, http_port=self.http_port, upstream_port=self.upstream_port,
                                    certs=self.certs, blobs=self.data / "blobs", timeouts=self.timeouts))
        (self.home / "nginx.conf").write_text(main_config(self.prefix, site))
        self._spawn("nginx", [self.nginx_bin, "-p", self.prefix, "-c", self.home / "nginx.conf",
                              "-g", "daemon off;"])
        self._wait(f"{self.url}/healthz", "nginx", verify=str(self.ca))

    def _spawn(self, name: str, argv: list) -> None:
        log = open(self.home / f"{name}.log", "wb")
        proc = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=self.home, start_new_session=True)
        log.close()
        self.procs.append((name, proc))

    def _wait(self, url: str, name: str, verify) -> None:
        deadline = time.monotonic() + 60
        while True:
            for pname, proc in self.procs:
                if proc.poll() is not None:
                    pytest.fail(f"{pname} exited with {proc.returncode}:\n{self.logs()}", pytrace=False)
            try:
                if self.http.get(url, timeout=2, verify=verify).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{name}: {url} did not answer 200 within 60s:\n{self.logs()}", pytrace=False)
            time.sleep(0.1)

    def logs(self) -> str:
        parts = []
        for path in (self.home / "dockyard.log", self.home / "nginx.log", self.prefix / "logs" / "error.log"):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def pid(self, name: str) -> int:
        return next(proc.pid for pname, proc in self.procs if pname == name)

    def children(self, name: str) -> list[int]:
        pid = self.pid(name)
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("allow_redirects", False)
        return self.http.request(method, self.url + path, **kwargs)

    def metrics(self) -> dict:
        resp = self.request("GET", "/metrics")
        assert resp.status_code == 200, resp.text[:500]
        samples = {}
        for line in resp.text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def stop(self) -> list[str]:
        complaints = []
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if name == "dockyard" else signal.SIGQUIT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    complaints.append(f"{name} did not stop within 30s; killed")
        self.http.close()
        return complaints


@pytest.fixture(scope="module")
def deployment():
    home = Path(tempfile.mkdtemp(prefix="dy-e2e-nginx-"))
    home.chmod(0o755)
    dep = Deployment(home)
    docker_certs = Path("/etc/docker/certs.d") / dep.host
    try:
        dep.start()
        yield dep
    finally:
        complaints = dep.stop()
        shutil.rmtree(docker_certs, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        assert not complaints, complaints


@pytest.fixture(scope="module")
def docker_trusts_ca(deployment):
    return e2e_nginx.docker_trusts(deployment.host, deployment.ca)


def creds(deployment) -> list[str]:
    return [f"--creds={USER}:{PASSWORD}"] if deployment.auth else []


# -- configuration checks (no servers needed) ---------------------------------------------------------------------

def test_nginx_site_passes_nginx_t(tmp_path):
    nginx = tool("nginx", "apt-get install nginx")
    certs = tmp_path / "certs"
    make_certificates(certs)
    prefix = tmp_path / "prefix"
    (prefix / "logs").mkdir(parents=True)
    (prefix / "temp").mkdir()
    site = tmp_path / "site.conf"
    site.write_text(site_config(https_port=free_port(), http_port=free_port(), upstream_port=5000, certs=certs,
                                blobs=tmp_path / "blobs"))
    (tmp_path / "nginx.conf").write_text(main_config(prefix, site))
    result = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr
    # The settings the deployment depends on are in the shipped file, not only in this test's copy.
    shipped = SITE.read_text()
    for directive in ("client_max_body_size 0;", "proxy_request_buffering off;", "proxy_buffering off;",
                      "chunked_transfer_encoding on;", "proxy_http_version 1.1;", "internal;",
                      "proxy_set_header X-Forwarded-Proto $scheme;", "proxy_set_header X-Forwarded-Host $http_host;",
                      "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"):
        assert directive in shipped, directive


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A small systemd unit parser: {section: {key: [values]}}; raises on anything that is not a unit file."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key), f"line {number}: {line}"
        current.setdefault(key, []).append(value)
    return sections


def test_systemd_unit_is_hardened_and_verifies(tmp_path):
    sections = unit_sections(UNIT.read_text())
    service = sections["Service"]
    expected = {"User": "dockyard", "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                "ReadWritePaths": "/var/lib/dockyard", "StateDirectory": "dockyard", "ProtectHome": "yes",
                "CapabilityBoundingSet": ""}
    for key, value in expected.items():
        assert service.get(key) == [value], (key, service.get(key))
    assert service["ExecStart"][0].split()[1:3] == ["serve", "--config"]
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # tests/run.sh installs the `systemd` package, which provides it on Debian 12.
        missing("systemd-analyze is not on PATH; install it with: apt-get install systemd")
    # verify checks that ExecStart exists: point it at this machine's dockyard.
    unit = tmp_path / "dockyard.service"
    dockyard = shutil.which("dockyard") or missing("`dockyard` is not on PATH (pip install -e .)")
    unit.write_text(UNIT.read_text().replace("/opt/dockyard/bin/dockyard", dockyard))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    # verify exits 0 even for unknown keys or bad values (it only warns): any output about the unit is a failure.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "dockyard.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_compose_file_and_containerfile(tmp_path):
    containerfile = (ROOT / "deploy" / "Containerfile").read_text()
    instructions = [line.split()[0] for line in re.sub(r"\\\n", " ", containerfile).splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    known = {"FROM", "RUN", "COPY", "ENV", "USER", "VOLUME", "EXPOSE", "STOPSIGNAL", "HEALTHCHECK", "ENTRYPOINT",
             "CMD", "WORKDIR", "ARG", "LABEL"}
    assert set(instructions) <= known, set(instructions) - known
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", containerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Containerfile copies {path}, which is not in the repository"
    assert 'ENTRYPOINT ["dockyard"]' in containerfile and "USER dockyard" in containerfile
    # No engine here can build it (no base image can be pulled); docker-compose 1.29 validates the compose file
    # against the compose schema and resolves its paths.
    compose = shutil.which("docker-compose") or missing("docker-compose is not on PATH; apt-get install "
                                                        "docker-compose")
    result = subprocess.run([compose, "-f", str(ROOT / "deploy" / "compose.yaml"), "config"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "network_mode: service:dockyard" in result.stdout
    assert f"{ROOT}/deploy/nginx/dockyard.conf:/etc/nginx/conf.d/default.conf:ro" in result.stdout


# -- through nginx --------------------------------------------------------------------------------------------------

def test_location_and_link_headers_carry_the_external_url(deployment):
    repo = f"e2e/tls-location-{uuid.uuid4().hex[:8]}"
    resp = deployment.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert resp.status_code == 202, resp.text
    location = resp.headers["Location"]
    assert location.startswith(f"{deployment.url}/v2/{repo}/blobs/uploads/"), location
    blob = os.urandom(1000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    patched = deployment.http.patch(location, data=blob, timeout=30, headers={"Content-Type": "application/octet-stream"})
    assert patched.status_code == 202 and patched.headers["Location"].startswith(deployment.url)
    done = deployment.http.put(patched.headers["Location"], params={"digest": digest}, timeout=30)
    assert done.status_code == 201 and done.headers["Location"] == f"{deployment.url}/v2/{repo}/blobs/{digest}"
    # The blob comes back through X-Accel-Redirect, whole and by range.
    got = deployment.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert got.status_code == 200 and got.content == blob and got.headers["Docker-Content-Digest"] == digest
    part = deployment.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == blob[100:200]
    assert part.headers["Content-Range"] == "bytes 100-199/1000"
    # The internal location cannot be asked for directly.
    hexpart = digest.split(":")[1]
    assert deployment.request("GET", f"/_dockyard_blobs/sha256/{hexpart[:2]}/{hexpart}").status_code == 404
    # Plain HTTP is sent to HTTPS.
    redirect = deployment.http.get(f"http://127.0.0.1:{deployment.http_port}/v2/", allow_redirects=False, timeout=10)
    assert redirect.status_code == 301 and redirect.headers["Location"].startswith("https://127.0.0.1/v2/")


def build_image(docker, context: Path, name: str, files: dict) -> list:
    context.mkdir()
    lines = ["FROM scratch"]
    for i, (path, data) in enumerate(files.items()):
        (context / f"f{i}").write_bytes(data)
        lines.append(f"COPY f{i} {path}")
    (context / "Dockerfile").write_text("\n".join(lines) + f"\nLABEL nonce={uuid.uuid4().hex}\n")
    docker("build", "-q", "-t", name, context)
    return json.loads(docker("image", "inspect", name).out)[0]["RootFS"]["Layers"]


def test_docker_push_and_pull_over_tls(deployment, docker, docker_trusts_ca, workdir):
    if deployment.auth:
        assert docker("login", "-u", USER, "-p", "wrong", deployment.host, check=False).returncode != 0
        docker("login", "-u", USER, "-p", PASSWORD, deployment.host)
    name = f"{deployment.host}/e2e/docker-tls-{uuid.uuid4().hex[:8]}:1"
    layers = build_image(docker, workdir / "context", name, {
        "/a.bin": os.urandom(256 * 1024), "/b.bin": os.urandom(64 * 1024), "/c.txt": uuid.uuid4().bytes})
    out = docker("push", name).out
    assert re.search(r"digest: sha256:[0-9a-f]{64}", out), out
    docker("rmi", name)
    docker("pull", name)
    assert json.loads(docker("image", "inspect", name).out)[0]["RootFS"]["Layers"] == layers
    docker("rmi", name)


def test_skopeo_and_podman_over_tls(deployment, skopeo, podman, new_layout):
    cert = ["--dest-cert-dir", deployment.cert_dir, "--dest-tls-verify=true"]
    src_cert = ["--src-cert-dir", deployment.cert_dir, "--src-tls-verify=true"]
    auth = [f"--dest-creds={USER}:{PASSWORD}"] if deployment.auth else []
    src_auth = [f"--src-creds={USER}:{PASSWORD}"] if deployment.auth else []
    layout = new_layout("src")
    amd64 = layout.add_image(arch="amd64")
    arm64 = layout.add_image(arch="arm64", layer_sizes=(32 * 1024, 8 * 1024))
    _, index_digest = layout.add_index([amd64, arm64], tag="multi")
    repo = f"e2e/tls-skopeo-{uuid.uuid4().hex[:8]}"
    ref = f"docker://{deployment.host}/{repo}"

    # A multi-arch index, pushed and pulled back byte for byte.
    skopeo("copy", "--all", "--preserve-digests", *cert, *auth, layout.ref("multi"), f"{ref}:multi")
    back = new_layout("back")
    skopeo("copy", "--all", *src_cert, *src_auth, f"{ref}:multi", back.ref("multi"))
    assert back.resolve("multi")["digest"] == index_digest
    assert back.blob_names() >= {amd64.digest, arm64.digest, *amd64.blob_digests, *arm64.blob_digests}

    # podman pulls one image of it and pushes it on to another repository, TLS verified with the CA.
    tls = ["--tls-verify=true", "--cert-dir", str(deployment.cert_dir)]
    if deployment.auth:
        podman("login", *tls, "-u", USER, "-p", PASSWORD, deployment.host)
    podman("pull", *tls, "--arch", "arm64", f"{deployment.host}/{repo}:multi")
    moved = f"{deployment.host}/e2e/tls-podman-{uuid.uuid4().hex[:8]}:1"
    podman("tag", f"{deployment.host}/{repo}:multi", moved)
    podman("push", *tls, moved)
    inspected = json.loads(skopeo("inspect", "--cert-dir", deployment.cert_dir, "--tls-verify=true",
                                  *creds(deployment), f"docker://{moved}").out)
    assert inspected["Architecture"] == "arm64" and len(inspected["Layers"]) == 2
    podman("rmi", "-f", moved, f"{deployment.host}/{repo}:multi")


def test_metrics_after_a_push_count_exactly_its_uploads(deployment, skopeo, new_layout):
    layout = new_layout("metrics")
    sizes = (70 * 1024, 20 * 1024, 5 * 1024)
    image = layout.add_image(tag="1", layer_sizes=sizes)
    blob_bytes = sum(len(layout.blob(d)) for d in image.blob_digests)
    before = deployment.metrics()
    skopeo("copy", "--preserve-digests", "--dest-cert-dir", deployment.cert_dir, "--dest-tls-verify=true",
           *([f"--dest-creds={USER}:{PASSWORD}"] if deployment.auth else []), layout.ref("1"),
           f"docker://{deployment.host}/e2e/tls-metrics-{uuid.uuid4().hex[:8]}:1")
    after = deployment.metrics()

    def delta(prefix: str) -> float:
        return sum(v for k, v in after.items() if k.startswith(prefix)) - \
            sum(v for k, v in before.items() if k.startswith(prefix))

    assert delta("dockyard_blob_uploads_total") == len(image.blob_digests) == 4  # config + 3 layers
    assert delta("dockyard_blob_upload_bytes_total") == blob_bytes
    assert delta("dockyard_http_request_bytes_total") >= blob_bytes
    assert delta('dockyard_http_requests_total{method="PUT",route="/v2/{name}/manifests/{reference}",'
                 'status="201"}') == 1
    assert delta("dockyard_storage_blobs") == 4 and delta("dockyard_storage_blob_bytes") == blob_bytes
    assert after["dockyard_uploads_in_progress"] == 0


# -- a 512 MiB layer ----------------------------------------------------------------------------------------------

class HashingWriter:
    def __init__(self, fh):
        self.fh, self.hasher, self.size = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def flush(self):
        self.fh.flush()


def write_large_layer(layout, size: int) -> tuple[str, int, str]:
    """A gzip (stored, level 0) tar holding one file of `size` bytes, written to disk in 1 MiB blocks: never in
    memory. Returns (digest, blob size, diff_id)."""
    tmp = layout.path / "large.tmp"
    block = bytearray(os.urandom(1 << 20))
    with open(tmp, "wb") as raw:
        compressed = HashingWriter(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=0, mtime=0) as gz:
            uncompressed = HashingWriter(gz)
            info = tarfile.TarInfo(f"big-{uuid.uuid4().hex}.bin")
            info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
            uncompressed.write(info.tobuf(tarfile.PAX_FORMAT))
            written = 0
            while written < size:
                block[:8] = written.to_bytes(8, "little")  # every block differs: no run can be mistaken for another
                chunk = memoryview(block)[:min(len(block), size - written)]
                uncompressed.write(chunk)
                written += len(chunk)
            uncompressed.write(b"\0" * ((512 - size % 512) % 512) + b"\0" * 1024)
    digest = "sha256:" + compressed.hasher.hexdigest()
    os.replace(tmp, layout.path / "blobs" / "sha256" / digest.split(":")[1])
    return digest, compressed.size, "sha256:" + uncompressed.hasher.hexdigest()


def add_large_image(layout, tag: str) -> tuple[str, int]:
    digest, size, diff_id = write_large_layer(layout, LARGE)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                         "config": {"Labels": {"nonce": uuid.uuid4().hex}}}).encode()
    config_digest = layout.put_blob(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPES[0],
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": digest, "size": size}]}).encode()
    layout.tag(tag, {"mediaType": MANIFEST_TYPES[0], "digest": layout.put_blob(manifest), "size": len(manifest)})
    return digest, size


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Watch(threading.Thread):
    """Samples gunicorn workers' RSS and nginx workers' open files every 50 ms until stopped."""

    def __init__(self, deployment):
        super().__init__(daemon=True)
        self.deployment = deployment
        self.workers = deployment.children("dockyard")
        self.nginx_workers = deployment.children("nginx")
        self.baseline = {pid: rss(pid) for pid in self.workers}
        self.peak = dict(self.baseline)
        self.temp_files: set[str] = set()
        self.samples = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        temp = str(self.deployment.prefix / "temp")
        while not self.stopping.wait(0.05):
            for pid in self.workers:
                self.peak[pid] = max(self.peak[pid], rss(pid))
            for pid in self.nginx_workers:
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    try:
                        target = os.readlink(fd)
                    except OSError:
                        continue
                    if target.startswith(temp):
                        self.temp_files.add(target)
            for path in Path(temp).rglob("*"):
                if path.is_file():
                    self.temp_files.add(str(path))
            self.samples += 1

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.join(10)


def test_512_mib_layer_streams_through_nginx_and_python(deployment, skopeo, new_layout):
    layout = new_layout("large")
    digest, size = add_large_image(layout, "big")
    repo = f"e2e/tls-large-{uuid.uuid4().hex[:8]}"
    ref = f"docker://{deployment.host}/{repo}:big"
    before = deployment.metrics()
    with Watch(deployment) as push_watch:
        skopeo("copy", "--preserve-digests", "--dest-cert-dir", deployment.cert_dir, "--dest-tls-verify=true",
               *([f"--dest-creds={USER}:{PASSWORD}"] if deployment.auth else []), layout.ref("big"), ref,
               timeout=600)
    (stored,) = (deployment.data / "blobs" / "sha256" / digest[7:9]).glob(digest[7:] + ".*")
    assert stored.stat().st_size == size
    back = new_layout("large-back")
    with Watch(deployment) as pull_watch:
        # skopeo verifies every blob's digest as it reads it; the layer comes from nginx (X-Accel-Redirect).
        skopeo("copy", "--src-cert-dir", deployment.cert_dir, "--src-tls-verify=true",
               *([f"--src-creds={USER}:{PASSWORD}"] if deployment.auth else []), ref, back.ref("big"),
               timeout=600)
    assert (back.path / "blobs" / "sha256" / digest[7:]).stat().st_size == size
    after = deployment.metrics()

    for watch, what in ((push_watch, "push"), (pull_watch, "pull")):
        assert watch.samples > 5, f"{what}: too few samples to judge"
        assert not watch.temp_files, f"{what}: nginx buffered to temp files: {sorted(watch.temp_files)[:5]}"
        growth = {pid: watch.peak[pid] - watch.baseline[pid] for pid in watch.workers}
        print(f"{what}: {watch.samples} samples, worker RSS growth (MiB): "
              f"{ {pid: round(g / 2**20, 1) for pid, g in growth.items()} }")
        assert max(growth.values()) < RSS_GROWTH_LIMIT, f"{what}: worker RSS grew by {growth} bytes"
    error_log = (deployment.prefix / "logs" / "error.log").read_text()
    assert "buffered to a temporary file" not in error_log, error_log[-2000:]
    # Python received the layer once and sent none of it back: nginx served the download from disk.
    route = 'route="/v2/{name}/blobs/{digest}"'
    sent = sum(v for k, v in after.items() if k.startswith("dockyard_http_response_bytes_total") and route in k) - \
        sum(v for k, v in before.items() if k.startswith("dockyard_http_response_bytes_total") and route in k)
    assert sent < 1024 * 1024, f"Python sent {sent} bytes of blob bodies"
    received = sum(v for k, v in after.items() if k.startswith("dockyard_blob_upload_bytes_total")) - \
        sum(v for k, v in before.items() if k.startswith("dockyard_blob_upload_bytes_total"))
    assert received >= size


# -- issue 12: slow and stalled clients in front of nginx -----------------------------------------------------------

def test_200_stalled_connections_through_nginx(stalled_clients):
    """The deploy/ site as shipped, but its header and body timeouts (and Dockyard's) shortened to 4 s and 8 s so
    the test sees them act: nginx absorbs slow headers itself, a stalled body holds a Dockyard thread until the body
    timeout, and while 200 such connections are held every pull still answers in under a second."""
    import base64
    import ssl

    home = Path(tempfile.mkdtemp(prefix="dy-e2e-nginx-slow-"))
    home.chmod(0o755)
    dep = Deployment(home, timeouts=(4, 8))
    try:
        dep.start()
        context = ssl.create_default_context(cafile=str(dep.ca))

        def connect():
            return context.wrap_socket(socket.create_connection(("127.0.0.1", dep.port), timeout=10),
                                       server_hostname="127.0.0.1")

        repo = f"e2e/slow-{uuid.uuid4().hex[:8]}"
        layer = push_small_image(dep, repo, "v1")

        def pull():
            times = []
            for path in (f"/v2/{repo}/manifests/v1", f"/v2/{repo}/blobs/{layer}"):
                started = time.monotonic()
                r = dep.request("GET", path, timeout=10, headers={"Accept": OCI_MANIFEST_TYPE},
                                allow_redirects=True)
                times.append(time.monotonic() - started)
                assert r.status_code == 200, r.text[:300]
            return times

        authorization = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() if dep.auth else ""
        report = stalled_clients.run(connect, authorization, pull=pull,
                                     push=lambda n: push_small_image(dep, repo, f"t{n}"), hold=8 + 6,
                                     repository=f"{repo}-stalled")
        stalled_clients.check(report, header_timeout=4, body_timeout=8)
    finally:
        complaints = dep.stop()
        shutil.rmtree(home, ignore_errors=True)
        assert not complaints, complaints


OCI_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def push_small_image(dep, repo: str, tag: str) -> str:
    """A one-layer image pushed over the deployment's client; its layer's digest."""
    import hashlib
    import json

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    layer, config = f"layer {repo}:{tag} {time.time()}".encode(), b'{"os":"linux"}'
    for blob in (layer, config):
        r = dep.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": digest(blob)}, data=blob)
        assert r.status_code == 201, r.text[:300]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST_TYPE,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest(config), "size": len(config)},
                           "layers": [{"mediaType": "application/octet-stream", "digest": digest(layer),
                                       "size": len(layer)}]})
    r = dep.request("PUT", f"/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST_TYPE})
    assert r.status_code == 201, r.text[:300]
    return digest(layer)
