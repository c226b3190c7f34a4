"""Content-addressed blob storage on the local filesystem.

Layout under the data directory (the only paths this module ever forms; every component is a parsed digest, an
upload id this module generated, or a constant):

    blobs/<algorithm>/<first two hex>/<hex>     committed blobs, immutable, named by their verified digest
    uploads/<upload id>                         bytes of an open upload session, appended in order

An upload's bytes are hashed as they arrive. On commit the file is fsynced, its digest compared with the one the
client claims, and only then renamed into `blobs/` (same filesystem, so the rename is atomic) and its directory
fsynced. A blob is therefore never visible under its name before it is verified, and a failed or cancelled upload
leaves nothing behind. Concurrent commits of the same content all succeed: the rename replaces identical bytes.

The running hash of a session lives in the worker process that received its last chunk (hashlib objects cannot be
pickled). A chunk that lands on another worker first re-hashes the bytes already on disk, once; clients keep one
connection per upload, so gunicorn normally keeps a session on one worker. Requests for one session are serialised
across workers by an flock on its file.

This module never imports falcon: failures are the domain errors of `..errors`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import queue
import threading
import time
import uuid as uuidlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

from ..errors import BlobUnknown, BlobUploadInvalid, BlobUploadUnknown, DigestInvalid
from ..names import Digest

if TYPE_CHECKING:
    from ..bodies import Source

UPLOAD_ID_CHARS = set("0123456789abcdef-")


@dataclass(slots=True)
class CommittedBlob:
    digest: Digest
    size: int


class _HashState:
    __slots__ = ("offset", "hasher")

    def __init__(self, offset: int, hasher):
        self.offset = offset
        self.hasher = hasher


class UploadWriter:
    """An open upload session's file, held under an exclusive lock. Obtain it from `BlobStore.open_upload`."""

    def __init__(self, store: "BlobStore", upload_id: str, fh: BinaryIO, offset: int):
        self._store = store
        self.upload_id = upload_id
        self._fh = fh
        self.offset = offset
        self._verified: Digest | None = None

    def append(self, source: "Source") -> int:
        """Append a body at the current offset, hashing as it arrives; return the new offset.

        On any failure (a short body, a client gone, a full disk) the file is cut back to where it was, so a
        session never holds bytes the client was not told about.
        """
        start = self.offset
        state = self._store._hash_state(self.upload_id, self._fh, start)
        fd = self._fh.fileno()
        os.ftruncate(fd, start)
        os.lseek(fd, start, os.SEEK_SET)
        try:
            written = start + _pump(source, fd, state.hasher, self._store.block_size)
        except BaseException:
            self._store._forget_hash(self.upload_id)
            os.ftruncate(fd, start)
            raise
        state.offset = written
        self.offset = written
        return written

    def verify(self, digest: Digest) -> CommittedBlob:
        """Check the whole content against `digest` (DIGEST_INVALID otherwise) and make it durable (fsync).

        Nothing is visible yet: `install` does that, inside the metadata transaction that records the blob.
        """
        fh = self._fh
        os.ftruncate(fh.fileno(), self.offset)
        if digest.algorithm == "sha256":
            actual = self._store._hash_state(self.upload_id, fh, self.offset).hasher.hexdigest()
        else:
            actual = self._store._hash_file(fh, self.offset, digest.algorithm).hexdigest()
        if actual != digest.hex:
            raise DigestInvalid({"expected": str(digest), "actual": f"{digest.algorithm}:{actual}"})
        os.fsync(fh.fileno())
        self._verified = digest
        return CommittedBlob(digest, self.offset)

    def install(self) -> None:
        """Rename the verified content into place (atomic, same filesystem). Called inside the metadata transaction
        that records the blob, so it is kept short: the directory is fsynced by `sync` once that has committed."""
        if self._verified is None:
            raise RuntimeError("install() before verify()")
        self._store._install(self._store._upload_path(self.upload_id), self._verified, sync=False)
        self._store._forget_hash(self.upload_id)

    def sync(self) -> None:
        """Make the rename durable (fsync of the blob's directory)."""
        if self._verified is not None:
            _fsync_dir(self._store.blob_path(self._verified).parent)

    def commit(self, digest: Digest) -> CommittedBlob:
        """verify(), install() and sync(): for callers with no metadata to record alongside."""
        blob = self.verify(digest)
        self.install()
        self.sync()
        return blob


