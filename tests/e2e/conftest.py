"""Fixtures for the end-to-end tests: real server processes and real registry clients.

One registry process serves the whole session: `dockyard serve` (the default) or, with
E2E_REGISTRY=reference, Distribution 2.8.2 (`docker-registry`), so that the same tests can be run
against both. One dockerd runs per session, started only when a docker test asks for it. skopeo, podman
and curl run as subprocesses with private configuration (auth file, policy, storage) and a timeout on every
call. Everything listens on 127.0.0.1 only.

In CI (CI=true) a missing tool fails the test; elsewhere it skips it, with the reason.

Helpers are handed to tests through fixtures (never imported from here), so the suite works under any
pytest import mode.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from e2e_reference import reference_config

SERVER = os.environ.get("E2E_REGISTRY", "dockyard")
IN_CI = os.environ.get("CI", "").lower() == "true"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)

INSTALL_HINT = {
    "docker": "apt-get install docker.io",
    "dockerd": "apt-get install docker.io",
    "skopeo": "apt-get install skopeo",
    "podman": "apt-get install podman",
    "curl": "apt-get install curl",
    "docker-registry": "apt-get install docker-registry",
    "dockyard": "pip install -e . in the repository (the project console script)",
}

_LOG_OFFSET = pytest.StashKey[int]()
_REGISTRY = pytest.StashKey["Registry"]()


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end test: a real registry process driven by real clients")
    config.addinivalue_line(
        "markers",
        "reference_lacks(reason): the reference registry (Distribution 2.8.2) does not implement this; "
        "the test is a strict xfail when E2E_REGISTRY=reference",
    )


def pytest_collection_modifyitems(config, items):
    if SERVER != "reference":
        return
    for item in items:
        marker = item.get_closest_marker("reference_lacks")
        if marker is not None:
            reason = marker.args[0] if marker.args else "not implemented by the reference registry"
            item.add_marker(pytest.mark.xfail(reason=f"reference registry: {reason}", strict=True))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    registry = item.config.stash.get(_REGISTRY, None)
    item.stash[_LOG_OFFSET] = registry.log_size() if registry else 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    registry = item.config.stash.get(_REGISTRY, None)
    if report.failed and registry is not None:
        report.sections.append(
            (f"{registry.kind} server log during this test (last lines)",
             registry.log_since(item.stash.get(_LOG_OFFSET, 0))),
        )
    return report


# --------------------------------------------------------------------------------------------------------------
# Tools and subprocesses


def missing(reason: str):
    """Fail in CI, skip elsewhere: CI must never pass by skipping."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure)", pytrace=False)
    pytest.skip(reason)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        missing(f"`{tool}` is not on PATH; install it with: {INSTALL_HINT.get(tool, tool)}")
    return path


@dataclass
class Result:
    argv: list
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


def _tail(data: bytes | str | None, limit: int = 6000) -> str:
    if not data:
        return ""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text if len(text) <= limit else "[...]" + text[-limit:]


def run(argv, *, timeout: float = 120, env=None, input: bytes | None = None, check: bool = True, cwd=None) -> Result:
    """Run a command with a timeout; on failure the message holds the command and its output."""
    argv = [str(a) for a in argv]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, input=input, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"timed out after {timeout}s: {' '.join(argv)}\n"
            f"--- stdout\n{_tail(exc.stdout)}\n--- stderr\n{_tail(exc.stderr)}",
            pytrace=False,
        )
    result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}: {' '.join(argv)}\n"
            f"--- stdout\n{_tail(proc.stdout)}\n--- stderr\n{_tail(proc.stderr)}"
        )
    return result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def stop_process(proc: subprocess.Popen, name: str, grace: float = 30) -> str | None:
    """SIGTERM, wait; SIGKILL its process group if it is still there. Returns a complaint, or None."""
    if proc.poll() is not None:
        return None
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
        return None
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group is ours: started with start_new_session=True
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        return f"{name} (pid {proc.pid}) did not exit within {grace}s of SIGTERM; killed"


# --------------------------------------------------------------------------------------------------------------
# The registry under test


