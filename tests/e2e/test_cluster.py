"""A Dockyard cluster end to end (issue 14): three `dockyard serve` nodes behind real nginx, on one PostgreSQL
database and one S3 bucket, run from the files in deploy/ with only addresses and paths substituted.

One cluster serves the whole module (`cluster` fixture):

- PostgreSQL: a server of the module's own (`module_postgresql_server`), so the last test can restart it while the
  cluster serves without touching the session's server; `dockyard migrate` prepares it, as deploy/README.md says.
- the S3 store: the session's OpenStack Swift (`swift`), one bucket of the module's own. Its proxy logs every
  request (`swift.requests_since(offset)`), which is how the tests see what the nodes asked of the store.
- three nodes, each `dockyard serve --workers 2` with its own empty data directory and deploy/cluster/dockyard.toml
  (node name, database, bucket and htpasswd path substituted; the ratelimit entry given a small limit class):
  token auth with the shared htpasswd file, `download = "accel"`.
- nginx running deploy/nginx/dockyard-cluster.conf (node and store addresses, ports and certificate paths
  substituted) with TLS from a CA made here with openssl. Its access log (a format of this test's own, in the main
  nginx.conf) records which node answered each request and the `Location` it gave.

Tests that kill a node start it again; the PostgreSQL restart comes last. Every client call has a timeout and every
loop a deadline. With CI=true a missing tool fails the test, never skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import requests

import e2e_nginx
from e2e_nginx import free_port, sh, tool

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "nginx" / "dockyard-cluster.conf"
NODE_TOML = ROOT / "deploy" / "cluster" / "dockyard.toml"
COMPOSE = ROOT / "deploy" / "cluster" / "compose.yaml"
NODES = ("node1", "node2", "node3")
ADMIN = "admin"  # the admin of deploy/cluster/dockyard.toml; exempt from the rate limits here
PASSWORD = f"pw-{uuid.uuid4().hex}"
LIMITED = ("limited-a", "limited-b")  # ordinary users, rate-limited
MANIFEST_READS = 12  # the limited users' manifest_read class: rate 0, burst 12 (exactly 12 reads, ever)
MIB = 1024 * 1024
PART = 8 * MIB  # storage.part_size, the default
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_TYPES = ", ".join((OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json",
                            "application/vnd.docker.distribution.manifest.list.v2+json"))










def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the shipped files, with this test's addresses and paths ------------------------------------------------------

def substitute(path: Path, replacements: list[tuple[str, str]]) -> str:
    text = path.read_text()
    for old, new in replacements:
        assert old in text, f"{path} no longer contains {old!r}: update this test's substitutions"
        text = text.replace(old, new)
    return text


def site_config(*, https_port: int, http_port: int, node_ports: dict[str, int], store: str, certs: Path) -> str:
    """deploy/nginx/dockyard-cluster.conf with only addresses and paths replaced."""
    return substitute(SITE, [("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
                             ("listen 80;", f"listen 127.0.0.1:{http_port};"),
                             *((f"{name}:5000", f"127.0.0.1:{port}") for name, port in node_ports.items()),
                             ("minio:9000", store), ("/etc/ssl/dockyard/", f"{certs}/")])


def node_config(name: str, *, database: str, bucket: str, swift, htpasswd: Path) -> str:
    """deploy/cluster/dockyard.toml for one node: its name, the test's database, bucket and htpasswd file; the
    ratelimit entry gets this test's limits (the admin exempt, the limited users' manifest reads counted)."""
    return substitute(NODE_TOML, [
        ('node = "node1"', f'node = "{name}"'),
        ("postgresql://dockyard:change-me@postgres:5432/dockyard", database),
        ('trusted_proxies = "172.30.0.10"', 'trusted_proxies = "127.0.0.1"'),
        ('bucket = "dockyard"', f'bucket = "{bucket}"'),
        ('endpoint_url = "http://minio:9000"', f'endpoint_url = "{swift.endpoint}"'),
        ('region = "us-east-1"', f'region = "{swift.region}"'),
        ('access_key_id = "dockyard"', f'access_key_id = "{swift.access_key}"'),
        ('secret_access_key = "change-me-too"', f'secret_access_key = "{swift.secret_key}"'),
        ('htpasswd = "/etc/dockyard/htpasswd"', f'htpasswd = "{htpasswd}"'),
        # The entry's options; the line's own comment is left behind a `#` of its own.
        ('name = "ratelimit"', 'name = "ratelimit"\n[middleware.options]\nexempt = ["admin"]\n'
                               f'limits = {{ manifest_read = {{ rate = 0, burst = {MANIFEST_READS} }}, '
                               'token = { rate = 100, burst = 1000 } }\n#'),
    ])


def main_config(prefix: Path, site: Path) -> str:
    """The test's nginx.conf, its access log naming the node (upstream address) that answered each request and the
    Location it gave."""
    return e2e_nginx.main_config(prefix, site, "$request_method $request_uri $status [$upstream_addr] "
                                                "[$upstream_status] [$sent_http_location]")


def make_certificates(directory: Path) -> Path:
    return e2e_nginx.make_certificates(directory, tool("openssl", "apt-get install openssl"), "Dockyard cluster e2e CA")


# -- the cluster ---------------------------------------------------------------------------------------------------

@dataclass
class Node:
    name: str
    port: int
    home: Path
    proc: subprocess.Popen | None = None
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.home / "dockyard.toml"

    @property
    def log(self) -> Path:
        return self.home / "node.log"

    def start(self, dockyard: str) -> None:
        data = self.home / "data"
        data.mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [dockyard, "serve", "--bind", f"127.0.0.1:{self.port}", "--data", str(data), "--config",
                 str(self.config), "--workers", "2"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.home,
                start_new_session=True)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}", pytrace=False)
            try:
                if requests.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} was not ready within {timeout}s:\n{self.log_tail()}", pytrace=False)
            time.sleep(0.2)

    def kill(self) -> None:
        """kill -9 of the node's whole gunicorn process group: master and workers at once."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        # Gone once nothing listens: a worker still exiting (its threads torn down) keeps the listening socket
        # open, and would take a connection only to reset it.
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{self.name} still accepts connections 30 s after kill -9"
            time.sleep(0.02)
        self.http.close()  # its pooled connections went with the node
        self.http = requests.Session()
        self.http.auth = (ADMIN, PASSWORD)

    def stop(self) -> str | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            return f"{self.name} did not stop within 30 s of SIGTERM; killed"
        return None

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"