class BlobStore:
    """Blobs and upload sessions under one root directory. Thread- and process-safe."""

    def __init__(self, root: str | os.PathLike, *, block_size: int = 1024 * 1024,
                 new_id: Callable[[], str] = lambda: str(uuidlib.uuid4())):
        self.root = Path(root)
        self.block_size = block_size
        self._new_id = new_id
        self._blobs = self.root / "blobs"
        self._uploads = self.root / "uploads"
        self._trash = self.root / "trash"
        for directory in (self._blobs, self._uploads, self._trash):
            directory.mkdir(parents=True, exist_ok=True)
        self._hashes: dict[str, _HashState] = {}
        self._hashes_lock = threading.Lock()

    # -- paths ---------------------------------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self._blobs / digest.algorithm / digest.hex[:2] / digest.hex

    def _upload_path(self, upload_id: str) -> Path:
        if not upload_id or not set(upload_id) <= UPLOAD_ID_CHARS or len(upload_id) > 64:
            raise BlobUploadUnknown({"uuid": upload_id[:100]})
        return self._uploads / upload_id

    # -- reading -------------------------------------------------------------------------------------------------

    def stat(self, digest: Digest) -> int | None:
        """Size of the committed blob, or None when it is not on disk."""
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            return None

    def open(self, digest: Digest) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb", buffering=0)
        except FileNotFoundError:
            raise BlobUnknown({"digest": str(digest)}) from None

    def delete(self, digest: Digest) -> bool:
        try:
            os.unlink(self.blob_path(digest))
            return True
        except FileNotFoundError:
            return False

    def digests(self) -> Iterator[Digest]:
        """Every committed blob on disk (for garbage collection and consistency checks)."""
        for algorithm_dir in self._blobs.iterdir():
            for prefix in algorithm_dir.iterdir():
                for entry in prefix.iterdir():
                    yield Digest(algorithm_dir.name, entry.name)

    # -- removal in two steps, for garbage collection ----------------------------------------------------------

    def trash(self, digest: Digest) -> bool:
        """Move a blob out of sight (inside the metadata transaction that forgets it); `empty_trash` after commit.

        If the process dies between the two, `recover_trash` puts back what the database still knows.
        """
        try:
            os.replace(self.blob_path(digest), self._trash / f"{digest.algorithm}-{digest.hex}")
            return True
        except FileNotFoundError:
            return False

    def empty_trash(self) -> None:
        for entry in self._trash.iterdir():
            entry.unlink(missing_ok=True)

    def recover_trash(self, known: Callable[[str], bool]) -> tuple[int, int]:
        """After a crash: restore trashed blobs the database still records, delete the rest. (restored, deleted)"""
        restored = deleted = 0
        for entry in self._trash.iterdir():
            algorithm, _, hex_ = entry.name.partition("-")
            digest = Digest(algorithm, hex_)
            if known(str(digest)):
                self._install(entry, digest)
                restored += 1
            else:
                entry.unlink(missing_ok=True)
                deleted += 1
        return restored, deleted

    # -- upload sessions -----------------------------------------------------------------------------------------

    def new_upload(self) -> str:
        upload_id = self._new_id()
        # O_EXCL: an id can never point at another session's bytes.
        fd = os.open(self._upload_path(upload_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
        return upload_id

    @contextmanager
    def open_upload(self, upload_id: str) -> Iterator[UploadWriter]:
        """Lock the session's file for this request. The caller sets `offset` to the length recorded in metadata,
        read under this lock."""
        path = self._upload_path(upload_id)
        try:
            fh = open(path, "r+b", buffering=0)
        except FileNotFoundError:
            raise BlobUploadUnknown({"uuid": upload_id}) from None
        with fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            if not path.exists():  # committed or cancelled while we waited for the lock
                raise BlobUploadUnknown({"uuid": upload_id})
            yield UploadWriter(self, upload_id, fh, 0)

    def remove_upload(self, upload_id: str) -> None:
        self._forget_hash(upload_id)
        try:
            os.unlink(self._upload_path(upload_id))
        except FileNotFoundError:
            pass

    def try_remove_upload(self, upload_id: str, forget: Callable[[], None]) -> bool:
        """Remove an idle session unless a request holds it right now; `forget` drops its record first."""
        try:
            fh = open(self._upload_path(upload_id), "r+b", buffering=0)
        except FileNotFoundError:
            forget()
            return True
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            forget()
            self.remove_upload(upload_id)
            return True

    def remove_orphan_uploads(self, known: Callable[[str], bool], min_age: float = 60.0) -> int:
        """Upload files no session records (a worker killed mid-request, or a monolithic upload's temp file):
        removed when no request holds their lock and they are older than `min_age` seconds (a session's file
        exists a moment before its record)."""
        removed = 0
        now = time.time()
        for path in self._uploads.iterdir():
            try:
                if now - path.stat().st_mtime < min_age or known(path.name):
                    continue
                with open(path, "rb", buffering=0) as fh:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.unlink()
                    removed += 1
            except (FileNotFoundError, BlockingIOError):
                continue
        return removed

    def ingest(self, source: "Source", digest: Digest) -> CommittedBlob:
        """A whole blob in one call (monolithic upload): stream, verify, install."""
        upload_id = self.new_upload()
        try:
            with self.open_upload(upload_id) as writer:
                writer.append(source)
                return writer.commit(digest)
        finally:
            self.remove_upload(upload_id)

    # -- internals -----------------------------------------------------------------------------------------------

    def _hash_state(self, upload_id: str, fh: BinaryIO, offset: int) -> _HashState:
        with self._hashes_lock:
            state = self._hashes.get(upload_id)
            if state is not None and state.offset == offset:
                return state
        state = _HashState(offset, self._hash_file(fh, offset, "sha256"))
        with self._hashes_lock:
            self._hashes[upload_id] = state
        return state

    def _hash_file(self, fh: BinaryIO, length: int, algorithm: str):
        """Hash the first `length` bytes of a session file (a session that moved between workers, or sha512)."""
        hasher = hashlib.new(algorithm)
        position = 0
        while position < length:
            block = os.pread(fh.fileno(), min(self.block_size, length - position), position)
            if not block:
                raise BlobUploadInvalid({"reason": "upload data shorter than recorded"})
            hasher.update(block)
            position += len(block)
        return hasher

    def _forget_hash(self, upload_id: str) -> None:
        with self._hashes_lock:
            self._hashes.pop(upload_id, None)

    def _install(self, source: Path, digest: Digest, *, sync: bool = True) -> None:
        target = self.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        if sync:
            _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _pump(source: "Source", fd: int, hasher, block_size: int) -> int:
    """Copy a body to `fd` while hashing it; return the byte count.

    The first block is handled inline (most bodies of a registry are small: configs, manifests, chunks). Past it,
    a second thread hashes each block while this one receives and writes the next: hashlib, recv and write all
    release the GIL, so on two cores the push runs at the speed of the slowest of the three, not their sum.
    """
    first = bytearray(block_size)
    n = source.readinto(memoryview(first))
    if not n:
        return 0
    view = memoryview(first)[:n]
    _write_all(fd, view)
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
                except BaseException as exc:  # pragma: no cover - hashlib does not fail on bytes
                    failure.append(exc)
            free.put(buffer)

    for _ in range(3):
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
            _write_all(fd, memoryview(buffer)[:n])
            work.put((buffer, n))
            total += n
    finally:
        work.put(None)
        hashing.join()
    if failure:
        raise failure[0]
    return total
