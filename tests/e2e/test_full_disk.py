"""Issue 12, finding 4 (and 2): a full disk is a condition with a clear error, not a crash.

`dockyard serve` on a small loop-mounted ext4 filesystem, and on a small tmpfs: pushes fill it until the registry
refuses them with 507 INSUFFICIENT_STORAGE (before reading a body that cannot fit, or while one that fills the disk
arrives); no request is read out of a failed body; then a filler file takes the last byte, and deletes and garbage
collection still free space through the API; no worker dies; /readyz says why; once space is free again, pushes
resume without a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(params=["ext4", "tmpfs"])
def small_filesystem(request, tmp_path):
    """A 48 MiB filesystem of the given kind, mounted for this test only."""
    if os.geteuid() != 0:
        _missing("mounting a filesystem needs root")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    if request.param == "ext4":
        image = tmp_path / "disk.img"
        subprocess.run(["truncate", "-s", "48M", str(image)], check=True, timeout=30)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, timeout=60, capture_output=True)
        argv = ["mount", "-o", "loop", str(image), str(mount_point)]
    else:
        argv = ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount_point)]
    result = subprocess.run(argv, capture_output=True, timeout=60)
    if result.returncode != 0:
        _missing(f"cannot mount a {request.param} filesystem: {result.stderr.decode()[-300:]}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], timeout=60, capture_output=True)


def _missing(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing capability is a failure)", pytrace=False)
    pytest.skip(reason)


def push_image(http, url: str, repo: str, tag: str, size: int) -> requests.Response:
    """Push a one-layer image of `size` random bytes; the first refusal is returned, else the manifest PUT's answer."""
    layer, config = os.urandom(size), json.dumps({"os": "linux", "tag": tag}).encode()
    for blob in (layer, config):
        r = http.post(f"{url}/v2/{repo}/blobs/uploads/", params={"digest": digest(blob)}, data=blob, timeout=60)
        if r.status_code != 201:
            return r
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest(config), "size": len(config)},
                           "layers": [{"mediaType": "application/octet-stream", "digest": digest(layer),
                                       "size": size}]})
    return http.put(f"{url}/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": MANIFEST},
                    timeout=60)


def assert_full(resp: requests.Response) -> None:
    assert resp.status_code == 507, (resp.status_code, resp.text[:300])
    (error,) = resp.json()["errors"]
    assert error["code"] == "INSUFFICIENT_STORAGE" and "full" in error["message"]


def raw_exchange(port: int, request: bytes, body_chunks) -> list[bytes]:
    """Send a request and its body as given (stopping when the server closes), then collect every response the
    server sends on that connection until it closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break
        received = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            received += data
    return [part for part in received.split(b"HTTP/1.1 ")[1:]]


def worker_pids(server) -> set[int]:
    return set(map(int, Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()))


def test_a_full_disk_is_a_condition_not_a_crash(small_filesystem, start_dockyard):
    data = small_filesystem / "data"
    server = start_dockyard(data=data, workers=2)
    deadline = time.monotonic() + 30
    while len(workers := worker_pids(server)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # the first worker answers before the second has booted
    assert len(workers) == 2
    http = requests.Session()
    url = server.url

    # Fill it with pushes until the registry refuses one.
    pushed, refusal = [], None
    for i in range(40):
        resp = push_image(http, url, "fill/app", f"v{i}", 4 * MIB)
        if resp.status_code != 201:
            refusal = resp
            break
        pushed.append(f"v{i}")
    assert refusal is not None and len(pushed) >= 3, "the disk never filled"
    assert_full(refusal)
    assert refusal.headers["Retry-After"]

    # A body of known length that cannot fit is refused before it is read, and a request hidden in it is never
    # executed: one response, then the connection closes.
    hidden = b"GET /v2/_catalog?smuggled=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    free = os.statvfs(data).f_bavail * os.statvfs(data).f_frsize
    body = os.urandom(MIB) + hidden + os.urandom(free)
    responses = raw_exchange(server.port, (f"POST /v2/fill/app/blobs/uploads/?digest={digest(body)} HTTP/1.1\r\n"
                                           f"Host: x\r\nContent-Length: {len(body)}\r\n\r\n").encode(),
                             [body[i:i + 65536] for i in range(0, len(body), 65536)])
    assert len(responses) == 1 and responses[0].startswith(b"507"), responses
    # A chunked body (length unknown) that fills the disk while it arrives: refused, the rest never read as a request.
    chunks = [f"{65536:X}\r\n".encode() + os.urandom(65536) + b"\r\n" for _ in range(16 * 40)]
    chunks.insert(16, f"{len(hidden):X}\r\n".encode() + hidden + b"\r\n")
    location = http.post(f"{url}/v2/fill/chunked/blobs/uploads/", timeout=30)
    if location.status_code == 202:
        path = location.headers["Location"].split(str(server.port), 1)[1]
        responses = raw_exchange(server.port, f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                              f"\r\n".encode(), chunks + [b"0\r\n\r\n"])
        assert len(responses) == 1 and responses[0].startswith(b"507"), [r[:100] for r in responses]
    else:
        assert_full(location)  # even an empty session file had no room
    assert "smuggled" not in (server.log_path.read_text(errors="replace"))

    # Then something else takes the last byte of the filesystem.
    filler = small_filesystem / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * MIB)
                fh.flush()
        except OSError:
            pass
    ready = http.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["checks"]["storage"].startswith("failed: the data directory is full")
    assert_full(push_image(http, url, "fill/other", "v1", MIB))
    # Deletes and garbage collection still work, and free space through the API.
    for tag in pushed:
        r = http.get(f"{url}/v2/fill/app/manifests/{tag}", headers={"Accept": MANIFEST}, timeout=30)
        assert r.status_code == 200
        d = http.delete(f"{url}/v2/fill/app/manifests/{r.headers['Docker-Content-Digest']}", timeout=30)
        assert d.status_code == 202, d.text
    report = http.post(f"{url}/v2/_dockyard/gc", json={"grace_seconds": 0}, timeout=120)
    assert report.status_code == 200, report.text
    assert report.json()["bytes_freed"] >= len(pushed) * 4 * MIB
    assert http.get(f"{url}/metrics", timeout=30).status_code == 200
    filler.unlink()

    # Pushes resume without a restart, and no worker died on the way.
    resp = push_image(http, url, "fill/app", "after", 4 * MIB)
    assert resp.status_code == 201, resp.text
    assert http.get(f"{url}/readyz", timeout=30).status_code == 200
    assert worker_pids(server) == workers, "a worker died"
    assert server.proc.poll() is None
