"""Blob throughput of Dockyard and the reference registry, side by side.

Run from the repository root:

    python bench/blobs.py [--size 1GiB] [--chunk 8MiB] [--rounds 3] [--only dockyard|reference]
                          [--dockyard-cmd CMD] [--json PATH] [--selftest]

The script starts each registry itself on a free 127.0.0.1 port with a fresh temporary data directory,
then measures three figures per registry: a monolithic push (POST, then one PUT with the whole body), a
chunked push (POST, one PATCH per chunk, then an empty PUT) and a pull (GET, read and discard). Each round
runs both registries, in alternating order; a first warm-up round is discarded and the table shows medians.
While a figure runs, a thread samples the resident memory of the server and all its child processes.

Every blob is a distinct 32-byte header followed by the same payload, a file of random bytes written once,
so the registries cannot deduplicate, the client never holds a blob in memory, and bodies go out with
sendfile(2) from the page cache, the cheapest way this machine measured for the client to send.
`--selftest` runs the same client against an in-process sink to show the client is not the bottleneck.

Linux only (it reads /proc); Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import http.server
import io
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import limits
from harness import (
    DOCKYARD_CMD,
    HOST,
    BenchError,
    RssSampler,
    Target,
    alternate,
    cell,
    dockyard,
    format_size,
    load_average,
    main_guard,
    nproc,
    parse_size,
    progress,
    ratio,
    reference_registry,
)

REPOSITORY = "bench/throughput"
HEADER_SIZE = 32  # a sha256 digest: distinct for every blob of every run
PATTERN_SIZE = 8 << 20  # random bytes repeated to fill the payload file
READ_SIZE = 1 << 20  # pull and hash buffer; 256 KiB-1 MiB reads were fastest on loopback here
REQUEST_TIMEOUT = 300.0  # seconds for any one socket operation
SELFTEST_FLOOR_MB_S = 2000.0
FIGURES = {
    "push_monolithic": "push, monolithic",
    "push_chunked": "push, chunked",
    "pull": "pull",
    "pull_again": "pull again",
}
PROXY_FIGURE = "pull_proxy"  # measured only when run_rounds is given a proxy in front of a registry
FIGURES_WITH_PROXY = FIGURES | {PROXY_FIGURE: "pull through nginx"}


# --- Blob content -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """A file of `size` random bytes shared by every blob of a run; blob content from offset 32 on."""

    file: io.FileIO
    size: int

    def blob(self, label: str) -> Blob:
        """A new blob whose header is derived from `label`; hashes the whole blob once (untimed)."""
        header = hashlib.sha256(label.encode()).digest()[: self.size]
        hasher = hashlib.sha256(header)
        buffer = memoryview(bytearray(READ_SIZE))
        for offset in range(len(header), self.size, READ_SIZE):
            count = os.preadv(self.file.fileno(), [buffer[: min(READ_SIZE, self.size - offset)]], offset)
            hasher.update(buffer[:count])
        return Blob(header, self, f"sha256:{hasher.hexdigest()}")


@contextmanager
def payload_file(path: Path, size: int) -> Iterator[Payload]:
    """Write the payload, random bytes repeated, and keep it open for sendfile."""
    pattern = memoryview(os.urandom(PATTERN_SIZE))
    with open(path, "wb", buffering=0) as out:
        out.writelines(pattern[: size - offset] for offset in range(0, size, PATTERN_SIZE))
    with open(path, "rb", buffering=0) as file:
        yield Payload(file, size)


@dataclass(frozen=True)
class Blob:
    """Content = header + payload[len(header):payload.size]; never materialised in memory."""

    header: bytes
    payload: Payload
    digest: str

    @property
    def size(self) -> int:
        return self.payload.size

    def send(self, sock: socket.socket, start: int, end: int) -> None:
        """Send bytes [start, end) of the blob: the header part with sendall, the rest with sendfile."""
        if start < len(self.header):
            sock.sendall(self.header[start:end])
            start = len(self.header)
        if start < end and sock.sendfile(self.payload.file, start, end - start) != end - start:
            raise BenchError("payload file is shorter than the blob")


# --- The client ---------------------------------------------------------------------------------------------


class RegistryClient:
    """The blob endpoints of one registry on 127.0.0.1, over http.client with bodies sent by sendfile.

    Only the path and query of a Location header are followed: every request goes to 127.0.0.1:port.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._buffer = memoryview(bytearray(b"\xa5") * READ_SIZE)  # touched now, reused by every pull

    def push_monolithic(self, blob: Blob) -> None:
        with self._connect() as conn:
            url = self._start_upload(conn)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
            response = _exchange(conn, "PUT", _with_digest(url, blob), 201, headers, blob, 0, blob.size)
            _check_digest(response, blob)

    def push_chunked(self, blob: Blob, chunk: int) -> None:
        with self._connect() as conn:
            url = self._start_upload(conn)
            for start in range(0, blob.size, chunk):
                end = min(start + chunk, blob.size)
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{end - 1}",
                    "Content-Length": str(end - start),
                }
                url = _location(_exchange(conn, "PATCH", url, 202, headers, blob, start, end))
            response = _exchange(conn, "PUT", _with_digest(url, blob), 201, {"Content-Length": "0"})
            _check_digest(response, blob)

    def pull(self, blob: Blob, verify: bool = False) -> None:
        """GET the blob, read it in large reads and check its length (and, to verify, its sha256)."""
        hasher = hashlib.sha256() if verify else None
        received = 0
        with self._connect() as conn:
            url = f"/v2/{REPOSITORY}/blobs/{blob.digest}"
            response = _exchange(conn, "GET", url, 200, {}, stream=True)
            while count := response.readinto(self._buffer):
                received += count
                if received > blob.size:
                    raise BenchError(f"GET {url}: more than the {blob.size} bytes pushed")
                if hasher:
                    hasher.update(self._buffer[:count])
        if received != blob.size:
            raise BenchError(f"GET {url}: {received} bytes, expected {blob.size}")
        if hasher and f"sha256:{hasher.hexdigest()}" != blob.digest:
            raise BenchError(f"GET {url}: the content has digest sha256:{hasher.hexdigest()}")

    def _connect(self) -> closing[http.client.HTTPConnection]:
        return closing(http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT))

    def _start_upload(self, conn: http.client.HTTPConnection) -> str:
        response = _exchange(conn, "POST", f"/v2/{REPOSITORY}/blobs/uploads/", 202, {"Content-Length": "0"})
        return _location(response)


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    url: str,
    status: int,
    headers: dict[str, str],
    blob: Blob | None = None,
    start: int = 0,
    end: int = 0,
    *,
    stream: bool = False,
) -> http.client.HTTPResponse:
    """Send one request (with bytes [start, end) of `blob` as body) and insist on `status`.

    The answer's body is read, so the connection can be reused, unless `stream` asks to leave it.
    """
    conn.putrequest(method, url)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    if blob is not None:
        try:
            blob.send(conn.sock, start, end)
        except OSError as exc:
            raise BenchError(f"{method} {url}: sending the body failed ({exc}); {_early_answer(conn)}") from exc
    response = conn.getresponse()
    if response.status != status:
        raise BenchError(f"{method} {url}: expected {status}, got {response.status}: {response.read(500)!r}")
    if not stream:
        response.read()
    return response


