"""Request rates: GETs under wrk, sequential tag PUTs, and many small blob uploads from many threads.

- `run_wrk` runs wrk (`--latency`) against one URL on 127.0.0.1 and parses its report: requests/s, the latency
  distribution (p50, p75, p90, p99), socket errors and non-2xx answers. Every run is bounded by a timeout.
- `tag_puts` PUTs one existing manifest under N new tags, one request after the other on one keep-alive
  connection (http.client), and times each.
- `small_uploads` uploads N distinct small blobs from T threads (POST, then PUT ?digest= with the body, each
  thread on its own keep-alive connection) and counts the uploads that failed.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from harness import HOST, BenchError
from seed import Connection

WRK_THREADS = 2
WRK_CONNECTIONS = 32
WRK_TIMEOUT = "10s"  # a slow answer is a slow answer, not a "timeout" error (wrk's default is 2 s)
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    requests: int
    latency_ms: dict[str, float]  # "50%", "75%", "90%", "99%"
    socket_errors: dict[str, int]  # connect, read, write, timeout
    non_2xx: int

    @property
    def p50_ms(self) -> float:
        return self.latency_ms["50%"]

    @property
    def p99_ms(self) -> float:
        return self.latency_ms["99%"]

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def as_dict(self) -> dict:
        return asdict(self) | {"errors": self.errors}


def parse_wrk(output: str) -> WrkResult:
    """The figures of a `wrk --latency` report; a BenchError if any is missing."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    distribution = output.partition("Latency Distribution")[2]
    latency = {
        f"{percent}%": float(value) * UNIT_MS[unit]
        for percent, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", distribution, re.MULTILINE)
    }
    if not rate or not total or not {"50%", "99%"} <= latency.keys():
        raise BenchError(f"cannot read wrk's report:\n{output}")
    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    if errors := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        socket_errors = dict(zip(socket_errors, map(int, errors.groups()), strict=True))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(float(rate[1]), int(total[1]), latency, socket_errors, int(non_2xx[1]) if non_2xx else 0)


def wrk_binary() -> str:
    binary = shutil.which("wrk")
    if not binary:
        raise BenchError("wrk is missing: apt-get -o DPkg::Lock::Timeout=300 install -y wrk")
    return binary


def run_wrk(port: int, path: str, seconds: float, headers: dict[str, str] | None = None) -> WrkResult:
    argv = [
        wrk_binary(), f"--threads={WRK_THREADS}", f"--connections={WRK_CONNECTIONS}", f"--duration={seconds:g}s",
        f"--timeout={WRK_TIMEOUT}", "--latency",
    ]
    for name, value in (headers or {}).items():
        argv += ["--header", f"{name}: {value}"]
    argv.append(f"http://{HOST}:{port}{path}")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk {path} did not finish within {seconds + 60:g} s") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk {path} failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


# --- Sequential tag PUTs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceResult:
    """N requests one after the other: their rate and latency distribution."""

    count: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)

    @property
    def per_s(self) -> float:
        return self.count / self.seconds

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    def as_dict(self) -> dict:
        return {"count": self.count, "seconds": self.seconds, "per_s": self.per_s, "p50_ms": self.p50_ms,
                "p99_ms": self.p99_ms}


def percentile(values: list[float], percent: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * percent // 100))  # ceil
    return ordered[int(rank) - 1]


def tag_puts(port: int, repository: str, manifest: bytes, tags: list[str]) -> SequenceResult:
    """PUT `manifest` (already in `repository`) under each of `tags`, sequentially, on one connection."""
    conn = Connection(port)
    latencies = []
    try:
        conn.put_manifest(repository, f"{tags[0]}-first", manifest)  # the connection is open before timing
        started = time.perf_counter()
        for tag in tags:
            sent = time.perf_counter()
            conn.put_manifest(repository, tag, manifest)
            latencies.append((time.perf_counter() - sent) * 1e3)
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return SequenceResult(len(tags), seconds, latencies)


# --- Small uploads ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadsResult:
    count: int
    seconds: float
    errors: int
    first_error: str | None

    @property
    def per_s(self) -> float:
        return (self.count - self.errors) / self.seconds

    def as_dict(self) -> dict:
        return asdict(self) | {"per_s": self.per_s}


def small_blobs(label: str, count: int, size: int) -> list[bytes]:
    """`count` distinct blobs of `size` bytes (a unique prefix, then random bytes), made before timing."""
    filler = os.urandom(size)
    blobs = []
    for index in range(count):
        prefix = f"{label} {index}\n".encode()
        blobs.append(prefix + filler[len(prefix):])
    return blobs


def small_uploads(port: int, repository: str, blobs: list[bytes], threads: int) -> UploadsResult:
    """Upload every blob (POST + PUT ?digest=) from `threads` threads; a failed upload is counted, not fatal."""
    local = threading.local()
    connections: list[Connection] = []
    lock = threading.Lock()
    errors: list[str] = []

    def upload(blob: bytes) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = Connection(port)
            with lock:
                connections.append(conn)
        try:
            conn.upload_blob(repository, blob)
        except (BenchError, OSError, http.client.HTTPException) as exc:
            conn.close()
            with lock:
                errors.append(str(exc))

    # Open every connection before the clock starts, as a client pool would have.
    with ThreadPoolExecutor(threads, thread_name_prefix="upload") as pool:
        barrier = threading.Barrier(threads, timeout=60)

        def warm(_: int) -> None:
            conn = local.conn = Connection(port)
            with lock:
                connections.append(conn)
            conn.expect("GET", "/v2/", 200)
            barrier.wait()

        list(pool.map(warm, range(threads)))
        started = time.perf_counter()
        list(pool.map(upload, blobs))
        seconds = time.perf_counter() - started
    for conn in connections:
        conn.close()
    return UploadsResult(len(blobs), seconds, len(errors), errors[0] if errors else None)
