"""Measure gunicorn worker classes for Dockyard: manifest GETs with wrk, alone and beside blob uploads.

    python3 deploy/measure_workers.py [--seconds 10] [--workers 4] [--classes dockyard,gthread,sync]

For each worker class, starts gunicorn with deploy/gunicorn.conf.py (the worker class given on gunicorn's command
line) on 127.0.0.1, pushes one small image, then runs `wrk` (apt-get install wrk) against one manifest:
  1. alone;
  2. while `workers` slow uploads (clients sending a layer at ~1 MB/s, as over a slow link or through a proxy that
     streams the body) are in progress;
  3. while one fast 1 GiB upload is in progress;
  4. while `--stalled` connections (500 by default: more than `workers` x `threads`, so that a thread per
     connection runs out) are held open (half send part of their headers, half send their headers and
     `Content-Length: 1000000` and then three bytes of body), as in issue 12's finding 3.
`dockyard` is Dockyard's own worker class (dockyard.server.worker.DockyardWorker, what `dockyard serve` runs).
Prints requests/s, p99 latency and wrk's error count for each. Numbers vary ±20% on these VMs: compare
orders of magnitude, not digits.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=b"", headers=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def push_image(port) -> str:
    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, _, body = request(port, "POST", f"/v2/bench/app/blobs/uploads/?digest={digest}", data)
        assert status == 201, (status, body)
        return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": len(data)}
    config = blob(b'{"os":"linux","architecture":"amd64"}')
    config["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": config,
                           "layers": [blob(os.urandom(4096))]}).encode()
    status, _, body = request(port, "PUT", "/v2/bench/app/manifests/latest", manifest,
                              {"Content-Type": MANIFEST_TYPE})
    assert status == 201, (status, body)
    return "/v2/bench/app/manifests/latest"


def upload(port, total: int, chunk: int, pause: float, stop: threading.Event, results: list) -> None:
    """One blob upload: POST a session, then one PATCH whose body is produced at the given pace."""
    started = time.monotonic()
    status, headers, _ = request(port, "POST", "/v2/bench/app/blobs/uploads/")
    location = headers["location"]
    path = location[location.index("/v2/"):]
    hasher = hashlib.sha256()
    block = os.urandom(chunk)

    def body():
        sent = 0
        while sent < total and not stop.is_set():
            hasher.update(block)
            sent += len(block)
            yield block
            if pause:
                time.sleep(pause)

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("PATCH", path, body=body(), headers={"Content-Type": "application/octet-stream"},
                     encode_chunked=True)
        resp = conn.getresponse()
        resp.read()
        patch_status = resp.status
        done = resp.getheader("Location", location)
    finally:
        conn.close()
    done_path = done[done.index("/v2/"):]
    status, _, _ = request(port, "PUT", f"{done_path}?digest=sha256:{hasher.hexdigest()}")
    results.append((patch_status, status, time.monotonic() - started))


def stall(port, count: int, stop: threading.Event) -> None:
    """Open `count` connections that never finish their request, and hold them until `stop` (or until the server
    closes them)."""
    socks = []
    for i in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                s.sendall(b"GET /v2/bench/app/manifests/latest HTTP/1.1\r\nHost: x\r\n")
            else:
                s.sendall(b"POST /v2/bench/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 1000000\r\n\r\nabc")
            socks.append(s)
        except OSError:
            break
    stop.wait()
    for s in socks:
        s.close()


def wrk(port, path, seconds) -> dict:
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", "--timeout", "5s",
                          "-H", f"Accept: {MANIFEST_TYPE}", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+\w+)", out).group(1)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p99": p99, "timeouts": int(errors.group(4)) if errors else 0,
            "errors": (sum(map(int, errors.groups()[:3])) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0)}


def run_class(worker_class: str, workers: int, seconds: int, stalled: int) -> list:
    workdir = Path(tempfile.mkdtemp(prefix="dy-workers-"))
    port = free_port()
    env = {**os.environ, "DOCKYARD_DATA": str(workdir / "data"), "DOCKYARD_BIND": f"127.0.0.1:{port}",
           "DOCKYARD_WORKERS": str(workers), "DOCKYARD_LOG_LEVEL": "warning"}
    env.pop("DOCKYARD_CONFIG", None)
    log = open(workdir / "gunicorn.log", "wb")
    # gunicorn silently runs gthread for "sync" when threads > 1: sync needs --threads 1 to be sync at all.
    threads = ["--threads", "1"] if worker_class == "sync" else []
    klass = "dockyard.server.worker.DockyardWorker" if worker_class == "dockyard" else worker_class
    proc = subprocess.Popen(["gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "-k", klass,
                             *threads, "dockyard.server.app:get_app()"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    rows = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if request(port, "GET", "/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"gunicorn did not start: {(workdir / 'gunicorn.log').read_text()}")
            time.sleep(0.1)
        path = push_image(port)
        wrk(port, path, 2)  # warm-up, discarded
        rows.append(("alone", wrk(port, path, seconds), ""))
        for label, count, total, chunk, pause in (
                (f"{workers} slow uploads (~1 MB/s each)", workers, 10**9, 64 * 1024, 0.05),
                ("one fast 1 GiB upload", 1, 1 << 30, 1 << 20, 0.0)):
            stop, results = threading.Event(), []
            threads = [threading.Thread(target=upload, args=(port, total, chunk, pause, stop, results))
                       for _ in range(count)]
            for t in threads:
                t.start()
            time.sleep(1)
            measured = wrk(port, path, seconds)
            stop.set()
            for t in threads:
                t.join(600)
            ok = sum(1 for patch, put, _ in results if patch == 202 and put == 201)
            rows.append((label, measured, f"{ok}/{count} uploads completed, "
                                          f"{max((r[2] for r in results), default=0):.1f}s"))
        stop = threading.Event()
        staller = threading.Thread(target=stall, args=(port, stalled, stop))
        staller.start()
        time.sleep(2)
        rows.append((f"{stalled} stalled connections", wrk(port, path, seconds), ""))
        stop.set()
        staller.join(60)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--classes", default="dockyard,gthread,sync")
    parser.add_argument("--stalled", type=int, default=500)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    print(f"{os.cpu_count()} cores, {args.workers} workers, wrk -t2 -c16 -d{args.seconds}s on one manifest GET")
    print(f"{'class':8} {'while':34} {'req/s':>9} {'p99':>9} {'timeouts':>8} {'errors':>7}  uploads")
    for worker_class in args.classes.split(","):
        for label, m, note in run_class(worker_class, args.workers, args.seconds, args.stalled):
            print(f"{worker_class:8} {label:34} {m['rps']:9.0f} {m['p99']:>9} {m['timeouts']:8} {m['errors']:7}  "
                  f"{note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
