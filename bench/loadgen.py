"""A small HTTP/1.1 load generator for registries, bounded in time: slow pushers, image pullers, manifest readers.

Every client is an asyncio task with one keep-alive connection of its own to 127.0.0.1:port; the clients are spread
over a few processes (`run`), each with its own event loop, so that the generator is not one GIL. Three classes:

- **pushers** push blobs as docker does (POST, one PATCH with a `Transfer-Encoding: chunked` body, PUT ?digest=),
  each body paced at `push_rate` bytes/s; every blob is distinct (a shared random payload, then 32 bytes of its
  own, so its sha256 is the payload's saved hash plus 32 bytes). Latency: from the POST to the 201.
- **pullers** pull one image again and again: the manifest by tag, then every blob it lists, each body read to the
  end. Latency: the whole image.
- **readers** GET the manifest by digest again and again. Latency: one request.

All clients connect before the clock starts, and the processes start together at a given wall-clock time. The
window is `seconds` long. Operations started within it are recorded (latency or error); they are given up to
`grace` seconds more to finish, and meanwhile every client keeps the load on with operations that are not
recorded, so the last recorded ones do not finish on an idle server. Rates count the operations that also ended
within the window; throughput counts the bytes that arrived (or left, for pushers) within it. Any unexpected
status, a broken connection or a request slower than `timeout` is an error, counted per class with the first few
messages; the client then reconnects and goes on.

`static=True` (the ceiling: nginx serving the same bytes as files) expects the same answers; nginx there throws
upload bodies away and answers with a fixed Location.

Python 3.11 standard library only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

HOST = "127.0.0.1"
PIECE = 64 * 1024  # bytes per write of a paced body (one chunk of the chunked encoding)
READ = 256 * 1024
TAIL = 32  # bytes that make each pushed blob distinct
MANIFEST_ACCEPT = (
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"
)
CLASSES = ("pushers", "pullers", "readers")
MAX_MESSAGES = 5


@dataclass(frozen=True)
class Workload:
    """What one run asks of one registry (or of the static ceiling)."""

    port: int
    repository: str  # the image pulled
    tag: str
    digest: str  # the manifest's
    blobs: tuple[tuple[str, int], ...]  # (digest, size) of the config and the layers, in pull order
    push_repository: str
    pushers: int
    pullers: int
    readers: int
    push_size: int
    push_rate: int  # bytes per second per pusher
    seconds: float
    timeout: float = 30.0
    grace: float = 15.0
    static: bool = False


@dataclass
class ClassResult:
    """One class of clients in one process (or merged over processes)."""

    operations: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    bytes: int = 0  # moved within the window
    errors: int = 0
    messages: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message[:300])

    def merge(self, other: ClassResult) -> None:
        self.operations += other.operations
        self.latencies_ms += other.latencies_ms
        self.bytes += other.bytes
        self.errors += other.errors
        self.messages = (self.messages + other.messages)[:MAX_MESSAGES]


@dataclass
class RunResult:
    seconds: float  # the window
    classes: dict[str, ClassResult]
    cpu_seconds: float  # the generator's own CPU (user + system), all processes

    @classmethod
    def merged(cls, parts: list[RunResult]) -> RunResult:
        classes = {name: ClassResult() for name in CLASSES}
        for part in parts:
            for name in CLASSES:
                classes[name].merge(part.classes[name])
        return cls(max(p.seconds for p in parts), classes, sum(p.cpu_seconds for p in parts))


class HttpError(Exception):
    pass


class Client:
    """One keep-alive HTTP/1.1 connection, reconnected after an error or a `Connection: close`."""

    def __init__(self, port: int, timeout: float):
        self.port = port
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.port, limit=1 << 20), self.timeout)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
                      counter=None, paced=None, paced_seconds: float = 0.0) -> tuple[int, dict[str, str]]:
        """Send a request and read its answer to the end; `counter(n)` sees the body bytes as they arrive.
        `paced` (an async iterator of byte strings, taking about `paced_seconds`) is sent as a chunked body."""
        bound = self.timeout if paced is None else self.timeout + paced_seconds
        try:
            return await asyncio.wait_for(self._request(method, path, headers or {}, body, counter, paced), bound)
        except BaseException:
            self.close()
            raise

    async def _request(self, method, path, headers, body, counter, paced):
        await self.connect()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        if paced is not None:
            lines.append("Transfer-Encoding: chunked")
        elif body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        if paced is not None:
            async for piece in paced:
                self.writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await self.writer.drain()
            self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), self.timeout)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        answer = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                answer[name.strip().lower()] = value.strip()
        if method != "HEAD" and status not in (204, 304):
            await self._read_body(answer, counter)
        if answer.get("connection", "").lower() == "close":
            self.close()
        return status, answer

    async def _read_body(self, answer: dict[str, str], counter) -> None:
        reader = self.reader
        if "chunked" in answer.get("transfer-encoding", "").lower():
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return
                await self._discard(size, counter)
                await reader.readexactly(2)
        elif "content-length" in answer:
            await self._discard(int(answer["content-length"]), counter)
        else:  # until the server closes
            while data := await asyncio.wait_for(reader.read(READ), self.timeout):
                if counter:
                    counter(len(data))
            self.close()

    async def _discard(self, remaining: int, counter) -> None:
        while remaining > 0:
            data = await asyncio.wait_for(self.reader.read(min(remaining, READ)), self.timeout)
            if not data:
                raise HttpError("the connection closed in the middle of a body")
            remaining -= len(data)
            if counter:
                counter(len(data))


def _path(location: str) -> str:
    """The path and query of a Location (absolute or not): every request goes to 127.0.0.1:port."""
    if "://" in location:
        location = "/" + location.split("://", 1)[1].partition("/")[2]
    return location


class Generator:
    """The clients of one process."""

    def __init__(self, work: Workload, share: dict[str, int], seed: int):
        self.work = work
        self.share = share
        self.results = {name: ClassResult() for name in CLASSES}
        self.seed = seed
        self.start = self.deadline = 0.0
        payload = hashlib.sha256(b"%d" % seed).digest() * ((work.push_size - TAIL) // 32 + 1)
        self.payload = payload[:work.push_size - TAIL]
        self.payload_hash = hashlib.sha256(self.payload)
        self.pushes = 0
        self.in_flight = 0  # operations started within the window, not ended yet

    def going(self) -> bool:
        """Whether a client starts another operation: always within the window; after it, only while operations
        that started within it are still running (so those finish under the same load), at most `grace` s."""
        now = time.monotonic()
        if now < self.deadline:
            return True
        return self.in_flight > 0 and now < self.deadline + self.work.grace

    def counter(self, result: ClassResult):
        def count(n: int) -> None:
            if time.monotonic() < self.deadline:
                result.bytes += n
        return count

    async def loop(self, name: str, client: Client, operation) -> None:
        """Run `operation` again and again. Operations started within the window are recorded: their latency, or
        their error; those that also ended within it count for the rate."""
        result = self.results[name]
        while self.going():
            recorded = time.monotonic() < self.deadline
            self.in_flight += recorded
            started = time.monotonic()
            try:
                await operation(client, result)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    HttpError, ValueError) as exc:
                if recorded:
                    result.error(f"{name}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)
            else:
                ended = time.monotonic()
                if recorded:
                    result.latencies_ms.append((ended - started) * 1e3)
                    result.operations += ended < self.deadline
            finally:
                self.in_flight -= recorded

    async def push(self, client: Client, result: ClassResult) -> None:
        work = self.work
        self.pushes += 1
        tail = hashlib.sha256(b"%d %d %d %f" % (self.seed, id(client), self.pushes, time.time())).digest()
        hasher = self.payload_hash.copy()
        hasher.update(tail)
        digest = f"sha256:{hasher.hexdigest()}"
        status, headers = await client.request("POST", f"/v2/{work.push_repository}/blobs/uploads/")
        if status != 202 or "location" not in headers:
            raise HttpError(f"POST upload: {status}")
        status, headers = await client.request(
            "PATCH", _path(headers["location"]), {"Content-Type": "application/octet-stream"},
            paced=self.paced(self.payload + tail, result), paced_seconds=work.push_size / work.push_rate)
        if status != 202 or "location" not in headers:
            raise HttpError(f"PATCH upload: {status}")
        location = _path(headers["location"])
        status, _ = await client.request("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}")
        if status != 201:
            raise HttpError(f"PUT upload: {status}")

    async def paced(self, data: bytes, result: ClassResult):
        rate = self.work.push_rate
        began = time.monotonic()
        view = memoryview(data)
        for offset in range(0, len(data), PIECE):
            wait = began + offset / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            piece = view[offset:offset + PIECE]
            if time.monotonic() < self.deadline:
                result.bytes += len(piece)
            yield bytes(piece)

    async def pull(self, client: Client, result: ClassResult) -> None:
        work = self.work
        count = self.counter(result)
        accept = {"Accept": MANIFEST_ACCEPT}
        status, _ = await client.request("GET", f"/v2/{work.repository}/manifests/{work.tag}", accept, counter=count)
        if status != 200:
            raise HttpError(f"GET manifest by tag: {status}")
        for digest, _size in work.blobs:
            status, _ = await client.request("GET", f"/v2/{work.repository}/blobs/{digest}", counter=count)
            if status != 200:
                raise HttpError(f"GET blob: {status}")

    async def read(self, client: Client, result: ClassResult) -> None:
        work = self.work
        status, _ = await client.request("GET", f"/v2/{work.repository}/manifests/{work.digest}",
                                         {"Accept": MANIFEST_ACCEPT}, counter=self.counter(result))
        if status != 200:
            raise HttpError(f"GET manifest by digest: {status}")

    async def run(self, start_at: float) -> RunResult:
        work = self.work
        roles = ([("pushers", self.push)] * self.share["pushers"] + [("pullers", self.pull)] * self.share["pullers"]
                 + [("readers", self.read)] * self.share["readers"])
        clients = [Client(work.port, work.timeout) for _ in roles]
        await asyncio.gather(*(client.connect() for client in clients))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.start = time.monotonic()
        self.deadline = self.start + work.seconds
        tasks = [asyncio.create_task(self.loop(name, client, operation))
                 for (name, operation), client in zip(roles, clients)]
        await asyncio.sleep(work.seconds)
        end = resource.getrusage(resource.RUSAGE_SELF)  # the generator's CPU within the window
        done, pending = await asyncio.wait(tasks, timeout=work.grace + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
        for client in clients:
            client.close()
        cpu = (end.ru_utime - usage.ru_utime) + (end.ru_stime - usage.ru_stime)
        return RunResult(work.seconds, self.results, cpu)


def _process(work: Workload, share: dict[str, int], seed: int, start_at: float) -> RunResult:
    raise_file_limit()
    return asyncio.run(Generator(work, share, seed).run(start_at))


def shares(work: Workload, processes: int) -> list[dict[str, int]]:
    """Clients of each class spread over `processes` as evenly as possible."""
    counts = {"pushers": work.pushers, "pullers": work.pullers, "readers": work.readers}
    return [{name: count // processes + (1 if index < count % processes else 0) for name, count in counts.items()}
            for index in range(processes)]


def raise_file_limit() -> int:
    """The soft open-file limit up to the hard one; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def run(work: Workload, processes: int = 2, start_at: float | None = None) -> RunResult:
    """The workload from `processes` processes at once, the window starting at wall-clock `start_at` (default: in
    a couple of seconds, once every client has connected); their results merged."""
    if start_at is None:
        start_at = start_time(work)
    with ProcessPoolExecutor(processes, mp_context=get_context("fork")) as pool:
        futures = [pool.submit(_process, work, share, os.getpid() * 100 + index, start_at)
                   for index, share in enumerate(shares(work, processes))]
        return RunResult.merged([future.result() for future in futures])


def start_time(work: Workload, delay: float = 2.0) -> float:
    """A wall-clock start leaving every process time to fork and connect all its clients first."""
    return time.time() + delay + 0.01 * (work.pushers + work.pullers + work.readers)