class Registry:
    """A running registry process and a plain HTTP client for it."""

    def __init__(self, kind: str, port: int, proc: subprocess.Popen, log_path: Path):
        self.kind = kind
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        self.proc = proc
        self.log_path = log_path
        self.http = requests.Session()

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("allow_redirects", False)
        return self.http.request(method, self.url + path, **kwargs)

    def get_manifest(self, repo: str, reference: str, method: str = "GET") -> requests.Response:
        return self.request(method, f"/v2/{repo}/manifests/{reference}", headers={"Accept": ", ".join(MANIFEST_TYPES)})

    def manifest_bytes(self, repo: str, reference: str) -> bytes:
        r = self.get_manifest(repo, reference)
        assert r.status_code == 200, f"GET /v2/{repo}/manifests/{reference}: {r.status_code} {r.text[:500]}"
        return r.content

    def blob(self, repo: str, digest: str) -> bytes:
        r = self.request("GET", f"/v2/{repo}/blobs/{digest}", allow_redirects=True)
        assert r.status_code == 200, f"GET /v2/{repo}/blobs/{digest}: {r.status_code} {r.text[:500]}"
        assert sha256_digest(r.content) == digest, f"GET /v2/{repo}/blobs/{digest} returned other bytes"
        return r.content

    def tags(self, repo: str) -> list:
        r = self.request("GET", f"/v2/{repo}/tags/list")
        assert r.status_code == 200, f"GET /v2/{repo}/tags/list: {r.status_code} {r.text[:500]}"
        return r.json().get("tags") or []

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int, lines: int = 80) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return "(no log)"
        kept = text.splitlines()
        if self.kind == "reference":  # it logs each request twice: keep the access-log line and the errors
            kept = [line for line in kept if 'msg="response completed"' not in line]
        return "\n".join(kept[-lines:])

    def close(self):
        self.http.close()


def _server_argv(workdir: Path, port: int) -> list:
    if SERVER == "reference":
        config = workdir / "config.yml"
        config.write_text(reference_config(workdir / "data", port))
        return [need("docker-registry"), "serve", config]
    if SERVER == "dockyard":
        return [need("dockyard"), "serve", "--bind", f"127.0.0.1:{port}", "--data", workdir / "data", "--workers", "2"]
    raise pytest.UsageError(f"E2E_REGISTRY must be 'dockyard' or 'reference', not {SERVER!r}")


@pytest.fixture(scope="session")
def registry(request):
    """The registry under test, started once per session on a free port of 127.0.0.1."""
    workdir = Path(tempfile.mkdtemp(prefix="dy-e2e-server-"))
    (workdir / "data").mkdir()
    port = free_port()
    argv = [str(a) for a in _server_argv(workdir, port)]
    log_path = workdir / "server.log"
    env = dict(os.environ)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, env=env, start_new_session=True)
    reg = Registry(SERVER, port, proc, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{' '.join(argv)} exited with {proc.returncode} before answering:\n{reg.log_since(0)}",
                            pytrace=False)
            try:
                if reg.request("GET", "/v2/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{' '.join(argv)}: GET /v2/ did not answer 200 within 60s:\n{reg.log_since(0)}",
                            pytrace=False)
            time.sleep(0.1)
        request.config.stash[_REGISTRY] = reg
        yield reg
    finally:
        if _REGISTRY in request.config.stash:
            del request.config.stash[_REGISTRY]
        reg.close()
        complaint = stop_process(proc, SERVER)
        shutil.rmtree(workdir, ignore_errors=True)
        if complaint:
            pytest.fail(complaint, pytrace=False)


@pytest.fixture
def dockyard_bin() -> str:
    return need("dockyard")


@pytest.fixture
def free_port_number() -> int:
    return free_port()


@pytest.fixture
def start_dockyard(tmp_path_factory):
    """Start extra `dockyard serve` processes of a test's own (own data dir, config, worker count); all are
    stopped at the end of the test. `start_dockyard(data=None, config=None, workers=2) -> Registry`."""
    yield from _dockyard_starter(tmp_path_factory)


@pytest.fixture(scope="module")
def start_dockyard_module(tmp_path_factory):
    """`start_dockyard` for servers shared by the tests of one module (e.g. one per auth mode)."""
    yield from _dockyard_starter(tmp_path_factory)