class Cluster:
    def __init__(self, home: Path, swift, pg):
        self.home, self.swift, self.pg = home, swift, pg
        self.dockyard = tool("dockyard", "pip install -e . (the project's console script)")
        self.nginx_bin = tool("nginx", "apt-get install nginx")
        htpasswd = tool("htpasswd", "apt-get install apache2-utils")
        self.bucket = f"cluster-{uuid.uuid4().hex[:12]}"
        swift.create_bucket(self.bucket)
        self.database = pg.url("dockyard")  # the node file's own query follows (pool_timeout=5, ...)
        self.htpasswd = home / "htpasswd"  # the one file every node reads
        for i, user in enumerate((ADMIN, *LIMITED)):
            sh(htpasswd, "-Bb" + ("c" if i == 0 else ""), self.htpasswd, user, PASSWORD)
        self.certs = home / "certs"
        self.ca = make_certificates(self.certs)
        self.cert_dir = home / "client-certs"  # skopeo/podman --cert-dir: *.crt are CAs
        self.cert_dir.mkdir()
        shutil.copy(self.ca, self.cert_dir / "ca.crt")
        self.nodes = {name: Node(name, free_port(), home / name) for name in NODES}
        for node in self.nodes.values():
            node.home.mkdir()
            node.config.write_text(node_config(node.name, database=self.database, bucket=self.bucket, swift=swift,
                                               htpasswd=self.htpasswd))
            node.http.auth = (ADMIN, PASSWORD)
        self.port, self.http_port = free_port(), free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"https://{self.host}"
        self.prefix = home / "nginx"
        for d in ("logs", "temp"):
            (self.prefix / d).mkdir(parents=True)
        self.nginx: subprocess.Popen | None = None
        self.http = requests.Session()  # through nginx, as the admin
        self.http.trust_env = False
        self.http.verify = str(self.ca)
        self.http.auth = (ADMIN, PASSWORD)

    def start(self) -> None:
        sh(self.dockyard, "migrate", "--config", self.nodes["node1"].config, timeout=120)
        for node in self.nodes.values():
            node.start(self.dockyard)
        for node in self.nodes.values():
            node.wait_ready()
        site = self.home / "site.conf"
        site.write_text(site_config(https_port=self.port, http_port=self.http_port,
                                    node_ports={n.name: n.port for n in self.nodes.values()},
                                    store=self.swift.endpoint.removeprefix("http://"), certs=self.certs))
        (self.home / "nginx.conf").write_text(main_config(self.prefix, site))
        with open(self.home / "nginx.log", "wb") as log:
            self.nginx = subprocess.Popen([self.nginx_bin, "-p", self.prefix, "-c", self.home / "nginx.conf",
                                           "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.nginx.poll() is not None:
                pytest.fail(f"nginx exited:\n{self.logs()}", pytrace=False)
            try:
                if self.http.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"nginx did not answer within 30 s:\n{self.logs()}"
            time.sleep(0.1)

    def restart(self, node: Node) -> None:
        node.start(self.dockyard)
        node.wait_ready()

    def stop(self) -> list[str]:
        """nginx first (its keepalive connections would hold the nodes' graceful shutdown), then the nodes."""
        complaints = []
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.nginx.pid, signal.SIGKILL)
                complaints.append("nginx did not stop within 30 s; killed")
        return complaints + [c for c in (node.stop() for node in self.nodes.values()) if c]

    def logs(self) -> str:
        parts = [f"--- {node.name}\n{node.log_tail(2500)}" for node in self.nodes.values()]
        for path in (self.home / "nginx.log", self.prefix / "logs" / "error.log"):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2500:]}")
        return "\n".join(parts)

    def node_at(self, address: str) -> str | None:
        """The name of the node listening at `address` (host:port, from nginx's log); None for the store."""
        return next((n.name for n in self.nodes.values() if address == f"127.0.0.1:{n.port}"), None)

    def access_log_size(self) -> int:
        try:
            return (self.prefix / "logs" / "access.log").stat().st_size
        except FileNotFoundError:
            return 0

    def access_log_until(self, offset: int, wanted: Callable[[list[SimpleNamespace]], bool],
                         timeout: float = 5.0) -> list[SimpleNamespace]:
        """`access_log(offset)` once `wanted` holds for it, or after `timeout`: nginx writes a request's line after
        the response's last byte, which the client may have read a moment before."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_log(offset)
            if wanted(lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def access_log(self, offset: int = 0) -> list[SimpleNamespace]:
        """nginx's lines since `offset`: method, uri, status, upstreams (the node addresses tried, in order),
        location."""
        with open(self.prefix / "logs" / "access.log", "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        found = []
        for line in text.splitlines():
            m = re.fullmatch(r"(\S+) (\S+) (\d+) \[(.*?)\] \[(.*?)\] \[(.*?)\]", line)
            if m:
                found.append(SimpleNamespace(method=m[1], uri=m[2], status=int(m[3]),
                                             upstreams=[a.strip() for a in re.split(r"[,:] (?=\d)", m[4])
                                                        if a.strip() not in ("", "-")],
                                             location=m[6]))
        return found


@pytest.fixture(scope="module")
def cluster(swift, module_postgresql_server):
    home = Path(tempfile.mkdtemp(prefix="dy-e2e-cluster-"))
    home.chmod(0o755)  # nginx's workers read the certificates
    running = Cluster(home, swift, module_postgresql_server)
    docker_certs = Path("/etc/docker/certs.d") / running.host
    try:
        running.start()
        yield running
    finally:
        complaints = running.stop()
        shutil.rmtree(docker_certs, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        assert not complaints, complaints


# -- pushing and pulling over the API (requests), as a client would ------------------------------------------------

def absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


def with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def push_blob(http: requests.Session, base: str, repo: str, data: bytes) -> None:
    r = http.post(f"{base}/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, data=data, timeout=60)
    assert r.status_code == 201, f"POST blob to {base}: {r.status_code} {r.text[:300]}"


def image_manifest(config: bytes, layers: list[bytes]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                    "size": len(layer)} for layer in layers]}).encode()


def push_image(http: requests.Session, base: str, repo: str, tag: str, layers: list[bytes],
               attempts: int = 1) -> str:
    """Blobs (monolithic POSTs), then the manifest; its digest once the manifest PUT answered 201. A manifest PUT
    refused with MANIFEST_BLOB_UNKNOWN (a GC took a blob nothing used yet) pushes again, `attempts` times."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": uuid.uuid4().hex}).encode()
    manifest = image_manifest(config, layers)
    for _ in range(attempts):
        for blob in (config, *layers):
            push_blob(http, base, repo, blob)
        r = http.put(f"{base}/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST},
                     timeout=60)
        if r.status_code == 201:
            assert r.headers["Docker-Content-Digest"] == sha256(manifest)
            return sha256(manifest)
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN", r.text[:300]
    raise AssertionError(f"{repo}:{tag} not pushed in {attempts} attempts")


