"""Moving a request body into a store while hashing it, for every driver.

`pump` reads a body block by block and hands each block to the driver's `write`. A body that fits in its first block
is handled inline (most bodies of a registry are small: configs, manifests). Past it, one thread writes each block
and another hashes it while this one receives the next, and a block is reused once both are done with it. Receiving is a copy
out of the socket, hashing one pass of sha256, writing a DMA to the disk (or a copy into the page cache, or a send
to the object store, which waits on the network): profiled on a 1 GiB push with the write in the receiving thread,
that thread took ~45% of the worker's samples (recv's copy alone 37%) and the hashing one 28%; on its own thread
the write, which mostly waits, slows neither. The hash, `recv`, file and socket writes all release the GIL, so on
two cores a push runs at the speed of the slowest of the three.

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

BUFFERS = 4  # blocks in flight between the receiving thread and the writing and hashing ones, at most
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
    if n < len(first) or time.monotonic() - started >= SLOW_BLOCK_SECONDS:
        view = memoryview(first)[:n]
        write(view)
        hasher.update(view)
        del view
        return n if n < len(first) else n + _pump_inline(source, write, hasher, first)
    free: queue.SimpleQueue = queue.SimpleQueue()
    failure: list[BaseException] = []
    # Two consumers, each in a thread of its own: the driver's write (which may wait for a disk or a network) and
    # the hash. A block is free again once both are done with it.
    pending: dict[int, int] = {}
    lock = threading.Lock()

    def release(buffer) -> None:
        with lock:
            pending[id(buffer)] -= 1
            last = pending[id(buffer)] == 0
        if last:
            free.put(buffer)

    def consume(queue_, action) -> None:
        while (item := queue_.get()) is not None:
            buffer, length = item
            if not failure:
                view = memoryview(buffer)[:length]
                try:
                    action(view)
                except BaseException as exc:  # a full disk, a store that went away: the receiving side stops
                    failure.append(exc)
                del view
            release(buffer)

    writes: queue.SimpleQueue = queue.SimpleQueue()
    hashes: queue.SimpleQueue = queue.SimpleQueue()
    threads = [threading.Thread(target=consume, args=(writes, write), name="blob-write", daemon=True),
               threading.Thread(target=consume, args=(hashes, hasher.update), name="blob-hash", daemon=True)]
    for thread in threads:
        thread.start()

    def hand_over(buffer, length: int) -> None:
        with lock:
            pending[id(buffer)] = 2
        writes.put((buffer, length))
        hashes.put((buffer, length))

    total = n
    hand_over(first, n)
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
            hand_over(buffer, n)
            total += n
    finally:
        writes.put(None)
        hashes.put(None)
        for thread in threads:
            thread.join()
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