def _early_answer(conn: http.client.HTTPConnection) -> str:
    """What a server said before it closed on a body it did not read, if anything."""
    try:
        response = conn.getresponse()
        return f"the server answered {response.status}: {response.read(500)!r}"
    except (OSError, http.client.HTTPException):
        return "no answer from the server"


def _location(response: http.client.HTTPResponse) -> str:
    location = response.getheader("Location")
    if not location:
        raise BenchError(f"a {response.status} answer without a Location header")
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _with_digest(url: str, blob: Blob) -> str:
    return f"{url}{'&' if '?' in url else '?'}digest={blob.digest}"


def _check_digest(response: http.client.HTTPResponse, blob: Blob) -> None:
    answered = response.getheader("Docker-Content-Digest")
    if answered and answered != blob.digest:
        raise BenchError(f"pushed {blob.digest} but the registry answered Docker-Content-Digest {answered}")


# --- The in-process sink for --selftest ---------------------------------------------------------------------

UPLOAD_PATH = re.compile(r"/v2/(?P<repository>.+)/blobs/uploads/(?P<upload>[^/]*)")
BLOB_PATH = re.compile(r"/v2/(?P<repository>.+)/blobs/(?P<digest>[^/]+)")


@dataclass
class _Upload:
    header: bytes = b""
    length: int = 0


