"""Moving a request body into a store while hashing it, for every driver.

`pump` reads a body block by block and hands each block to the driver's `write`. The first block is handled inline
(most bodies of a registry are small: configs, manifests, chunks). Past it, a second thread writes and hashes each
block while this one receives the next. Receiving is a copy out of the socket; writing is a copy into the page
cache and hashing one pass of sha256. Profiled on a 1 GiB push with the write on the receiving side, that side
took ~45% of the worker's samples (recv's copy alone 37%) and hashing 28%: moving the write over balances the two.
The hash, `recv` and file or socket writes all release the GIL, so on two cores a push runs at the speed of the
slower side.

Blocks come from a `BufferPool` the store keeps for the life of the process: a push writes into memory that earlier
pushes already touched (a freshly allocated megabyte costs 256 page faults, and on these VMs as many hypervisor
faults), and a body takes a further block only when the hashing thread still holds every block it has. A body
whose first block arrived slowly (a client at a few MiB/s, typical behind a slow link) is hashed in the receiving
thread, in that one block: fifty such pushes at 1 MiB/s otherwise held two blocks and a thread each.
"""

from __future__ import annotations

import mmap
import queue
import threading
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..bodies import Source

BUFFERS = 4  # blocks in flight between the receiving and the hashing thread, at most
KEEP = 8  # free blocks a pool keeps for the next bodies; more are given back to the allocator
SLOW_BLOCK_SECONDS = 0.05  # a first block that took this long (under ~20 MB/s for 1 MiB): no hashing thread


class BufferPool:
    """Blocks of `size` bytes, reused across bodies; at most `keep` are kept while no body needs them.

    A block is an anonymous memory map, not a bytearray: one the pool does not keep goes back to the kernel as soon
    as its last view is gone (a freed bytearray stays in the allocator's heap, so a burst of uploads left a worker
    tens of megabytes larger for good)."""

    def __init__(self, size: int, keep: int = KEEP):
        self.size = size
        self.keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, self.size)

    def give(self, buffers: list[mmap.mmap]) -> None:
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


def _pump(source: "Source", write, hasher, pool: BufferPool, first: mmap.mmap, owned: list[mmap.mmap]) -> int:
    started = time.monotonic()
    n = source.readinto(memoryview(first))
    if not n:
        return 0
    view = memoryview(first)[:n]
    write(view)
    if n < len(first) or time.monotonic() - started >= SLOW_BLOCK_SECONDS:
        hasher.update(view)
        return n if n < len(first) else n + _pump_inline(source, write, hasher, first)
    free: queue.SimpleQueue = queue.SimpleQueue()
    work: queue.SimpleQueue = queue.SimpleQueue()
    failure: list[BaseException] = []

    def store_blocks() -> None:
        while (item := work.get()) is not None:
            buffer, length, written = item
            if not failure:
                view = memoryview(buffer)[:length]
                try:
                    if not written:
                        write(view)
                    hasher.update(view)
                except BaseException as exc:  # a full disk, a store that went away: the receiving side stops
                    failure.append(exc)
                del view
            free.put(buffer)

    storing = threading.Thread(target=store_blocks, name="blob-store", daemon=True)
    storing.start()
    total = n
    work.put((first, n, True))
    del view
    try:
        while not failure:
            try:
                buffer = free.get_nowait()
            except queue.Empty:
                if len(owned) < BUFFERS:
                    buffer = pool.take()
                    owned.append(buffer)
                else:
                    buffer = free.get()
            if failure:
                break
            n = source.readinto(memoryview(buffer))
            if not n:
                break
            work.put((buffer, n, False))
            total += n
    finally:
        work.put(None)
        storing.join()
    if failure:
        raise failure[0]
    return total


def _pump_inline(source: "Source", write, hasher, buffer: mmap.mmap) -> int:
    """The rest of a slow body in one block and this thread: hashing a block takes a millisecond or less, receiving
    it far longer, so a second thread would only hold a second block for the whole upload."""
    total = 0
    while n := source.readinto(memoryview(buffer)):
        view = memoryview(buffer)[:n]
        write(view)
        hasher.update(view)
        total += n
    return total
