"""Storage lifecycle against a real `dockyard serve`: garbage collection while clients push and pull, and a
worker killed with SIGKILL in the middle of a collection and of a blob commit (issue 4)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Client:
    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()

    def push_blob(self, name: str, data: bytes) -> str:
        r = self.http.post(f"{self.url}/v2/{name}/blobs/uploads/", params={"digest": digest(data)}, data=data,
                           timeout=60)
        assert r.status_code == 201, r.text
        return digest(data)

    def push_image(self, name: str, tag: str, layers: list[bytes]) -> bytes:
        """Blobs then manifest; a manifest refused because GC took a blob in between is pushed again."""
        config = json.dumps({"tag": tag, "nonce": os.urandom(8).hex()}).encode()
        for _ in range(10):
            for blob in [config, *layers]:
                self.push_blob(name, blob)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                           "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer),
                            "size": len(layer)} for layer in layers]}).encode()
            r = self.http.put(f"{self.url}/v2/{name}/manifests/{tag}", data=manifest,
                              headers={"Content-Type": OCI_MANIFEST}, timeout=60)
            if r.status_code == 201:
                return manifest
            assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN", r.text
        raise AssertionError(f"could not push {name}:{tag}")

    def pull_image(self, name: str, tag: str) -> list[str]:
        """Every blob of a tagged image, each verified against its digest; the digests."""
        r = self.http.get(f"{self.url}/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}, timeout=60)
        assert r.status_code == 200, f"{name}:{tag}: {r.status_code} {r.text}"
        assert digest(r.content) == r.headers["Docker-Content-Digest"]
        document = r.json()
        digests = [document["config"]["digest"]] + [layer["digest"] for layer in document["layers"]]
        for d in digests:
            blob = self.http.get(f"{self.url}/v2/{name}/blobs/{d}", timeout=60)
            assert blob.status_code == 200, f"{name}:{tag} blob {d}: {blob.status_code} {blob.text}"
            assert digest(blob.content) == d
        return digests

    def gc(self, **options) -> dict:
        r = self.http.post(f"{self.url}/v2/_dockyard/gc", json=options, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()


def referenced_blobs(client: Client) -> set[str]:
    found = set()
    catalog = client.http.get(f"{client.url}/v2/_catalog", timeout=30).json()["repositories"]
    for name in catalog:
        for tag in client.http.get(f"{client.url}/v2/{name}/tags/list", timeout=30).json()["tags"]:
            found.update(client.pull_image(name, tag))
    return found


def blob_files(data: Path) -> set[str]:
    """Digests of the blob files on disk (a file is named <hex>.<upload session id>)."""
    return {f"{p.parent.parent.name}:{p.name.split('.')[0]}" for p in (data / "blobs").rglob("*") if p.is_file()}


def test_gc_in_a_loop_while_clients_push_and_pull(start_dockyard, tmp_path):
    data = tmp_path / "data"
    server = start_dockyard(data=data, workers=2)
    client = Client(server.url)
    shared_layer = os.urandom(4096)
    stable = {f"stable/{i}": client.push_image(f"stable/{i}", "v1", [shared_layer, os.urandom(2048)])
              for i in range(4)}
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

    def collector():
        # A grace period covers the moment between a push's blobs and its manifest; layers of deleted images are
        # collected at once regardless (they were used), which is what this loop exercises.
        Client(server.url).gc(grace_seconds=30, delete_untagged=True)
        counts["gc"] += 1

    def puller(c=Client(server.url)):
        for name in stable:
            c.pull_image(name, "v1")
            counts["pulls"] += 1

    def churner(c=Client(server.url), n=[0]):
        # push an image sharing a layer with the stable ones, then drop its tag: its own blobs become garbage
        n[0] += 1
        tag = f"t{n[0]}"
        c.push_image("churn/app", tag, [shared_layer, os.urandom(1024)])
        counts["pushes"] += 1
        if n[0] % 2:
            r = c.http.delete(f"{server.url}/v2/churn/app/manifests/{tag}", timeout=30)
            assert r.status_code == 202, r.text

    threads = [guarded(collector), guarded(puller), guarded(puller), guarded(churner), guarded(churner)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stop.is_set() and (counts["gc"] < 15 or counts["pushes"] < 30):
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert counts["gc"] >= 5 and counts["pushes"] >= 10 and counts["pulls"] >= 10, counts

    for name in stable:
        client.pull_image(name, "v1")
    client.gc(grace_seconds=0, delete_untagged=True)
    assert blob_files(data) == referenced_blobs(client), "a final GC must leave exactly the referenced blobs"


def assert_disk_and_database_agree(data: Path) -> None:
    """Every blob row has its file, whole; every file has its row; no delete is left pending."""
    db = sqlite3.connect(data / "registry.db")
    rows = dict(db.execute("SELECT key, size FROM blobs"))
    pending = db.execute("SELECT key FROM pending_deletes").fetchall()
    db.close()
    files = {p.relative_to(data / "blobs").as_posix(): p.stat().st_size
             for p in (data / "blobs").rglob("*") if p.is_file()}
    assert files == rows, {"files without rows": sorted(set(files) - set(rows)),
                           "rows without files": sorted(set(rows) - set(files))}
    assert pending == []


def pending_deletes(data: Path) -> int:
    db = sqlite3.connect(f"file:{data / 'registry.db'}?mode=ro", uri=True, timeout=1)
    try:
        return db.execute("SELECT COUNT(*) FROM pending_deletes").fetchone()[0]
    except sqlite3.OperationalError:  # locked for a moment by a writer
        return 0
    finally:
        db.close()


def worker_pids(server) -> list[int]:
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def kill_workers(server) -> None:
    for pid in worker_pids(server):
        os.kill(pid, signal.SIGKILL)


def test_worker_killed_in_the_middle_of_gc(start_dockyard, tmp_path):
    data = tmp_path / "data"
    server = start_dockyard(data=data, workers=1)
    client = Client(server.url)
    keep = client.push_image("keep/app", "v1", [os.urandom(2048)])
    caught = False
    for attempt in range(5):
        garbage = [os.urandom(64) for _ in range(1500 * (attempt + 1))]
        with requests.Session() as http:
            def upload(chunk):
                for blob in chunk:
                    r = http.post(f"{server.url}/v2/junk/blobs/uploads/", params={"digest": digest(blob)},
                                  data=blob, timeout=60)
                    assert r.status_code == 201
            upload(garbage)
        gc_thread = threading.Thread(target=lambda: _swallow(lambda: client.gc(grace_seconds=0)))
        gc_thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and gc_thread.is_alive():
            if pending_deletes(data):  # a sweep batch committed, its files not all deleted yet
                kill_workers(server)
                caught = True
                break
        gc_thread.join(timeout=60)
        if caught:
            break
    assert caught, "never caught the collector mid-batch"
    restarted = restart(start_dockyard, server, data)
    assert_disk_and_database_agree(data)
    Client(restarted.url).pull_image("keep/app", "v1")
    assert json.loads(keep)["layers"]


def test_worker_killed_in_the_middle_of_a_commit(start_dockyard, tmp_path):
    data = tmp_path / "data"
    server = start_dockyard(data=data, workers=1)
    client = Client(server.url)
    client.push_image("keep/app", "v1", [os.urandom(2048)])
    size = 256 * 1024 * 1024
    body = tmp_path / "big.bin"
    with open(body, "wb") as fh:
        block = os.urandom(1024 * 1024)
        for _ in range(size // len(block)):
            fh.write(block)
    hasher = hashlib.sha256()
    with open(body, "rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    big = "sha256:" + hasher.hexdigest()

    def push():
        with open(body, "rb") as fh:
            _swallow(lambda: requests.post(f"{server.url}/v2/big/blobs/uploads/", params={"digest": big}, data=fh,
                                           headers={"Content-Length": str(size)}, timeout=120))

    pusher = threading.Thread(target=push)
    pusher.start()
    deadline = time.monotonic() + 60
    killed = False
    while time.monotonic() < deadline:
        uploads = list((data / "uploads").iterdir())
        if uploads and uploads[0].stat().st_size >= size:  # all bytes in: verifying, fsyncing, committing
            kill_workers(server)
            killed = True
            break
        time.sleep(0.001)
    pusher.join(timeout=120)
    assert killed, "the upload finished before it could be interrupted"
    restarted = restart(start_dockyard, server, data)
    assert not list((data / "uploads").iterdir()), "the killed request's upload file must be cleaned up"
    head = requests.head(f"{restarted.url}/v2/big/blobs/{big}", timeout=30)
    assert head.status_code in (200, 404)  # committed whole, or not at all
    if head.status_code == 200:
        assert int(head.headers["Content-Length"]) == size
    # A kill between the store's commit and the metadata's leaves a file no row names: the next GC removes it.
    Client(restarted.url).gc(grace_seconds=0)
    assert_disk_and_database_agree(data)
    Client(restarted.url).pull_image("keep/app", "v1")


def restart(start_dockyard, server, data: Path):
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=60)
    for upload in (data / "uploads").iterdir():  # what a killed worker left is old by the time anyone restarts
        os.utime(upload, (time.time() - 3600, time.time() - 3600))
    return start_dockyard(data=data, workers=1)


def _swallow(fn):
    try:
        fn()
    except (requests.RequestException, AssertionError):
        pass  # the server was killed under this request on purpose