class _Sink(http.server.ThreadingHTTPServer):
    """Just enough of the blob API to take this benchmark's pushes and serve its pulls, at memory speed.

    An upload keeps only its first 32 bytes and its length; a pull sends them back followed by the payload,
    which is what the pushed content was, so the sink stores nothing big and verification still works.
    """

    daemon_threads = True

    def __init__(self, payload: Payload) -> None:
        super().__init__((HOST, 0), _SinkHandler)
        self.payload = payload
        self.uploads: dict[str, _Upload] = {}
        self.blobs: dict[str, _Upload] = {}


class _SinkHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Sink

    def setup(self) -> None:
        super().setup()
        self.buffer = memoryview(bytearray(READ_SIZE))

    def log_message(self, format: str, *args: object) -> None:
        """Keep the benchmark's output clean: the sink logs nothing."""

    def do_GET(self) -> None:
        match = BLOB_PATH.fullmatch(self.path)
        if self.path == "/v2/":
            self._answer(200, {}, b"{}")
        elif match and (stored := self.server.blobs.get(match["digest"])):
            self._answer(200, {"Content-Length": str(stored.length)})
            Blob(stored.header, self.server.payload, match["digest"]).send(self.connection, 0, stored.length)
        else:
            self._answer(404)

    def do_POST(self) -> None:
        repository = UPLOAD_PATH.fullmatch(self.path)["repository"]
        upload = uuid.uuid4().hex
        self.server.uploads[upload] = _Upload()
        self._answer(202, {"Location": f"/v2/{repository}/blobs/uploads/{upload}"})

    def do_PATCH(self) -> None:
        upload = self.server.uploads[UPLOAD_PATH.fullmatch(self.path)["upload"]]
        self._receive(upload)
        self._answer(202, {"Location": self.path, "Range": f"0-{upload.length - 1}"})

    def do_PUT(self) -> None:
        path, _, query = self.path.partition("?")
        match = UPLOAD_PATH.fullmatch(path)
        upload = self.server.uploads.pop(match["upload"])
        self._receive(upload)
        digest = parse_qs(query)["digest"][0]
        self.server.blobs[digest] = upload
        self._answer(201, {"Location": f"/v2/{match['repository']}/blobs/{digest}", "Docker-Content-Digest": digest})

    def _receive(self, upload: _Upload) -> None:
        """Read the request body into a reused buffer, keeping only the upload's first 32 bytes."""
        remaining = int(self.headers.get("Content-Length", 0))
        while remaining:
            count = self.rfile.readinto(self.buffer[: min(remaining, READ_SIZE)])
            if not count:
                raise ConnectionError("the client closed the connection in the middle of a body")
            upload.header += bytes(self.buffer[: min(count, HEADER_SIZE - len(upload.header))])
            upload.length += count
            remaining -= count

    def _answer(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(body))} | (headers or {})
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def sink(payload: Payload) -> Iterator[Target]:
    server = _Sink(payload)
    thread = threading.Thread(target=server.serve_forever, name="sink", daemon=True)
    thread.start()
    try:
        yield Target("sink", server.server_address[1], None, ["(in-process sink)"])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- Rounds -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    seconds: float
    size: int
    peak_process: int | None  # bytes; None when there is no server process to sample
    peak_total: int | None
    first_process: int | None = None  # bytes: the largest process at the start, before the work

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6


