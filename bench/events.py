"""Issue 17: what events cost a push. Pushes per second with and without one notification endpoint configured.

    python bench/events.py [--pushes 200] [--threads 8] [--rounds 10] [--database sqlite|postgresql] [--json PATH]

Two `dockyard serve` (default workers), each with a data directory of its own: `without` has no endpoint, `with`
has one `[[notifications]]` endpoint with the defaults (every push of a blob and of a manifest is an event: three
outbox rows per image), posting to a receiver this script runs (a threaded HTTP server on 127.0.0.1 answering 200
and counting events). A push is what a client sends for the smallest image: two blob uploads (POST, then PUT with
the body) and the manifest PUT by tag, on one keep-alive connection per thread; every image is distinct.

One warm-up round (discarded), then `--rounds` timed rounds; in each, both servers get `--pushes` pushes from
`--threads` threads, the order flipping every round. Before the next measurement starts, the `with` server's
sender must have delivered every event of the round (so its delivery never runs during the other's round); how
long that took after the last push is reported too. Besides pushes per second, each round counts the CPU time the
server's processes used (from /proc, delivery included), which other tenants of the machine do not change. Rounds
are short and many so that each pair runs under the same load: the ratio is the median of the rounds' ratios.
The goal: `with` within 10% of `without` (ratio >= 0.9). With `--database postgresql`, both run on one PostgreSQL
started for the run (a database each, `dockyard migrate`d).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (DOCKYARD_CMD, HOST, BenchError, _executable, alternate, cell, cpu_seconds,  # noqa: E402
                     dockyard, load_average, main_guard, median, nproc, parse_size, progress)
from postgres import postgres  # noqa: E402
from seed import Seeder, image_config  # noqa: E402

GOAL = 0.9
DRAIN_TIMEOUT = 300.0


class Receiver:
    """The endpoint: counts the events of every envelope it is sent and answers 200."""

    def __init__(self) -> None:
        self.events = 0
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                count = len(json.loads(body).get("events", []))
                with receiver._lock:
                    receiver.events += count
                    receiver.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self._lock:
            return self.events

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def push_round(port: int, label: str, pushes: int, threads: int, layer_size: int = 4096) -> float:
    """`pushes` distinct images (a config and one layer of `layer_size` bytes) from `threads` threads; pushes per
    second."""
    layer = os.urandom(layer_size)

    def push(conn, index) -> None:
        config = image_config(f"{label}-{index}")
        conn.push_image(f"bench/events{index % 4}", config, [f"{label}-{index}".encode() + layer], f"t{index}")

    seeder = Seeder(port, threads)
    started = time.perf_counter()
    seeder.run(push, range(pushes))
    return pushes / (time.perf_counter() - started)



def wait_delivered(receiver: Receiver, expected: int) -> float:
    """Seconds until the receiver has `expected` events."""
    started = time.monotonic()
    while receiver.count() < expected:
        if time.monotonic() - started > DRAIN_TIMEOUT:
            raise BenchError(f"only {receiver.count()} of {expected} events arrived within {DRAIN_TIMEOUT:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - started


def run(args: argparse.Namespace) -> int:
    progress(f"nproc {nproc()}; load average (1 min) {load_average():.2f} at start")
    start_load = load_average()
    results: dict[str, list[float]] = {"without": [], "with": []}
    cpu: dict[str, list[float]] = {"without": [], "with": []}  # server CPU ms per push
    drains: list[float] = []
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-events-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        receiver = Receiver()
        stack.callback(receiver.close)
        databases = {"without": "", "with": ""}
        if args.database == "postgresql":
            server = stack.enter_context(postgres(workdir))
            server.run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "dockyard", "dockyard_events")
            databases = {"without": server.url, "with": server.url + "_events"}
            for url in databases.values():
                subprocess.run([_executable("dockyard"), "migrate", "--database", url], check=True,
                               capture_output=True, timeout=300)
        targets = {}
        for name in ("without", "with"):
            directory = workdir / name
            directory.mkdir()
            config = directory / "dockyard.toml"
            text = f'database = "{databases[name]}"\n' if databases[name] else ""
            if name == "with":
                text += f'[[notifications]]\nname = "bench"\nurl = "{receiver.url}"\n'
            config.write_text(text)
            targets[name] = stack.enter_context(dockyard(directory, f"{DOCKYARD_CMD} --config {config}", name=name))
        delivered = 0
        for number in range(args.rounds + 1):
            warm_up = number == 0
            pushes = max(args.pushes // 5, 20) if warm_up else args.pushes
            for name in alternate(["without", "with"], number):
                before = cpu_seconds(targets[name].pid)
                rate = push_round(targets[name].port, f"r{number}", pushes, args.threads, args.layer_size)
                if name == "with":
                    delivered += 3 * pushes
                    drain = wait_delivered(receiver, delivered)
                    if not warm_up:
                        drains.append(drain)
                used = (cpu_seconds(targets[name].pid) - before) * 1000 / pushes
                if not warm_up:
                    results[name].append(rate)
                    cpu[name].append(used)
                progress(f"round {number}{' (warm-up)' if warm_up else ''}: {name} {rate:.0f} pushes/s, "
                         f"server CPU {used:.2f} ms per push")
    without, with_ = median(results["without"]), median(results["with"])
    ratio = median([w / wo for w, wo in zip(results["with"], results["without"])])
    cpu_without, cpu_with = median(cpu["without"]), median(cpu["with"])
    cpu_ratio = median([wo / w for w, wo in zip(cpu["with"], cpu["without"])])
    end_load = load_average()
    lines = [
        f"python bench/events.py --pushes {args.pushes} --threads {args.threads} --rounds {args.rounds} "
        f"--layer-size {args.layer_size} --database {args.database}    "
        f"({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})",
        f"nproc {nproc()}; load average (1 min) {start_load:.2f} at start, {end_load:.2f} at end",
        f"{args.rounds} round(s) after 1 discarded warm-up, the two servers alternating; "
        f"{args.pushes} pushes of 2 blobs (config, {args.layer_size}-byte layer) + 1 manifest from {args.threads} "
        "threads",
        f"{'figure':<44} {'unit':<10} {'without':>8} {'with':>8} {'ratio':>6}  {'goal':<9} met",
        "-" * 97,
        f"{'pushes, one endpoint (3 events per push)':<44} {'pushes/s':<10} {cell(without):>8} {cell(with_):>8} "
        f"{cell(ratio):>6}  {'>= 0.9x':<9} {'yes' if ratio is not None and ratio >= GOAL else 'NO'}",
        f"{'  server CPU per push (delivery included)':<44} {'ms':<10} {cell(cpu_without):>8} {cell(cpu_with):>8} "
        f"{cell(cpu_ratio):>6}  {'>= 0.9x':<9} {'yes' if cpu_ratio is not None and cpu_ratio >= GOAL else 'NO'}",
        f"{'  all events delivered, after the last push':<44} {'s':<10} {'-':>8} {cell(median(drains)):>8}",
        "ratio: the median of the rounds' ratios (with / without; for CPU, without / with: higher is cheaper)",
        f"rounds, pushes/s: without {[round(r) for r in results['without']]}, "
        f"with {[round(r) for r in results['with']]}",
        f"rounds, CPU ms per push: without {[round(c, 2) for c in cpu['without']]}, "
        f"with {[round(c, 2) for c in cpu['with']]}",
    ]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"table": lines, "without": results["without"],
                                               "with": results["with"], "drain_seconds": drains, "cpu_ms": cpu,
                                               "ratio": ratio, "load": [start_load, end_load]}, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=200, help="pushes per round and server (default 200)")
    parser.add_argument("--threads", type=int, default=8, help="pushing threads (default 8)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--layer-size", type=parse_size, default=4096,
                        help="bytes of each image's layer (default 4096: the smallest pushes, where the events' "
                             "constant cost weighs most)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    return main_guard(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
