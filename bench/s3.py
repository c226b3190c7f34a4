"""Dockyard's s3 blob-store driver next to the reference registry's own s3 driver, both on one real store.

Run from the repository root with the virtualenv's Python (Dockyard's s3 driver needs boto3, `pip install -e
'.[s3]'`; this script itself needs only the standard library):

    .venv/bin/python bench/s3.py [--size 1GiB] [--chunk 8MiB] [--rounds 1] [--duration 5] [--json PATH]

It starts OpenStack Swift with its S3 API on 127.0.0.1 (tests/swift_store.py: the store the tests use; Debian's
swift packages), a bucket for each registry, `dockyard serve` with `[storage] driver = "s3"` (settings as
DOCKYARD_STORAGE_* variables) and the reference, Distribution 2.8.2 (`docker-registry`), with its `s3` driver on the
same store. Both use 8 MiB parts, and serve downloads themselves (Dockyard's `download = "proxy"`, the reference's
`redirect: disable: true`), so the bytes take the same path. Then:

1. Store requests: each registry gets a 5-layer image pushed the way docker pushes (per blob: HEAD, POST, one PATCH
   with the whole blob, PUT ?digest=; then the manifest), then pulled (manifest by tag, config, layers). Swift's
   proxy logs one line per request: the requests each registry made of the store during the push and during the
   pull are counted by method, with server-side copies (x-amz-copy-source) and the bytes the registry GETs from
   the store (during a push: bytes read back).
2. Manifest GETs: `wrk` on GET manifest by tag (docker's Accept header), `--duration` seconds per round, the
   registries alternating, medians.
3. Blobs: exactly bench/blobs.py's rounds (a monolithic push, a chunked push in `--chunk` PATCHes, a pull; a
   discarded warm-up round; medians; memory of the server's processes).

Everything is stopped and removed at the end, also on an error, Ctrl-C or SIGTERM. Like every figure in bench/, the
absolute values depend on what else runs on the machine: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from contextlib import ExitStack
from pathlib import Path

import blobs
from harness import (BenchError, alternate, cell, dockyard, format_size, load_average, main_guard, nproc, parse_size,
                     progress, ratio, reference_registry)
from rates import run_wrk, wrk_binary
from seed import DOCKER_ACCEPT, Connection, Image, image_config, sha256

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import swift_store  # noqa: E402  (tests/: the store the test suite runs, started the same way here)

REPOSITORY = "bench/s3"
PART_SIZE = 8 * 1024 * 1024
LAYER_SIZES = (30 * 1024, 700 * 1024, 3 * 1024 * 1024, 9 * 1024 * 1024, 20 * 1024 * 1024)
REFERENCE_S3 = """\
  s3:
    accesskey: {access_key}
    secretkey: {secret_key}
    region: {region}
    regionendpoint: {endpoint}
    bucket: {bucket}
    secure: false
    v4auth: true
    chunksize: {part_size}
    rootdirectory: /
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
"""


def start_store(stack: ExitStack, workdir: Path) -> swift_store.SwiftStore:
    missing = swift_store.missing_tools()
    if missing:
        raise BenchError(f"{', '.join(missing)} missing: apt-get -o DPkg::Lock::Timeout=300 install -y "
                         f"--no-install-recommends {swift_store.PACKAGES}")
    progress("starting Swift (S3 API) on 127.0.0.1")
    store = swift_store.SwiftStore.start(workdir / "swift")
    stack.callback(store.stop)
    return store


def dockyard_s3(stack: ExitStack, workdir: Path, store, bucket: str):
    settings = {"storage_driver": "s3", "storage_bucket": bucket, "storage_endpoint_url": store.endpoint,
                "storage_region": store.region, "storage_path_style": "true", "storage_access_key_id": store.access_key,
                "storage_secret_access_key": store.secret_key, "storage_part_size": str(PART_SIZE)}
    (workdir / "dockyard").mkdir()
    return stack.enter_context(dockyard(workdir / "dockyard", settings=settings))


def reference_storage(store, bucket: str) -> str:
    """The reference's `storage:` lines for its s3 driver on `store`."""
    # JSON strings are YAML strings: the values stay literal whatever they hold.
    return REFERENCE_S3.format(**{key: json.dumps(value) for key, value in {
        "access_key": store.access_key, "secret_key": store.secret_key, "region": store.region,
        "endpoint": store.endpoint, "bucket": bucket}.items()}, part_size=PART_SIZE)


