"""Issue 12, findings 5 and 7, through a real gunicorn: what a killed upload leaves is cleaned up while the server
runs (and counted), and a manifest over the size limit is answered after the client has sent it, not with a broken
pipe halfway."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e
MIB = 1024 * 1024


def test_a_manifest_over_the_limit_is_answered_413_not_a_broken_pipe(registry):
    big = b'{"schemaVersion": 2, "pad": "' + b"x" * (8 * MIB) + b'"}'
    r = requests.put(f"{registry.url}/v2/big/manifest/manifests/v1", data=big, timeout=60,
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 413 and r.json()["errors"][0]["code"] == "TOO_LARGE"
    assert r.headers.get("Connection", "").lower() == "close"  # the rest was read and thrown away; then closed


def test_an_upload_cut_off_by_a_kill_is_cleaned_up_while_the_server_runs(start_dockyard, tmp_path):
    data = tmp_path / "data"
    server = start_dockyard(data=data, workers=2)
    body = os.urandom(8 * MIB)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"POST /v2/cut/off/blobs/uploads/?digest=sha256:{hashlib.sha256(body).hexdigest()} HTTP/1.1\r\n"
                 f"Host: x\r\nContent-Length: {64 * MIB}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size >= 8 * MIB for p in (data / "uploads").iterdir()):
        assert time.monotonic() < deadline, "the upload never arrived"
        time.sleep(0.05)
    pids = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)  # the request dies with its worker, mid-body
    sock.close()
    time.sleep(6)  # a monolithic session is left alone for its first seconds (gc.MONOLITHIC_MIN_AGE)
    report = requests.post(f"{server.url}/v2/_dockyard/gc", json={}, timeout=60).json()
    assert report["uploads_purged"] >= 1 and report["upload_bytes_freed"] >= 8 * MIB, report
    assert list((data / "uploads").iterdir()) == []
