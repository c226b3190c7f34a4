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
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, closing, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
REPOSITORY = "bench/throughput"
HEADER_SIZE = 32  # a sha256 digest: distinct for every blob of every run
PATTERN_SIZE = 8 << 20  # random bytes repeated to fill the payload file
READ_SIZE = 1 << 20  # pull and hash buffer; 256 KiB-1 MiB reads were fastest on loopback here
REQUEST_TIMEOUT = 300.0  # seconds for any one socket operation
READY_TIMEOUT = 60.0  # seconds for a server to answer GET /v2/ with 200
STOP_TIMEOUT = 40.0  # seconds between SIGTERM and SIGKILL (gunicorn's graceful timeout is 30 s)
RSS_INTERVAL = 0.05  # seconds between RSS samples
RSS_RESCAN_EVERY = 20  # samples between two walks of /proc for new child processes
SELFTEST_FLOOR_MB_S = 2000.0
FIGURES = {
    "push_monolithic": "push, monolithic",
    "push_chunked": "push, chunked",
    "pull": "pull",
}
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}


class BenchError(Exception):
    """A failure the user should read: a registry misbehaved or the machine cannot run the benchmark."""


def parse_size(text: str) -> int:
    """Parse '1GiB', '256MiB', '8MB' or a plain byte count."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B|B)?\s*", text, re.IGNORECASE)
    if not match or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r} (examples: 1GiB, 256MiB, 8MB, 4096)")
    return int(match[1]) * UNITS[(match[2] or "").upper()]


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


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


# --- Memory of the server -----------------------------------------------------------------------------------


class RssSampler:
    """Peak VmRSS of a process and all its descendants, sampled by a thread every RSS_INTERVAL seconds."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak_process = 0  # bytes: the largest single process (with gunicorn, the largest worker)
        self.peak_total = 0  # bytes: the largest sum over the whole tree at one instant
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pids = process_tree(self.root)
        self._sample(pids)
        samples = 1
        while not self._stop.wait(RSS_INTERVAL):
            if samples % RSS_RESCAN_EVERY == 0:  # gunicorn may have replaced a worker
                pids = process_tree(self.root)
            self._sample(pids)
            samples += 1

    def _sample(self, pids: list[int]) -> None:
        sizes = [vm_rss(pid) for pid in pids]
        self.peak_process = max(self.peak_process, max(sizes))
        self.peak_total = max(self.peak_total, sum(sizes))


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, found through the parent pid in every /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (parent := _parent_pid(entry.name)) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _parent_pid(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # the process has gone
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the command name may hold spaces and parentheses


def vm_rss(pid: int) -> int:
    """Resident set size in bytes; 0 for a process that has gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- The registries -----------------------------------------------------------------------------------------

DOCKYARD_CMD = "dockyard serve --bind 127.0.0.1:{port} --data {data}"
REFERENCE_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {addr}
"""


@dataclass(frozen=True)
class Target:
    """A registry to measure; `pid` roots the process tree whose memory is sampled (None: in-process)."""

    name: str
    port: int
    pid: int | None
    command: list[str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def reference_registry(workdir: Path) -> AbstractContextManager[Target]:
    binary = shutil.which("docker-registry")
    if not binary:
        raise BenchError(
            "the reference registry is missing: apt-get -o DPkg::Lock::Timeout=300 install -y docker-registry"
        )
    port = free_port()
    config = workdir / "config.yml"
    # JSON strings are YAML strings: quoting the path keeps any character in it literal.
    config.write_text(REFERENCE_CONFIG.format(root=json.dumps(str(workdir / "data")), addr=f"{HOST}:{port}"))
    return server_process("reference", [binary, "serve", str(config)], port, workdir / "server.log")


def dockyard(workdir: Path, template: str) -> AbstractContextManager[Target]:
    port = free_port()
    data = workdir / "data"
    data.mkdir()
    try:
        argv = [arg.format(port=port, data=data) for arg in shlex.split(template)]
    except (KeyError, IndexError, ValueError) as exc:
        raise BenchError(f"--dockyard-cmd {template!r}: only {{port}} and {{data}} can be filled in ({exc})")
    argv[0] = _executable(argv[0])
    return server_process("dockyard", argv, port, workdir / "server.log")


def _executable(name: str) -> str:
    """`name` on PATH, or beside this Python (a virtualenv's console scripts, not activated)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise BenchError(
            f"{name!r} is neither on PATH nor beside {sys.executable}: install the project (pip install -e .), "
            "pass --dockyard-cmd, or measure the reference alone with --only reference"
        )
    return found


@contextmanager
def server_process(name: str, argv: list[str], port: int, log_path: Path) -> Iterator[Target]:
    """Run `argv` in a session of its own, wait until GET /v2/ answers 200, and stop it on exit."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_ready(name, proc, port, log_path)
        yield Target(name, port, proc.pid, argv)
    finally:
        _stop(name, proc, log_path)


def _wait_ready(name: str, proc: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if (status := _exit_status(proc)) is not None:
            raise BenchError(f"{name} exited with status {status} before it answered GET /v2/ (its log is above)")
        if _v2_status(port) == 200:
            return
        time.sleep(0.1)
    raise BenchError(f"{name} did not answer GET /v2/ with 200 within {READY_TIMEOUT:.0f} s:\n{_tail(log_path)}")


def _v2_status(port: int) -> int | None:
    with closing(http.client.HTTPConnection(HOST, port, timeout=5)) as conn:
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status
        except (OSError, http.client.HTTPException):
            return None


def _stop(name: str, proc: subprocess.Popen, log_path: Path) -> None:
    """SIGTERM the process we started and wait for it; then SIGKILL whatever is left in its session."""
    if (status := _exit_status(proc)) is not None:
        progress(f"{name} had exited by itself with status {status}; the end of its log:\n{_tail(log_path)}")
    else:
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _exit_status(proc) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if _exit_status(proc) is None:
            progress(f"{name} was still running {STOP_TIMEOUT:.0f} s after SIGTERM: killing it")
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the unreaped leader keeps this group id ours
    proc.wait(timeout=STOP_TIMEOUT)


def _exit_status(proc: subprocess.Popen) -> int | None:
    """The exit status of our child if it has ended, without reaping it, so its pid cannot be reused yet."""
    result = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return None if result is None else result.si_status


def _tail(log_path: Path, lines: int = 40) -> str:
    text = log_path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in text) or "  | (its log is empty)"


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

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6


@dataclass
class TargetResults:
    target: Target
    warmup: dict[str, Measurement]
    rounds: dict[str, list[Measurement]]

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
    return Measurement(seconds, size, sampler and sampler.peak_process, sampler and sampler.peak_total)


def run_figures(
    target: Target, client: RegistryClient, mono: Blob, chunked: Blob, chunk: int
) -> dict[str, Measurement]:
    return {
        "push_monolithic": measure(target, mono.size, lambda: client.push_monolithic(mono)),
        "push_chunked": measure(target, chunked.size, lambda: client.push_chunked(chunked, chunk)),
        "pull": measure(target, mono.size, lambda: client.pull(mono)),
    }


def run_rounds(targets: list[Target], payload: Payload, rounds: int, chunk: int) -> list[TargetResults]:
    """One warm-up round, then `rounds` timed ones; the order of the targets flips every round."""
    results = {t.name: TargetResults(t, {}, {figure: [] for figure in FIGURES}) for t in targets}
    clients = {t.name: RegistryClient(t.port) for t in targets}
    run_id = os.urandom(16).hex()
    for number in range(rounds + 1):
        name = "warm-up round" if number == 0 else f"round {number}/{rounds}"
        progress(f"{name}: hashing two new {format_size(payload.size)} blobs")
        mono = payload.blob(f"{run_id} round {number} monolithic")
        chunked = payload.blob(f"{run_id} round {number} chunked")
        for target in targets if number % 2 == 0 else targets[::-1]:
            client = clients[target.name]
            figures = run_figures(target, client, mono, chunked, chunk)
            if number == 0:
                client.pull(mono, verify=True)
                client.pull(chunked, verify=True)
                results[target.name].warmup = figures
            else:
                for figure, measurement in figures.items():
                    results[target.name].rounds[figure].append(measurement)
            note = " (warm-up, discarded; both blobs pulled back and their sha256 checked)" if number == 0 else ""
            progress(
                f"  {target.name:<9} "
                + ", ".join(f"{FIGURES[f]} {m.mb_per_s:.0f} MB/s" for f, m in figures.items())
                + note
            )
    return list(results.values())


# --- Report -------------------------------------------------------------------------------------------------


def table_rows(results: list[TargetResults]) -> list[tuple[str, list[float | None]]]:
    rows = [(f"{label} (MB/s)", [r.median_mb_per_s(figure) for r in results]) for figure, label in FIGURES.items()]
    for attribute, what in (("peak_process", "peak RSS largest process"), ("peak_total", "peak RSS all processes")):
        for figure, label in FIGURES.items():
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
            values = [*values, _ratio(*values)]
        lines.append(f"{label:<{width}}" + "".join(f"{_cell(value):>12}" for value in values))
    return "\n".join(lines)


def _ratio(dockyard_value: float | None, reference_value: float | None) -> float | None:
    if dockyard_value is None or not reference_value:
        return None
    return dockyard_value / reference_value


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 10 else f"{value:.0f}"


def as_json(results: list[TargetResults], args: argparse.Namespace, load: tuple[float, float]) -> dict:
    def figure_json(r: TargetResults, figure: str) -> dict:
        return {
            "mb_per_s_median": r.median_mb_per_s(figure),
            "mb_per_s_rounds": [m.mb_per_s for m in r.rounds[figure]],
            "mb_per_s_warmup": r.warmup[figure].mb_per_s,
            "peak_rss_largest_process_bytes": r.peak(figure, "peak_process"),
            "peak_rss_all_processes_bytes": r.peak(figure, "peak_total"),
        }

    document = {
        "size_bytes": args.size,
        "chunk_bytes": args.chunk,
        "rounds": args.rounds,
        "warmup_rounds": 1,
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg_1min": {"start": load[0], "end": load[1]},
        "registries": {
            r.target.name: {"command": r.target.command, "figures": {f: figure_json(r, f) for f in FIGURES}}
            for r in results
        },
    }
    if has_ratio(results):
        dockyard_results, reference_results = results
        document["ratios_dockyard_over_reference"] = {
            f: dockyard_results.median_mb_per_s(f) / reference_results.median_mb_per_s(f) for f in FIGURES
        }
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


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_disk(workdir: Path, size: int, rounds: int, registries: int) -> None:
    """The payload, plus two blobs per round per registry, all kept until the end."""
    needed = size * (1 + 2 * (rounds + 1) * registries)
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
    load_start = os.getloadavg()[0]
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dockyard-bench-")))
        check_disk(workdir, args.size, args.rounds, 0 if args.selftest else 1 if args.only else 2)
        progress(f"writing the {format_size(args.size)} payload in {workdir}")
        payload = stack.enter_context(payload_file(workdir / "payload", args.size))
        targets = start_targets(stack, workdir, args, payload)
        results = run_rounds(targets, payload, args.rounds, args.chunk)
        load_end = os.getloadavg()[0]
        progress("stopping the registries and removing their data")
    print(
        f"\nblob throughput: {format_size(args.size)} blobs, {format_size(args.chunk)} chunks, "
        f"median of {args.rounds} rounds after 1 discarded warm-up; 1 MB = 10^6 bytes"
    )
    print(
        f"nproc {len(os.sched_getaffinity(0))}; load average (1 min) {load_start:.2f} at start, {load_end:.2f} at end\n"
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except BenchError as exc:
        progress(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        progress("interrupted: registries stopped, temporary files removed")
        return 130


if __name__ == "__main__":
    sys.exit(main())
