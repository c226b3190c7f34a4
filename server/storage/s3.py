"""The S3 blob store: blobs and upload sessions as objects and multipart uploads in one bucket of any S3-compatible
store (AWS S3, Ceph RGW, MinIO, OpenStack Swift's s3api, Cloudflare R2, ...), through boto3.

Layout (object names under the `prefix` setting in `bucket`; every name is a constant, a session id of the domain's
`new_id` shape, or a decimal number with a random token this module made):

    blobs/<session id>                    a committed blob; its key is `blobs/<session id>`. Before the commit it is
                                          the key of the session's multipart upload, which listings of objects do
                                          not show
    uploads/<session id>/<end>.<token>    the session's leftover: the bytes after its last whole part, fewer than a
                                          part, ending at byte <end> of the upload; written once, never overwritten
    readyz/<random>                       the probe `check` writes and deletes

Upload sessions. A session's bytes stream into a multipart upload of `blobs/<session id>` as they arrive, in parts
of exactly `part_size` bytes (every part but the last must be the same size on some stores, e.g. R2, and at least
5 MiB on all), hashed as they arrive (`hashing.ResumableSha256`). Nothing is created when a session opens; the
multipart upload is created when its first part is full. A request's body seldom ends on a part boundary: the
leftover is written as an object of its own (`uploads/...`), never kept only on one node's disk, since a node may
die between two requests. The next request reads the leftover back (verified against the size and ETag recorded
for it, the only bytes ever read back: the parts of an unfinished multipart upload cannot be read), prepends it to
its body and goes on. The saved state (`UploadState.driver`) is the multipart upload's id, the ETag of every part,
the leftover's name and ETag, and objects made stale by the last request (the leftover it replaced), which the next
request deletes: once a newer state is recorded, nobody can need them. With that and the running hash saved by the
metadata after each request, any worker, host or restarted process continues the session.

`upload_lock` is the interface's no-op: two requests racing on one session are settled by the metadata's
compare-and-set on the recorded length (only one state is recorded). The loser may have overwritten a part or
left objects behind, but it can never make a commit differ from what was hashed: the commit lists the recorded
part ETags, so CompleteMultipartUpload refuses a part that changed (InvalidPart: BLOB_UPLOAD_INVALID), and a
leftover is read with If-Match on its recorded ETag and its size checked. What the loser left is found by the
listings below. (ETags are MD5s: a client able to race two requests of its own session with MD5-colliding parts
could make its blob differ from its digest; clients verify digests on pull.)

Commit costs no second copy of the bytes: sha256 is checked against the saved hash, then the leftover goes up as
the last part and CompleteMultipartUpload makes the upload the object `blobs/<session id>`, in place, whatever its
size. A blob smaller than a part never had a multipart upload: its leftover is written once more as the object.
sha512 digests cannot use the saved hash: the completed object is read back and hashed (deleted if it does not
match). A commit that finds its leftover gone checks whether an earlier attempt completed the object (by its ETag,
computed from the recorded parts) before giving up.

The commit and delete protocol is the package's (`storage`): keys belong to upload sessions and are never reused,
the metadata maps digest -> key (two sessions committing the same digest: the metadata keeps one, the other key is
deleted), deletes go through pending-delete rows. `iterate` lists `blobs/` (committed objects only);
`iterate_uploads` lists the session ids with a multipart upload in progress or objects under `uploads/`, so
garbage collection aborts multipart uploads no session row knows (the store's lifecycle rules are not needed, and
not every S3-compatible store has them). `abort_upload` lists and aborts every multipart upload of the session's
key (a racing request may have created a second one) and deletes everything under `uploads/<session id>/`; it never
touches a committed blob.

Downloads (`download`): `proxy` streams through Dockyard (a broken store connection mid-stream is resumed with a
Range request on the same ETag); `redirect` answers 307 to a presigned URL valid `presign_expiry` seconds;
`accel` answers `X-Accel-Redirect: <accel_prefix>/<presigned path and query>` for an nginx `internal` location
that proxies to the store with the client's Authorization header removed (deploy/nginx/dockyard-s3.conf). Range
requests work in all three: the store serves them.

Failures. boto3 retries what is safe to retry (every request this driver makes is idempotent, or a duplicate is
garbage the listings find): connection errors, 5xx, throttling, in its "standard" mode. What still fails becomes
UNAVAILABLE (503 with Retry-After): the session stays at its recorded state, so the client continues it once the
store is back. Clients are made lazily in each process (boto3 clients must not cross a fork). Recent boto3 adds
CRC checksums to requests by default that several S3-compatible stores reject; `checksums = "when_required"`
(the default) sends them only where an API requires one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import secrets
import threading
import time
import urllib.parse
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, ContextManager, Iterator

from ..errors import (BlobUnknown, BlobUploadInvalid, BlobUploadUnknown, DigestInvalid, RegistryError, TooLarge,
                      Unavailable)
from ..model import Redirect, StoredBlob, StoredObject, UploadState
from ..names import Digest
from . import BlobStore
from .hashing import ResumableSha256
from .streaming import pump

if TYPE_CHECKING:
    from ..bodies import Source

log = logging.getLogger("dockyard.storage.s3")

SESSION_RE = re.compile(r"[0-9a-f-]{1,64}")
KEY_RE = re.compile(r"blobs/[0-9a-f-]{1,64}")
TAIL_RE = re.compile(r"[0-9]{1,20}\.[0-9a-f]{16}")
ETAG_RE = re.compile(r'"?[0-9a-fA-F]{32}(?:-[0-9]{1,5})?"?')
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000
RETRY_AFTER = "5"  # seconds, for a 503 caused by the store
TAIL_CACHE_BYTES = 16 * 1024 * 1024
DOWNLOAD_MODES = ("proxy", "redirect", "accel")
RESUMES = 2  # a broken download is resumed this many times
IDLE_BUFFERS = 2  # part buffers a process keeps between requests


class _Answer(Exception):
    """A store answer the caller expected and handles (e.g. NoSuchKey)."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