@dataclass
class TargetResults:
    target: Target
    warmup: dict[str, Measurement]
    rounds: dict[str, list[Measurement]]
    limits: list[limits.Limits] = field(default_factory=list)  # one per timed round, when measured

    def median_mb_per_s(self, figure: str) -> float:
        return statistics.median(m.mb_per_s for m in self.rounds[figure])

    def peak(self, figure: str, attribute: str) -> int | None:
        """The largest peak over the timed rounds: memory is judged by its worst case."""
        peaks = [getattr(m, attribute) for m in self.rounds[figure]]
        return None if None in peaks else max(peaks)


def measure(target: Target, size: int, action: Callable[[], None]) -> Measurement:
    os.sync()  # the previous figure's writes are flushed now, not while this one runs
    sampler = RssSampler(target.pid) if target.pid else None
    with sampler or nullcontext():
        started = time.perf_counter()
        action()
        seconds = time.perf_counter() - started
    if sampler is None:
        return Measurement(seconds, size, None, None)
    return Measurement(seconds, size, sampler.peak_process, sampler.peak_total, sampler.first_process)


def run_figures(
    target: Target, client: RegistryClient, mono: Blob, chunked: Blob, chunk: int, proxy: RegistryClient | None
) -> dict[str, Measurement]:
    figures = {
        "push_monolithic": measure(target, mono.size, lambda: client.push_monolithic(mono)),
        "push_chunked": measure(target, chunked.size, lambda: client.push_chunked(chunked, chunk)),
        "pull": measure(target, mono.size, lambda: client.pull(mono)),
        "pull_again": measure(target, mono.size, lambda: client.pull(mono)),
    }
    if proxy:
        figures[PROXY_FIGURE] = measure(target, mono.size, lambda: proxy.pull(mono))
    return figures


def run_rounds(
    targets: list[Target],
    payload: Payload,
    rounds: int,
    chunk: int,
    proxies: dict[str, int] | None = None,
    limits_in: Path | None = None,
) -> list[TargetResults]:
    """One warm-up round, then `rounds` timed ones; the order of the targets flips every round.

    `proxies` maps a target's name to the port of a proxy in front of it (nginx): the monolithic blob is then
    also pulled through it, as figure PROXY_FIGURE. With `limits_in` (a directory on the data directories'
    filesystem), the machine's limits (`limits.measure`) are measured at the start of every timed round and kept
    in each result's `limits`.
    """
    proxies = proxies or {}
    figure_names = list(FIGURES) + ([PROXY_FIGURE] if proxies else [])
    results = {t.name: TargetResults(t, {}, {figure: [] for figure in figure_names}) for t in targets}
    clients = {t.name: RegistryClient(t.port) for t in targets}
    proxy_clients = {name: RegistryClient(port) for name, port in proxies.items()}
    run_id = os.urandom(16).hex()
    for number in range(rounds + 1):
        name = "warm-up round" if number == 0 else f"round {number}/{rounds}"
        progress(f"{name}: hashing two new {format_size(payload.size)} blobs")
        mono = payload.blob(f"{run_id} round {number} monolithic")
        chunked = payload.blob(f"{run_id} round {number} chunked")
        if limits_in is not None and number > 0:
            os.sync()
            measured = limits.measure(limits_in, payload.file, payload.size)
            progress(f"  {limits.describe(measured)}")
            for result in results.values():
                result.limits.append(measured)
        for target in alternate(targets, number):
            client = clients[target.name]
            proxy = proxy_clients.get(target.name)
            figures = run_figures(target, client, mono, chunked, chunk, proxy)
            if number == 0:
                client.pull(mono, verify=True)
                client.pull(chunked, verify=True)
                if proxy:
                    proxy.pull(mono, verify=True)
                results[target.name].warmup = figures
            else:
                for figure, measurement in figures.items():
                    results[target.name].rounds[figure].append(measurement)
            note = " (warm-up, discarded; both blobs pulled back and their sha256 checked)" if number == 0 else ""
            progress(
                f"  {target.name:<9} "
                + ", ".join(f"{FIGURES_WITH_PROXY[f]} {m.mb_per_s:.0f} MB/s" for f, m in figures.items())
                + note
            )
    return list(results.values())