def _dockyard_starter(tmp_path_factory):
    started: list[Registry] = []

    def start(data: Path | None = None, config: str | None = None, workers: int | None = 2) -> Registry:
        """`workers=None`: dockyard serve's own default (two per core)."""
        workdir = tmp_path_factory.mktemp("dockyard")
        data = data or workdir / "data"
        port = free_port()
        argv = [need("dockyard"), "serve", "--bind", f"127.0.0.1:{port}", "--data", str(data)]
        if workers is not None:
            argv += ["--workers", str(workers)]
        if config is not None:
            (workdir / "dockyard.toml").write_text(config)
            argv += ["--config", str(workdir / "dockyard.toml")]
        log_path = workdir / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=workdir, start_new_session=True)
        server = Registry("dockyard", port, proc, log_path)
        started.append(server)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dockyard serve exited with {proc.returncode}:\n{server.log_since(0)}", pytrace=False)
            try:
                if server.request("GET", "/v2/", timeout=2).status_code in (200, 401):
                    return server
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dockyard serve did not answer within 60s:\n{server.log_since(0)}", pytrace=False)
            time.sleep(0.1)

    yield start
    complaints = [stop_process(server.proc, "dockyard serve") for server in started]
    for server in started:
        server.close()
    complaints = [c for c in complaints if c]
    assert not complaints, complaints


@pytest.fixture
def repo(request):
    """A repository name of this test's own: e2e/<test name>-<random>."""
    name = request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:40]
    return f"e2e/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workdir():
    """A scratch directory of the test's own, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="dy-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir():
    path = Path(tempfile.mkdtemp(prefix="dy-e2e-session-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# OCI image layouts written in Python


def random_layer(files: dict) -> tuple[bytes, str]:
    """A gzipped tar of {path: bytes}; returns (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), sha256_digest(uncompressed)


def dumps(obj) -> bytes:
    # Indented on purpose: a registry must store and serve the bytes it was given, not a re-serialization.
    return json.dumps(obj, indent=2).encode()


@dataclass
class Image:
    manifest: bytes
    digest: str
    config_digest: str
    layer_digests: list
    diff_ids: list
    files: dict  # path inside the image -> content
    descriptor: dict = field(default_factory=dict)

    @property
    def blob_digests(self) -> list:
        return [self.config_digest, *self.layer_digests]


class OCILayout:
    """An OCI image layout directory: write images and indexes into it, or read one a client wrote."""

    def __init__(self, path: Path):
        self.path = Path(path)
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        if not (self.path / "oci-layout").exists():
            (self.path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
            self._write_index([])

    def __str__(self):
        return str(self.path)

    def ref(self, tag: str) -> str:
        return f"oci:{self.path}:{tag}"

    def put_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        (self.path / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
        return digest

    def blob(self, digest: str) -> bytes:
        algo, hexpart = digest.split(":", 1)
        data = (self.path / "blobs" / algo / hexpart).read_bytes()
        assert sha256_digest(data) == digest, f"layout {self.path}: blob {digest} does not match its digest"
        return data

    def blob_names(self) -> set:
        return {f"sha256:{p.name}" for p in (self.path / "blobs" / "sha256").iterdir()}

    def index(self) -> dict:
        return json.loads((self.path / "index.json").read_text())

    def _write_index(self, manifests: list):
        (self.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))

    def tag(self, tag: str, descriptor: dict):
        manifests = [m for m in self.index()["manifests"]
                     if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
        entry = {k: v for k, v in descriptor.items() if k in ("mediaType", "digest", "size", "platform")}
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self._write_index(manifests + [entry])

    def resolve(self, tag: str) -> dict:
        for m in self.index()["manifests"]:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return m
        raise AssertionError(f"layout {self.path} has no manifest tagged {tag!r}: {self.index()}")

    def add_image(self, *, layer_sizes=(96 * 1024, 48 * 1024, 16 * 1024), os_name="linux", arch="amd64",
                  tag: str | None = None, annotations: dict | None = None) -> Image:
        """An image of fresh random content: one layer per size, each holding one file."""
        nonce = uuid.uuid4().hex
        files, layer_descs, diff_ids = {}, [], []
        for i, size in enumerate(layer_sizes):
            path = f"e2e/layer{i}-{nonce[:8]}.bin"
            files[path] = os.urandom(size)
            blob, diff_id = random_layer({path: files[path]})
            layer_descs.append({"mediaType": OCI_LAYER_GZIP, "digest": self.put_blob(blob), "size": len(blob)})
            diff_ids.append(diff_id)
        config = dumps({
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": os_name,
            "config": {"Env": ["PATH=/"], "Labels": {"dockyard.e2e.nonce": nonce}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"dockyard e2e layer {i}"}
                        for i in range(len(layer_sizes))],
        })
        config_desc = {"mediaType": OCI_CONFIG, "digest": self.put_blob(config), "size": len(config)}
        manifest_obj = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": layer_descs}
        if annotations:
            manifest_obj["annotations"] = annotations
        manifest = dumps(manifest_obj)
        digest = self.put_blob(manifest)
        descriptor = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
                      "platform": {"architecture": arch, "os": os_name}}
        image = Image(manifest, digest, config_desc["digest"], [d["digest"] for d in layer_descs], diff_ids, files,
                      descriptor)
        if tag:
            self.tag(tag, descriptor)
        return image

    def add_index(self, images: list, *, tag: str | None = None) -> tuple[bytes, str]:
        index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [i.descriptor for i in images],
                       "annotations": {"dockyard.e2e.nonce": uuid.uuid4().hex}})
        digest = self.put_blob(index)
        if tag:
            self.tag(tag, {"mediaType": OCI_INDEX, "digest": digest, "size": len(index)})
        return index, digest


