"""A soak run: `dockyard serve` as deployed, under a mixed load for a long time, watched minute by minute.

    python bench/soak.py [--minutes 30] [--clients 16] [--json soak.json] [--keep]

16 clients (threads, each on its own connection) push small images (a config and one to three layers, monolithic
or chunked), pull them (manifest by tag and by digest, every blob), list tags and the catalog, and delete images,
while garbage collection runs on a schedule (`gc_interval` 60 s). Each minute the run reports, for that minute:
requests done and failed, the server-side latency (p50 and p99 of `duration_ms` from Dockyard's own access log,
so the client's scheduling does not count), and the resident memory of every worker process (sum of RSS, and the
largest). At the end: whether latency and worker memory stayed flat (the last minutes against the first after a
warm-up), and the largest worker's RSS against the 80 MiB goal. Not part of the test suite: it takes half an hour.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import dockyard, format_size, main_guard, process_tree, progress, vm_rss  # noqa: E402

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
WARM_UP_MINUTES = 2


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Client(threading.Thread):
    def __init__(self, url: str, number: int, stop: threading.Event, counts: dict, lock: threading.Lock):
        super().__init__(daemon=True, name=f"soak-{number}")
        self.url, self.number, self.stop, self.counts, self.lock = url, number, stop, counts, lock
        self.http = requests.Session()
        self.rng = random.Random(number)
        self.tags: list[tuple[str, str]] = []

    def count(self, ok: bool) -> None:
        with self.lock:
            self.counts["ok" if ok else "failed"] += 1

    def request(self, method: str, path: str, **kwargs) -> requests.Response | None:
        try:
            r = self.http.request(method, self.url + path, timeout=60, **kwargs)
        except requests.RequestException:
            self.count(False)
            return None
        self.count(r.status_code < 500)
        return r

    def push(self) -> None:
        repo = f"soak/c{self.number}/r{self.rng.randrange(20)}"
        tag = f"t{self.rng.randrange(10**6)}"
        layers = [os.urandom(self.rng.randrange(1024, 256 * 1024)) for _ in range(self.rng.randrange(1, 4))]
        config = json.dumps({"os": "linux", "tag": tag}).encode()
        for blob in (config, *layers):
            if self.rng.random() < 0.5:
                self.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": digest(blob)}, data=blob)
            else:
                r = self.request("POST", f"/v2/{repo}/blobs/uploads/")
                if r is None or r.status_code != 202:
                    continue
                location = r.headers["Location"].split("/v2/", 1)[1]
                half = len(blob) // 2
                r = self.request("PATCH", f"/v2/{location}", data=blob[:half])
                if r is None or r.status_code != 202:
                    continue
                location = r.headers["Location"].split("/v2/", 1)[1]
                self.request("PUT", f"/v2/{location}", params={"digest": digest(blob)}, data=blob[half:])
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": digest(config), "size": len(config)},
                               "layers": [{"mediaType": "application/octet-stream", "digest": digest(layer),
                                           "size": len(layer)} for layer in layers]})
        r = self.request("PUT", f"/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": MANIFEST})
        if r is not None and r.status_code == 201:
            self.tags.append((repo, tag))

    def pull(self) -> None:
        if not self.tags:
            return
        repo, tag = self.rng.choice(self.tags)
        r = self.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST})
        if r is None or r.status_code != 200:
            return
        self.request("GET", f"/v2/{repo}/manifests/{r.headers['Docker-Content-Digest']}",
                     headers={"Accept": MANIFEST})
        document = r.json()
        for descriptor in [document["config"], *document["layers"]]:
            self.request("GET", f"/v2/{repo}/blobs/{descriptor['digest']}")

    def list(self) -> None:
        if self.tags:
            self.request("GET", f"/v2/{self.rng.choice(self.tags)[0]}/tags/list", params={"n": 50})
        self.request("GET", "/v2/_catalog", params={"n": 100})

    def delete(self) -> None:
        if len(self.tags) < 5:
            return
        repo, tag = self.tags.pop(self.rng.randrange(len(self.tags)))
        r = self.request("HEAD", f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST})
        if r is not None and r.status_code == 200:
            self.request("DELETE", f"/v2/{repo}/manifests/{r.headers['Docker-Content-Digest']}")

    def run(self) -> None:
        actions = [self.push] * 3 + [self.pull] * 5 + [self.list] * 2 + [self.delete]
        while not self.stop.is_set():
            self.rng.choice(actions)()


def worker_rss(server_pid: int) -> list[int]:
    """Resident memory of each worker process (the server's children), bytes."""
    return [vm_rss(pid) for pid in process_tree(server_pid) if pid != server_pid]


def latencies(log_path: Path, offset: int) -> tuple[list[float], dict[str, list[float]], int]:
    """The server-side durations logged since `offset`: all of them, and by request kind ("PUT push", "GET pull")."""
    durations, by_kind = [], {}
    with open(log_path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    complete = data.rfind(b"\n") + 1
    for line in data[:complete].splitlines():
        try:
            entry = json.loads(line)
            durations.append(entry["duration_ms"])
        except (ValueError, KeyError):
            continue
        by_kind.setdefault(f"{entry.get('method')} {entry.get('action')}", []).append(entry["duration_ms"])
    return durations, by_kind, offset + complete


def tree_size(path: Path) -> int:
    """Bytes of the files under `path`; a file garbage collection or a commit removes meanwhile counts 0."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except FileNotFoundError:
                pass
    return total


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def run(args) -> int:
    """The soak in a new temporary directory, removed at the end (also on an error or Ctrl-C) unless --keep."""
    workdir = Path(tempfile.mkdtemp(prefix="dockyard-soak-"))
    try:
        return soak(args, workdir)
    finally:
        size = format_size(tree_size(workdir))
        if args.keep:
            print(f"data directory kept: {workdir} ({size})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"data directory {workdir} ({size}) removed")


def soak(args, workdir: Path) -> int:
    access_log = workdir / "access.log"
    config = workdir / "dockyard.toml"
    config.write_text(f'gc_interval = 60\ngc_delete_untagged = true\n\n[[middleware]]\nname = "logging"\n'
                      f'[middleware.options]\nfile = "{access_log}"\n')
    rows = []
    with dockyard(workdir, settings={"config": str(config)}) as target:
        url = f"http://127.0.0.1:{target.port}"
        stop, lock = threading.Event(), threading.Lock()
        counts = {"ok": 0, "failed": 0}
        clients = [Client(url, n, stop, counts, lock) for n in range(args.clients)]
        for client in clients:
            client.start()
        offset, done_before = 0, {"ok": 0, "failed": 0}
        try:
            for minute in range(1, args.minutes + 1):
                time.sleep(60)
                durations, by_kind, offset = latencies(access_log, offset)
                rss = worker_rss(target.pid)
                with lock:
                    done = dict(counts)
                row = {"minute": minute, "requests": done["ok"] - done_before["ok"],
                       "failed": done["failed"] - done_before["failed"],
                       "p50_ms": round(statistics.median(durations), 2) if durations else None,
                       "p99_ms": round(percentile(durations, 0.99), 2),
                       "workers": len(rss), "rss_max_mib": round(max(rss) / 2**20, 1) if rss else None,
                       "rss_sum_mib": round(sum(rss) / 2**20, 1),
                       "p50_by_kind_ms": {kind: round(statistics.median(values), 2)
                                          for kind, values in sorted(by_kind.items())},
                       "data_bytes": tree_size(workdir / "data")}
                done_before = done
                rows.append(row)
                progress(f"minute {minute:3d}: {row['requests']:6d} requests ({row['failed']} failed), "
                         f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, workers {row['workers']}: "
                         f"largest {row['rss_max_mib']} MiB, all {row['rss_sum_mib']} MiB; "
                         f"data {format_size(row['data_bytes'])}")
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=120)
    steady = rows[WARM_UP_MINUTES:] or rows
    first, last = steady[: max(1, len(steady) // 5)], steady[-max(1, len(steady) // 5):]
    summary = {
        "minutes": args.minutes, "clients": args.clients, "requests": sum(r["requests"] for r in rows),
        "failed": sum(r["failed"] for r in rows),
        "rss_max_first_mib": max(r["rss_max_mib"] for r in first), "rss_max_last_mib": max(r["rss_max_mib"] for r in last),
        "p99_first_ms": statistics.median(r["p99_ms"] for r in first),
        "p99_last_ms": statistics.median(r["p99_ms"] for r in last),
    }
    kinds = sorted({kind for row in rows for kind in row["p50_by_kind_ms"]})
    summary["p50_by_kind_first_last_ms"] = {
        kind: [statistics.median(r["p50_by_kind_ms"].get(kind, 0) for r in part) for part in (first, last)]
        for kind in kinds}
    summary["rss_flat"] = summary["rss_max_last_mib"] <= summary["rss_max_first_mib"] * 1.15 + 2
    summary["latency_flat"] = summary["p99_last_ms"] <= summary["p99_first_ms"] * 1.5 + 5
    summary["rss_goal_met"] = summary["rss_max_last_mib"] <= 80
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    return 0 if summary["failed"] == 0 and summary["rss_flat"] and summary["latency_flat"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--json", help="write every minute's row and the summary here")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (it grows ~0.7 GB a minute)")
    args = parser.parse_args()
    return main_guard(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
