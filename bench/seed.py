"""Fill a registry over its HTTP API, the same way for Dockyard and the reference: blobs, images, tags.

`Connection` is one keep-alive http.client connection to 127.0.0.1 that reconnects once when the server closed
it between requests. `Seeder` runs many small requests on parallel connections (one per thread); everything is
bounded by per-request timeouts and fails with a BenchError naming the request, never silently.

An image is the smallest a docker client would push: a Docker schema 2 manifest (what `docker push` sends) with
one config blob and one layer blob. Its bytes are the same on both registries, so its digest is too.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

from harness import HOST, BenchError

REQUEST_TIMEOUT = 60.0  # seconds for any one socket operation of a small request
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# What docker (through containerd's resolver) sends with a manifest GET, as one header line.
DOCKER_ACCEPT = (
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"
)


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class Connection:
    """One keep-alive connection to 127.0.0.1:port; only the path and query of a Location are ever followed."""

    def __init__(self, port: int, timeout: float = REQUEST_TIMEOUT) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
        headers = {"Content-Length": str(len(body))} | (headers or {})
        for attempt in (1, 2):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                answer = Answer(response.status, response.headers, response.read())
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if reused and attempt == 1:  # the server closed an idle keep-alive connection: once more
                    continue
                raise
            except BaseException:
                self.close()
                raise
            if answer.headers.get("Connection", "").lower() == "close":
                self.close()
            return answer
        raise AssertionError("unreachable")

    def expect(self, method: str, path: str, status: int, body: bytes = b"", headers: dict | None = None) -> Answer:
        try:
            answer = self.request(method, path, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(f"{method} {path} on port {self.port}: {exc!r}") from exc
        if answer.status != status:
            raise BenchError(
                f"{method} {path} on port {self.port}: expected {status}, got {answer.status}: {answer.body[:300]!r}"
            )
        return answer

    # -- the registry operations the benchmarks need -------------------------------------------------------------

    def upload_blob(self, repository: str, data: bytes) -> str:
        """POST, then PUT ?digest= with the whole body: the two-step monolithic upload both registries take."""
        started = self.expect("POST", f"/v2/{repository}/blobs/uploads/", 202)
        digest = sha256(data)
        location = _path_of(started.headers.get("Location"))
        url = f"{location}{'&' if '?' in location else '?'}digest={digest}"
        self.expect("PUT", url, 201, data, {"Content-Type": "application/octet-stream"})
        return digest

    def put_manifest(self, repository: str, reference: str, manifest: bytes) -> None:
        self.expect("PUT", f"/v2/{repository}/manifests/{reference}", 201, manifest, {"Content-Type": MANIFEST_TYPE})

    def push_image(self, repository: str, config: bytes, layers: Iterable[bytes], tag: str) -> Image:
        """Upload the blobs, then PUT the manifest under `tag`."""
        config_digest = self.upload_blob(repository, config)
        layer_refs = [(self.upload_blob(repository, layer), len(layer)) for layer in layers]
        image = Image.of(config_digest, len(config), layer_refs)
        self.put_manifest(repository, tag, image.manifest)
        return image


def _path_of(location: str | None) -> str:
    if not location:
        raise BenchError("an upload answered without a Location header")
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@dataclass(frozen=True)
class Image:
    manifest: bytes
    digest: str

    @classmethod
    def of(cls, config_digest: str, config_size: int, layers: list[tuple[str, int]]) -> Image:
        document = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "size": config_size, "digest": config_digest},
            "layers": [{"mediaType": LAYER_TYPE, "size": size, "digest": digest} for digest, size in layers],
        }
        manifest = json.dumps(document, indent=3).encode()  # docker indents with 3 spaces
        return cls(manifest, sha256(manifest))


def image_config(label: str) -> bytes:
    """A small image config, distinct per `label`."""
    return json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"Labels": {"bench": label}},
         "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()


class Seeder:
    """Runs a function over many items on `threads` parallel keep-alive connections to one registry."""

    def __init__(self, port: int, threads: int = 16) -> None:
        self.port = port
        self.threads = threads
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()

    def connection(self) -> Connection:
        """This thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = Connection(self.port)
            with self._lock:
                self._connections.append(conn)
        return conn

    def run(self, action: Callable[[Connection, object], object], items: Iterable) -> list:
        """`action(connection, item)` for every item, in parallel; the first failure stops the rest."""
        with ThreadPoolExecutor(self.threads, thread_name_prefix="seed") as pool:
            futures = [pool.submit(lambda item=item: action(self.connection(), item)) for item in items]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                self.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                with suppress(OSError):
                    conn.close()
            self._connections.clear()
