"""What each API operation costs the database, counted, not estimated (issue 14): the statements each backend
runs for one request through the whole app. On PostgreSQL each is one network round trip (counted on the server:
`log_statement = all` for the test's database, so a multi-statement string sent at once counts once); on SQLite
each is one statement on the worker's connections (`set_trace_callback`; statements run by triggers not counted).

The read-only switch is read at most once a second per worker, whatever the traffic: it is left out of the
per-request counts and shown in a row of its own. The table is printed, and must match the one in the README.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import webtest

from dockyard.server.app import create_app
from dockyard.server.config import Config
from dockyard.server.metadata.postgres_cache import wait_until_live
from helpers import OCI_MANIFEST, digest_of, image_manifest, put_manifest

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


def test_round_trips_per_operation(postgresql, tmp_path, capsys):
    costs = {}
    for backend in ("sqlite", "postgresql"):
        client, counter = open_app(backend, tmp_path / backend, postgresql)
        try:
            costs[backend] = measure_costs(client, counter)
        finally:
            client.app.registry.close()
    table = format_table(costs)
    with capsys.disabled():
        print("\n" + table)
    for backend in costs:  # issue 14's goals: by tag 1 round trip; listings 1 (their version counter)
        assert costs[backend]["manifest GET by tag"] == 1 and costs[backend]["tags/list?n=100"] == 1
        assert costs[backend]["_catalog?n=100"] == 1
    # By digest, 0 where a round trip is a network one (SQLite's 1 is a local statement of a few microseconds).
    for row in ("manifest GET by digest", "blob HEAD", "blob GET"):
        assert costs["postgresql"][row] == 0 and costs["sqlite"][row] == 1, row
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


def format_table(costs: dict[str, dict[str, int]]) -> str:
    lines = ["| operation | SQLite statements | PostgreSQL round trips |", "|---|---|---|"]
    lines += [f"| {row} | {costs['sqlite'][row]} | {costs['postgresql'][row]} |" for row in ROWS]
    lines.append("| read-only switch, per worker | at most 1 a second | at most 1 a second |")
    return "\n".join(lines)