# --- Report -------------------------------------------------------------------------------------------------


def measured(results: list[TargetResults]) -> dict[str, str]:
    """The figures these results hold, with their labels, in table order."""
    return {f: label for f, label in FIGURES_WITH_PROXY.items() if f in results[0].rounds}


PUSH_FIGURES = ("push_monolithic", "push_chunked")


def round_limits(results: list[TargetResults]) -> limits.Limits | None:
    """Each limit's median over the timed rounds (all targets share one machine and one measurement per round)."""
    return limits.median_limits(results[0].limits) if results and results[0].limits else None


def table_rows(results: list[TargetResults]) -> list[tuple[str, list[float | None]]]:
    figures = measured(results)
    rows = [(f"{label} (MB/s)", [r.median_mb_per_s(figure) for r in results]) for figure, label in figures.items()]
    if machine := round_limits(results):
        name, _ = machine.lowest
        for figure in PUSH_FIGURES:
            if figure in figures:
                rows.append((f"{FIGURES[figure]}, % of lowest limit ({name})",
                             [100 * limits.fraction(r.median_mb_per_s(figure), machine) for r in results]))
    for attribute, what in (("peak_process", "peak RSS largest process"), ("peak_total", "peak RSS all processes")):
        for figure, label in figures.items():
            peaks = [r.peak(figure, attribute) for r in results]
            if any(p is not None for p in peaks):  # the in-process sink has no memory of its own to show
                rows.append((f"{what}, {label} (MiB)", [None if p is None else p / (1 << 20) for p in peaks]))
    return rows


def has_ratio(results: list[TargetResults]) -> bool:
    return [r.target.name for r in results] == ["dockyard", "reference"]


def format_table(results: list[TargetResults]) -> str:
    rows = table_rows(results)
    names = [r.target.name for r in results] + (["ratio"] if has_ratio(results) else [])
    width = max(len(label) for label, _ in rows)
    lines = [f"{'figure':<{width}}" + "".join(f"{name:>12}" for name in names)]
    for label, values in rows:
        if has_ratio(results):
            values = [*values, ratio(*values)]
        lines.append(f"{label:<{width}}" + "".join(f"{cell(value):>12}" for value in values))
    if machine := round_limits(results):
        lines.append(f"\nmachine, median of {len(results[0].limits)} rounds: {limits.describe(machine)}; "
                     f"lowest: {machine.lowest[0]}")
    return "\n".join(lines)


def figures_json(r: TargetResults) -> dict:
    """Every figure of one registry: the median, every round, the warm-up, the memory peaks."""

    def figure_json(figure: str) -> dict:
        return {
            "mb_per_s_median": r.median_mb_per_s(figure),
            "mb_per_s_rounds": [m.mb_per_s for m in r.rounds[figure]],
            "mb_per_s_warmup": r.warmup[figure].mb_per_s,
            "peak_rss_largest_process_bytes": r.peak(figure, "peak_process"),
            "peak_rss_all_processes_bytes": r.peak(figure, "peak_total"),
            "rss_largest_process_at_start_bytes": r.peak(figure, "first_process"),
        }

    return {figure: figure_json(figure) for figure in r.rounds} | {
        "limits_rounds": [m.as_dict() for m in r.limits]}


