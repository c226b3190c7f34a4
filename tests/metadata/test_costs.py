"""What each API operation costs the database and the object store, counted, not estimated (issue 14): the
statements each backend runs for one request through the whole app. On PostgreSQL each is one network round trip
(counted on the server: `log_statement = all` for the test's database, so a multi-statement string sent at once
counts once); on SQLite each is one statement on the worker's connections (`set_trace_callback`; statements run by
triggers not counted). With the s3 driver, the requests the app makes to the store, counted in the store's own
access log (a real S3-compatible store: OpenStack Swift, tests/swift_store.py).

The read-only switch is read at most once a second per worker, whatever the traffic: it is left out of the
per-request counts and shown in a row of its own. The table is printed, and must match the one in the README.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from pathlib import Path

import webtest

from dockyard.server.app import create_app
from dockyard.server.config import Config, StorageConfig
from dockyard.server.metadata.postgres_cache import wait_until_live
from helpers import OCI_MANIFEST, digest_of, image_manifest, push_blob, put_manifest

README = Path(__file__).resolve().parents[2] / "README.md"
SWITCH = re.compile(r"FROM state WHERE key", re.I)


class SqliteCounter:
    def __init__(self, app):
        metadata = app.registry._metadata
        self.statements: list[str] = []
        for conn in (metadata.db.conn, metadata._reader_connection()):
            conn.set_trace_callback(self._trace)

    def _trace(self, statement: str) -> None:
        if not statement.startswith("--"):  # a trigger's statements are part of the one that fired it
            self.statements.append(statement)

    def take(self) -> list[str]:
        taken, self.statements = self.statements, []
        return taken


class PostgresCounter:
    def __init__(self, server, database: str):
        self.log, self.database = server.log, database
        self.offset = self.log.stat().st_size

    def take(self) -> list[str]:
        with open(self.log, "rb") as fh:
            fh.seek(self.offset)
            text = fh.read().decode(errors="replace")
            self.offset = fh.tell()
        found = re.findall(rf"\] {self.database} LOG:  (?:statement|execute [^:]*): (.*)", text)
        return found


class StoreCounter:
    """The requests an app made to its bucket, from the store's access log. The store logs a request once it has
    answered it: after each action a request of the test's own (to another container) marks the end, and the
    count is taken once the store has logged that one too."""

    def __init__(self, swift, bucket: str):
        self.swift, self.bucket = swift, bucket
        self.offset = swift.log_size()

    def take(self) -> list[str]:
        marker = f"cost-marker-{uuid.uuid4().hex}"
        self.swift.swift_request("HEAD", f"/{marker}")
        deadline = time.monotonic() + 30
        while True:
            logged = self.swift.requests_since(self.offset)
            if any(marker in r.path for r in logged):
                break
            assert time.monotonic() < deadline, "the store did not log the marker request"
            time.sleep(0.02)
        self.offset = self.swift.log_size()
        return [f"{r.method} {r.path}" for r in logged if r.path.split("?")[0].split("/")[1] == self.bucket]


def s3_app(swift, bucket: str, data: Path, download: str):
    """(client, counter) of a fresh app whose blobs are in `bucket` (metadata: SQLite, not counted here)."""
    storage = StorageConfig(driver="s3", bucket=bucket, endpoint_url=swift.endpoint, region=swift.region,
                            path_style=True, access_key_id=swift.access_key, secret_access_key=swift.secret_key,
                            download=download)
    config = Config(data=str(data), storage=storage, accel_redirect="/_dockyard_s3" if download == "accel" else "")
    return webtest.TestApp(create_app(config)), StoreCounter(swift, bucket)


def blob_get_costs(swift, bucket: str, tmp_path: Path) -> str:
    """A blob GET's store requests made by Dockyard in each download mode: `proxy` reads the object itself;
    `redirect` and `accel` only sign a URL (the client, or nginx, then makes one GET to the store)."""
    found = {}
    for download in ("proxy", "redirect", "accel"):
        client, counter = s3_app(swift, bucket, tmp_path / f"s3-{download}", download)
        try:
            digest = push_blob(client, "cost/get", b"a layer read back in %s mode" % download.encode())
            expected = 307 if download == "redirect" else 200
            found[download], _ = count(counter, lambda: client.get(f"/v2/cost/get/blobs/{digest}", status=expected))
        finally:
            client.app.registry.close()
    assert found["redirect"] == found["accel"], found
    return f"{found['proxy']} (proxy), {found['redirect']} (redirect, accel)"


def open_app(backend: str, data: Path, server):
    """(client, counter) of a fresh app on `backend`."""
    if backend == "sqlite":
        app = create_app(Config(data=str(data)))
        return webtest.TestApp(app), SqliteCounter(app)
    database = server.new_database()
    server.execute(f"ALTER DATABASE {database} SET log_statement = 'all'")
    app = create_app(Config(data=str(data), database=server.url(database)))
    return webtest.TestApp(app), PostgresCounter(server, database)


def count(counter, action) -> tuple[int, int]:
    """(statements the action ran, of which reads of the read-only switch)."""
    counter.take()
    action()
    statements = counter.take()
    switch = sum(1 for s in statements if SWITCH.search(s))
    return len(statements) - switch, switch


def docker_push(client, name: str, tag: str, layers: list[bytes], config: bytes) -> None:
    """A push as docker does it: per blob HEAD (404), POST, PATCH, PUT ?digest=; then the manifest PUT."""
    for data in [config, *layers]:
        digest = digest_of(data)
        client.head(f"/v2/{name}/blobs/{digest}", status=404)
        location = client.post(f"/v2/{name}/blobs/uploads/", status=202).headers["Location"]
        location = client.patch(location, data, headers={"Content-Type": "application/octet-stream"},
                                status=202).headers["Location"]
        client.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", status=201)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest_of(x),
                    "size": len(x)} for x in layers]}).encode()
    put_manifest(client, name, tag, manifest)


ROWS = ("manifest GET by tag", "manifest GET by tag, first time in this worker", "manifest GET by digest",
        "manifest GET by digest, first time in this worker", "tags/list?n=100",
        "tags/list?n=100, first time after a change", "_catalog?n=100", "_catalog?n=100, first time after a change",
        "blob HEAD", "blob HEAD, first time in this worker", "blob GET", "push of a 5-layer image (25 requests)",
        "  of which: blob HEAD (404), POST, PATCH, closing PUT (per blob)", "  of which: manifest PUT")


def measure_costs(client, counter) -> dict[str, int]:
    for i in range(3):
        put_manifest(client, f"cost/other{i}", "v1", image_manifest(client, f"cost/other{i}", layers=[b"x%d" % i]))
    image = image_manifest(client, "cost/app", layers=[b"layer one", b"layer two"])
    put_manifest(client, "cost/app", "v1", image)
    digest = hashlib.sha256(image).hexdigest()
    layer = digest_of(b"layer one")
    digests = getattr(client.app.registry._metadata, "digests", None)
    if digests is not None:  # PostgreSQL: its digest cache serves once its listener is in place
        assert wait_until_live(digests)
    costs = {}
    for row, action in (
            ("manifest GET by tag, first time in this worker", lambda: client.get("/v2/cost/app/manifests/v1")),
            ("manifest GET by tag", lambda: client.get("/v2/cost/app/manifests/v1")),
            ("manifest GET by digest, first time in this worker",
             lambda: client.get(f"/v2/cost/app/manifests/sha256:{digest}")),
            ("manifest GET by digest", lambda: client.get(f"/v2/cost/app/manifests/sha256:{digest}")),
            ("tags/list?n=100, first time after a change", lambda: client.get("/v2/cost/app/tags/list?n=100")),
            ("tags/list?n=100", lambda: client.get("/v2/cost/app/tags/list?n=100")),
            ("_catalog?n=100, first time after a change", lambda: client.get("/v2/_catalog?n=100")),
            ("_catalog?n=100", lambda: client.get("/v2/_catalog?n=100")),
            ("blob HEAD, first time in this worker", lambda: client.head(f"/v2/cost/app/blobs/{layer}")),
            ("blob HEAD", lambda: client.head(f"/v2/cost/app/blobs/{layer}")),
            ("blob GET", lambda: client.get(f"/v2/cost/app/blobs/{layer}"))):
        costs[row], _ = count(counter, action)
    layers = [f"pushed layer {i}".encode() * 100 for i in range(5)]
    config = b'{"architecture": "amd64", "os": "linux"}'
    costs["push of a 5-layer image (25 requests)"], _ = count(
        counter, lambda: docker_push(client, "cost/pushed", "v1", layers, config))
    costs["  of which: blob HEAD (404), POST, PATCH, closing PUT (per blob)"], _ = count(
        counter, lambda: docker_push_blob(client, "cost/pushed", b"one more blob"))
    costs["  of which: manifest PUT"], _ = count(
        counter, lambda: put_manifest(client, "cost/pushed", "v2", image_manifest_of(layers, config)))
    return costs


def test_round_trips_per_operation(postgresql, swift, s3_bucket, tmp_path, capsys):
    costs = {}
    for backend in ("sqlite", "postgresql"):
        client, counter = open_app(backend, tmp_path / backend, postgresql)
        try:
            costs[backend] = measure_costs(client, counter)
        finally:
            client.app.registry.close()
    client, counter = s3_app(swift, s3_bucket, tmp_path / "s3", "proxy")
    try:
        costs["s3"] = measure_costs(client, counter)
    finally:
        client.app.registry.close()
    costs["s3"]["blob GET"] = blob_get_costs(swift, s3_bucket, tmp_path)
    table = format_table(costs)
    with capsys.disabled():
        print("\n" + table)
    # Issue 14's goals: by tag 1 round trip; listings 1 (their version counter).
    for backend in ("sqlite", "postgresql"):
        assert costs[backend]["manifest GET by tag"] == 1 and costs[backend]["tags/list?n=100"] == 1
        assert costs[backend]["_catalog?n=100"] == 1
    # By digest, 0 where a round trip is a network one (SQLite's 1 is a local statement of a few microseconds).
    for row in ("manifest GET by digest", "blob HEAD", "blob GET"):
        assert costs["postgresql"][row] == 0 and costs["sqlite"][row] == 1, row
    # Reads that never touch the store: manifests, tags, catalog, blob HEAD (the metadata knows the size).
    for row in ("manifest GET by tag", "manifest GET by digest", "tags/list?n=100", "_catalog?n=100", "blob HEAD"):
        assert costs["s3"][row] == 0, row
    assert table in README.read_text(), "the README's cost table differs from the measured one:\n" + table


def docker_push_blob(client, name: str, data: bytes) -> None:
    digest = digest_of(data)
    client.head(f"/v2/{name}/blobs/{digest}", status=404)
    location = client.post(f"/v2/{name}/blobs/uploads/", status=202).headers["Location"]
    location = client.patch(location, data, status=202).headers["Location"]
    client.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", status=201)


def image_manifest_of(layers: list[bytes], config: bytes) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest_of(x),
                    "size": len(x)} for x in layers], "annotations": {"again": "yes"}}).encode()


def format_table(costs: dict[str, dict[str, int | str]]) -> str:
    lines = ["| operation | SQLite statements | PostgreSQL round trips | S3 requests (s3 driver) |",
             "|---|---|---|---|"]
    lines += [f"| {row} | {costs['sqlite'][row]} | {costs['postgresql'][row]} | {costs['s3'][row]} |" for row in ROWS]
    lines.append("| read-only switch, per worker | at most 1 a second | at most 1 a second | 0 |")
    return "\n".join(lines)
