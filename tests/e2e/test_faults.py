"""Issue 12: kill -9 at random moments never loses an acknowledged blob, and leaves nothing `dockyard fsck` finds.

Clients push monolithically, in chunks (each chunk on a new connection, so chunks of one session land on different
workers), and manifests over what was acknowledged; another pushes images and deletes them so that garbage
collection, run in a loop, has work. Twelve rounds: after a random moment, SIGKILL either one worker (gunicorn
starts another) or the whole server (restarted on the same data). After each round: `dockyard fsck` finds no
problem, every blob and manifest that got a 2xx is there with its bytes, and no upload file lacks its session.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Load:
    """Clients pushing against whichever server is current, counting only what was acknowledged (2xx)."""

    def __init__(self, server):
        self.server = server
        self.blobs: dict[tuple[str, str], int] = {}  # (repository, digest) -> size, acknowledged by a 201
        self.manifests: dict[tuple[str, str], str] = {}  # (repository, tag) -> digest, acknowledged by a 201
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(job,), daemon=True)
                        for job in (self.monolithic, self.chunked, self.manifest, self.garbage, self.collect)]

    def url(self) -> str:
        return self.server.url

    def _loop(self, job) -> None:
        rng = random.Random(id(job))
        while not self.stopped.is_set():
            if not self.running.wait(0.1):
                continue
            try:
                job(rng)
            except (requests.RequestException, OSError):
                pass  # the server was killed under this request on purpose: it was not acknowledged

    def acknowledge(self, repo: str, blob: bytes) -> None:
        with self.lock:
            self.blobs[(repo, digest(blob))] = len(blob)

    def monolithic(self, rng) -> None:
        repo, blob = f"mono/{rng.randrange(3)}", os.urandom(rng.randrange(1, 3 * 1024 * 1024))
        r = requests.post(f"{self.url()}/v2/{repo}/blobs/uploads/", params={"digest": digest(blob)}, data=blob,
                          timeout=30)
        if r.status_code == 201:
            self.acknowledge(repo, blob)

    def chunked(self, rng) -> None:
        repo, blob = f"chunked/{rng.randrange(3)}", os.urandom(rng.randrange(3, 4 * 1024 * 1024))
        r = requests.post(f"{self.url()}/v2/{repo}/blobs/uploads/", timeout=30)
        if r.status_code != 202:
            return
        location = r.headers["Location"].split("/v2/", 1)[1]
        cuts = sorted({0, len(blob), *(rng.randrange(len(blob)) for _ in range(3))})
        for start, end in zip(cuts, cuts[1:]):
            r = requests.patch(f"{self.url()}/v2/{location}", data=blob[start:end], timeout=30,  # a new connection
                               headers={"Content-Range": f"{start}-{end - 1}"})
            if r.status_code != 202:
                return
            location = r.headers["Location"].split("/v2/", 1)[1]
        r = requests.put(f"{self.url()}/v2/{location}", params={"digest": digest(blob)}, timeout=30)
        if r.status_code == 201:
            self.acknowledge(repo, blob)

    def manifest(self, rng) -> None:
        with self.lock:
            mine = [(repo, d, size) for (repo, d), size in self.blobs.items()]
        if len(mine) < 2:
            return
        repo, config, config_size = rng.choice(mine)
        layers = [(d, size) for r, d, size in mine if r == repo][:3]
        document = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                               "config": {"mediaType": "application/octet-stream", "digest": config,
                                          "size": config_size},
                               "layers": [{"mediaType": "application/octet-stream", "digest": d, "size": size}
                                          for d, size in layers]}).encode()
        tag = f"t{rng.randrange(10**9)}"
        r = requests.put(f"{self.url()}/v2/{repo}/manifests/{tag}", data=document, timeout=30,
                         headers={"Content-Type": MANIFEST})
        if r.status_code == 201:
            with self.lock:
                self.manifests[(repo, tag)] = digest(document)

    def garbage(self, rng) -> None:
        """An image pushed and deleted: its layer is garbage for the collector to take."""
        repo, layer = "garbage/app", os.urandom(256 * 1024)
        r = requests.post(f"{self.url()}/v2/{repo}/blobs/uploads/", params={"digest": digest(layer)}, data=layer,
                          timeout=30)
        if r.status_code != 201:
            return
        document = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                               "config": {"mediaType": "application/octet-stream", "digest": digest(layer),
                                          "size": len(layer)}, "layers": []}).encode()
        r = requests.put(f"{self.url()}/v2/{repo}/manifests/{digest(document)}", data=document, timeout=30,
                         headers={"Content-Type": MANIFEST})
        if r.status_code == 201:
            requests.delete(f"{self.url()}/v2/{repo}/manifests/{digest(document)}", timeout=30)

    def collect(self, rng) -> None:
        requests.post(f"{self.url()}/v2/_dockyard/gc", json={"delete_untagged": False}, timeout=60)
        time.sleep(0.2)

    def pause(self) -> None:
        self.running.clear()
        time.sleep(1.5)  # let in-flight requests finish or fail (each loop checks `running` between requests)


def worker_pids(server) -> list[int]:
    return [int(p) for p in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()]


def fsck(data: Path) -> dict:
    result = subprocess.run(["dockyard", "fsck", "--data", str(data), "--json"], capture_output=True, text=True,
                            timeout=300)
    report = json.loads(result.stdout)
    assert result.returncode == (0 if report["clean"] else 1), result.stderr
    return report


def check_everything_acknowledged_is_there(load: Load, data: Path) -> None:
    http = requests.Session()
    for (repo, d), size in sorted(load.blobs.items()):
        r = http.get(f"{load.url()}/v2/{repo}/blobs/{d}", timeout=30)
        assert r.status_code == 200, (repo, d, r.status_code)
        assert len(r.content) == size and digest(r.content) == d, f"{repo}@{d} corrupt"
    for (repo, tag), d in sorted(load.manifests.items()):
        r = http.get(f"{load.url()}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST}, timeout=30)
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == d, (repo, tag, r.status_code)
    db = sqlite3.connect(f"file:{data / 'registry.db'}?mode=ro", uri=True)
    sessions = {row[0] for row in db.execute("SELECT id FROM uploads")}
    db.close()
    strays = [p.name for p in (data / "uploads").iterdir() if p.name not in sessions]
    assert strays == [], "upload files whose session is gone"


def test_kill_9_at_random_moments(start_dockyard, tmp_path):
    data = tmp_path / "data"
    load = Load(start_dockyard(data=data, workers=2))
    for thread in load.threads:
        thread.start()
    rng = random.Random(20261201)
    kinds = []
    try:
        for round_ in range(12):
            load.running.set()
            time.sleep(rng.uniform(0.5, 2.5))
            if round_ % 2 == 0:
                kinds.append("worker")
                os.kill(rng.choice(worker_pids(load.server)), signal.SIGKILL)
                load.pause()
            else:
                kinds.append("server")
                os.killpg(load.server.proc.pid, signal.SIGKILL)
                load.server.proc.wait(timeout=30)
                load.pause()
                load.server = start_dockyard(data=data, workers=2)
            report = fsck(data)
            assert report["problems"] == [], f"round {round_} ({kinds[-1]} killed): {report['problems']}"
            check_everything_acknowledged_is_there(load, data)
    finally:
        load.stopped.set()
        for thread in load.threads:
            thread.join(timeout=60)
    print(f"{len(kinds)} kills ({kinds.count('worker')} workers, {kinds.count('server')} whole servers); "
          f"{len(load.blobs)} blobs and {len(load.manifests)} manifests acknowledged, all intact")
    assert len(load.blobs) >= 20 and len(load.manifests) >= 5