def as_json(results: list[TargetResults], args: argparse.Namespace, load: tuple[float, float]) -> dict:
    document = {
        "size_bytes": args.size,
        "chunk_bytes": args.chunk,
        "rounds": args.rounds,
        "warmup_rounds": 1,
        "nproc": nproc(),
        "loadavg_1min": {"start": load[0], "end": load[1]},
        "registries": {r.target.name: {"command": r.target.command, "figures": figures_json(r)} for r in results},
    }
    if has_ratio(results):
        dockyard_results, reference_results = results
        document["ratios_dockyard_over_reference"] = {
            f: dockyard_results.median_mb_per_s(f) / reference_results.median_mb_per_s(f) for f in measured(results)
        }
    if machine := round_limits(results):
        document["limits_median_mb_per_s"] = machine.as_dict()
    return document


def selftest_verdict(results: TargetResults) -> bool:
    passed = True
    for figure, label in FIGURES.items():
        speed = results.median_mb_per_s(figure)
        ok = speed >= SELFTEST_FLOOR_MB_S
        passed &= ok
        print(f"client {label}: {speed:.0f} MB/s, {'ok' if ok else 'TOO SLOW'} (needs >= {SELFTEST_FLOOR_MB_S:.0f})")
    return passed


# --- Command line -------------------------------------------------------------------------------------------


def check_disk(workdir: Path, size: int, rounds: int, registries: int) -> None:
    """The payload, plus two blobs per round per registry, all kept until the end, plus the limits' test file."""
    needed = size * (2 + 2 * (rounds + 1) * registries)
    free = shutil.disk_usage(workdir).free
    if free < needed * 1.1:
        raise BenchError(
            f"{workdir} has {free / 1e9:.1f} GB free but this run writes {needed / 1e9:.1f} GB: "
            "point TMPDIR elsewhere or lower --size or --rounds"
        )


def start_targets(stack: ExitStack, workdir: Path, args: argparse.Namespace, payload: Payload) -> list[Target]:
    if args.selftest:
        return [stack.enter_context(sink(payload))]
    targets = []
    for name in [args.only] if args.only else ["dockyard", "reference"]:
        (workdir / name).mkdir()
        progress(f"starting {name}")
        server = (
            dockyard(workdir / name, args.dockyard_cmd) if name == "dockyard" else reference_registry(workdir / name)
        )
        targets.append(stack.enter_context(server))
    return targets


def run(args: argparse.Namespace) -> int:
    load_start = load_average()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dockyard-bench-")))
        check_disk(workdir, args.size, args.rounds, 0 if args.selftest else 1 if args.only else 2)
        progress(f"writing the {format_size(args.size)} payload in {workdir}")
        payload = stack.enter_context(payload_file(workdir / "payload", args.size))
        targets = start_targets(stack, workdir, args, payload)
        results = run_rounds(targets, payload, args.rounds, args.chunk,
                             limits_in=None if args.selftest else workdir)
        load_end = load_average()
        progress("stopping the registries and removing their data")
    print(
        f"\nblob throughput: {format_size(args.size)} blobs, {format_size(args.chunk)} chunks, "
        f"median of {args.rounds} rounds after 1 discarded warm-up; 1 MB = 10^6 bytes"
    )
    print(
        f"nproc {nproc()}; load average (1 min) {load_start:.2f} at start, {load_end:.2f} at end\n"
    )
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(as_json(results, args, (load_start, load_end)), indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    if args.selftest:
        print()
        return 0 if selftest_verdict(results[0]) else 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default="1GiB", help="blob size (default 1GiB)")
    parser.add_argument(
        "--chunk", type=parse_size, default="8MiB", help="PATCH size of the chunked push (default 8MiB)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up (default 3)")
    parser.add_argument("--only", choices=["dockyard", "reference"], help="measure one registry")
    parser.add_argument(
        "--dockyard-cmd",
        default=DOCKYARD_CMD,
        help=f"command that serves Dockyard; {{port}} and {{data}} are filled in (default: {DOCKYARD_CMD!r})",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--selftest", action="store_true", help="measure the client against an in-process sink")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.selftest and args.only:
        parser.error("--selftest measures the client alone: it takes no --only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return main_guard(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
