"""The machine's limits for a blob push, measured in the same run as the pushes they bound.

A push cannot go faster than the slowest of three things this machine does for it:

- **hashing** on one core: sha256 over 1 MiB buffers, with `hashlib` (OpenSSL) and with Dockyard's own
  `ResumableSha256` (OpenSSL's SHA256_Update through ctypes, loaded from server/storage/hashing.py by path, so no
  install is needed); the limit is the faster of the two.
- **fsync'd writing** to the filesystem of the data directories: a new file written sequentially in 1 MiB writes,
  fsync'd, closed, removed. Two ways: through the page cache (what a plain writer does, the reference registry
  included), and with O_DIRECT (straight to the device). The limit is the faster: the best this filesystem can do
  with the bytes made durable.
- **loopback TCP**: one connection on 127.0.0.1, sent as the benchmark client sends a blob (sendfile from the
  payload file) and received with recv_into a 1 MiB buffer, in two threads of this process.

`measure` runs all three once (a few seconds); callers measure once per round, beside the pushes, and keep the
median of each. `Limits.lowest` is the bound a push is judged against (`fraction`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import mmap
import os
import socket
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import HOST, BenchError

REPO_ROOT = Path(__file__).resolve().parent.parent
BLOCK = 1 << 20
HASH_BYTES = 512 << 20


@dataclass(frozen=True)
class Limits:
    """One measurement of each limit, in MB/s (10^6 bytes per second)."""

    sha256_hashlib: float
    sha256_resumable: float | None  # None when libcrypto's SHA256_* functions are not there
    write_page_cache: float
    write_direct: float | None  # None when the filesystem refuses O_DIRECT (tmpfs)
    loopback: float

    @property
    def sha256(self) -> float:
        return max(self.sha256_hashlib, self.sha256_resumable or 0.0)

    @property
    def write(self) -> float:
        return max(self.write_page_cache, self.write_direct or 0.0)

    @property
    def lowest(self) -> tuple[str, float]:
        """The name and speed of the limit that bounds a push."""
        return min((("sha256", self.sha256), ("fsync'd write", self.write), ("loopback", self.loopback)),
                   key=lambda item: item[1])

    def as_dict(self) -> dict:
        return asdict(self) | {"sha256": self.sha256, "write": self.write, "lowest": self.lowest[1],
                               "lowest_is": self.lowest[0]}


def median_limits(measured: list[Limits]) -> Limits | None:
    """Each limit's median over the rounds (each field on its own)."""
    if not measured:
        return None

    def med(name: str) -> float | None:
        values = [getattr(m, name) for m in measured if getattr(m, name) is not None]
        return statistics.median(values) if values else None

    return Limits(*(med(name) for name in Limits.__dataclass_fields__))


def fraction(speed: float | None, limits: Limits | None) -> float | None:
    """`speed` as a fraction of the lowest limit."""
    if speed is None or limits is None or not limits.lowest[1]:
        return None
    return speed / limits.lowest[1]


# --- The measurements ---------------------------------------------------------------------------------------


def _resumable_sha256():
    path = REPO_ROOT / "server" / "storage" / "hashing.py"
    spec = importlib.util.spec_from_file_location("_dockyard_hashing", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        module.ResumableSha256()
    except Exception:  # noqa: BLE001 - no libcrypto with the SHA256_* functions: that figure is left out
        return None
    return module.ResumableSha256


def hash_speed(make, total: int = HASH_BYTES) -> float:
    buffer = bytearray(os.urandom(BLOCK))
    view = memoryview(buffer)
    hasher = make()
    hasher.update(view)  # warm: libcrypto's code and the buffer
    started = time.perf_counter()
    for _ in range(total // BLOCK):
        hasher.update(view)
    hasher.digest()
    return total / (time.perf_counter() - started) / 1e6


def write_speed(directory: Path, total: int, direct: bool) -> float | None:
    """Write `total` bytes to a new file in `directory` in 1 MiB writes, fsync, close; MB/s. None: no O_DIRECT."""
    buffer = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT wants
    buffer.write(os.urandom(BLOCK))
    path = directory / f".limits-{os.getpid()}-{time.monotonic_ns()}"
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | (os.O_DIRECT if direct else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        if direct:
            return None
        raise
    try:
        started = time.perf_counter()
        for _ in range(total // BLOCK):
            os.write(fd, buffer)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        seconds = time.perf_counter() - started
    finally:
        if fd >= 0:
            os.close(fd)
        path.unlink(missing_ok=True)
        buffer.close()
    return total / seconds / 1e6


def loopback_speed(payload_file, total: int) -> float:
    """One TCP connection on 127.0.0.1: sendfile from `payload_file` (the client's way), recv_into 1 MiB."""
    with socket.create_server((HOST, 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    failure: list[BaseException] = []

    def send() -> None:
        try:
            sent = 0
            while sent < total:
                count = min(total - sent, os.fstat(payload_file.fileno()).st_size)
                sent += sender.sendfile(payload_file, 0, count)
        except BaseException as exc:  # noqa: BLE001 - reported by the receiving side
            failure.append(exc)
        finally:
            sender.close()

    buffer = memoryview(bytearray(BLOCK))
    received = 0
    with receiver:
        thread = threading.Thread(target=send, name="loopback-send", daemon=True)
        started = time.perf_counter()
        thread.start()
        while count := receiver.recv_into(buffer):
            received += count
        seconds = time.perf_counter() - started
        thread.join()
    if failure or received != total:
        raise BenchError(f"loopback measurement: received {received} of {total} bytes ({failure})")
    return total / seconds / 1e6


def measure(directory: Path, payload_file, total: int) -> Limits:
    """All three limits, once; writes of `total` bytes in `directory`, `total` bytes over loopback."""
    resumable = _resumable_sha256()
    total = max(BLOCK, total // BLOCK * BLOCK)
    return Limits(
        sha256_hashlib=hash_speed(hashlib.sha256),
        sha256_resumable=hash_speed(resumable) if resumable else None,
        write_page_cache=write_speed(directory, total, direct=False),
        write_direct=write_speed(directory, total, direct=True),
        loopback=loopback_speed(payload_file, total),
    )


def describe(limits: Limits) -> str:
    direct = "-" if limits.write_direct is None else f"{limits.write_direct:.0f}"
    resumable = "-" if limits.sha256_resumable is None else f"{limits.sha256_resumable:.0f}"
    return (f"limits: sha256 {limits.sha256_hashlib:.0f} (hashlib) / {resumable} (ResumableSha256), fsync'd write "
            f"{limits.write_page_cache:.0f} (page cache) / {direct} (O_DIRECT), loopback {limits.loopback:.0f} MB/s")
