"""The blob-store interface: where blob bytes live, and the protocol that keeps them in step with the metadata.

A `BlobStore` holds two kinds of things: **upload sessions** (bytes arriving, in order, not yet verified) and
**blobs** (verified, immutable, each under a storage key). It knows nothing of repositories, tags or manifests:
which digest is stored under which key, and who may read it, is the metadata's. Drivers: `filesystem` (the default,
`filesystem.py`) and `s3` (any S3-compatible object store, `s3.py`), chosen by the `[storage]` settings. Every
driver passes the same contract suite (tests/contracts/test_blob_store.py).

What is atomic, what is visible when
------------------------------------
- `append` adds a request body at the session's recorded length, hashing as the bytes arrive, and returns the new
  `UploadState` (length, saved hash, driver data). On any failure (short body, client gone, full disk, store down)
  the session is as it was before: the caller records the returned state only after a successful append, and the
  next append starts from the recorded state, whatever bytes a failed one left behind.
- `commit` checks the content against the digest the client claims (DIGEST_INVALID otherwise, and the session is
  then worthless) and makes it durable under a **new key of its own** (a key is never reused: a digest pushed again
  after its blob was collected gets another key). The blob is not visible to anyone until the metadata records
  `digest -> key`.
- `delete` is idempotent. `read` of a missing key is BLOB_UNKNOWN.

The commit and delete protocol (the domain, `registry.py` and `gc.py`, carries it out)
--------------------------------------------------------------------------------------
The store may be remote and slow, so no store call is ever made while a metadata transaction is open; instead each
step leaves state that a crash at any point can be recovered from:

1. A session's metadata row is written before the store holds anything for it (`open_upload` creates nothing a
   listing would show before the row exists), and its state is saved after each append.
2. Commit: `store.commit` (outside any transaction) -> one metadata transaction that deletes the session row and
   records the blob (`digest -> key`), or, when the digest is already stored (two sessions committing the same
   content), links the existing blob and reports the new key as redundant -> the domain deletes the redundant key.
   Crash after the store step: the key belongs to no blob row and to no session row: an orphan.
3. Delete (garbage collection): one metadata transaction forgets the blob rows and writes a **pending delete** row
   per key -> `store.delete(key)` for each -> the pending rows are removed. Crash in between: the pending rows remain
   and are carried out by the next collection (and at start-up).
4. Orphans: a stored object whose key no blob row and no pending delete names, and an upload session whose id no
   session row names, is garbage. Because of 1 and 2, nothing live ever looks like that: garbage collection and
   `dockyard fsck --repair` remove them. A key tells which session stored it (`session_of`): an unknown object
   whose session row is still there is a commit in flight (or one a crash interrupted, which becomes garbage when
   the session is purged), never touched; one whose session is gone is garbage at any age. To judge, the session
   rows are read *before* the blob rows: a commit moves a key from one to the other in one transaction.

This package never imports falcon: failures are the domain errors of `..errors`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import TYPE_CHECKING, BinaryIO, ContextManager, Iterator

from ..model import Redirect, StoredBlob, StoredObject, UploadState
from ..names import Digest

if TYPE_CHECKING:
    from ..bodies import Source


class BlobStore(ABC):
    """Blob bytes and upload sessions. Implementations are thread-safe, and safe across the processes of one host
    (and, for a shared store, across hosts)."""

    driver: str = ""

    # -- upload sessions -------------------------------------------------------------------------------------------

    @abstractmethod
    def open_upload(self, session_id: str) -> UploadState:
        """Start a session (called after its metadata row exists) and return its initial state."""

    @abstractmethod
    def append(self, session_id: str, state: UploadState, source: "Source") -> UploadState:
        """Append a body at `state.length`, hashing as it arrives; the session's new state."""

    @abstractmethod
    def commit(self, session_id: str, state: UploadState, digest: Digest) -> StoredBlob:
        """Verify the session's content against `digest` and store it durably under a new key."""

    @abstractmethod
    def abort_upload(self, session_id: str, state: UploadState | None = None) -> int:
        """Throw a session's bytes away (cancelled, expired, failed, or committed as redundant); how many bytes that
        freed, as far as the driver can tell. Idempotent."""

    def upload_lock(self, session_id: str) -> ContextManager:
        """Serialise the requests of one session where the driver can (the metadata's check on the recorded length
        is the guard everywhere else)."""
        return nullcontext()

    def upload_in_progress(self, session_id: str) -> bool | None:
        """Whether a request is writing to the session right now: True, False, or None when the driver cannot tell
        (then only a session's age decides)."""
        return None

    def room_for(self, nbytes: int) -> None:
        """INSUFFICIENT_STORAGE when `nbytes` more would not fit (a local disk keeping its reserve); nothing for a
        store that cannot tell. Asked before a body of known length is read, so a full store refuses it at once."""

    @abstractmethod
    def iterate_uploads(self) -> Iterator[str]:
        """Ids of the sessions the store holds bytes for."""

    # -- blobs -----------------------------------------------------------------------------------------------------

    @abstractmethod
    def read(self, key: str, start: int = 0, length: int | None = None) -> BinaryIO:
        """A stream of the blob's bytes from `start`, `length` of them (to the end when None). BLOB_UNKNOWN when
        there is no such key."""

    @abstractmethod
    def stat(self, key: str) -> int | None:
        """The blob's size, or None when the store does not hold `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a blob; removing a missing key is not an error."""

    @abstractmethod
    def iterate(self) -> Iterator[StoredObject]:
        """Every blob the store holds (for garbage collection and fsck)."""

    def session_of(self, key: str) -> str | None:
        """The upload session whose commit stored `key` (keys are made per session), or None for a key of
        another shape (a blob stored before keys were per session)."""
        return None

    def redirect(self, key: str, digest: str, size: int) -> Redirect | None:
        """How a download of `key` leaves without passing through Python, when the driver is configured for it
        (X-Accel-Redirect to nginx, a presigned URL). None: the domain streams it with `read`."""
        return None

    # -- health ----------------------------------------------------------------------------------------------------

    @abstractmethod
    def check(self) -> None:
        """Raise an error naming the problem unless the store takes a write now."""

    def close(self) -> None:
        """Release connections and handles (a forked worker opens its own on first use)."""


def open_store(config) -> BlobStore:
    """The configured blob store (`storage.driver`)."""
    if config.storage.driver == "s3":
        from .s3 import S3Store

        # One connection per request thread, and one for the part upload each may have in flight.
        return S3Store.from_settings(config.storage, accel_prefix=config.accel_redirect,
                                     max_connections=2 * config.threads + 2, block_size=config.io_block_size)
    from .filesystem import FilesystemStore

    return FilesystemStore(config.data_path, block_size=config.io_block_size,
                           accel_prefix=config.accel_redirect, min_free_space=config.min_free_space)


__all__ = ["BlobStore", "Redirect", "StoredBlob", "StoredObject", "UploadState", "open_store"]
