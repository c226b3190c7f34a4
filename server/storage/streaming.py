"""Moving a request body into a store while hashing it, for every driver.

`pump` reads a body block by block and hands each block to the driver's `write`. The first block is handled inline
(most bodies of a registry are small: configs, manifests, chunks). Past it, a second thread hashes each block while
this one receives and writes the next: the hash, `recv` and file or socket writes all release the GIL, so on two
cores a push runs at the speed of the slowest of the three, not their sum.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..bodies import Source

BUFFERS = 4  # blocks in flight between the receiving and the hashing thread


def pump(source: "Source", write: Callable[[memoryview], None], hasher, block_size: int) -> int:
    """Copy a body through `write` while `hasher` (update()) sees every byte; return the byte count."""
    first = bytearray(block_size)
    n = source.readinto(memoryview(first))
    if not n:
        return 0
    view = memoryview(first)[:n]
    write(view)
    if n < block_size:
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

    for _ in range(BUFFERS - 1):
        free.put(bytearray(block_size))
    hashing = threading.Thread(target=hash_blocks, name="blob-hash", daemon=True)
    hashing.start()
    total = n
    work.put((first, n))
    try:
        while True:
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