def reference_s3(stack: ExitStack, workdir: Path, store, bucket: str):
    # aws-sdk-go refuses to start with AWS_CA_BUNDLE set ("unable to load custom CA bundle, HTTPClient's transport
    # unsupported type"); the store is plain HTTP on 127.0.0.1, so no CA is needed by either registry.
    os.environ.pop("AWS_CA_BUNDLE", None)
    (workdir / "reference").mkdir()
    return stack.enter_context(reference_registry(workdir / "reference", storage=reference_storage(store, bucket)))


# --- 1. store requests per push and pull ------------------------------------------------------------------------


def push_like_docker(conn: Connection, repository: str, blob: bytes) -> str:
    """HEAD (absent), POST, one PATCH with the whole blob, PUT ?digest= with no body: what docker sends."""
    digest = sha256(blob)
    head = conn.request("HEAD", f"/v2/{repository}/blobs/{digest}")
    if head.status != 404:
        raise BenchError(f"HEAD of a new blob answered {head.status}")
    location = conn.expect("POST", f"/v2/{repository}/blobs/uploads/", 202).headers["Location"]
    location = conn.expect("PATCH", _path(location), 202, blob, {"Content-Type": "application/octet-stream"}
                           ).headers["Location"]
    path = _path(location)
    conn.expect("PUT", f"{path}{'&' if '?' in path else '?'}digest={digest}", 201)
    return digest


def _path(location: str) -> str:
    """Only the path and query of a Location are followed: every request goes to 127.0.0.1:port."""
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def store_requests(store, bucket: str, offset: int) -> dict:
    time.sleep(1.0)  # the proxy logs a request once it is complete
    logged = [r for r in store.requests_since(offset) if r.path.split("?")[0].split("/")[1:2] == [bucket]]
    return {"requests": len(logged), "by_method": dict(sorted(collections.Counter(r.method for r in logged).items())),
            "copies": sum(r.is_copy for r in logged),
            "bytes_read_back": sum(r.sent for r in logged if r.method == "GET")}


