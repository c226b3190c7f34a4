"""Writing a large blob through the page cache without filling it: write-behind, then drop-behind.

A buffered write copies every byte into a page-cache page the kernel must first find, and on these VMs a page of
memory that has not been touched lately costs a fault in the hypervisor as well (the balloon hands free memory
back to the host): profiled during a 512 MiB push, copying into fresh page-cache pages took three quarters of the
worker's CPU and held the push near 300 MB/s, while the same bytes went to the disk at 1.3-3 GB/s with O_DIRECT.

`WriteBehind` starts the writeback of each WINDOW bytes as soon as they are written (sync_file_range WRITE, which
does not wait), so the disk works while the body still arrives and the closing fdatasync has little left to wait for
(with 8 MiB windows, an 8 MiB PATCH started its writeback only when it ended). Once the file is DROP_AFTER long,
everything but the newest window is also waited for and dropped from the cache (POSIX_FADV_DONTNEED): the pages
freed are the ones the next window is written into, so a push keeps reusing the same few megabytes of warm memory.

None of this is a durability step: the caller still fdatasyncs (and fsyncs at commit) before it acknowledges
anything. What it must not do is lose a write error: sync_file_range reports a failed writeback to this file
descriptor once, and a later fdatasync on it would then succeed, so any error other than "not supported" is raised
at once, exactly as a failed write would be.

Small blobs (below DROP_AFTER in all) stay cached, configs and small layers, for the pulls that follow. The
filesystem store writes the whole blocks of a body with O_DIRECT where it can, which skips the page cache
altogether: this is for the rest (a last partial block, an unaligned chunk, a filesystem without O_DIRECT).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os

WINDOW = 2 * 1024 * 1024  # bytes per writeback window
DROP_AFTER = 8 * 1024 * 1024  # a file at least this long leaves the cache as it is written back; shorter ones stay

# sync_file_range(2) flags (linux/fs.h)
WAIT_BEFORE, WRITE, WAIT_AFTER = 1, 2, 4
UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP)


@functools.cache
def _sync_file_range():
    """libc's sync_file_range (Python's os module has no binding), or None away from Linux/glibc. ctypes calls
    release the GIL, so the thread receiving the body runs on while the one writing it waits for the disk."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _drop(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError):  # advice only: a filesystem that ignores it just keeps the pages cached
        pass


class WriteBehind:
    """Told about each write of a body appended at `start` of the file `fd` (`wrote`), and when the body is durable
    (`durable`, after the caller's fdatasync)."""

    def __init__(self, fd: int, start: int, window: int = WINDOW, drop_after: int = DROP_AFTER,
                 sync_file_range=None):
        self.fd = fd
        self.window = window
        self.drop_after = drop_after
        self.start = start
        self.end = start  # bytes of the file written so far
        self.started = start  # writeback started on [dropped, started)
        self.dropped = start  # [start, dropped) is written back and out of the cache
        self.sync = sync_file_range or _sync_file_range()

    def wrote(self, offset: int, count: int) -> None:
        """`count` bytes were written at `offset`. Bytes skipped since the last write went around the page cache
        (O_DIRECT): what was written before them is written back (and dropped) first."""
        if offset != self.end:
            self._settle()
            self.end = self.started = self.dropped = offset
        self.end += count
        while self.sync is not None and self.end - self.started >= self.window:
            self._call(self.started, self.window, WRITE)
            self.started += self.window
            behind = self.started - self.window  # all but the window whose writeback just started
            if self.end >= self.drop_after and behind > self.dropped:
                self._call(self.dropped, behind - self.dropped, WAIT_BEFORE | WRITE | WAIT_AFTER)
                _drop(self.fd, self.dropped, behind - self.dropped)
                self.dropped = behind

    def durable(self) -> None:
        """The caller's fdatasync returned: the rest of a large file leaves the cache too."""
        if self.end >= self.drop_after and self.end > self.dropped:
            _drop(self.fd, self.dropped, self.end - self.dropped)
            self.dropped = self.end

    def _settle(self) -> None:
        """Start the writeback of everything written, and if the file is large, wait for it and drop it."""
        if self.sync is not None and self.end > self.started:
            self._call(self.started, self.end - self.started, WRITE)
            self.started = self.end
        if self.sync is not None and self.end >= self.drop_after and self.end > self.dropped:
            self._call(self.dropped, self.end - self.dropped, WAIT_BEFORE | WRITE | WAIT_AFTER)
            _drop(self.fd, self.dropped, self.end - self.dropped)
            self.dropped = self.end

    def _call(self, offset: int, length: int, flags: int) -> None:
        if self.sync(self.fd, offset, length, flags) == 0:
            return
        code = ctypes.get_errno()
        if code in UNSUPPORTED:  # refused by this kernel or filesystem: never a failed writeback
            self.sync = None
            return
        raise OSError(code, os.strerror(code))
