"""Issue 16: a cold and a warm pull of a 5-layer image through a pull-through cache, Dockyard next to the reference
registry in proxy mode (`proxy.remoteurl`), both in front of the same upstream.

    python bench/proxy.py                        # 5 layers of 48, 24, 16, 8 and 4 MiB; 3 rounds (+1 warm-up)
    python bench/proxy.py --layers 8MiB,4MiB,2MiB,1MiB,1MiB --rounds 1     # a quick look
    python bench/proxy.py --json proxy.json

Three servers on free 127.0.0.1 ports, each with a data directory of its own: the upstream (the reference registry
as Debian ships it, no auth), Dockyard (`dockyard serve`, default workers) with an `[[upstreams]]` table serving
the `bench` namespace from it, and the reference registry with `proxy.remoteurl` set to it. Both caches serve the
same repository names, so a client makes the same requests to each.

Every round pushes two new images to the upstream (random layers, nothing shared), one per cache, and on each cache
in turn (the order flipping every round) pulls its image once from cold, then `--warm` times more: a pull is what
docker does, the manifest GET by tag with docker's Accept header, then the config and the layers, three layers at a
time (docker's default), each read to the end and its sha256 checked; the time is from the first request to the
last byte. The same pull straight from the upstream is measured once per round for reference. Medians over the
timed rounds; the warm-up round is discarded. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import (HOST, REFERENCE_CONFIG, BenchError, Target, alternate, cell, dockyard, format_size,  # noqa: E402
                     free_port, load_average, main_guard, median, nproc, parse_size, progress, ratio,
                     reference_registry, server_process)
from seed import DOCKER_ACCEPT, Connection, image_config  # noqa: E402

REPOSITORY = "bench/proxied"
PARALLEL_LAYERS = 3  # docker's max-concurrent-downloads
READ = 1024 * 1024

# The reference as the other benchmarks run it (harness.REFERENCE_CONFIG), in proxy mode.
PROXY_CONFIG = REFERENCE_CONFIG + """\
proxy:
  remoteurl: {remote}