def get_blob(http: requests.Session, base: str, repo: str, digest: str, store: str) -> bytes:
    """A blob's bytes. A node asked directly answers X-Accel-Redirect (download = "accel") and no body: the bytes
    are then fetched from the store at the presigned URL it names, as nginx would (`store`: the endpoint)."""
    r = http.get(f"{base}/v2/{repo}/blobs/{digest}", timeout=60)
    assert r.status_code == 200, f"{base} {repo}@{digest}: {r.status_code} {r.text[:200]}"
    accel = r.headers.get("X-Accel-Redirect")
    if accel is not None:
        assert base.startswith("http://") and r.content == b"", "a blob body from Python, or accel through nginx"
        r = requests.get(store + accel.removeprefix("/_dockyard_s3"), timeout=60)
        assert r.status_code == 200, f"the store, for {accel}: {r.status_code} {r.text[:200]}"
    assert sha256(r.content) == digest, f"{base} {repo}@{digest}: other bytes"
    return r.content


def pull_image(http: requests.Session, base: str, repo: str, reference: str, store: str) -> tuple[str, list[str]]:
    """(manifest digest, blob digests), every blob read whole and checked against its digest."""
    r = http.get(f"{base}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES}, timeout=60)
    assert r.status_code == 200, f"{base} {repo}:{reference}: {r.status_code} {r.text[:300]}"
    document = r.json()
    digests = [document["config"]["digest"]] + [layer["digest"] for layer in document["layers"]]
    for digest in digests:
        get_blob(http, base, repo, digest, store)
    return r.headers["Docker-Content-Digest"], digests


def fsck(cluster: Cluster, node: str = "node1") -> dict:
    """`dockyard fsck --json` with a node's configuration (the cluster's database and bucket)."""
    n = cluster.nodes[node]
    result = subprocess.run([cluster.dockyard, "fsck", "--json", "--data", str(n.home / "data"), "--config",
                             str(n.config)], capture_output=True, text=True, timeout=300)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


# -- the deploy files themselves (no cluster needed) ---------------------------------------------------------------

def test_cluster_site_passes_nginx_t_and_routes_sessions_by_node(tmp_path):
    nginx = tool("nginx", "apt-get install nginx")
    certs = tmp_path / "certs"
    make_certificates(certs)
    prefix = tmp_path / "prefix"
    for d in ("logs", "temp"):
        (prefix / d).mkdir(parents=True)
    site = tmp_path / "site.conf"
    site.write_text(site_config(https_port=free_port(), http_port=free_port(),
                                node_ports={name: 5000 + i for i, name in enumerate(NODES)}, store="127.0.0.1:8080",
                                certs=certs))
    (tmp_path / "nginx.conf").write_text(main_config(prefix, site))
    result = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr
    shipped = SITE.read_text()
    for directive in ("proxy_pass http://$dockyard_upstream;", "map $arg_node $dockyard_upstream {",
                      "default dockyard_all;", "proxy_request_buffering off;", "proxy_buffering off;",
                      "client_max_body_size 0;", "proxy_next_upstream error timeout;", "internal;",
                      "proxy_set_header Authorization \"\";", "proxy_set_header X-Forwarded-Proto $scheme;"):
        assert directive in shipped, directive
    for name in NODES:  # each node's upstream: that node first, every other one a backup
        block = re.search(r"upstream dockyard_%s \{(.*?)\}" % name, shipped, re.S)[1]
        servers = re.findall(r"server (\S+)( [^;]*)?;", block)
        assert servers[0][0] == f"{name}:5000" and "backup" not in servers[0][1]
        assert sorted(s for s, _ in servers[1:]) == sorted(f"{n}:5000" for n in NODES if n != name)
        assert all("backup" in options for _, options in servers[1:])
        assert re.search(rf"^\s*{name}\s+dockyard_{name};", shipped, re.M)
    everyone = re.search(r"upstream dockyard_all \{(.*?)\}", shipped, re.S)[1]
    assert re.findall(r"server (\S+) max_fails=\d+ fail_timeout=\d+s;", everyone) == [f"{n}:5000" for n in NODES]
    assert "http_503" not in shipped.split("proxy_next_upstream error timeout;")[1].split("\n")[0]


def test_cluster_compose_file_and_node_settings(tmp_path):
    compose = tool("docker-compose", "apt-get install docker-compose")
    result = subprocess.run([compose, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The resolved file, read with docker-compose's own interpreter (its PyYAML is a dependency of docker-compose).
    interpreter = Path(compose).read_text(errors="replace").splitlines()[0].removeprefix("#!").split()
    as_json = subprocess.run(
        [*interpreter, "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"],
        input=result.stdout, capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    resolved = json.loads(as_json.stdout)
    services = resolved["services"]
    assert {"postgres", "minio", "bucket", "migrate", "node1", "node2", "node3", "nginx"} <= set(services)
    for name in NODES:
        node = services[name]
        assert node["environment"]["DOCKYARD_NODE"] == name and "ports" not in node
        assert f"{ROOT}/deploy/cluster/dockyard.toml:/etc/dockyard/dockyard.toml:ro" in node["volumes"]
        assert f"{ROOT}/deploy/cluster/htpasswd:/etc/dockyard/htpasswd:ro" in node["volumes"]
        assert node["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    nginx = services["nginx"]
    assert f"{ROOT}/deploy/nginx/dockyard-cluster.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    assert nginx["networks"]["default"]["ipv4_address"] == "172.30.0.10"
    settings = NODE_TOML.read_text()
    assert 'trusted_proxies = "172.30.0.10"' in settings and "postgres:5432" in settings and "minio:9000" in settings

    # The node file as shipped passes `dockyard check-config` (only its htpasswd path made to exist here).
    htpasswd = tmp_path / "htpasswd"
    sh(tool("htpasswd", "apt-get install apache2-utils"), "-Bbc", htpasswd, ADMIN, PASSWORD)
    toml = tmp_path / "dockyard.toml"
    toml.write_text(settings.replace("/etc/dockyard/htpasswd", str(htpasswd)))
    dockyard = tool("dockyard", "pip install -e .")
    (tmp_path / "data").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    checked = subprocess.run([dockyard, "check-config", "--config", str(toml), "--data", str(tmp_path / "data")],
                             capture_output=True, text=True, timeout=60, env={**env, "DOCKYARD_NODE": "node2"})
    assert checked.returncode == 0, checked.stderr
    assert 'node = "node2"' in checked.stdout and "change-me@" not in checked.stdout  # the password is never shown
    assert 'accel_redirect = "/_dockyard_s3"' in checked.stdout
    for stage in ("auth", "ratelimit", "logging"):
        assert stage in checked.stdout


# -- the cluster, through its nodes directly ------------------------------------------------------------------------

def token_from(node: Node, repo: str, user: str = ADMIN) -> str:
    r = requests.get(f"{node.url}/auth/token", params={"service": "registry.example.com",
                                                        "scope": f"repository:{repo}:pull,push"},
                     auth=(user, PASSWORD), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def test_a_tag_pushed_through_one_node_is_listed_and_pulled_through_every_other_at_once(cluster):
    repo = f"e2e/everywhere-{uuid.uuid4().hex[:8]}"
    nodes = list(cluster.nodes.values())
    # A token from the first node is accepted by the others: one signing key, on the database.
    token = token_from(nodes[0], repo)
    bearer = requests.Session()
    bearer.headers["Authorization"] = f"Bearer {token}"
    first = push_image(bearer, nodes[0].url, repo, "v1", [os.urandom(2048)])
    # Every worker of the other nodes caches tag lists, the catalog and tags: fill those caches first.
    for node in nodes[1:]:
        for _ in range(6):
            assert bearer.get(f"{node.url}/v2/{repo}/tags/list", timeout=30).json()["tags"] == ["v1"]
            assert repo in node.http.get(f"{node.url}/v2/_catalog", params={"n": 1000},
                                         timeout=30).json()["repositories"]
            assert pull_image(bearer, node.url, repo, "v1", cluster.swift.endpoint)[0] == first
    # A second tag, and v1 moved to a new image, through the first node; at once (no sleep) on every other.
    second = push_image(bearer, nodes[0].url, repo, "v2", [os.urandom(4096), os.urandom(100)])
    moved = push_image(bearer, nodes[0].url, repo, "v1", [os.urandom(3000)])
    other = f"{repo}-other"
    push_image(nodes[0].http, nodes[0].url, other, "latest", [os.urandom(500)])
    for node in nodes[1:]:
        for _ in range(4):  # whichever worker answers
            assert bearer.get(f"{node.url}/v2/{repo}/tags/list", timeout=30).json()["tags"] == ["v1", "v2"]
            assert other in node.http.get(f"{node.url}/v2/_catalog", params={"n": 1000},
                                          timeout=30).json()["repositories"]
            assert pull_image(bearer, node.url, repo, "v1", cluster.swift.endpoint)[0] == moved
            assert pull_image(bearer, node.url, repo, "v2", cluster.swift.endpoint)[0] == second
            assert pull_image(bearer, node.url, repo, first, cluster.swift.endpoint)[0] == first  # by digest


# -- real clients through nginx --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docker_trusts_ca(cluster):
    return e2e_nginx.docker_trusts(cluster.host, cluster.ca)


def check_routing(cluster: Cluster, offset: int) -> set[str]:
    """What nginx did since `offset`: every request of an upload session that names a node went to that node
    first (all nodes are up), token logins happened, and the nodes that answered (returned)."""
    lines = cluster.access_log(offset)
    assert any(line.uri.startswith("/auth/token") and line.status == 200 for line in lines), \
        "no token was fetched: the clients did not use token auth"
    routed = [line for line in lines if "node=" in line.uri]
    assert routed, "no request carried ?node="
    for line in routed:
        named = re.search(r"[?&]node=(\w+)", line.uri)[1]
        assert cluster.node_at(line.upstreams[0]) == named, vars(line)
    return {cluster.node_at(address) for line in lines for address in line.upstreams} - {None}


def test_docker_logs_in_pushes_and_pulls_through_nginx(cluster, docker, docker_trusts_ca, tmp_path):
    offset = cluster.access_log_size()
    assert docker("login", "-u", ADMIN, "-p", "wrong", cluster.host, check=False).returncode != 0
    docker("login", "-u", ADMIN, "-p", PASSWORD, cluster.host)
    name = f"{cluster.host}/e2e/docker-cluster-{uuid.uuid4().hex[:8]}:1"
    context = tmp_path / "context"
    context.mkdir()
    lines = ["FROM scratch"]
    for i, size in enumerate((3 * MIB, 700 * 1024, 10 * MIB)):
        (context / f"f{i}").write_bytes(os.urandom(size))
        lines.append(f"COPY f{i} /f{i}")
    (context / "Dockerfile").write_text("\n".join(lines + [f"LABEL nonce={uuid.uuid4().hex}"]) + "\n")
    docker("build", "-q", "-t", name, context)
    layers = json.loads(docker("image", "inspect", name).out)[0]["RootFS"]["Layers"]
    out = docker("push", name).out
    assert re.search(r"digest: sha256:[0-9a-f]{64}", out), out
    docker("rmi", name)
    docker("pull", name)
    assert json.loads(docker("image", "inspect", name).out)[0]["RootFS"]["Layers"] == layers
    docker("rmi", name)
    answered = check_routing(cluster, offset)
    assert len(answered) >= 2, f"one push and pull, balanced over the nodes: only {answered} answered"


def test_podman_logs_in_pushes_and_pulls_through_nginx(cluster, clients_for, tmp_path):
    _, podman = clients_for(SimpleNamespace(host=cluster.host, port=cluster.port))
    tls = ["--tls-verify=true", "--cert-dir", str(cluster.cert_dir)]
    offset = cluster.access_log_size()
    podman("login", *tls, "-u", ADMIN, "-p", PASSWORD, cluster.host)
    target = f"{cluster.host}/e2e/podman-cluster-{uuid.uuid4().hex[:8]}:1"
    context = tmp_path / "context"
    context.mkdir()
    lines = ["FROM scratch"]
    for i, size in enumerate((2 * MIB, 9 * MIB)):
        (context / f"f{i}").write_bytes(os.urandom(size))
        lines.append(f"COPY f{i} /f{i}")
    (context / "Containerfile").write_text("\n".join(lines + [f"LABEL nonce={uuid.uuid4().hex}"]) + "\n")
    podman("build", "-t", target, context, timeout=300)
    image_id = json.loads(podman("image", "inspect", target).out)[0]["Id"]
    podman("push", *tls, target)
    podman("rmi", "-f", target)
    podman("pull", *tls, target)
    assert json.loads(podman("image", "inspect", target).out)[0]["Id"] == image_id
    podman("rmi", "-f", target)
    check_routing(cluster, offset)


def test_skopeo_logs_in_pushes_and_pulls_through_nginx_and_blobs_come_from_the_store(cluster, clients_for,
                                                                                      new_layout):
    skopeo, _ = clients_for(SimpleNamespace(host=cluster.host, port=cluster.port))
    offset = cluster.access_log_size()
    skopeo("login", "--cert-dir", cluster.cert_dir, "-u", ADMIN, "--password-stdin", cluster.host,
           input=PASSWORD.encode())
    src = new_layout("src")
    image = src.add_image(tag="1", layer_sizes=(12 * MIB, 64 * 1024, 1000))
    ref = f"docker://{cluster.host}/e2e/skopeo-cluster-{uuid.uuid4().hex[:8]}:1"
    skopeo("copy", "--dest-cert-dir", cluster.cert_dir, "--preserve-digests", src.ref("1"), ref)
    store_offset = cluster.swift.log_size()
    back = new_layout("back")
    skopeo("copy", "--src-cert-dir", cluster.cert_dir, ref, back.ref("1"))
    assert back.resolve("1")["digest"] == image.digest
    for digest in image.blob_digests:
        assert back.blob(digest) == src.blob(digest)
    check_routing(cluster, offset)
    # Every blob came from the store through nginx's internal location (a presigned GET without the client's
    # credentials), none through a node: the nodes' own requests to the store are signed with Authorization.
    time.sleep(1)  # the store logs a request when it has finished it
    reads = [r for r in cluster.swift.requests_since(store_offset) if r.method == "GET" and r.key.startswith("blobs/")]
    assert len(reads) == len(image.blob_digests), reads
    assert all("X-Amz-Signature" in r.query and "authorization" not in r.headers for r in reads), reads


# -- shared state ----------------------------------------------------------------------------------------------------

def test_the_rate_limit_holds_across_nodes(cluster):
    """The limited users' manifest reads: rate 0, burst 12, so exactly 12 are allowed, ever. One user's reads spread
    over the three nodes get the same 12 as another user's on one node: one bucket per user for the cluster (per
    node buckets would allow 36)."""
    repo = f"e2e/limited-{uuid.uuid4().hex[:8]}"
    nodes = list(cluster.nodes.values())
    push_image(nodes[0].http, nodes[0].url, repo, "v1", [os.urandom(100)])

    def reads(user: str, spread: list[Node]) -> list[tuple[str, int, str | None]]:
        answers = []
        with requests.Session() as http:
            http.auth = (user, PASSWORD)
            for i in range(MANIFEST_READS * 2):
                node = spread[i % len(spread)]
                r = http.get(f"{node.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=30)
                answers.append((node.name, r.status_code, r.headers.get("Retry-After")))
        return answers

    spread = reads(LIMITED[0], nodes)
    one = reads(LIMITED[1], nodes[:1])
    for answers in (spread, one):
        assert [status for _, status, _ in answers] == [200] * MANIFEST_READS + [429] * MANIFEST_READS, answers
        assert all(retry and int(retry) >= 1 for _, status, retry in answers if status == 429)
    assert {name for name, status, _ in spread if status == 200} == set(NODES)  # all three nodes gave some
    # The admin is exempt, on every node; other classes of the limited users are untouched.
    for node in nodes:
        assert node.http.get(f"{node.url}/v2/{repo}/manifests/v1", timeout=30).status_code == 200
        assert requests.get(f"{node.url}/v2/{repo}/tags/list", auth=(LIMITED[0], PASSWORD),
                            timeout=30).status_code == 429  # tags/list is a manifest read too
        assert requests.get(f"{node.url}/v2/", auth=(LIMITED[0], PASSWORD), timeout=30).status_code == 200


def test_the_read_only_switch_set_through_one_node_reaches_every_node(cluster):
    """Each worker reads the switch from the database at most once a second: within a few seconds every node
    refuses writes, and takes them again once the switch is off."""
    nodes = list(cluster.nodes.values())
    repo = f"e2e/read-only-{uuid.uuid4().hex[:8]}"

    def write(node: Node) -> requests.Response:
        """A write that leaves nothing behind (an upload POST would leave a session open each time, and the
        caller's open sessions are limited): a delete of a manifest that is not there, 404 unless read-only."""
        return node.http.delete(f"{node.url}/v2/{repo}/manifests/sha256:{'0' * 64}", timeout=30)

    def every_node(expected: int, timeout: float = 10) -> dict[str, list[int]]:
        """Until every worker of every node answers `expected` (several writes per node), within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            answers = {node.name: [write(node) for _ in range(6)] for node in nodes}
            seen = {name: [r.status_code for r in rs] for name, rs in answers.items()}
            if all(set(statuses) == {expected} for statuses in seen.values()) or time.monotonic() > deadline:
                odd = [r.text[:300] for rs in answers.values() for r in rs if r.status_code != expected][:1]
                return {**seen, **({"first unexpected answer": odd} if odd else {})}

    assert set(sum(every_node(404).values(), [])) == {404}
    r = nodes[0].http.put(f"{nodes[0].url}/v2/_dockyard/read-only", json={"read_only": True}, timeout=30)
    try:
        assert r.status_code == 200 and r.json()["read_only"] is True, r.text
        seen = every_node(503)
        assert all(set(statuses) == {503} for statuses in seen.values()), seen
        refused = write(nodes[2])
        assert refused.json()["errors"][0]["code"] == "UNAVAILABLE" and refused.headers["Retry-After"]
        for node in nodes:  # reads go on
            r = node.http.get(f"{node.url}/v2/_dockyard/read-only", timeout=30)
            assert r.status_code == 200 and r.json()["read_only"] is True
        assert cluster.http.post(f"{cluster.url}/v2/{repo}/blobs/uploads/", timeout=30).status_code == 503
    finally:
        r = nodes[1].http.put(f"{nodes[1].url}/v2/_dockyard/read-only", json={"read_only": False}, timeout=30)
        assert r.status_code == 200, r.text
    seen = every_node(404)
    assert all(set(statuses) == {404} for statuses in seen.values()), seen


def test_gc_from_one_node_while_pushes_go_through_the_others_leaves_every_tagged_image_pullable(cluster):
    """Node 1 collects garbage in a loop (grace 2 s, untagged manifests too) while clients push through nodes 2 and
    3 (new images, new tags on shared layers, tags deleted) and pull stable images. A manifest PUT and a sweep
    serialise on the database: a push may be refused (a blob it had sent more than 2 s before was collected first;
    it pushes again) but a tag, once acknowledged, always names a manifest whose blobs are all there. (With grace 0
    in a loop this tight, a push is refused more often than not: the grace period is what lets pushes through.)"""
    node1, node2, node3 = cluster.nodes.values()
    store = cluster.swift.endpoint
    prefix = f"e2e/gc-{uuid.uuid4().hex[:6]}"
    shared = os.urandom(4096)
    stable = {f"{prefix}/stable{i}": push_image(node2.http, node2.url, f"{prefix}/stable{i}", "v1",
                                                [shared, os.urandom(2048)]) for i in range(2)}
    stop = threading.Event()
    errors: list[str] = []
    counts = {"gc": 0, "pushes": 0, "pulls": 0, "deletes": 0, "collected": 0}
    tagged: dict[tuple[str, str], str] = {}  # acknowledged tags still in place -> manifest digest

    def loop(fn):
        def run():
            try:
                while not stop.is_set():
                    fn()
            except Exception as exc:  # reported by the test's thread
                errors.append(f"{fn.__name__}: {exc!r}")
                stop.set()
        return threading.Thread(target=run, name=fn.__name__)

    def collector():
        r = node1.http.post(f"{node1.url}/v2/_dockyard/gc", json={"grace_seconds": 2, "delete_untagged": True},
                            timeout=300)
        assert r.status_code == 200, r.text
        counts["gc"] += 1
        counts["collected"] += r.json()["blobs_removed"] + r.json()["manifests_removed"]
        time.sleep(0.2)

    def pusher(node: Node):
        n = [0]

        def push():
            n[0] += 1
            repo, tag = f"{prefix}/churn", f"{node.name}-{n[0]}"
            digest = push_image(node.http, node.url, repo, tag, [shared, os.urandom(1024)], attempts=20)
            counts["pushes"] += 1
            tagged[(repo, tag)] = digest
            if n[0] % 3 == 0:  # every third tag is deleted again: its manifest becomes garbage
                del tagged[(repo, tag)]
                r = node.http.delete(f"{node.url}/v2/{repo}/manifests/{tag}", timeout=30)
                assert r.status_code == 202, r.text
                counts["deletes"] += 1
        push.__name__ = f"pusher-{node.name}"
        return push

    def puller():
        for repo, digest in stable.items():
            for node in (node2, node3):
                assert pull_image(node.http, node.url, repo, "v1", store)[0] == digest
                counts["pulls"] += 1

    threads = [loop(collector), loop(pusher(node2)), loop(pusher(node3)), loop(puller)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and not stop.is_set() and (
            counts["gc"] < 8 or counts["pushes"] < 24 or counts["collected"] < 3):
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert counts["gc"] >= 3 and counts["pushes"] >= 6 and counts["deletes"] >= 1, counts
    assert counts["collected"] >= 1, f"the collections ran but took nothing: {counts}"
    print(f"GC from node1 while pushing through node2 and node3: {counts}")
    # Every acknowledged tag, through every node.
    for (repo, tag), digest in {**tagged, **{(repo, "v1"): d for repo, d in stable.items()}}.items():
        for node in cluster.nodes.values():
            assert pull_image(node.http, node.url, repo, tag, store)[0] == digest, (repo, tag, node.name)
    report = fsck(cluster)
    assert report["clean"], report["problems"]


# -- nodes dying -------------------------------------------------------------------------------------------------------

def push_while(cluster: Cluster, running: threading.Event, prefix: str) -> tuple[threading.Thread, dict]:
    """Small images pushed through nginx until `running` is cleared; the tags acknowledged (201) -> digest. A push
    refused or cut (a node died under it) is simply not acknowledged."""
    acknowledged: dict[tuple[str, str], str] = {}

    def run():
        with requests.Session() as http:
            http.verify, http.auth, http.trust_env = str(cluster.ca), (ADMIN, PASSWORD), False
            n = 0
            while running.is_set():
                n += 1
                try:
                    acknowledged[(prefix, f"t{n}")] = push_image(http, cluster.url, prefix, f"t{n}",
                                                                 [os.urandom(3000), os.urandom(700)])
                except (AssertionError, requests.RequestException):
                    time.sleep(0.2)
    thread = threading.Thread(target=run, name="pusher")
    thread.start()
    return thread, acknowledged


def check_acknowledged(cluster: Cluster, acknowledged: dict, nodes: list[Node]) -> None:
    for (repo, tag), digest in acknowledged.items():
        assert pull_image(cluster.http, cluster.url, repo, tag, cluster.swift.endpoint)[0] == digest, (repo, tag)
        for node in nodes:
            assert pull_image(node.http, node.url, repo, tag, cluster.swift.endpoint)[0] == digest, (repo, tag)


def session_node(cluster: Cluster, log_offset: int, session: str) -> str:
    """The node named in the Location nginx passed back for the POST that opened `session`."""
    for line in cluster.access_log(log_offset):
        if line.method == "POST" and line.status == 202 and session in line.location:
            return re.search(r"[?&]node=(\w+)", line.location)[1]
    raise AssertionError(f"no POST opened session {session} in nginx's log")


def test_kill_9_of_a_node_in_the_middle_of_a_push(cluster, docker, docker_trusts_ca, tmp_path):
    """docker pushes an image with a 160 MiB layer through nginx; when the store shows the layer's first part, the
    node receiving it is killed with its whole process group. docker's own retry, through nginx, pushes the layer
    again on a node that is up; every tag acknowledged before and during it stays, `dockyard fsck` finds nothing
    wrong, and the node starts again on its empty data directory."""
    before = {(f"e2e/kill-before-{i}", "v1"): push_image(cluster.http, cluster.url, f"e2e/kill-before-{i}", "v1",
                                                         [os.urandom(4000)]) for i in range(3)}
    docker("login", "-u", ADMIN, "-p", PASSWORD, cluster.host)
    name = f"{cluster.host}/e2e/kill-{uuid.uuid4().hex[:8]}:1"
    context = tmp_path / "context"
    context.mkdir()
    (context / "big").write_bytes(os.urandom(160 * MIB))  # random: docker's gzip cannot shrink it
    (context / "small").write_bytes(os.urandom(100 * 1024))
    (context / "Dockerfile").write_text(f"FROM scratch\nCOPY small /small\nCOPY big /big\n"
                                        f"LABEL nonce={uuid.uuid4().hex}\n")
    docker("build", "-q", "-t", name, context, timeout=300)
    layers = json.loads(docker("image", "inspect", name).out)[0]["RootFS"]["Layers"]

    log_offset, store_offset = cluster.access_log_size(), cluster.swift.log_size()
    running = threading.Event()
    running.set()
    pusher, during = push_while(cluster, running, f"e2e/kill-during-{uuid.uuid4().hex[:6]}")
    push = subprocess.Popen([docker.client, "push", name], env=docker.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    victim = None
    try:
        deadline = time.monotonic() + 240
        while victim is None:
            assert push.poll() is None, "the push ended before the layer's first part reached the store: " \
                                        f"{push.stdout.read().decode(errors='replace')}"
            assert time.monotonic() < deadline, "no part of the large layer reached the store in time"
            parts = [r for r in cluster.swift.requests_since(store_offset)
                     if r.method == "PUT" and r.key.startswith("blobs/") and "partNumber" in r.query]
            if parts:
                session = parts[0].key.removeprefix("blobs/")
                victim = cluster.nodes[session_node(cluster, log_offset, session)]
                victim.kill()
            else:
                time.sleep(0.05)
        output, _ = push.communicate(timeout=300)
    finally:
        if push.poll() is None:
            push.kill()
            push.wait()
        running.clear()
        pusher.join(timeout=120)
    output = output.decode(errors="replace")
    assert push.returncode == 0, output
    assert re.search(r"digest: sha256:[0-9a-f]{64}", output), output
    cut = [line for line in cluster.access_log(log_offset) if session in line.uri and line.status >= 500]
    assert cut and all(line.status == 502 for line in cut), [vars(line) for line in cut]  # the request killed
    survivors = [node for node in cluster.nodes.values() if node is not victim]
    # The retried upload went to a node that is up.
    retried = [line for line in cluster.access_log(log_offset) if line.method == "PUT" and "/blobs/uploads/" in
               line.uri and line.status == 201]
    assert all(cluster.node_at(line.upstreams[-1]) != victim.name for line in retried
               if line.upstreams and session not in line.uri)

    docker("rmi", name)
    docker("pull", name)
    assert json.loads(docker("image", "inspect", name).out)[0]["RootFS"]["Layers"] == layers
    docker("rmi", name)
    assert len(during) >= 1, "nothing was pushed while the node died"
    check_acknowledged(cluster, {**before, **during}, survivors)
    report = fsck(cluster)
    assert report["clean"], report["problems"]

    cluster.restart(victim)
    check_acknowledged(cluster, before, [victim])


def test_an_upload_session_moved_on_purpose_continues_on_another_node(cluster):
    """POST and PATCH through nginx land on node A (the PATCH routed by the ?node= of the POST's Location); A is
    killed; the next PATCH, sent to the same Location, goes to a backup node B, and the PUT completes there: 201.
    The store's log shows B read back only the leftover of A's PATCH (less than a part), never an earlier part."""
    repo = f"e2e/moved-{uuid.uuid4().hex[:8]}"
    first = os.urandom(PART + PART // 2 + 12345)  # one whole part, and a leftover of half a part
    second = os.urandom(PART + 999)
    digest = sha256(first + second)
    log_offset = cluster.access_log_size()
    r = cluster.http.post(f"{cluster.url}/v2/{repo}/blobs/uploads/", timeout=30)
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    session = r.headers["Docker-Upload-UUID"]
    a = cluster.nodes[re.search(r"[?&]node=(\w+)", location)[1]]
    r = cluster.http.patch(location, data=first, timeout=120, headers={
        "Content-Type": "application/octet-stream", "Content-Range": f"0-{len(first) - 1}"})
    assert r.status_code == 202 and r.headers["Range"] == f"0-{len(first) - 1}", r.text
    location = r.headers["Location"]
    patched = [line for line in cluster.access_log_until(
        log_offset, lambda lines: any(line.method == "PATCH" and session in line.uri for line in lines))
        if line.method == "PATCH" and session in line.uri]
    assert [cluster.node_at(address) for line in patched for address in line.upstreams] == [a.name]
    assert re.search(r"[?&]node=(\w+)", location)[1] == a.name

    a.kill()
    try:
        store_offset = cluster.swift.log_size()
        log_offset = cluster.access_log_size()
        r = cluster.http.patch(location, data=second, timeout=120, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{len(first)}-{len(first) + len(second) - 1}"})
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        b = cluster.nodes[re.search(r"[?&]node=(\w+)", location)[1]]
        assert b is not a
        r = cluster.http.put(with_digest(location, digest), timeout=120)
        assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == digest, r.text
        moved = [line for line in cluster.access_log_until(
            log_offset, lambda lines: sum(session in line.uri for line in lines) >= 2) if session in line.uri]
        assert [(line.method, line.status) for line in moved] == [("PATCH", 202), ("PUT", 201)]
        # nginx tried A (refused: down), then the backup; the PUT went to the backup B named in the new Location.
        assert [cluster.node_at(address) for address in moved[0].upstreams] in ([a.name, b.name], [b.name])
        assert [cluster.node_at(address) for address in moved[1].upstreams] == [b.name]
        time.sleep(1)  # the store logs a request once it has finished it
        # What B read of the session: leftovers only (the bytes after the last whole part, written by the request
        # before), each less than a part. A's leftover is read once, by B's PATCH; B's own may be read once more by
        # the commit (when the PUT reaches another of B's workers); the part A uploaded is never read back.
        reads = [req for req in cluster.swift.requests_since(store_offset)
                 if req.method == "GET" and session in req.key]
        assert all(req.key.startswith(f"uploads/{session}/") and req.sent < PART for req in reads), reads
        ends = [int(req.key.rsplit("/", 1)[1].split(".")[0]) for req in reads]
        assert ends in ([len(first)], [len(first), len(first) + len(second)]), reads
        assert reads[0].sent == len(first) - PART, reads
        assert get_blob(cluster.http, cluster.url, repo, digest, cluster.swift.endpoint) == first + second
    finally:
        cluster.restart(a)
    assert get_blob(a.http, a.url, repo, digest, cluster.swift.endpoint) == first + second


# -- the database goes away --------------------------------------------------------------------------------------------

def test_postgresql_restarted_while_the_cluster_serves(cluster):
    """Requests run against nginx and each node directly while PostgreSQL stops (fast shutdown: every connection
    dropped) and starts again a few seconds later: manifest and tag reads and upload POSTs as the admin, and, as a
    rate-limited user, `/v2/` (its rate bucket is on the database), a token (the signing key and the token
    bucket too) and a wrong password (the failed-login bucket). Every answer in that window is the usual one or 503
    with Retry-After (never a 500), within a bound (the pool's 5 s wait for a connection, plus slack; never a hang);
    then every node serves again without being restarted."""
    nodes = list(cluster.nodes.values())
    repo = f"e2e/pg-restart-{uuid.uuid4().hex[:8]}"
    digest = push_image(nodes[0].http, nodes[0].url, repo, "v1", [os.urandom(1000)])
    pids = {node.name: node.proc.pid for node in nodes}
    targets = [("nginx", cluster.url, cluster.http)] + [(n.name, n.url, n.http) for n in nodes]
    user = (LIMITED[0], PASSWORD)
    kinds = (  # kind, method, path, request options, the answers when the database is up
        ("manifest", "GET", f"/v2/{repo}/manifests/v1", {"headers": {"Accept": OCI_MANIFEST}}, {200}),
        ("tags", "GET", f"/v2/{repo}/tags/list", {}, {200}),
        ("upload", "POST", f"/v2/{repo}/blobs/uploads/", {}, {202}),
        ("rate-limited", "GET", "/v2/", {"auth": user}, {200}),
        ("token", "GET", "/auth/token", {"auth": user, "params": {
            "service": "registry.example.com", "scope": f"repository:{repo}:pull"}}, {200}),
        ("wrong password", "GET", "/v2/", {"auth": (LIMITED[1], "wrong")}, {401, 429}))
    usual = {kind: ok for kind, *_, ok in kinds}
    answers: list[tuple[str, str, str, int, float, str | None, str]] = []  # target, phase, kind, status, s, ...
    phase = ["before"]
    stop = threading.Event()
    BOUND = 20.0

    def client(name: str, base: str, kind: str, method: str, path: str, kwargs: dict):
        """One kind of request to one target, in a loop: a thread each, so every kind is seen while it is down."""
        with requests.Session() as http:
            http.auth, http.verify, http.trust_env = (ADMIN, PASSWORD), str(cluster.ca), False
            while not stop.is_set():
                current = phase[0]
                started = time.monotonic()
                try:
                    r = http.request(method, base + path, timeout=BOUND * 3, **kwargs)
                    status, retry, code = r.status_code, r.headers.get("Retry-After"), ""
                    if status >= 400:
                        code = (r.json().get("errors") or [{}])[0].get("code", "") if r.headers.get(
                            "Content-Type", "").startswith("application/json") else r.text[:80]
                    if status == 202:  # an upload session opened: give it back
                        http.delete(absolute(base, r.headers["Location"]), timeout=BOUND * 3)
                except requests.RequestException as exc:
                    status, retry, code = 0, None, repr(exc)[:120]
                answers.append((name, current, kind, status, time.monotonic() - started, retry, code))
                time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(name, base, *kind[:4]), name=f"{name} {kind[0]}")
               for name, base, _ in targets for kind in kinds]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        phase[0] = "down"
        cluster.pg.stop("fast")
        down_since = time.monotonic()
        # Down until every target has answered each kind of request with the database away (at least 4 s).
        while time.monotonic() - down_since < 4 or not all(
                {a[2] for a in answers if a[0] == name and a[1] == "down"} == set(usual) for name, _, _ in targets):
            assert time.monotonic() - down_since < 120, "requests stopped being answered while the database was down"
            time.sleep(0.2)
        cluster.pg.start()
        phase[0] = "after"
        up_since = time.monotonic()

        def recovered(name: str) -> bool:
            last = [a for a in answers if a[0] == name and a[1] == "after"][-3 * len(kinds):]
            return len(last) == 3 * len(kinds) and all(a[3] in usual[a[2]] for a in last)

        while not all(recovered(name) for name, _, _ in targets):
            assert time.monotonic() - up_since < 90, "the cluster did not recover within 90 s: " + repr(
                [a for a in answers if a[1] == "after"][-12:])
            time.sleep(0.2)
        recovery = time.monotonic() - up_since
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=BOUND * 4)
        if phase[0] == "down":  # failed while it was stopped: later tests need it
            cluster.pg.start()

    unexpected = [a for a in answers if a[3] not in usual[a[2]] | {503}]
    assert not unexpected, unexpected[:10]
    unavailable = [a for a in answers if a[3] == 503]
    assert all(a[5] and int(a[5]) >= 1 and a[6] == "UNAVAILABLE" for a in unavailable), unavailable[:10]
    for name, _, _ in targets:  # every node (and nginx) said 503 while the database was down
        assert any(a[0] == name and a[1] == "down" and a[3] == 503 for a in answers), name
    down = {kind for _, phase_, kind, status, *_ in answers if phase_ == "down" and status == 503}
    slowest = max(a[4] for a in answers)
    assert slowest < BOUND, f"an answer took {slowest:.1f} s"
    print(f"PostgreSQL restart: {len(answers)} requests, {len(unavailable)} answered 503 + Retry-After (kinds: "
          f"{sorted(down)}), slowest {slowest:.2f} s; every target answering as usual {recovery:.1f} s after "
          "PostgreSQL started")
    # No node was restarted, and each one serves reads and writes again.
    assert {node.name: node.proc.pid for node in nodes} == pids and all(n.proc.poll() is None for n in nodes)
    for node in nodes:
        assert pull_image(node.http, node.url, repo, "v1", cluster.swift.endpoint)[0] == digest
        push_image(node.http, node.url, repo, node.name, [os.urandom(500)])