@dataclass
class _Session:
    """`UploadState.driver`, parsed: what the store holds for a session."""
    part_size: int
    upload_id: str | None = None
    parts: list[str] = field(default_factory=list)  # ETags of parts 1..n, each exactly part_size bytes
    tail: str | None = None  # "<end>.<token>" under uploads/<session id>/
    tail_etag: str | None = None
    stale: list[str] = field(default_factory=list)  # tails replaced by the last request

    @classmethod
    def of(cls, state: UploadState, part_size: int) -> "_Session":
        data = state.driver or {}
        try:
            session = cls(int(data.get("part_size", part_size)), data.get("upload"), list(data.get("parts", [])),
                          data.get("tail"), data.get("tail_etag"), list(data.get("stale", [])))
            valid = (MIN_PART_SIZE <= session.part_size <= MAX_PART_SIZE
                     and (session.upload_id is None or isinstance(session.upload_id, str))
                     and all(isinstance(e, str) and ETAG_RE.fullmatch(e) for e in session.parts)
                     and (session.tail is None or (TAIL_RE.fullmatch(session.tail) and session.tail_etag))
                     and all(isinstance(t, str) and TAIL_RE.fullmatch(t) for t in session.stale)
                     and (not session.parts or session.upload_id))
        except (TypeError, ValueError, AttributeError):
            valid = False
        if not valid:
            raise BlobUploadInvalid({"reason": "the upload's recorded state is not an S3 upload's"})
        if state.length < len(session.parts) * session.part_size or \
                (session.tail is None and state.length != len(session.parts) * session.part_size):
            raise BlobUploadInvalid({"reason": "the upload's recorded length does not match its parts"})
        return session

    @property
    def stored_in_parts(self) -> int:
        return len(self.parts) * self.part_size

    def to_driver(self) -> dict[str, Any]:
        data: dict[str, Any] = {"part_size": self.part_size}
        if self.upload_id:
            data["upload"] = self.upload_id
        if self.parts:
            data["parts"] = self.parts
        if self.tail:
            data["tail"], data["tail_etag"] = self.tail, self.tail_etag
        if self.stale:
            data["stale"] = self.stale
        return data


