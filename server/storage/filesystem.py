"""The filesystem blob store: blobs and upload sessions as files under one root directory.

Layout (the only paths this module ever forms; every component is a digest the domain parsed, a session id of the
domain's `new_id` shape, or a constant):

    blobs/<algorithm>/<first two hex>/<hex>.<session id>   a committed blob; its key is the path below blobs/
    blobs/<algorithm>/<first two hex>/<hex>                a blob committed before keys were per session (0004)
    uploads/<session id>                                   the bytes of an open upload session, appended in order

A session's file is created when the session opens and locked (flock) for the duration of each request, so the
requests of one session are serialised across the workers of the host. Each append is flushed to disk (fdatasync)
before its new length and saved hash are returned for the metadata to record: after a crash, a recorded length never
points past the bytes on disk. Commit checks the digest against the saved hash (sha512 digests are hashed from the
file), fsyncs the file, renames it into `blobs/` under its key (same filesystem: atomic) and fsyncs the directory.
The whole blocks of a body go to the disk with O_DIRECT (`_DirectWrites`), the rest through the page cache with
write-behind (`writeback`): either way a large blob does not fill the page cache on its way in (its first pull reads
it from disk), and the closing fdatasync has little left to wait for. A key is never reused, so a delete can
never remove a blob committed again after it (see the package docstring for the protocol).

With `accel_prefix` (nginx in front, the `accel_redirect` setting) a download leaves as `X-Accel-Redirect:
<prefix>/<key>`: nginx serves the file from an `internal` location aliased to `blobs/`, Range requests included.

A full disk is a condition, not a crash: uploads keep `min_free_space` free on the filesystem (at most 5% of it, at
least 16 MiB),
so the database always has room to record deletes and garbage collection can free space through the API; a body
that would not fit is refused before it is read, one that fills the disk while it arrives is stopped, and any
ENOSPC or EDQUOT is INSUFFICIENT_STORAGE (507). Space freed by deletes is usable at once, without a restart.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from ..errors import (BlobUnknown, BlobUploadInvalid, BlobUploadUnknown, DigestInvalid, InsufficientStorage,
                      Unavailable)
from ..model import Redirect, StoredBlob, StoredObject, UploadState
from ..names import ALGORITHMS, Digest
from . import BlobStore
from .hashing import ResumableSha256
from .streaming import BufferPool, pump
from .writeback import DROP_AFTER, WINDOW, WriteBehind

if TYPE_CHECKING:
    from ..bodies import Source

SESSION_RE = re.compile(r"[0-9a-f-]{1,64}")
FULL = (errno.ENOSPC, errno.EDQUOT)
CHECK_EVERY = 16 * 1024 * 1024
MIN_KEPT_FREE = 16 * 1024 * 1024  # bytes written between two looks at the free space while a body arrives
DIRECT_ALIGN = 4096  # O_DIRECT writes: offset, length and memory aligned to this
KEY_RE = re.compile(r"(sha256|sha512)/[0-9a-f]{2}/[0-9a-f]{64,128}(?:\.([0-9a-f-]{1,64}))?")


class RangeReader:
    """`length` bytes of a file from its current position. Keeps the file's descriptor visible (`fileno`), so a
    WSGI server can still send the range with sendfile(2): it sends Content-Length bytes from the file position."""

    def __init__(self, fh: BinaryIO, length: int):
        self._fh = fh
        self._remaining = length

    def fileno(self) -> int:
        return self._fh.fileno()

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        if size < 0 or size > self._remaining:
            size = self._remaining
        data = self._fh.read(size)
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._fh.close()


class FilesystemStore(BlobStore):
    driver = "filesystem"

    def __init__(self, root: str | os.PathLike, *, block_size: int = 1024 * 1024, accel_prefix: str = "",
                 min_free_space: int = 256 * 1024 * 1024, write_behind: int = WINDOW, drop_after: int = DROP_AFTER):
        self.root = Path(root)
        self.block_size = block_size
        self.write_behind = write_behind
        self.drop_after = drop_after
        self._buffers = BufferPool(block_size)
        self.accel_prefix = accel_prefix.rstrip("/")
        self._blobs = self.root / "blobs"
        self._uploads = self.root / "uploads"
        for directory in (self._blobs, self._uploads):
            directory.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(self.root)
        # At most 5% of the filesystem, at least twice the database's own reserve (metadata/sqlite.py: 8 MiB), so
        # uploads never eat the room the transactions that free space need.
        self.reserve = max(MIN_KEPT_FREE, min(min_free_space, st.f_blocks * st.f_frsize // 20))
        self._held: dict[str, BinaryIO] = {}  # session id -> its file, while this process holds its lock
        self._held_lock = threading.Lock()
        self._restore_trash()

    # -- paths -----------------------------------------------------------------------------------------------------

    def _upload_path(self, session_id: str) -> Path:
        if not SESSION_RE.fullmatch(session_id or ""):
            raise BlobUploadUnknown({"uuid": (session_id or "")[:100]})
        return self._uploads / session_id

    def _blob_path(self, key: str) -> Path:
        if not KEY_RE.fullmatch(key or ""):
            raise BlobUnknown({"key": (key or "")[:200]})
        return self._blobs / key

    @staticmethod
    def key_for(digest: Digest, session_id: str) -> str:
        return f"{digest.algorithm}/{digest.hex[:2]}/{digest.hex}.{session_id}"

    # -- upload sessions -------------------------------------------------------------------------------------------

    def open_upload(self, session_id: str) -> UploadState:
        with _full_is_507():
            fd = os.open(self._upload_path(session_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
        return UploadState()

    # -- free space ----------------------------------------------------------------------------------------------

    def free_space(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def room_for(self, nbytes: int) -> None:
        free = self.free_space()
        if free - nbytes < self.reserve:
            raise InsufficientStorage({"free": free, "needed": nbytes, "kept_free": self.reserve},
                                      headers={"Retry-After": "60"},
                                      message=f"the registry's storage is full: {nbytes} bytes would not fit "
                                              f"({free} free, {self.reserve} kept free for deletes)")

    @contextmanager
    def upload_lock(self, session_id: str) -> Iterator[None]:
        path = self._upload_path(session_id)
        try:
            fh = open(path, "r+b", buffering=0)
        except FileNotFoundError:
            raise BlobUploadUnknown({"uuid": session_id}) from None
        with fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                    raise FileNotFoundError
            except FileNotFoundError:  # committed or cancelled while we waited for the lock
                raise BlobUploadUnknown({"uuid": session_id}) from None
            with self._held_lock:
                self._held[session_id] = fh
            try:
                yield
            finally:
                with self._held_lock:
                    self._held.pop(session_id, None)

    def upload_in_progress(self, session_id: str) -> bool | None:
        """Every request on a session holds its file's lock: whether the lock is taken is whether one is running.
        No file: None, cannot tell. A monolithic request's file does not exist yet right after its row is written,
        nor any more once its commit moved it to blobs/ (the blob row comes next, and may wait for the database):
        purging the row then would let the orphan sweep take a blob about to be acknowledged."""
        try:
            fh = open(self._upload_path(session_id), "rb", buffering=0)
        except FileNotFoundError:
            return None
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False

    @contextmanager
    def _session_file(self, session_id: str) -> Iterator[BinaryIO]:
        """The session's file: the one this process holds locked, or a locked handle of its own."""
        with self._held_lock:
            held = self._held.get(session_id)
        if held is not None:
            yield held
            return
        with self.upload_lock(session_id):
            with self._held_lock:
                fh = self._held[session_id]
            yield fh

    def append(self, session_id: str, state: UploadState, source: "Source") -> UploadState:
        with self._session_file(session_id) as fh:
            fd = fh.fileno()
            start = state.length
            hasher = self._hasher(fd, state)
            os.ftruncate(fd, start)  # bytes past the recorded length were never acknowledged
            since_check = [0]
            behind = WriteBehind(fd, start, self.write_behind, self.drop_after)
            direct = _DirectWrites(self._upload_path(session_id), start, self.drop_after)

            def write(view: memoryview) -> None:
                since_check[0] += len(view)
                if since_check[0] >= CHECK_EVERY:  # a body of unknown length, or a disk others fill too
                    since_check[0] = 0
                    self.room_for(0)
                if not direct.write(view):
                    _pwrite_all(fd, view, direct.position)
                    behind.wrote(direct.position, len(view))
                direct.position += len(view)

            try:
                with _full_is_507():
                    written = pump(source, write, hasher, self.block_size, self._buffers)
                    os.fdatasync(fd)
                behind.durable()
            except BaseException:
                _truncate_quietly(fd, start)  # and so the space it took is free again at once
                raise
            finally:
                direct.close()
            return UploadState(start + written, hasher.state(), {})

    def commit(self, session_id: str, state: UploadState, digest: Digest) -> StoredBlob:
        with self._session_file(session_id) as fh:
            fd = fh.fileno()
            if os.fstat(fd).st_size < state.length:
                raise BlobUploadInvalid({"reason": "upload data shorter than recorded"})
            os.ftruncate(fd, state.length)
            if digest.algorithm == "sha256":
                actual = self._hasher(fd, state).hexdigest()
            else:
                actual = _hash_file(fd, state.length, digest.algorithm, self.block_size).hexdigest()
            if actual != digest.hex:
                raise DigestInvalid({"expected": str(digest), "actual": f"{digest.algorithm}:{actual}"})
            key = self.key_for(digest, session_id)
            target = self._blobs / key
            with _full_is_507():
                os.fsync(fd)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(self._upload_path(session_id), target)
                _fsync_dir(target.parent)
            return StoredBlob(str(digest), state.length, key)

    def abort_upload(self, session_id: str, state: UploadState | None = None) -> int:
        path = self._upload_path(session_id)
        try:
            size = os.stat(path).st_blocks * 512  # what the file really took, sparse or not
            os.unlink(path)
        except FileNotFoundError:
            return 0
        return size

    def iterate_uploads(self) -> Iterator[str]:
        for entry in os.scandir(self._uploads):
            if SESSION_RE.fullmatch(entry.name):
                yield entry.name

    def _hasher(self, fd: int, state: UploadState) -> ResumableSha256:
        if state.hash or not state.length:
            return ResumableSha256.from_state(state.hash)
        # A session recorded before running hashes were saved (schema 0003): hash what is on disk, once.
        return _hash_file(fd, state.length, "sha256", self.block_size, ResumableSha256())

    # -- blobs -----------------------------------------------------------------------------------------------------

    def read(self, key: str, start: int = 0, length: int | None = None) -> BinaryIO:
        try:
            fh = open(self._blob_path(key), "rb", buffering=0)
        except FileNotFoundError:
            raise BlobUnknown({"key": key}) from None
        if start:
            fh.seek(start)
        if length is None or start + length >= os.fstat(fh.fileno()).st_size:
            return fh
        return RangeReader(fh, length)

    def stat(self, key: str) -> int | None:
        try:
            return os.stat(self._blob_path(key)).st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._blob_path(key))
        except FileNotFoundError:
            pass

    def iterate(self) -> Iterator[StoredObject]:
        for algorithm in os.scandir(self._blobs):
            if algorithm.name not in ALGORITHMS or not algorithm.is_dir():
                continue
            for prefix in os.scandir(algorithm.path):
                if not prefix.is_dir():
                    continue
                for entry in os.scandir(prefix.path):
                    key = f"{algorithm.name}/{prefix.name}/{entry.name}"
                    if KEY_RE.fullmatch(key):
                        try:
                            st = entry.stat()
                        except FileNotFoundError:
                            continue
                        yield StoredObject(key, st.st_size, st.st_mtime)

    def redirect(self, key: str, digest: str, size: int) -> Redirect | None:
        if not self.accel_prefix:
            return None
        self._blob_path(key)  # the key's shape is checked before it goes into a header
        return Redirect("accel", f"{self.accel_prefix}/{key}")

    def session_of(self, key: str) -> str | None:
        match = KEY_RE.fullmatch(key)
        return match.group(2) if match else None

    def path_of(self, key: str) -> Path:
        """Where a blob's file is (for fsck's reports and tests)."""
        return self._blob_path(key)

    # -- health ----------------------------------------------------------------------------------------------------

    def check(self) -> None:
        try:
            free = self.free_space()
        except OSError as exc:
            raise Unavailable({"storage": exc.strerror or str(exc)},
                              message=f"the data directory cannot be read: {exc.strerror or exc}") from None
        if free < self.reserve:
            raise Unavailable({"storage": "full", "free": free, "kept_free": self.reserve},
                              message=f"the data directory is full: {free} bytes free, uploads need more than "
                                      f"{self.reserve}; delete images and collect garbage to free space")
        probe = self.root / f".readyz-{os.getpid()}-{threading.get_ident()}"
        try:
            fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ready\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise Unavailable({"storage": exc.strerror or str(exc)},
                              message=f"the data directory takes no write: {exc.strerror or exc}") from None

    # -- compatibility ---------------------------------------------------------------------------------------------

    def _restore_trash(self) -> None:
        """Before schema 0004, garbage collection moved blobs to trash/ inside its transaction. Put back what a
        crash left there under its old key; a blob the metadata no longer records is then an orphan like any other."""
        trash = self.root / "trash"
        if not trash.is_dir():
            return
        for entry in trash.iterdir():
            algorithm, _, hex_ = entry.name.partition("-")
            target = self._blobs / algorithm / hex_[:2] / hex_
            if algorithm in ALGORITHMS and KEY_RE.fullmatch(f"{algorithm}/{hex_[:2]}/{hex_}") and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(entry, target)
            else:
                entry.unlink(missing_ok=True)
        try:
            trash.rmdir()
        except OSError:
            pass


