"""`dockyard serve` as an operator runs it: data directory from the working directory, SIGTERM, bad config, and
many clients uploading the same blob at once through several gunicorn workers."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
from urllib.parse import urljoin

import pytest
import requests

pytestmark = pytest.mark.e2e


def test_serves_from_dot_data_and_stops_cleanly_on_sigterm(tmp_path, dockyard_bin, free_port_number):
    port = free_port_number
    proc = subprocess.Popen([dockyard_bin, "serve", "--bind", f"127.0.0.1:{port}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(600):
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                if proc.poll() is not None:
                    break
            threading.Event().wait(0.1)
        assert (tmp_path / "data" / "registry.db").exists()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")


def test_invalid_config_stops_start_up_naming_the_setting(tmp_path, dockyard_bin):
    config = tmp_path / "bad.toml"
    config.write_text('threads = "lots"\n')
    out = subprocess.run([dockyard_bin, "serve", "--bind", "127.0.0.1:1", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "threads" in out.stderr and "Traceback" not in out.stderr


def test_many_clients_upload_the_same_blob_at_once(start_dockyard, tmp_path):
    data = tmp_path / "data"
    server = start_dockyard(data=data, workers=2)
    blob = os.urandom(3 * 1024 * 1024 + 11)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    results: list = []

    def upload(i: int) -> None:
        with requests.Session() as http:
            name = f"same/client{i}"
            location = http.post(f"{server.url}/v2/{name}/blobs/uploads/", timeout=60).headers["Location"]
            half = len(blob) // 2
            r = http.patch(urljoin(server.url, location), data=blob[:half], headers={"Content-Range": f"0-{half - 1}"},
                           timeout=60)
            r = http.put(urljoin(server.url, r.headers["Location"]), params={"digest": digest}, data=blob[half:], timeout=60)
            results.append((r.status_code, http.get(f"{server.url}/v2/{name}/blobs/{digest}", timeout=60).content))

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 16
    assert all(status == 201 and body == blob for status, body in results)
    files = [p for p in (data / "blobs").rglob("*") if p.is_file()]
    # 16 sessions committed the same content: each stored it under a key of its own, the metadata kept the first
    # and the others deleted theirs, so one copy remains (its file is <hex>.<upload session id>).
    assert [p.name.split(".")[0] for p in files] == [digest.split(":")[1]]
    assert not list((data / "uploads").iterdir())