class S3Store(BlobStore):
    driver = "s3"

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str = "", region: str = "",
                 path_style: bool = False, access_key_id: str = "", secret_access_key: str = "",
                 tls_verify: bool = True, ca_bundle: str = "", part_size: int = 8 * 1024 * 1024,
                 download: str = "proxy", presign_expiry: int = 1200, accel_prefix: str = "",
                 checksums: str = "when_required", timeout: float = 30.0, max_connections: int = 10,
                 block_size: int = 1024 * 1024, retries: int = 3):
        if not bucket:
            raise ValueError("the S3 store needs a bucket")
        if download not in DOWNLOAD_MODES:
            raise ValueError(f"download must be one of {', '.join(DOWNLOAD_MODES)}, not {download!r}")
        if download == "accel" and not accel_prefix:
            raise ValueError("download = 'accel' needs the nginx location prefix (accel_redirect)")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self.path_style = path_style
        self._credentials = (access_key_id or None, secret_access_key or None)
        self.tls_verify: bool | str = ca_bundle or tls_verify
        self.part_size = part_size
        self.download = download
        self.presign_expiry = presign_expiry
        self.accel_prefix = accel_prefix.rstrip("/")
        self.checksums = checksums
        self.timeout = timeout
        self.max_connections = max_connections
        self.block_size = block_size
        self.retries = retries
        self._client_lock = threading.Lock()
        self._client = None
        self._client_pid = 0
        self._buffers: list[bytearray] = []  # idle part buffers, reused by every request of this process
        self._buffers_lock = threading.Lock()
        self._tails = _TailCache(TAIL_CACHE_BYTES)

    @classmethod
    def from_settings(cls, storage, *, accel_prefix: str = "", max_connections: int = 10,
                      block_size: int = 1024 * 1024) -> "S3Store":
        """From the `[storage]` table (`config.StorageConfig`)."""
        return cls(storage.bucket, prefix=storage.prefix, endpoint_url=storage.endpoint_url, region=storage.region,
                   path_style=storage.path_style, access_key_id=storage.access_key_id,
                   secret_access_key=storage.secret_access_key, tls_verify=storage.tls_verify,
                   ca_bundle=storage.ca_bundle, part_size=storage.part_size, download=storage.download,
                   presign_expiry=storage.presign_expiry, accel_prefix=accel_prefix, checksums=storage.checksums,
                   timeout=storage.timeout, max_connections=max_connections, block_size=block_size)

    # -- the client ----------------------------------------------------------------------------------------------

    def _s3(self):
        """This process's client: made on first use after a fork (a client's connections must not be shared)."""
        pid = os.getpid()
        client = self._client
        if client is not None and self._client_pid == pid:
            return client
        with self._client_lock:
            if self._client is None or self._client_pid != pid:
                self._client = self._make_client()
                self._client_pid = pid
            return self._client

    def _make_client(self):
        import boto3
        from botocore.config import Config as BotoConfig

        access_key, secret_key = self._credentials
        session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                        region_name=self.region)
        config = BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path" if self.path_style else "auto"},
            retries={"mode": "standard", "max_attempts": self.retries},
            connect_timeout=self.timeout, read_timeout=self.timeout,
            max_pool_connections=self.max_connections,
            request_checksum_calculation=self.checksums, response_checksum_validation=self.checksums,
            region_name=self.region or session.region_name or "us-east-1",
        )
        return session.client("s3", endpoint_url=self.endpoint_url, verify=self.tls_verify, config=config)

    def _call(self, operation: str, *, expect: tuple[str, ...] = (), **params):
        """One store request (with boto3's retries). An answer whose code is in `expect` raises `_Answer`; every
        other failure is UNAVAILABLE, with Retry-After: the client tries again later."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._s3(), operation)(Bucket=self.bucket, **params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in expect or str(status) in expect:
                raise _Answer(code if code in expect else str(status)) from None
            log.warning("blob store: %s failed: %s %s (%s)", operation, status, code, error.get("Message", ""))
            raise self._unavailable(operation, f"{code or status}") from None
        except (BotoCoreError, OSError) as exc:
            log.warning("blob store: %s failed: %s", operation, exc)
            raise self._unavailable(operation, type(exc).__name__) from None

    @staticmethod
    def _unavailable(operation: str, reason: str) -> Unavailable:
        return Unavailable({"storage": "s3", "operation": operation, "reason": reason},
                           message="the blob store is unavailable; try again later",
                           headers={"Retry-After": RETRY_AFTER})

    def _name(self, key: str) -> str:
        return self.prefix + key

    def _blob_name(self, key: str) -> str:
        if not KEY_RE.fullmatch(key or ""):
            raise BlobUnknown({"key": (key or "")[:200]})
        return self._name(key)

    def _check_session(self, session_id: str) -> None:
        if not SESSION_RE.fullmatch(session_id or ""):
            raise BlobUploadUnknown({"uuid": (session_id or "")[:100]})

    def _tail_name(self, session_id: str, tail: str) -> str:
        return self._name(f"uploads/{session_id}/{tail}")

    @staticmethod
    def key_for(session_id: str) -> str:
        return f"blobs/{session_id}"

    # -- upload sessions -----------------------------------------------------------------------------------------

    def open_upload(self, session_id: str) -> UploadState:
        """Nothing is stored yet: the multipart upload starts with the first whole part."""
        self._check_session(session_id)
        return UploadState()

    def upload_lock(self, session_id: str) -> ContextManager:
        self._check_session(session_id)
        return nullcontext()

    def append(self, session_id: str, state: UploadState, source: "Source") -> UploadState:
        self._check_session(session_id)
        session = _Session.of(state, self.part_size)
        hasher = self._hasher(state)
        for stale in session.stale:  # tails a recorded newer state replaced: nobody can need them any more
            self._call("delete_object", Key=self._tail_name(session_id, stale))
        writer = _PartWriter(self, session_id, session)
        try:
            if session.tail:
                writer.write(memoryview(self._read_tail(session_id, session, state.length)))
            received = pump(source, writer.write, hasher, self.block_size)
            writer.finish()
        except BaseException:
            writer.abandon()
            raise
        if not received:
            writer.release()
            return UploadState(state.length, state.hash, session.to_driver())
        length = state.length + received
        new = _Session(session.part_size, writer.upload_id, session.parts + writer.etags)
        leftover = writer.leftover()
        try:
            if leftover:
                new.tail = f"{length}.{secrets.token_hex(8)}"
                new.tail_etag = self._put_tail(session_id, new.tail, leftover)
        finally:
            writer.release()
        if session.tail:
            new.stale = [session.tail]
        return UploadState(length, hasher.state(), new.to_driver())

    def _hasher(self, state: UploadState) -> ResumableSha256:
        if state.length and not state.hash:
            raise BlobUploadInvalid({"reason": "the upload has no saved hash state to continue from"})
        try:
            return ResumableSha256.from_state(state.hash)
        except ValueError:
            raise BlobUploadInvalid({"reason": "the upload's saved hash state is damaged"}) from None

    def _put_tail(self, session_id: str, tail: str, data: bytes) -> str:
        answer = self._call("put_object", Key=self._tail_name(session_id, tail), Body=data)
        etag = answer["ETag"]
        self._tails.put(f"{session_id}/{tail}", etag, data)
        return etag

    def _read_tail(self, session_id: str, session: _Session, length: int) -> bytes:
        """The session's leftover, verified: the size the state says, the ETag its write returned."""
        size = length - session.stored_in_parts
        cached = self._tails.take(f"{session_id}/{session.tail}", session.tail_etag)
        if cached is not None and len(cached) == size:
            return cached
        try:
            answer = self._call("get_object", Key=self._tail_name(session_id, session.tail),
                                IfMatch=session.tail_etag, expect=("NoSuchKey", "PreconditionFailed", "404", "412"))
        except _Answer as answer:
            raise BlobUploadInvalid({"reason": f"the upload's stored leftover is gone or changed ({answer.code})"}
                                    ) from None
        body = answer["Body"]
        try:
            data = body.read(size + 1)
        except Exception as exc:  # the connection broke mid-body
            raise self._unavailable("GetObject", type(exc).__name__) from None
        finally:
            body.close()
        if len(data) != size:
            raise BlobUploadInvalid({"reason": "the upload's stored leftover has the wrong size",
                                     "expected": size, "stored": len(data)})
        return data

    def commit(self, session_id: str, state: UploadState, digest: Digest) -> StoredBlob:
        self._check_session(session_id)
        session = _Session.of(state, self.part_size)
        if digest.algorithm == "sha256":
            actual = self._hasher(state).hexdigest()
            if actual != digest.hex:
                raise DigestInvalid({"expected": str(digest), "actual": f"sha256:{actual}"})
        key = self.key_for(session_id)
        try:
            tail = self._read_tail(session_id, session, state.length) if session.tail else b""
        except BlobUploadInvalid:
            if self._committed_before(key, session, state.length):  # an earlier attempt got this far
                return StoredBlob(str(digest), state.length, key)
            raise
        if not session.parts:
            self._call("put_object", Key=self._name(key), Body=tail)
        else:
            etags = list(session.parts)
            if tail and len(etags) >= MAX_PARTS:
                raise TooLarge({"max_bytes": MAX_PARTS * session.part_size},
                               message=f"a blob has at most {MAX_PARTS} parts of {session.part_size} bytes")
            if tail:
                answer = self._call("upload_part", Key=self._name(key), UploadId=session.upload_id,
                                    PartNumber=len(etags) + 1, Body=tail)
                etags.append(answer["ETag"])
            self._complete(key, session, etags, state.length)
        if digest.algorithm != "sha256":
            self._verify_by_reading(key, digest)
        for stale in [*session.stale, *([session.tail] if session.tail else [])]:
            self._delete_quietly(self._tail_name(session_id, stale))
        return StoredBlob(str(digest), state.length, key)

    def _complete(self, key: str, session: _Session, etags: list[str], length: int) -> None:
        parts = [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(etags, 1)]
        try:
            self._call("complete_multipart_upload", Key=self._name(key), UploadId=session.upload_id,
                       MultipartUpload={"Parts": parts}, expect=("InvalidPart", "InvalidPartOrder", "NoSuchUpload",
                                                                 "EntityTooSmall"))
        except _Answer as answer:
            if answer.code == "NoSuchUpload" and self._has_object(key, _multipart_etag(etags), length):
                return  # completed by an earlier attempt whose answer was lost
            raise BlobUploadInvalid({"reason": f"the store refused to assemble the upload's parts ({answer.code}): "
                                               "they changed after they were recorded"}) from None

    def _committed_before(self, key: str, session: _Session, length: int) -> bool:
        """Whether `key` already holds the upload as recorded: a retried commit after one whose answer was lost."""
        if session.parts:
            return self._has_object(key, _multipart_etag([*session.parts, session.tail_etag]
                                                         if session.tail else session.parts), length)
        return self._has_object(key, session.tail_etag or hashlib.md5(b"", usedforsecurity=False).hexdigest(), length)

    def _has_object(self, key: str, etag: str, size: int) -> bool:
        try:
            answer = self._call("head_object", Key=self._name(key), expect=("404", "NoSuchKey"))
        except _Answer:
            return False
        return answer["ContentLength"] == size and answer["ETag"].strip('"') == etag.strip('"')

    def _verify_by_reading(self, key: str, digest: Digest) -> None:
        """sha512 and other digests: the saved running hash is SHA-256 only, so the completed object is hashed."""
        hasher = hashlib.new(digest.algorithm)
        stream = self.read(key)
        try:
            while block := stream.read(self.block_size):
                hasher.update(block)
        finally:
            stream.close()
        if hasher.hexdigest() != digest.hex:
            self._delete_quietly(self._name(key))
            raise DigestInvalid({"expected": str(digest), "actual": f"{digest.algorithm}:{hasher.hexdigest()}"})

    def abort_upload(self, session_id: str, state: UploadState | None = None) -> int:
        """Abort every multipart upload of the session's key and delete its leftovers; never the committed blob.
        The bytes freed: the leftovers', and the recorded parts' when `state` names the multipart upload."""
        self._check_session(session_id)
        name = self._name(self.key_for(session_id))
        freed = 0
        recorded = state.driver.get("upload") if state is not None and state.driver else None
        for upload in self._multipart_uploads(name):
            if upload["Key"] == name:
                try:
                    self._call("abort_multipart_upload", Key=name, UploadId=upload["UploadId"],
                               expect=("NoSuchUpload", "404"))
                    if upload["UploadId"] == recorded:
                        freed += len(state.driver.get("parts", ())) * int(state.driver.get("part_size", 0))
                except _Answer:
                    pass  # aborted or completed meanwhile
        for obj in self._objects(self._name(f"uploads/{session_id}/")):
            self._call("delete_object", Key=obj["Key"])
            freed += obj["Size"]
        return freed

    def iterate_uploads(self) -> Iterator[str]:
        seen: set[str] = set()
        blobs = self._name("blobs/")
        for upload in self._multipart_uploads(blobs):
            session_id = upload["Key"][len(blobs):]
            if SESSION_RE.fullmatch(session_id) and session_id not in seen:
                seen.add(session_id)
                yield session_id
        uploads = self._name("uploads/")
        for page in self._pages("list_objects_v2", Prefix=uploads, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                session_id = common["Prefix"][len(uploads):].rstrip("/")
                if SESSION_RE.fullmatch(session_id) and session_id not in seen:
                    seen.add(session_id)
                    yield session_id

    def _multipart_uploads(self, prefix: str) -> Iterator[dict]:
        for page in self._pages("list_multipart_uploads", Prefix=prefix):
            yield from page.get("Uploads", [])

    def _objects(self, prefix: str) -> Iterator[dict]:
        for page in self._pages("list_objects_v2", Prefix=prefix):
            yield from page.get("Contents", [])

    def _pages(self, operation: str, **params) -> Iterator[dict]:
        """The pages of a listing; a failure on any page is UNAVAILABLE."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield from self._s3().get_paginator(operation).paginate(Bucket=self.bucket, **params)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            log.warning("blob store: %s %s failed: %s", operation, params.get("Prefix"), code)
            raise self._unavailable(operation, code or "error") from None
        except (BotoCoreError, OSError) as exc:
            log.warning("blob store: %s %s failed: %s", operation, params.get("Prefix"), exc)
            raise self._unavailable(operation, type(exc).__name__) from None

    def _delete_quietly(self, name: str) -> None:
        """Cleanup that may fail: what it leaves is garbage the listings find."""
        try:
            self._call("delete_object", Key=name)
        except Unavailable:
            pass

    def _take_buffer(self, allocate: bool = True) -> bytearray | None:
        """A part buffer: an idle one of this process, else a new one (or None)."""
        with self._buffers_lock:
            if self._buffers:
                return self._buffers.pop()
        return bytearray(self.part_size) if allocate else None

    def _give_buffer(self, buffer: bytearray) -> None:
        """Keep a few buffers for the next requests: allocating 8 MiB per request would make memory churn."""
        with self._buffers_lock:
            if len(self._buffers) < IDLE_BUFFERS and len(buffer) == self.part_size:
                self._buffers.append(buffer)

    # -- blobs ---------------------------------------------------------------------------------------------------

    def read(self, key: str, start: int = 0, length: int | None = None) -> BinaryIO:
        name = self._blob_name(key)
        end = None if length is None else start + length - 1
        if length == 0:
            return _Empty()
        return _ObjectReader(self, name, start, end)

    def _get(self, name: str, start: int, end: int | None, etag: str | None = None):
        params: dict[str, Any] = {"Key": name}
        if start or end is not None:
            params["Range"] = f"bytes={start}-{'' if end is None else end}"
        if etag:
            params["IfMatch"] = etag
        try:
            return self._call("get_object", expect=("NoSuchKey", "404", "InvalidRange", "416"), **params)
        except _Answer as answer:
            if answer.code in ("InvalidRange", "416"):  # a range starting at the end: nothing to send
                return None
            raise BlobUnknown({"key": name[len(self.prefix):]}) from None

    def stat(self, key: str) -> int | None:
        try:
            return self._call("head_object", Key=self._blob_name(key), expect=("404", "NoSuchKey"))["ContentLength"]
        except _Answer:
            return None

    def delete(self, key: str) -> None:
        self._call("delete_object", Key=self._blob_name(key))

    def iterate(self) -> Iterator[StoredObject]:
        for obj in self._objects(self._name("blobs/")):
            key = obj["Key"][len(self.prefix):]
            if KEY_RE.fullmatch(key):
                yield StoredObject(key, obj["Size"], obj["LastModified"].timestamp())

    def session_of(self, key: str) -> str | None:
        """`blobs/<session id>`: every key is its session's."""
        return key.removeprefix("blobs/") if KEY_RE.fullmatch(key or "") else None

    def redirect(self, key: str, digest: str, size: int) -> Redirect | None:
        if self.download == "proxy":
            return None
        url = self._presign(self._blob_name(key))
        if self.download == "redirect":
            return Redirect("temporary", url)
        parts = urllib.parse.urlsplit(url)
        return Redirect("accel", f"{self.accel_prefix}{parts.path}?{parts.query}")

    def _presign(self, name: str) -> str:
        from botocore.exceptions import BotoCoreError

        try:
            return self._s3().generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": name},
                                                     ExpiresIn=self.presign_expiry)
        except BotoCoreError as exc:  # e.g. no credentials found
            log.warning("blob store: presigning failed: %s", exc)
            raise self._unavailable("presign", type(exc).__name__) from None

    # -- health --------------------------------------------------------------------------------------------------

    def check(self) -> None:
        probe = self._name(f"readyz/{secrets.token_hex(8)}")
        try:
            self._call("put_object", Key=probe, Body=b"ready\n")
            self._call("delete_object", Key=probe)
        except Unavailable as exc:
            raise Unavailable(exc.detail, message=f"the bucket takes no write: {exc.detail.get('reason')}",
                              headers=exc.headers) from None

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
            if client is not None and self._client_pid == os.getpid():
                client.close()