@contextmanager
def _full_is_507() -> Iterator[None]:
    """ENOSPC and EDQUOT are a condition the client is told about (507), not an unexpected error (500)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL:
            raise InsufficientStorage({"reason": exc.strerror}, headers={"Retry-After": "60"},
                                      message="the registry's storage is full") from None
        raise


class _DirectWrites:
    """The whole blocks of a large file written with O_DIRECT, from the pump's page-aligned blocks straight to the
    disk: no copy into the page cache and no page cache to drop afterwards (14% less server CPU per pushed GB than
    buffered writes with write-behind, measured alternating). `write` says False for what goes the usual way: the
    first `after` bytes of a file (small blobs stay cached), a last partial block, a body starting at an unaligned
    offset, a filesystem without O_DIRECT (tmpfs). Not a durability step either: the caller's fdatasync follows."""

    def __init__(self, path: Path, start: int, after: int):
        self.path = path
        self.position = start
        self.after = after
        self.fd = -1
        self.usable = hasattr(os, "O_DIRECT") and start % DIRECT_ALIGN == 0

    def write(self, view: memoryview) -> bool:
        if (not self.usable or self.position < self.after or len(view) % DIRECT_ALIGN
                or self.position % DIRECT_ALIGN):
            return False
        if self.fd < 0:
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
            except OSError:
                self.usable = False
                return False
        try:
            _pwrite_all(self.fd, view, self.position)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this filesystem wants another alignment; the rest goes buffered
                raise
            self.usable = False
            return False
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        count = os.pwrite(fd, view, offset)
        view, offset = view[count:], offset + count


def _truncate_quietly(fd: int, length: int) -> None:
    try:
        os.ftruncate(fd, length)
    except OSError:
        pass


def _hash_file(fd: int, length: int, algorithm: str, block_size: int, hasher=None):
    """Hash the first `length` bytes of a session's file."""
    hasher = hasher if hasher is not None else hashlib.new(algorithm)
    position = 0
    while position < length:
        block = os.pread(fd, min(block_size, length - position), position)
        if not block:
            raise BlobUploadInvalid({"reason": "upload data shorter than recorded"})
        hasher.update(block)
        position += len(block)
    return hasher


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
