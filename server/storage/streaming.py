"""Moving a request body into a store while hashing it, for every driver.

`pump` reads a body block by block and hands each block to the driver's `write`. The first block is handled inline
(most bodies of a registry are small: configs, manifests, chunks). Past it, a second thread hashes each block while
this one receives and writes the next: the hash, `recv` and file or socket writes all release the GIL, so on two
cores a push runs at the speed of the slowest of the three, not their sum.

Blocks come from a `BufferPool` the store keeps for the life of the process: a push writes into memory that earlier
pushes already touched (a freshly allocated megabyte costs 256 page faults, and on these VMs as many hypervisor
faults), and a body takes a further block only when the hashing thread still holds every block it has, so a slow
client (a push at 1 MiB/s) holds two blocks, not BUFFERS.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..bodies import Source

BUFFERS = 4  # blocks in flight between the receiving and the hashing thread, at most
KEEP = 8  # free blocks a pool keeps for the next bodies; more are given back to the allocator


class BufferPool:
    """Blocks of `size` bytes, reused across bodies; at most `keep` are kept while no body needs them."""

    def __init__(self, size: int, keep: int = KEEP):
        self.size = size
        self.keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def give(self, buffers: list[bytearray]) -> None:
        with self._lock:
            room = self.keep - len(self._free)
            self._free.extend(buffers[:max(0, room)])

    @property
    def kept(self) -> int:
        return len(self._free)


def pump(source: "Source", write: Callable[[memoryview], None], hasher, block_size: int,
         pool: BufferPool | None = None) -> int:
    """Copy a body through `write` while `hasher` (update()) sees every byte; return the byte count."""
    if pool is None or pool.size != block_size:
        pool = BufferPool(block_size, keep=0)
    first = pool.take()
    owned = [first]
    try:
        return _pump(source, write, hasher, pool, first, owned)
    finally:
        pool.give(owned)


def _pump(source: "Source", write, hasher, pool: BufferPool, first: bytearray, owned: list[bytearray]) -> int:
    n = source.readinto(memoryview(first))
    if not n:
        return 0
    view = memoryview(first)[:n]
    write(view)
    if n < len(first):
        hasher.update(view)
        return n
    free: queue.SimpleQueue = queue.SimpleQueue()
    work: queue.SimpleQueue = queue.SimpleQueue()
    failure: list[BaseException] = []

    def hash_blocks() -> None:
        while (item := work.get()) is not None:
            buffer, length = item
            if not failure:
                try:
                    hasher.update(memoryview(buffer)[:length])
                except BaseException as exc:  # pragma: no cover - hashing does not fail on bytes
                    failure.append(exc)
            free.put(buffer)

    hashing = threading.Thread(target=hash_blocks, name="blob-hash", daemon=True)
    hashing.start()
    total = n
    work.put((first, n))
    try:
        while True:
            try:
                buffer = free.get_nowait()
            except queue.Empty:
                if len(owned) < BUFFERS:
                    buffer = pool.take()
                    owned.append(buffer)
                else:
                    buffer = free.get()
            n = source.readinto(memoryview(buffer))
            if not n:
                break
            write(memoryview(buffer)[:n])
            work.put((buffer, n))
            total += n
    finally:
        work.put(None)
        hashing.join()
    if failure:
        raise failure[0]
    return total