def count_requests(store, targets: dict, buckets: dict) -> dict:
    counts = {}
    run_id = os.urandom(4).hex()
    for name, target in targets.items():
        conn = Connection(target.port)
        layers = [os.urandom(size) for size in LAYER_SIZES]
        config = image_config(f"{run_id} {name}")
        offset = store.log_size()
        config_digest = push_like_docker(conn, REPOSITORY, config)
        refs = [(push_like_docker(conn, REPOSITORY, layer), len(layer)) for layer in layers]
        image = Image.of(config_digest, len(config), refs)
        conn.expect("PUT", f"/v2/{REPOSITORY}/manifests/{run_id}", 201, image.manifest,
                    {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
        push = store_requests(store, buckets[name], offset)
        offset = store.log_size()
        got = conn.expect("GET", f"/v2/{REPOSITORY}/manifests/{run_id}", 200, headers={"Accept": DOCKER_ACCEPT})
        for digest, blob in [(config_digest, config), *((d, layer) for (d, _), layer in zip(refs, layers))]:
            if conn.expect("GET", f"/v2/{REPOSITORY}/blobs/{digest}", 200).body != blob:
                raise BenchError(f"{name}: blob {digest} came back different")
        if got.body != image.manifest:
            raise BenchError(f"{name}: the manifest came back different")
        pull = store_requests(store, buckets[name], offset)
        conn.close()
        counts[name] = {"push": push, "pull": pull}
        progress(f"  {name:<9} push: {push['requests']} store requests {push['by_method']}, "
                 f"{push['copies']} copies; pull: {pull['requests']} {pull['by_method']}")
    return counts


# --- 2. manifest GETs -----------------------------------------------------------------------------------------


def manifest_rounds(targets: dict, rounds: int, duration: float) -> dict:
    for target in targets.values():
        conn = Connection(target.port)
        config = conn.upload_blob(REPOSITORY, image_config("manifest GET"))
        layer = conn.upload_blob(REPOSITORY, b"layer for the manifest GET figure")
        image = Image.of(config, len(image_config("manifest GET")), [(layer, 33)])
        conn.put_manifest(REPOSITORY, "latest", image.manifest)
        conn.close()
    results: dict[str, list] = {name: [] for name in targets}
    for number in range(rounds + 1):
        for name in alternate(list(targets), number):
            result = run_wrk(targets[name].port, f"/v2/{REPOSITORY}/manifests/latest", 2 if number == 0 else duration,
                             {"Accept": DOCKER_ACCEPT})
            if result.errors:
                raise BenchError(f"{name}: {result.errors} errors in the manifest GETs")
            progress(f"  manifest GET {name:<9} {result.requests_per_s:.0f}/s p99 {result.p99_ms:.1f} ms"
                     + (" (warm-up, discarded)" if number == 0 else ""))
            if number:
                results[name].append(result)
    return {name: {"per_s": statistics.median(r.requests_per_s for r in runs),
                   "p99_ms": statistics.median(r.p99_ms for r in runs)} for name, runs in results.items()}


# --- report -----------------------------------------------------------------------------------------------------


def format_report(args, load, counts, manifests, blob_results) -> str:
    lines = [f"bench/s3.py: Dockyard (s3 driver) and the reference (Distribution 2.8.2, s3 driver), one Swift store; "
             f"{format_size(args.size)} blobs, {format_size(args.chunk)} chunks, 8 MiB parts, "
             f"median of {args.rounds} round(s) after a discarded warm-up; 1 MB = 10^6 bytes; ratio = dockyard / "
             "reference",
             f"nproc {nproc()}; load average (1 min) {load[0]:.2f} at start, {load[1]:.2f} at end", ""]
    lines.append(blobs.format_table(blob_results))
    width = 52
    lines.append(f"{'manifest GET by tag (req/s)':<{width}}" + "".join(
        f"{cell(v):>12}" for v in (manifests["dockyard"]["per_s"], manifests["reference"]["per_s"],
                                   ratio(manifests["dockyard"]["per_s"], manifests["reference"]["per_s"]))))
    lines.append(f"{'manifest GET by tag, p99 (ms)':<{width}}" + "".join(
        f"{cell(v):>12}" for v in (manifests["dockyard"]["p99_ms"], manifests["reference"]["p99_ms"],
                                   ratio(manifests["dockyard"]["p99_ms"], manifests["reference"]["p99_ms"]))))
    lines += ["", f"store requests for a 5-layer image ({', '.join(format_size(s) for s in LAYER_SIZES)} + "
                  "config + manifest), pushed as docker does and pulled back; counted in Swift's proxy log"]
    lines.append(f"{'':<24}{'requests':>10}  {'copies':>7}  {'GET bytes':>10}  by method")
    for name in ("dockyard", "reference"):
        for step in ("push", "pull"):
            c = counts[name][step]
            lines.append(f"{name + ', ' + step:<24}{c['requests']:>10}  {c['copies']:>7}  "
                         f"{c['bytes_read_back']:>10}  {c['by_method']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    wrk_binary()
    load_start = load_average()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dockyard-bench-s3-")))
        blobs.check_disk(workdir, args.size, args.rounds, 2)
        store = start_store(stack, workdir)
        buckets = {"dockyard": f"bench-dockyard-{os.urandom(4).hex()}",
                   "reference": f"bench-reference-{os.urandom(4).hex()}"}
        for bucket in buckets.values():
            store.create_bucket(bucket)
        progress("starting dockyard (s3 driver) and the reference (s3 driver)")
        targets = {"dockyard": dockyard_s3(stack, workdir, store, buckets["dockyard"]),
                   "reference": reference_s3(stack, workdir, store, buckets["reference"])}
        progress("store requests per push and pull of a 5-layer image")
        counts = count_requests(store, targets, buckets)
        progress("manifest GETs (wrk)")
        manifests = manifest_rounds(targets, args.rounds, args.duration)
        progress(f"writing the {format_size(args.size)} payload")
        payload = stack.enter_context(blobs.payload_file(workdir / "payload", args.size))
        blob_results = blobs.run_rounds(list(targets.values()), payload, args.rounds, args.chunk)
        load_end = load_average()
        text = format_report(args, (load_start, load_end), counts, manifests, blob_results)
        print("\n" + text)
        if args.json:
            args.json.write_text(json.dumps({
                "size_bytes": args.size, "chunk_bytes": args.chunk, "rounds": args.rounds, "nproc": nproc(),
                "loadavg_1min": {"start": load_start, "end": load_end}, "store_requests": counts,
                "manifest_get": manifests,
                "blobs": {r.target.name: blobs.figures_json(r) for r in blob_results},
                "commands": {name: target.command for name, target in targets.items()}}, indent=2) + "\n")
            print(f"\nresults written to {args.json}")
        progress("stopping the registries and the store, removing their data")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default="1GiB", help="blob size (default 1GiB)")
    parser.add_argument("--chunk", type=parse_size, default="8MiB", help="PATCH size of the chunked push")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds after one warm-up (default 1)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each wrk run (default 5)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return main_guard(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