"""

DOCKYARD_CONFIG = """\
[[upstreams]]
name = "upstream"
url = "{url}"
namespaces = ["bench"]
"""


def reference_proxy(workdir: Path, upstream: Target) -> object:
    binary = shutil.which("docker-registry")
    if not binary:
        raise BenchError("the reference registry is missing: apt-get -o DPkg::Lock::Timeout=300 install -y "
                         "docker-registry")
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(PROXY_CONFIG.format(root=json.dumps(str(workdir / "data")), addr=f"{HOST}:{port}",
                                          remote=json.dumps(f"http://{HOST}:{upstream.port}")))
    return server_process("reference", [binary, "serve", str(config)], port, workdir / "server.log")


def dockyard_cache(workdir: Path, upstream: Target) -> object:
    config = workdir / "dockyard.toml"
    config.write_text(DOCKYARD_CONFIG.format(url=f"http://{HOST}:{upstream.port}"))
    return dockyard(workdir, f"dockyard serve --bind 127.0.0.1:{{port}} --data {{data}} --config {config}")


def push_image(port: int, tag: str, sizes: list[int]) -> dict:
    """A new image of random layers under `tag` in the upstream; what a pull must find."""
    conn = Connection(port, timeout=300)
    try:
        layers = [os.urandom(size) for size in sizes]
        image = conn.push_image(REPOSITORY, image_config(f"{tag}-{time.time_ns()}"), layers, tag)
        return {"tag": tag, "digest": image.digest, "bytes": sum(sizes)}
    finally:
        conn.close()


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes, str]:
    with closing(http.client.HTTPConnection(HOST, port, timeout=300)) as conn:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        hasher, size = hashlib.sha256(), 0
        buffer = bytearray(READ)
        view = memoryview(buffer)
        body = b""
        while n := response.readinto(buffer):
            hasher.update(view[:n])
            size += n
            if size <= 4 * 1024 * 1024 and "/manifests/" in path:
                body += bytes(view[:n])
        return response.status, body, f"sha256:{hasher.hexdigest()}"


def pull(port: int, tag: str) -> float:
    """docker's pull of `tag`: seconds from the first request to the last byte, every digest checked."""
    started = time.perf_counter()
    status, manifest, digest = _get(port, f"/v2/{REPOSITORY}/manifests/{tag}", {"Accept": DOCKER_ACCEPT})
    if status != 200:
        raise BenchError(f"port {port}: manifest {tag} answered {status}: {manifest[:300]!r}")
    document = json.loads(manifest)
    blobs = [document["config"]["digest"]] + [layer["digest"] for layer in document["layers"]]

    def fetch(blob: str) -> None:
        got_status, _, got = _get(port, f"/v2/{REPOSITORY}/blobs/{blob}")
        if got_status != 200 or got != blob:
            raise BenchError(f"port {port}: blob {blob} answered {got_status} with content {got}")

    fetch(blobs[0])
    with ThreadPoolExecutor(PARALLEL_LAYERS) as pool:
        list(pool.map(fetch, blobs[1:]))
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> int:
    sizes = [parse_size(part) for part in args.layers.split(",")]
    total = sum(sizes)
    workdir = Path(tempfile.mkdtemp(prefix="dockyard-bench-proxy-"))
    results: dict = {"dockyard": {"cold": [], "warm": []}, "reference": {"cold": [], "warm": []}, "direct": []}
    load_start = load_average()
    try:
        with ExitStack() as stack:
            for name in ("upstream", "dockyard", "reference"):
                (workdir / name).mkdir()
            upstream = stack.enter_context(reference_registry(workdir / "upstream"))
            caches = {"dockyard": stack.enter_context(dockyard_cache(workdir / "dockyard", upstream)),
                      "reference": stack.enter_context(reference_proxy(workdir / "reference", upstream))}
            progress(f"upstream :{upstream.port}, dockyard :{caches['dockyard'].port}, "
                     f"reference proxy :{caches['reference'].port}; image {len(sizes)} layers, {format_size(total)}")
            for number in range(args.rounds + 1):
                label = "warm-up" if number == 0 else f"round {number}"
                images = {name: push_image(upstream.port, f"r{number}-{name}", sizes) for name in caches}
                direct = push_image(upstream.port, f"r{number}-direct", sizes)
                subprocess.run(["sync"], check=False)
                direct_seconds = pull(upstream.port, direct["tag"])
                for name in alternate(list(caches), number):
                    subprocess.run(["sync"], check=False)
                    cold = pull(caches[name].port, images[name]["tag"])
                    warm = median([pull(caches[name].port, images[name]["tag"]) for _ in range(args.warm)])
                    progress(f"{label}: {name}: cold {cold:.2f} s ({total / cold / 1e6:.0f} MB/s), warm {warm:.2f} s "
                             f"({total / warm / 1e6:.0f} MB/s)")
                    if number:
                        results[name]["cold"].append(cold)
                        results[name]["warm"].append(warm)
                progress(f"{label}: straight from the upstream {direct_seconds:.2f} s")
                if number:
                    results["direct"].append(direct_seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_end = load_average()

    rows = []
    for figure, key in (("cold pull (uncached: fetched from the upstream)", "cold"),
                        ("warm pull (cached)", "warm")):
        dy, ref = median(results["dockyard"][key]), median(results["reference"][key])
        rows.append((f"{figure}", "MB/s", total / dy / 1e6, total / ref / 1e6))
        rows.append((f"  {key}, seconds", "s", dy, ref))
    direct = median(results["direct"])
    print(f"python bench/proxy.py --layers {args.layers} --rounds {args.rounds} --warm {args.warm}    "
          f"({time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC)")
    print(f"nproc {nproc()}; load average (1 min) {load_start:.2f} at start, {load_end:.2f} at end")
    print(f"image: {len(sizes)} layers, {format_size(total)} ({', '.join(format_size(s) for s in sizes)}); "
          f"median of {args.rounds} round(s) after 1 discarded warm-up, the two caches alternating; "
          f"warm = median of {args.warm} pulls; 1 MB = 10^6 bytes; ratio = dockyard / reference (MB/s: higher "
          "is better)")
    print(f"{'figure':<52} {'unit':<6} {'dockyard':>9} {'reference':>10} {'ratio':>7}")
    print("-" * 88)
    for figure, unit, dy, ref in rows:
        value_ratio = ratio(dy, ref)
        print(f"{figure:<52} {unit:<6} {cell(dy):>9} {cell(ref):>10} {cell(value_ratio):>7}")
    print(f"note: the same pull straight from the upstream, no cache: {direct:.2f} s ({total / direct / 1e6:.0f} MB/s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": sizes, "results": results, "rows": rows,
                                               "load": [load_start, load_end]}, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="48MiB,24MiB,16MiB,8MiB,4MiB", help="layer sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--warm", type=int, default=3, help="warm pulls per round (their median is kept)")
    parser.add_argument("--json", help="also write every value to this file")
    args = parser.parse_args()
    if args.rounds < 1 or args.warm < 1:
        parser.error("--rounds and --warm must be at least 1")
    return main_guard(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