def _multipart_etag(etags: list[str]) -> str:
    """The ETag S3 gives a completed multipart upload: the MD5 of the parts' binary MD5s, dash, the part count."""
    joined = b"".join(bytes.fromhex(etag.strip('"')) for etag in etags)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(etags)}"


class _PartWriter:
    """Cuts a stream into parts of `part_size` and uploads each whole part while the next one fills (one upload in
    flight, two buffers). Whatever is left at the end is the caller's leftover."""

    def __init__(self, store: S3Store, session_id: str, session: _Session):
        self.store = store
        self.name = store._name(store.key_for(session_id))
        self.part_size = session.part_size
        self.upload_id = session.upload_id
        self.next_part = len(session.parts) + 1
        self.etags: list[str] = []
        self.created = False  # whether this request created the multipart upload
        self._current: bytearray | None = None
        self._filled = 0
        self._owned: list[bytearray] = []
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._work: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def write(self, view: memoryview) -> None:
        while view:
            if self._current is None:
                self._current = self._buffer()
                self._filled = 0
            take = min(len(view), self.part_size - self._filled)
            if len(self._current) < self.part_size:
                self._current += view[:take]
            else:
                self._current[self._filled:self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == self.part_size:
                self._submit(self._current)
                self._current = None

    def _buffer(self) -> bytearray:
        if not self._owned:  # an idle part buffer, else one that grows as it fills (a small body stays small)
            buffer = self.store._take_buffer(allocate=False) or bytearray()
        elif len(self._owned) < 2:
            buffer = self.store._take_buffer()
        else:
            buffer = self._free.get()  # wait for the upload in flight to give its buffer back
            self._raise_failure()
            return buffer
        self._owned.append(buffer)
        return buffer

    def _submit(self, buffer: bytearray) -> None:
        self._raise_failure()
        if self.next_part > MAX_PARTS:
            raise TooLarge({"max_bytes": MAX_PARTS * self.part_size},
                           message=f"a blob has at most {MAX_PARTS} parts of {self.part_size} bytes (part_size)")
        if self._thread is None:
            self._work = queue.Queue(maxsize=1)
            self._thread = threading.Thread(target=self._upload_parts, name="s3-parts", daemon=True)
            self._thread.start()
        self._work.put((self.next_part, buffer))
        self.next_part += 1

    def _upload_parts(self) -> None:
        while (item := self._work.get()) is not None:
            number, buffer = item
            try:
                if self._failure is None:
                    if self.upload_id is None:
                        self.upload_id = self.store._call("create_multipart_upload", Key=self.name)["UploadId"]
                        self.created = True
                    answer = self.store._call("upload_part", Key=self.name, UploadId=self.upload_id,
                                              PartNumber=number, Body=buffer)
                    self.etags.append(answer["ETag"])
            except BaseException as exc:
                self._failure = exc
            self._free.put(buffer)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _stop(self) -> None:
        if self._thread is not None:
            self._work.put(None)
            self._thread.join()
            self._thread = None

    def finish(self) -> None:
        """Wait for the parts in flight; raise what failed."""
        self._stop()
        self._raise_failure()

    def leftover(self) -> bytes:
        return bytes(memoryview(self._current)[:self._filled]) if self._current is not None else b""

    def abandon(self) -> None:
        """The request failed: stop, give the buffers back, and abort a multipart upload nobody recorded."""
        self._stop()
        if self.created:
            try:
                self.store._call("abort_multipart_upload", Key=self.name, UploadId=self.upload_id,
                                 expect=("NoSuchUpload",))
            except (_Answer, RegistryError):
                pass  # left for garbage collection: no session state names it
        self.release()

    def release(self) -> None:
        for buffer in self._owned:
            self.store._give_buffer(buffer)
        self._owned.clear()
        self._current = None


class _TailCache:
    """The leftovers this process wrote last, by name: a commit or the next request on the same worker need not
    read them back. Bounded in bytes; an entry is used once."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, name: str, etag: str, data: bytes) -> None:
        if len(data) > self.max_bytes // 2:
            return
        with self._lock:
            self._entries[name] = (etag, data)
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, (_, old) = self._entries.popitem(last=False)
                self._bytes -= len(old)

    def take(self, name: str | None, etag: str | None) -> bytes | None:
        with self._lock:
            entry = self._entries.pop(name, None) if name else None
            if entry is None:
                return None
            self._bytes -= len(entry[1])
        return entry[1] if entry[0] == etag else None


class _Empty:
    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _ObjectReader:
    """A blob's bytes from the store, opened at once (a missing object or an unreachable store fails the request
    before any header is sent). A connection that breaks mid-body is resumed from where it stopped, with If-Match on
    the ETag first served."""

    def __init__(self, store: S3Store, name: str, start: int, end: int | None):
        self._store = store
        self._name = name
        self._position = start
        self._end = end
        self._resumes = RESUMES
        answer = store._get(name, start, end)
        self._body = None if answer is None else answer["Body"]
        self._etag = None if answer is None else answer.get("ETag")
        self._done = answer is None

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        while True:
            try:
                data = self._body.read(None if size is None or size < 0 else size)
                break
            except Exception as exc:  # urllib3/botocore errors of a broken connection
                if not self._resumes:
                    log.warning("blob store: download of %s broke at byte %d: %s", self._name, self._position, exc)
                    raise self._store._unavailable("GetObject", type(exc).__name__) from None
                self._resumes -= 1
                self._body.close()
                time.sleep(0.5)
                answer = self._store._get(self._name, self._position, self._end, self._etag)
                if answer is None:
                    self._done = True
                    return b""
                self._body = answer["Body"]
        self._position += len(data)
        if not data:
            self._done = True
        return data

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
