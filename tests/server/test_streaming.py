"""Moving bodies into the store (dockyard.server.storage.streaming and .writeback): every byte written and hashed,
blocks reused and bounded, large bodies written back and dropped from the cache without losing a write error.
Issue 18."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import time

import pytest

from dockyard.server.bodies import StreamSource
from dockyard.server.names import Digest
from dockyard.server.storage import streaming
from dockyard.server.storage.filesystem import FilesystemStore
from dockyard.server.storage.streaming import BufferPool, pump
from dockyard.server.storage.writeback import WAIT_AFTER, WAIT_BEFORE, WRITE, WriteBehind

SESSION = "0f0f0f0f-0000-4000-8000-000000000018"


def test_pump_writes_and_hashes_every_byte_and_gives_its_blocks_back():
    data = os.urandom(4096 * 9 + 17)
    pool = BufferPool(4096, keep=8)
    out = bytearray()
    hasher = hashlib.sha256()
    assert pump(StreamSource(io.BytesIO(data), len(data)), out.extend, hasher, 4096, pool) == len(data)
    assert bytes(out) == data and hasher.digest() == hashlib.sha256(data).digest()
    assert 1 <= pool.kept <= streaming.BUFFERS
    kept = pool.kept
    pump(StreamSource(io.BytesIO(data), len(data)), bytearray().extend, hashlib.sha256(), 4096, pool)
    assert pool.kept == kept  # the second body took the same blocks again


def test_a_pool_keeps_at_most_keep_blocks():
    pool = BufferPool(16, keep=2)
    pool.give([pool.take() for _ in range(5)])
    assert pool.kept == 2
    assert len(pool.take()) == 16 and pool.kept == 1


def counting(pool: BufferPool) -> list:
    taken = []
    original = pool.take
    pool.take = lambda: taken.append(1) or original()
    return taken


def test_a_body_whose_writes_wait_holds_at_most_buffers_blocks(monkeypatch):
    monkeypatch.setattr(streaming, "SLOW_BLOCK_SECONDS", float("inf"))  # the threads, whatever the speed
    data = os.urandom(4096 * 20)
    pool = BufferPool(4096, keep=8)
    taken = counting(pool)
    gate = threading.Event()

    def release_when_every_block_is_out():
        while len(taken) < streaming.BUFFERS:
            time.sleep(0.001)
        gate.set()

    watcher = threading.Thread(target=release_when_every_block_is_out)
    watcher.start()
    written = bytearray()

    def write(view):
        assert gate.wait(10)
        written.extend(view)

    assert pump(StreamSource(io.BytesIO(data), len(data)), write, hashlib.sha256(), 4096, pool) == len(data)
    watcher.join()
    assert bytes(written) == data and len(taken) == streaming.BUFFERS


def test_a_slow_body_is_hashed_in_one_block_by_the_receiving_thread(monkeypatch):
    monkeypatch.setattr(streaming, "SLOW_BLOCK_SECONDS", 0.0)  # every first block counts as slow
    data = os.urandom(4096 * 20 + 3)
    pool = BufferPool(4096, keep=8)
    taken = counting(pool)
    threads = set()

    class Recording:
        inner = hashlib.sha256()

        def update(self, view):
            threads.add(threading.get_ident())
            self.inner.update(view)

    hasher = Recording()
    out = bytearray()
    assert pump(StreamSource(io.BytesIO(data), len(data)), out.extend, hasher, 4096, pool) == len(data)
    assert bytes(out) == data and hasher.inner.digest() == hashlib.sha256(data).digest()
    assert len(taken) == 1 and threads == {threading.get_ident()}


def test_a_failing_body_gives_its_blocks_back():
    pool = BufferPool(4096, keep=8)

    class Broken:
        calls = 0

        def readinto(self, buf):
            self.calls += 1
            if self.calls == 3:
                raise OSError("gone")
            return len(buf)

    with pytest.raises(OSError):
        pump(Broken(), lambda view: None, hashlib.sha256(), 4096, pool)
    assert 1 <= pool.kept <= streaming.BUFFERS


def test_a_write_that_fails_in_the_storing_thread_stops_the_body_and_is_raised(monkeypatch):
    monkeypatch.setattr(streaming, "SLOW_BLOCK_SECONDS", float("inf"))
    data = os.urandom(4096 * 30)
    pool = BufferPool(4096, keep=8)
    writes = []

    def write(view):
        writes.append(len(view))
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, "full")

    source = StreamSource(io.BytesIO(data), len(data))
    with pytest.raises(OSError) as raised:
        pump(source, write, hashlib.sha256(), 4096, pool)
    assert raised.value.errno == errno.ENOSPC
    assert len(writes) == 3 and source._remaining > 0  # the rest of the body was not read
    assert 1 <= pool.kept <= streaming.BUFFERS


class Calls:
    """A stand-in for sync_file_range that records its calls and can fail."""

    def __init__(self, fail_with: int = 0):
        self.calls: list[tuple[int, int, int]] = []
        self.fail_with = fail_with

    def __call__(self, fd, offset, length, flags) -> int:
        self.calls.append((offset, length, flags))
        if self.fail_with:
            import ctypes
            ctypes.set_errno(self.fail_with)
            return -1
        return 0


def test_write_behind_starts_each_window_and_drops_all_but_the_newest_once_the_file_is_large(tmp_path):
    calls = Calls()
    with open(tmp_path / "f", "wb") as fh:
        behind = WriteBehind(fh.fileno(), 100, window=10, drop_after=125, sync_file_range=calls)
        for offset in range(100, 135, 5):
            behind.wrote(offset, 5)  # up to 135: three whole windows from offset 100; the file is large from 125 on
        assert calls.calls == [(100, 10, WRITE), (110, 10, WRITE), (120, 10, WRITE),
                               (100, 20, WAIT_BEFORE | WRITE | WAIT_AFTER)]
        assert behind.dropped == 120
        behind.durable()
        assert behind.dropped == 135


def test_a_small_file_is_written_back_early_and_left_in_the_cache(tmp_path):
    calls = Calls()
    with open(tmp_path / "f", "wb") as fh:
        behind = WriteBehind(fh.fileno(), 0, window=10, drop_after=100, sync_file_range=calls)
        behind.wrote(0, 25)
        behind.durable()
        assert calls.calls == [(0, 10, WRITE), (10, 10, WRITE)] and behind.dropped == 0


def test_a_later_chunk_of_a_large_file_drops_from_where_it_starts(tmp_path):
    calls = Calls()
    with open(tmp_path / "f", "wb") as fh:
        behind = WriteBehind(fh.fileno(), 1000, window=10, drop_after=100, sync_file_range=calls)
        behind.wrote(1000, 8)
        behind.durable()
        assert calls.calls == [] and behind.dropped == 1008


def test_a_failed_writeback_is_raised_not_left_for_fdatasync_to_miss(tmp_path):
    """sync_file_range reports a writeback error to the file descriptor once: swallowing it would let the closing
    fdatasync succeed and a 201 acknowledge lost bytes."""
    with open(tmp_path / "f", "wb") as fh:
        behind = WriteBehind(fh.fileno(), 0, window=10, drop_after=10, sync_file_range=Calls(errno.EIO))
        with pytest.raises(OSError) as raised:
            behind.wrote(0, 10)
        assert raised.value.errno == errno.EIO


def test_a_filesystem_without_sync_file_range_just_writes(tmp_path):
    calls = Calls(errno.EINVAL)
    with open(tmp_path / "f", "wb") as fh:
        behind = WriteBehind(fh.fileno(), 0, window=10, drop_after=10, sync_file_range=calls)
        behind.wrote(0, 50)
        behind.durable()
        assert len(calls.calls) == 1 and behind.sync is None and behind.dropped == 50


def test_bytes_written_around_the_cache_settle_what_came_before_them(tmp_path):
    calls = Calls()
    with open(tmp_path / "f", "wb") as fh:
        behind = WriteBehind(fh.fileno(), 0, window=10, drop_after=20, sync_file_range=calls)
        behind.wrote(0, 25)  # the first 20 bytes start their writeback; 20 is large: [0, 10) is dropped
        behind.wrote(60, 7)  # 25..60 went with O_DIRECT: [10, 25) is written back and dropped first
        assert calls.calls[-2:] == [(20, 5, WRITE), (10, 15, WAIT_BEFORE | WRITE | WAIT_AFTER)]
        assert (behind.started, behind.dropped, behind.end) == (60, 60, 67)
        behind.durable()
        assert behind.dropped == 67


@pytest.mark.parametrize("chunks", [1, 3, 7])
def test_a_body_of_many_windows_commits_intact(tmp_path, chunks):
    store = FilesystemStore(tmp_path / "store", block_size=4096, write_behind=8192, drop_after=8192 * 4)
    data = os.urandom(8192 * 12 + 5)
    state = store.open_upload(SESSION)
    step = -(-len(data) // chunks)
    with store.upload_lock(SESSION):
        for start in range(0, len(data), step):
            part = data[start:start + step]
            state = store.append(SESSION, state, StreamSource(io.BytesIO(part), len(part)))
        blob = store.commit(SESSION, state, Digest("sha256", hashlib.sha256(data).hexdigest()))
    with store.read(blob.key) as stream:
        assert stream.read() == data


def test_direct_writes_take_whole_aligned_blocks_of_a_large_file_only(tmp_path):
    from dockyard.server.storage.filesystem import DIRECT_ALIGN, _DirectWrites

    path = tmp_path / "f"
    path.write_bytes(b"")
    block = memoryview(bytearray(DIRECT_ALIGN))  # the test checks the decision, not the alignment of this memory
    direct = _DirectWrites(path, 0, after=2 * DIRECT_ALIGN)
    assert not direct.write(block)  # below `after`: through the page cache, small blobs stay cached
    unaligned = _DirectWrites(path, 2 * DIRECT_ALIGN + 1, after=0)
    assert not unaligned.write(block)
    tail = _DirectWrites(path, 4 * DIRECT_ALIGN, after=0)
    assert not tail.write(block[:100])
    tail.close()