@pytest.fixture
def new_layout(workdir):
    """Factory: new_layout(name) -> an empty OCILayout in the test's scratch directory."""
    return lambda name: OCILayout(workdir / name)


# --------------------------------------------------------------------------------------------------------------
# Clients


class Skopeo:
    """skopeo with its own auth file and an accept-anything policy. The blob-info cache it shares with podman
    (/var/lib/containers/cache) only knows digests seen before; every image here has fresh random content, so
    uploads really happen."""

    def __init__(self, home: Path, registry: Registry):
        self.bin = need("skopeo")
        self.registry = registry
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.policy = home / "policy.json"
        self.policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        (home / "auth.json").write_text('{"auths": {}}')
        (home / "tmp").mkdir(exist_ok=True)
        self.env = {**os.environ, "REGISTRY_AUTH_FILE": str(home / "auth.json")}

    def __call__(self, *args, timeout: float = 120, check: bool = True, debug: bool = False,
                 input: bytes | None = None) -> Result:
        argv = [self.bin, "--policy", self.policy, "--tmpdir", self.home / "tmp", *(["--debug"] if debug else []),
                *args]
        return run(argv, timeout=timeout, env=self.env, check=check, input=input)

    def docker_ref(self, repo: str, ref: str) -> str:
        sep = "@" if ref.startswith("sha256:") else ":"
        return f"docker://{self.registry.host}/{repo}{sep}{ref}"

    def copy(self, src: str, dst: str, *extra, **kwargs) -> Result:
        return self("copy", "--src-tls-verify=false", "--dest-tls-verify=false", *extra, src, dst, **kwargs)


@pytest.fixture(scope="session")
def skopeo(registry, session_dir):
    return Skopeo(session_dir / "skopeo", registry)


