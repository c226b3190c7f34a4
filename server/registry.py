"""The registry's operations, independent of HTTP: what each endpoint does to the blob store and the metadata.

Resources parse requests and shape responses; everything in between happens here, so the same rules hold for
the HTTP API, the admin commands and the tests. Failures are the domain errors of `errors`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable

from .bodies import Source
from .config import Config
from .errors import (BlobUnknown, BlobUploadInvalid, BlobUploadUnknown, DigestInvalid, ManifestUnknown, NameUnknown,
                     SizeInvalid, TagInvalid)
from .gc import GarbageCollector
from .manifests import parse_manifest
from .metadata import ManifestRecord, Metadata, Upload
from .metadata.quotas import Quota
from .names import Digest, parse_digest, parse_reference
from .storage import BlobStore, CommittedBlob

CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)")


@dataclass(slots=True)
class Body:
    """A request body to stream: `length` is None for a chunked body of unknown length."""
    source: Source
    length: int | None
    content_range: str | None = None


@dataclass(slots=True)
class StoredManifest:
    digest: str
    subject: str | None


class Registry:
    def __init__(self, config: Config, store: BlobStore, metadata: Metadata, *, clock=time.time):
        self.config = config
        self.store = store
        self.metadata = metadata
        self.clock = clock
        self.quotas = tuple(Quota(pattern, limit) for pattern, limit in config.quotas)
        self.gc = GarbageCollector(metadata, store, clock=clock, upload_max_age=config.upload_max_age)
        self._read_only_checked = (-1.0, False)

    # -- blobs ---------------------------------------------------------------------------------------------------

    def blob(self, name: str, digest: str) -> tuple[Digest, int]:
        """A blob readable in `name`: its parsed digest and size. BLOB_UNKNOWN otherwise."""
        parsed = parse_digest(digest)
        size = self.metadata.blob_size(name, str(parsed))
        if size is None:
            raise BlobUnknown({"digest": digest})
        return parsed, size

    def open_blob(self, digest: Digest) -> BinaryIO:
        return self.store.open(digest)

    def delete_blob(self, name: str, digest: str) -> None:
        parsed = parse_digest(digest)
        if not self.metadata.unlink_blob(name, str(parsed)):
            raise BlobUnknown({"digest": digest})

    def mount(self, name: str, source: str, digest: str) -> tuple[Digest, int] | None:
        """Cross-repository mount; None when the blob is not readable in `source` (the caller opens a session)."""
        try:
            parsed = parse_digest(digest)
        except DigestInvalid:
            return None
        size = self.metadata.mount_blob(name, source, str(parsed), self.quotas_for(name))
        return (parsed, size) if size is not None else None

    # -- uploads -------------------------------------------------------------------------------------------------

    def start_upload(self, name: str) -> Upload:
        upload_id = self.store.new_upload()
        self.metadata.create_upload(name, upload_id)
        return self._session(name, upload_id)

    def upload_status(self, name: str, upload_id: str) -> Upload:
        return self._session(name, upload_id)

    def append_upload(self, name: str, upload_id: str, body: Body) -> Upload:
        """A PATCH: append the body to the session, in order."""
        self._session(name, upload_id)
        with self.store.open_upload(upload_id) as writer:
            session = self._session(name, upload_id)  # re-read under the lock: another worker may have moved it
            writer.offset = session.length
            self._check_range(session, body)
            self._check_quota_room(name, session.length + (body.length or 0))
            length = writer.append(body.source)
            self.metadata.set_upload_length(upload_id, length)
            session.length = length
            return session

    def finish_upload(self, name: str, upload_id: str, digest: str | None, body: Body) -> CommittedBlob:
        """The closing PUT: append an optional last chunk, verify the digest, commit the blob."""
        self._session(name, upload_id)
        if not digest:
            raise DigestInvalid({"reason": "the closing PUT needs ?digest="}, message="digest missing")
        parsed = parse_digest(digest)
        with self.store.open_upload(upload_id) as writer:
            session = self._session(name, upload_id)
            writer.offset = session.length
            if body.length or body.length is None:
                self._check_range(session, body)
                writer.append(body.source)
            try:
                blob = writer.verify(parsed)
            except DigestInvalid:
                # A failed upload leaves nothing: the session and its bytes go.
                self.metadata.delete_upload(upload_id)
                self.store.remove_upload(upload_id)
                raise
            self.metadata.add_blob(name, str(blob.digest), blob.size, install=writer.install, upload_id=upload_id,
                                   quotas=self.quotas_for(name))
            writer.sync()
            return blob

    def cancel_upload(self, name: str, upload_id: str) -> None:
        self._session(name, upload_id)
        with self.store.open_upload(upload_id):
            self.metadata.delete_upload(upload_id)
            self.store.remove_upload(upload_id)

    def monolithic_upload(self, name: str, digest: str, body: Body) -> CommittedBlob:
        """POST ...?digest= with the whole blob as the body."""
        parsed = parse_digest(digest)
        self._check_quota_room(name, body.length or 0)
        upload_id = self.store.new_upload()
        try:
            with self.store.open_upload(upload_id) as writer:
                writer.append(body.source)
                blob = writer.verify(parsed)
                self.metadata.add_blob(name, str(blob.digest), blob.size, install=writer.install,
                                       quotas=self.quotas_for(name))
                writer.sync()
                return blob
        finally:
            self.store.remove_upload(upload_id)

    # -- quotas and maintenance mode ------------------------------------------------------------------------------

    def quotas_for(self, name: str) -> tuple[Quota, ...]:
        return tuple(q for q in self.quotas if q.applies_to(name))

    def _check_quota_room(self, name: str, incoming: int) -> None:
        """Refuse a body early when it cannot fit (the commit re-checks exactly, inside its transaction)."""
        for quota in self.quotas_for(name):
            used = self.metadata.quota_usage(quota)
            if used + incoming > quota.limit:
                raise quota.exceeded(used, incoming)

    def read_only(self) -> bool:
        """Maintenance mode: from the config, or switched on at run time for every worker (cached for 1 s)."""
        if self.config.read_only:
            return True
        checked_at, value = self._read_only_checked
        now = time.monotonic()
        if now - checked_at > 1.0:
            value = self.metadata.get_state("read_only") == "1"
            self._read_only_checked = (now, value)
        return value

    def set_read_only(self, enabled: bool) -> None:
        self.metadata.set_state("read_only", "1" if enabled else None)
        self._read_only_checked = (-1.0, False)

    def delete_repository(self, name: str) -> dict:
        with self.metadata.maintenance() as m:
            counts = m.delete_repository(name)
        if counts is None:
            raise NameUnknown({"name": name})
        for upload_id in counts.pop("uploads"):
            self.store.remove_upload(upload_id)
        return counts

    def _session(self, name: str, upload_id: str) -> Upload:
        session = self.metadata.get_upload(name, upload_id)
        if session is None:
            raise BlobUploadUnknown({"uuid": upload_id})
        return session

    @staticmethod
    def _check_range(session: Upload, body: Body) -> None:
        """Chunks must arrive in order: a Content-Range must start where the session ends (416 otherwise)."""
        if not body.content_range:
            return
        match = CONTENT_RANGE_RE.fullmatch(body.content_range.strip())
        if not match:
            raise BlobUploadInvalid({"Content-Range": body.content_range}, status=416,
                                    message="malformed Content-Range")
        start, end = int(match.group(1)), int(match.group(2))
        if start != session.length or end < start:
            raise BlobUploadInvalid({"Content-Range": body.content_range, "expected_start": session.length},
                                    status=416, message="chunk out of order")
        if body.length is not None and body.length != end - start + 1:
            raise SizeInvalid({"Content-Range": body.content_range, "Content-Length": body.length},
                              status=416, message="Content-Range does not match Content-Length")

    # -- manifests -----------------------------------------------------------------------------------------------

    def put_manifest(self, name: str, reference: str, data: bytes, content_type: str | None) -> StoredManifest:
        ref = parse_reference(reference)
        if isinstance(ref, Digest):
            digest = Digest.of(data, ref.algorithm)
            if digest != ref:
                raise DigestInvalid({"expected": str(ref), "actual": str(digest)},
                                    message="manifest digest did not match the reference")
            tag = None
        else:
            digest = Digest.of(data)
            tag = ref
        manifest = parse_manifest(data, content_type, digest)
        self.metadata.put_manifest(name, manifest, tag)
        return StoredManifest(manifest.digest, manifest.subject)

    def manifest(self, name: str, reference: str, *, with_data: bool = True) -> ManifestRecord:
        ref = self._lookup_reference(reference)
        if isinstance(ref, Digest):
            record = self.metadata.get_manifest(name, digest=str(ref), with_data=with_data)
        else:
            record = self.metadata.get_manifest(name, tag=ref, with_data=with_data)
        if record is None:
            if not self.metadata.repository_exists(name):
                raise NameUnknown({"name": name})
            raise ManifestUnknown({"reference": reference})
        return record

    def delete_manifest(self, name: str, reference: str) -> None:
        """By digest: the manifest and its tags go. By tag: only that tag goes."""
        ref = self._lookup_reference(reference)
        deleted = (self.metadata.delete_manifest(name, str(ref)) if isinstance(ref, Digest)
                   else self.metadata.delete_tag(name, ref))
        if not deleted:
            if not self.metadata.repository_exists(name):
                raise NameUnknown({"name": name})
            raise ManifestUnknown({"reference": reference})

    @staticmethod
    def _lookup_reference(reference: str) -> str | Digest:
        """A reference to look up: a malformed tag names no manifest (404), as the conformance suite expects;
        a malformed digest stays a 400 DIGEST_INVALID. Only a PUT answers TAG_INVALID."""
        try:
            return parse_reference(reference)
        except TagInvalid:
            raise ManifestUnknown({"reference": reference[:300], "reason": "not a valid tag"}) from None

    def referrers(self, name: str, digest: str, artifact_type: str | None) -> list[dict]:
        return self.metadata.referrers(name, str(parse_digest(digest)), artifact_type)

    # -- listings ------------------------------------------------------------------------------------------------

    def tags_version(self, name: str) -> int:
        version = self.metadata.tags_version(name)
        if version is None:
            raise NameUnknown({"name": name})
        return version

    def tags(self, name: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        page = self.metadata.tags(name, n, last)
        if page is None:
            raise NameUnknown({"name": name})
        return page

    def catalog(self, n: int, last: str | None,
                visible: Callable[[str], bool] | None = None) -> tuple[list[str], bool]:
        """A page of `n` repository names after `last`, and whether more follow. With `visible` (the caller may
        only see some), pages are read until `n` visible names are found or the names run out."""
        if visible is None:
            return self.metadata.catalog(n, last)
        found: list[str] = []
        batch = min(max(n + 1, 100), 1000)
        while len(found) <= n:
            names, more = self.metadata.catalog(batch, last)
            found.extend(name for name in names if visible(name))
            if not more or not names:
                break
            last = names[-1]
        return found[:n], len(found) > n