class Podman:
    """Root podman with its own vfs storage, run root, auth file and registries.conf."""

    def __init__(self, home: Path, registry: Registry):
        self.bin = need("podman")
        self.home = home
        for d in ("root", "run", "tmp"):
            (home / d).mkdir(parents=True, exist_ok=True)
        (home / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{home / "run"}"\ngraphroot = "{home / "root"}"\n')
        (home / "registries.conf").write_text(
            f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
        (home / "auth.json").write_text('{"auths": {}}')
        self.env = {**os.environ, "REGISTRY_AUTH_FILE": str(home / "auth.json"),
                    "CONTAINERS_STORAGE_CONF": str(home / "storage.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"), "TMPDIR": str(home / "tmp")}

    def __call__(self, *args, timeout: float = 120, check: bool = True, input: bytes | None = None) -> Result:
        argv = [self.bin, "--root", self.home / "root", "--runroot", self.home / "run", "--storage-driver", "vfs",
                "--tmpdir", self.home / "tmp", "--events-backend", "none", "--cgroup-manager", "cgroupfs", *args]
        return run(argv, timeout=timeout, env=self.env, check=check, input=input)


@pytest.fixture(scope="session")
def podman(registry, session_dir):
    return Podman(session_dir / "podman", registry)


@pytest.fixture(scope="session")
def clients_for(session_dir):
    """Clients of a registry other than the session's (e.g. one a test started): clients_for(server) ->
    (skopeo, podman), each with configuration and storage of their own."""
    def make(server: Registry):
        home = session_dir / f"c{server.port}"  # short: podman refuses a run root longer than 50 characters
        return Skopeo(home / "s", server), Podman(home / "p", server)
    return make


class Docker:
    """A real dockerd of this session's own (data root, exec root, socket, client config in a temp dir)."""

    def __init__(self, home: Path, daemon_config: dict | None = None):
        self.client = need("docker")
        daemon = need("dockerd")
        self.home = home
        (home / "cfg").mkdir(parents=True)
        (home / "daemon.json").write_text(json.dumps(daemon_config or {}))
        self.socket = home / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(home / "cfg"),
                    "DOCKER_BUILDKIT": "0"}
        argv = [daemon, "--config-file", home / "daemon.json", "--data-root", home / "data", "--exec-root",
                home / "exec", "--pidfile", home / "dockerd.pid", "-H", f"unix://{self.socket}",
                "--storage-driver=overlay2", "--iptables=false", "--ip6tables=false", "--bridge=none",
                "--ip-masq=false"]
        self.log_path = home / "dockerd.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while run([self.client, "version"], env=self.env, check=False, timeout=30).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_text = _tail(self.log_path.read_bytes())
                self.stop()
                pytest.fail(f"dockerd did not come up:\n{log_text}", pytrace=False)
            time.sleep(0.2)

    def __call__(self, *args, timeout: float = 180, check: bool = True, input: bytes | None = None) -> Result:
        return run([self.client, *args], timeout=timeout, env=self.env, check=check, input=input)

    def stop(self) -> str | None:
        return stop_process(self.proc, "dockerd")


@pytest.fixture(scope="session")
def docker():
    home = Path(tempfile.mkdtemp(prefix="dy-e2e-dockerd-"))
    try:
        daemon = Docker(home)
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    try:
        yield daemon
    finally:
        complaint = daemon.stop()
        shutil.rmtree(home, ignore_errors=True)
        if complaint:
            pytest.fail(complaint, pytrace=False)


@pytest.fixture(scope="session")
def curl():
    binary = need("curl")
    return lambda *args, timeout=60: run([binary, "--max-time", "30", *args], timeout=timeout)


# --------------------------------------------------------------------------------------------------------------
# Shared content


@dataclass
class PushedImage:
    repo: str
    tag: str
    image: Image
    layout: OCILayout


@pytest.fixture(scope="session")
def skopeo_image(registry, skopeo, session_dir) -> PushedImage:
    """An OCI image of fresh content pushed once per session with skopeo to e2e/skopeo:1, digests preserved.
    Tests that use it only read it (and add referrers to it)."""
    layout = OCILayout(session_dir / "skopeo-src")
    image = layout.add_image(tag="1", annotations={"org.opencontainers.image.title": "dockyard e2e"})
    repo = f"e2e/skopeo-{uuid.uuid4().hex[:8]}"
    skopeo.copy(layout.ref("1"), skopeo.docker_ref(repo, "1"), "--preserve-digests")
    return PushedImage(repo, "1", image, layout)


@pytest.fixture(scope="session")
def e2e():
    """This conftest's helpers for the test packages below it (tests/e2e/web): need, missing, run, free_port,
    OCILayout, Skopeo. Handed over as a fixture, like everything here, never imported."""
    from types import SimpleNamespace

    return SimpleNamespace(need=need, missing=missing, run=run, free_port=free_port, OCILayout=OCILayout,
                           Skopeo=Skopeo, sha256_digest=sha256_digest, dumps=dumps, IN_CI=IN_CI,
                           Podman=Podman, Docker=Docker, Registry=Registry, stop_process=stop_process)


@pytest.fixture(scope="session")
def oras_registry(registry):
    """oras.provider.Registry for the server, with oras's five-fold retry-with-sleep disabled (CLIENTS.md)."""
    try:
        import oras.provider
    except ImportError:
        missing("the `oras` Python package is not installed (pip install oras)")
    original = oras.provider.Registry.do_request
    oras.provider.Registry.do_request = getattr(original, "__wrapped__", original)
    try:
        yield oras.provider.Registry
    finally:
        oras.provider.Registry.do_request = original


# --------------------------------------------------------------------------------------------------------------
# Stalled clients (issue 12): connections that send part of a request and then nothing


class Stalled:
    """One connection a client opened and then stopped using, as the server sees it: sent, then silence (or a
    byte a second of `trickle`). `connect()` returns a connected socket (plain or TLS)."""

    def __init__(self, connect, kind: str, payload: bytes, trickle: bytes = b""):
        self.kind = kind
        self.sock = connect()
        self.sock.sendall(payload)
        self.sock.setblocking(False)  # from now on only polled: never wait on it
        self.trickle = trickle
        self.closed_at: float | None = None

    def poll_closed(self) -> bool:
        """Whether the server has closed it (EOF or reset); drains any answer it sent first."""
        if self.closed_at is not None:
            return True
        import select
        import ssl
        readable, _, _ = select.select([self.sock], [], [], 0)
        pending = getattr(self.sock, "pending", lambda: 0)()
        if readable or pending:
            try:
                while self.sock.recv(65536):
                    pass
                else:
                    self.closed_at = time.monotonic()
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
            except OSError:
                self.closed_at = time.monotonic()
        return self.closed_at is not None

    def send_trickle_byte(self) -> None:
        import ssl
        if self.trickle and self.closed_at is None:
            try:
                self.sock.send(self.trickle[:1])
                self.trickle = self.trickle[1:]
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except OSError:
                self.closed_at = time.monotonic()


def stall_scenario(connect, authorization: str, *, pull, push, hold: float, repository: str = "stall") -> dict:
    """Open 200 stalled connections (60 with partial headers, 40 sending headers a byte a second, 50 anonymous and
    50 authenticated uploads to `repository` announcing a megabyte and sending three bytes), then pull and push for
    `hold` seconds.
    Returns the pull latencies, the number of pushes, and when each stalled connection was closed."""
    upload = (f"POST /v2/{repository}/blobs/uploads/?digest=sha256:{{hex}} HTTP/1.1\r\nHost: x\r\n{{auth}}"
              "Content-Length: 1000000\r\n\r\nabc")
    stalled = [Stalled(connect, "partial headers", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nUser-Agent: slow")
               for _ in range(60)]
    stalled += [Stalled(connect, "headers a byte a second", b"G", trickle=b"ET /v2/ HTTP/1.1\r\nHost: x\r\n" * 20)
                for _ in range(40)]
    stalled += [Stalled(connect, "anonymous partial body", upload.format(hex="0" * 64, auth="").encode())
                for _ in range(50)]
    stalled += [Stalled(connect, "authenticated partial body",
                        upload.format(hex=f"{i:064d}", auth=f"Authorization: {authorization}\r\n").encode())
                for i in range(50)]
    opened = time.monotonic()
    pulls, pushes = [], 0
    stop = threading.Event()

    def trickle():
        while not stop.wait(1.0):
            for conn in stalled:
                conn.send_trickle_byte()

    import threading as _threading
    trickler = _threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        while time.monotonic() - opened < hold:
            pulls.extend(pull())
            push(pushes)
            pushes += 1
            for conn in stalled:
                conn.poll_closed()
            time.sleep(0.1)
    finally:
        stop.set()
        trickler.join(timeout=5)
        for conn in stalled:
            conn.poll_closed()
            conn.sock.close()
    return {"pulls": pulls, "pushes": pushes, "stalled": len(stalled),
            "closed_after": {kind: [c.closed_at - opened if c.closed_at else None for c in stalled if c.kind == kind]
                             for kind in dict.fromkeys(c.kind for c in stalled)}}


def check_stall_report(report: dict, header_timeout: float, body_timeout: float) -> None:
    """What the scenario must show: no pull slower than a second, pushes going through, every stalled connection
    closed once its timeout has passed (header stalls at the header timeout, bodies at the body timeout)."""
    pulls, closed = report["pulls"], report["closed_after"]
    print(f"{len(pulls)} pulls, slowest {max(pulls) * 1000:.0f} ms; {report['pushes']} pushes; stalled connections "
          f"closed within (s): { {kind: round(max(t or 999 for t in times), 1) for kind, times in closed.items()} }")
    assert report["stalled"] == 200
    assert max(pulls) < 1.0, f"slowest pull {max(pulls):.2f}s of {len(pulls)}"
    assert report["pushes"] >= 10
    still_open = {kind: sum(t is None for t in times) for kind, times in closed.items() if None in times}
    assert still_open == {}, "stalled connections the server did not close after their timeout"
    assert max(closed["partial headers"]) < header_timeout + 3
    assert max(closed["authenticated partial body"]) < body_timeout + 6


@pytest.fixture
def stalled_clients():
    """200 stalled connections while a client pulls and pushes: `.run(...)` is `stall_scenario`, `.check(...)` is
    `check_stall_report` (both above)."""
    import types
    return types.SimpleNamespace(run=stall_scenario, check=check_stall_report)
