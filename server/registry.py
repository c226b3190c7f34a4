"""The registry's operations, independent of HTTP: the only door to the blob store and the metadata.

Resources parse requests and shape responses; the admin API, the CLI, background jobs and tests call the same
methods; middleware never see this object at all. Everything between a request and the state happens here, so the
same rules hold everywhere. The commit and delete protocol between the blob store and the metadata is described in
`storage`'s docstring and carried out here (uploads) and in `gc` (deletes). Failures are the domain errors of
`errors`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Callable

from .blobcopy import CopyReport, copy_blobs
from .bodies import Source
from .cache import BoundedCache
from .config import Config
from .errors import (BlobUnknown, BlobUploadUnknown, DigestInvalid, ManifestUnknown, NameUnknown,
                     RangeInvalid, RegistryError, TagInvalid)
from .fsck import FsckReport, fsck
from .gc import GarbageCollector, GcReport
from .manifests import parse_manifest
from .metadata import Metadata
from .mirror import Mirror
from .model import (BlobRecord, Caller, ManifestRecord, Redirect, StorageUsage, StoredBlob, UploadLimits,
                    UploadSession, UploadState)
from .names import Digest, parse_digest, parse_reference
from .notify import Notifications
from .parsing import content_range
from .quotas import Quota
from .storage import BlobStore



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


# Per worker: manifests are a few KiB, so this holds thousands; what a worker's memory may grow to is the sum of
# its caches (this and the listings' in app.py) and its base, which the soak benchmark watches (bench/soak.py).
MANIFEST_CACHE_BYTES = 8 * 1024 * 1024


def new_session_id() -> str:
    return str(uuid.uuid4())


class Registry:
    def __init__(self, config: Config, store: BlobStore, metadata: Metadata, *, clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = new_session_id):
        self.config = config
        self._store = store
        self._metadata = metadata
        self.clock = clock
        self._new_id = new_id
        self.quotas = tuple(Quota(pattern, limit) for pattern, limit in config.quotas)
        self.upload_limits = UploadLimits(config.upload_sessions_per_repository, config.upload_sessions_per_user)
        self.notifications = Notifications(config, metadata, clock=clock)
        self._events = self.notifications.events  # builds a change's events for the endpoints that want them
        self._gc = GarbageCollector(metadata, store, clock=clock, upload_max_age=config.upload_max_age,
                                    events=self._events)
        self._manifest_bytes = BoundedCache(max_bytes=MANIFEST_CACHE_BYTES)
        self._read_only_checked = (-1.0, False)
        # The pull-through cache (issue 16): the repositories `[[upstreams]]` serve are read and filled there.
        self.mirror = Mirror(config, store, metadata, collect=self.collect_garbage, read_only=self.read_only,
                             clock=clock, new_id=new_id) if config.upstreams else None

    # -- blobs ---------------------------------------------------------------------------------------------------

    def blob(self, name: str, digest: str, *, pull: bool = False) -> BlobRecord:
        """A blob readable in `name`; BLOB_UNKNOWN otherwise. `pull`: the caller will read it (a cached repository
        fetches it from its upstream then)."""
        if self._cached(name):
            return self.mirror.blob(name, digest, fetch=pull)
        record = self._metadata.blob(name, str(parse_digest(digest)))
        if record is None:
            raise BlobUnknown({"digest": digest})
        return record

    def read_blob(self, blob: BlobRecord, start: int = 0, length: int | None = None) -> BinaryIO:
        if self._cached(getattr(blob, "repository", None)):
            return self.mirror.read(blob, start, length)
        return self._store.read(blob.key, start, length)

    def blob_redirect(self, blob: BlobRecord) -> Redirect | None:
        """Where the client or the proxy in front fetches the bytes itself, when the store is set up for it."""
        if self.mirror is not None and self.mirror.fetching(blob):
            return None
        return self._store.redirect(blob.key, blob.digest, blob.size)

    def delete_blob(self, name: str, digest: str, caller: Caller | None = None) -> None:
        self._writable(name)
        parsed = str(parse_digest(digest))
        events = self._events.blob_deleted(name, parsed, caller)
        if not self._metadata.unlink_blob(name, parsed, events=events):
            raise BlobUnknown({"digest": digest})
        self.notifications.wake(events)

    def mount(self, name: str, source: str, digest: str, caller: Caller | None = None) -> BlobRecord | None:
        """Cross-repository mount; None when the blob is not readable in `source` (the caller opens a session)."""
        self._writable(name)
        try:
            parsed = parse_digest(digest)
        except DigestInvalid:
            return None
        events = []
        if self._events and (known := self._metadata.blob(source, str(parsed))) is not None:
            events = self._events.blob_mounted(name, source, known.digest, known.size, caller)
        mounted = self._metadata.mount_blob(name, source, str(parsed), quotas=self.quotas_for(name), events=events)
        self.notifications.wake(events)
        return mounted

    # -- uploads -------------------------------------------------------------------------------------------------

    def start_upload(self, name: str, owner: str | None = None) -> UploadSession:
        """Open a session for `owner` (the user asking; None for anonymous callers)."""
        self._writable(name)
        session_id = self._new_id()
        # The row first: the store never holds bytes nobody records.
        self._metadata.create_upload(name, session_id, owner=owner, limits=self.upload_limits)
        now = self.clock()
        try:
            state = self._store.open_upload(session_id)
            if state != UploadState():
                self._metadata.save_upload(session_id, 0, state)
        except BaseException:
            self._metadata.delete_upload(session_id)
            raise
        return UploadSession(session_id, name, state, now, now)

    def upload_status(self, name: str, session_id: str) -> UploadSession:
        return self._session(name, session_id)

    def append_upload(self, name: str, session_id: str, body: Body) -> UploadSession:
        """A PATCH: append the body to the session, in order."""
        self._writable(name)
        with self._store.upload_lock(session_id):
            session = self._session(name, session_id)  # read under the lock: another worker may have moved it
            self._check_range(session, body)
            self._check_room(name, session.length, body)
            self._append(session, body)
            return session

    def finish_upload(self, name: str, session_id: str, digest: str | None, body: Body,
                      caller: Caller | None = None) -> StoredBlob:
        """The closing PUT: append an optional last chunk, verify the digest, commit the blob."""
        self._writable(name)
        if not digest:
            self._session(name, session_id)  # an unknown session is 404 before a missing digest is 400
            raise DigestInvalid({"reason": "the closing PUT needs ?digest="}, message="digest missing")
        parsed = parse_digest(digest)
        with self._store.upload_lock(session_id):
            session = self._session(name, session_id)
            if body.length or body.length is None:
                self._check_range(session, body)
                self._check_room(name, session.length, body)
                self._append(session, body)
            stored = self._commit(session, parsed)
        return self._record(name, stored, session_id, caller)

    def cancel_upload(self, name: str, session_id: str) -> None:
        self._writable(name)
        with self._store.upload_lock(session_id):
            session = self._session(name, session_id)
            self._metadata.delete_upload(session_id)
            self._store.abort_upload(session_id, session.state)

    def monolithic_upload(self, name: str, digest: str, body: Body, owner: str | None = None,
                          caller: Caller | None = None) -> StoredBlob:
        """POST ...?digest= with the whole blob as the body: a session of one request."""
        self._writable(name)
        parsed = parse_digest(digest)
        self._check_room(name, 0, body)
        session_id = self._new_id()
        self._metadata.create_upload(name, session_id, monolithic=True, owner=owner, limits=self.upload_limits)
        session = UploadSession(session_id, name, UploadState(), 0.0, 0.0, monolithic=True)
        try:
            session.state = self._store.open_upload(session_id)
            with self._store.upload_lock(session_id):
                session.state = self._store.append(session_id, session.state, body.source)
                stored = self._commit(session, parsed)
        except BaseException:
            self._metadata.delete_upload(session_id)
            self._store.abort_upload(session_id, session.state)
            raise
        return self._record(name, stored, session_id, caller)

    def _append(self, session: UploadSession, body: Body) -> None:
        state = self._store.append(session.id, session.state, body.source)
        if not self._metadata.save_upload(session.id, session.length, state):
            raise BlobUploadUnknown({"uuid": session.id, "reason": "the session was cancelled or expired meanwhile"})
        session.state = state

    def _commit(self, session: UploadSession, digest: Digest) -> StoredBlob:
        try:
            return self._store.commit(session.id, session.state, digest)
        except DigestInvalid:
            # A failed upload leaves nothing: the session and its bytes go.
            self._metadata.delete_upload(session.id)
            self._store.abort_upload(session.id, session.state)
            raise

    def _record(self, name: str, stored: StoredBlob, session_id: str, caller: Caller | None = None) -> StoredBlob:
        """Make a committed blob visible. A refusal raised inside the transaction (a quota) rolled it back, so
        nobody can reach the new key: it goes at once. Any other failure leaves the key to the orphan sweep, which
        checks the metadata first (a commit whose acknowledgement was lost must not lose its bytes)."""
        events = self._events.blob_pushed(name, stored.digest, stored.size, caller)
        try:
            redundant = self._metadata.record_blob(name, stored, session_id=session_id,
                                                   quotas=self.quotas_for(name), events=events)
        except RegistryError:
            self._store.delete(stored.key)
            self._metadata.delete_upload(session_id)
            raise
        self.notifications.wake(events)
        if redundant is not None:
            self._store.delete(redundant)
        return stored

    def _session(self, name: str, session_id: str) -> UploadSession:
        session = self._metadata.upload(name, session_id)
        if session is None:
            raise BlobUploadUnknown({"uuid": session_id[:100]})
        return session

    @staticmethod
    def _check_range(session: UploadSession, body: Body) -> None:
        """Chunks must arrive in order: a Content-Range must start where the session ends (416 otherwise)."""
        if not body.content_range:
            return
        start, end = content_range(body.content_range)
        if start != session.length:
            raise RangeInvalid({"Content-Range": body.content_range[:100], "expected_start": session.length},
                               message="chunk out of order")
        if body.length is not None and body.length != end - start + 1:
            raise RangeInvalid({"Content-Range": body.content_range[:100], "Content-Length": body.length},
                               message="Content-Range does not match Content-Length")

    # -- the pull-through cache ----------------------------------------------------------------------------------

    def _cached(self, name: str | None) -> bool:
        return self.mirror is not None and name is not None and self.mirror.upstream_for(name) is not None

    def _writable(self, name: str) -> None:
        """Names served from an upstream are read-only: a push there would plant content for every puller."""
        if self.mirror is not None:
            self.mirror.refuse_write(name)

    def upstream_of(self, name: str) -> dict | None:
        """Where a cached repository comes from (None for any other)."""
        return self.mirror.describe(name) if self.mirror is not None else None

    # -- quotas and read-only mode -------------------------------------------------------------------------------

    def quotas_for(self, name: str) -> tuple[Quota, ...]:
        return tuple(q for q in self.quotas if q.applies_to(name))

    def _check_room(self, name: str, stored: int, body: Body) -> None:
        """Refuse a body before reading it when it cannot fit: in a quota (the commit re-checks exactly, inside
        its transaction) or in the store."""
        self._check_quota_room(name, stored + (body.length or 0))
        self._store.room_for(body.length or 0)

    def _check_quota_room(self, name: str, incoming: int) -> None:
        """Refuse a body early when it cannot fit (the commit re-checks exactly, inside its transaction)."""
        for quota in self.quotas_for(name):
            used = self._metadata.quota_usage(quota)
            if used + incoming > quota.limit:
                raise quota.exceeded(used, incoming)

    def read_only(self) -> bool:
        """Maintenance mode: from the config, or switched on at run time for every worker (cached for 1 s)."""
        if self.config.read_only:
            return True
        checked_at, value = self._read_only_checked
        now = time.monotonic()
        if now - checked_at > 1.0:
            value = self._metadata.get_state("read_only") == "1"
            self._read_only_checked = (now, value)
        return value

    def shared_state(self) -> "SharedState | None":
        """What the middleware keeps where every node sees it: on the metadata's database when several hosts share
        it (PostgreSQL); None for a database of one host (the middleware then keeps it in the data directory)."""
        return SharedState(self._metadata, self.clock) if self._metadata.shared_by_hosts else None

    def set_read_only(self, enabled: bool) -> None:
        self._metadata.set_state("read_only", "1" if enabled else None)
        self._read_only_checked = (-1.0, False)

    # -- manifests -----------------------------------------------------------------------------------------------

    def put_manifest(self, name: str, reference: str, data: bytes, content_type: str | None,
                     caller: Caller | None = None) -> StoredManifest:
        self._writable(name)
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
        events = []
        if self._events:  # `tag` (only a tag moved) or `push`: whether the repository held the manifest already
            present = self._metadata.manifest(name, digest=manifest.digest) is not None
            events = self._events.manifest_pushed(name, manifest.digest, manifest.media_type, len(data), tag, caller,
                                                  present=present)
        self._metadata.put_manifest(name, manifest, tag, events=events)
        self.notifications.wake(events)
        return StoredManifest(manifest.digest, manifest.subject)

    def manifest(self, name: str, reference: str, *, with_data: bool = True) -> ManifestRecord:
        """A manifest by tag or digest. Its bytes come from a per-process cache by digest (content never changes
        under a digest); presence is always checked in the metadata."""
        ref = self._lookup_reference(reference)
        if self._cached(name):
            record = self.mirror.manifest(name, ref)
        elif isinstance(ref, Digest):
            record = self._metadata.manifest(name, digest=str(ref))
        else:
            record = self._metadata.manifest(name, tag=ref)
        if record is None:
            if not self._metadata.repository_exists(name):
                raise NameUnknown({"name": name})
            raise ManifestUnknown({"reference": reference})
        if with_data:
            cached = self._manifest_bytes.get(record.digest)
            if cached is not None:
                record.data = cached[0]
            else:
                record.data = self._metadata.manifest_data(record.digest)
                if record.data is None:  # collected between the two reads
                    raise ManifestUnknown({"reference": reference})
                self._manifest_bytes.put(record.digest, record.data)
        return record

    def delete_manifest(self, name: str, reference: str, caller: Caller | None = None) -> None:
        """By digest: the manifest and its tags go (an event for each, as Distribution reports them). By tag: only
        that tag goes."""
        self._writable(name)
        ref = self._lookup_reference(reference)
        if isinstance(ref, Digest):
            tags = self._metadata.tags_of(name, str(ref)) if self._events else ()
            events = self._events.manifest_deleted(name, str(ref), tags, caller)
            deleted = self._metadata.delete_manifest(name, str(ref), events=events)
        else:
            events = self._events.tag_deleted(name, ref, caller)
            deleted = self._metadata.delete_tag(name, ref, events=events)
        if not deleted:
            if not self._metadata.repository_exists(name):
                raise NameUnknown({"name": name})
            raise ManifestUnknown({"reference": reference})
        self.notifications.wake(events)

    @staticmethod
    def _lookup_reference(reference: str) -> str | Digest:
        """A reference to look up: a malformed tag names no manifest (404), as the conformance suite expects;
        a malformed digest stays a 400 DIGEST_INVALID. Only a PUT answers TAG_INVALID."""
        try:
            return parse_reference(reference)
        except TagInvalid:
            raise ManifestUnknown({"reference": reference[:300], "reason": "not a valid tag"}) from None

    def referrers(self, name: str, digest: str, artifact_type: str | None) -> list[dict]:
        if self._cached(name):
            return self.mirror.referrers(name, str(parse_digest(digest)), artifact_type)
        return self._metadata.referrers(name, str(parse_digest(digest)), artifact_type)

    # -- listings ------------------------------------------------------------------------------------------------

    def tags_version(self, name: str) -> int:
        if self._cached(name):
            return self.mirror.tags_version(name)
        version = self._metadata.tags_version(name)
        if version is None:
            raise NameUnknown({"name": name})
        return version

    def tags(self, name: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        if self._cached(name):
            return self.mirror.tags(name, n, last)
        page = self._metadata.tags(name, n, last)
        if page is None:
            raise NameUnknown({"name": name})
        return page

    def catalog_version(self) -> int:
        return self._metadata.catalog_version()

    def catalog(self, n: int, last: str | None,
                visible: Callable[[str], bool] | None = None) -> tuple[list[str], bool]:
        """A page of `n` repository names after `last`, and whether more follow. With `visible` (the caller may
        only see some), pages are read until `n` visible names are found or the names run out."""
        if visible is None:
            return self._metadata.catalog(n, last)
        found: list[str] = []
        batch = min(max(n + 1, 100), 1000)
        while len(found) <= n:
            names, more = self._metadata.catalog(batch, last)
            found.extend(name for name in names if visible(name))
            if not more or not names:
                break
            last = names[-1]
        return found[:n], len(found) > n

    # -- administration ------------------------------------------------------------------------------------------

    def repository_page(self, n: int, last: str | None) -> tuple[list[dict], bool]:
        return self._metadata.repository_page(n, last)

    def tag_details(self, name: str, n: int, last: str | None) -> tuple[list[dict], bool]:
        page = self._metadata.tag_details(name, n, last)
        if page is None:
            raise NameUnknown({"name": name})
        return page

    def storage_totals(self) -> dict:
        return self._metadata.storage_totals()

    def delete_repository(self, name: str, caller: Caller | None = None) -> dict:
        events = self._events.repository_deleted(name, caller)
        deleted = self._metadata.delete_repository(name, events=events)
        if deleted is None:
            raise NameUnknown({"name": name})
        self.notifications.wake(events)
        counts, sessions = deleted
        for session in sessions:
            self._store.abort_upload(session.id, session.state)
        return counts

    def collect_garbage(self, *, dry_run: bool = False, grace: float | None = None,
                        delete_untagged: bool = False) -> GcReport:
        return self._gc.run(dry_run=dry_run, grace=self.config.gc_grace if grace is None else grace,
                            delete_untagged=delete_untagged)

    def collect_garbage_if_due(self) -> GcReport | None:
        """For the schedule (`gc_interval`): one collection per interval across every worker and process."""
        return self._gc.run_if_due(self.config.gc_interval, grace=self.config.gc_grace,
                                   delete_untagged=self.config.gc_delete_untagged)

    def purge_uploads(self) -> tuple[int, int]:
        """Expired upload sessions and upload data no session records go: (how many, bytes freed)."""
        return self._gc.purge_uploads()

    def fsck(self, *, repair: bool = False, verify_digests: bool = False, grace: float | None = None) -> FsckReport:
        """Whether the metadata and the blob store agree both ways (see `fsck`); with `repair`, what is safe."""
        report = fsck(self._store, self._metadata, repair=repair, verify_digests=verify_digests,
                      grace=self.config.gc_grace if grace is None else grace, clock=self.clock)
        if self.mirror is not None:  # a cached manifest's blobs and children arrive when pulled: no problem
            report.problems = [p for p in report.problems if not self.mirror.not_fetched_yet(p.kind, p.subject,
                                                                                           p.detail)]
        return report

    def copy_blobs_from(self, source: BlobStore, progress=None) -> CopyReport:
        """Copy every blob from `source` (another store) into this registry's store and point its rows there."""
        return copy_blobs(self._metadata, source, self._store, new_id=self._new_id, progress=progress)

    def recover(self) -> dict:
        """After an unclean stop: finish interrupted deletes, drop upload data no session records."""
        return self._gc.recover()

    # -- events --------------------------------------------------------------------------------------------------

    @property
    def pulls_wanted(self) -> bool:
        """Whether any endpoint wants pull events (resources skip `note_pull` otherwise)."""
        return self._events.pulls_wanted

    def note_pull(self, name: str, record: BlobRecord | ManifestRecord, reference: str | None,
                  caller: Caller | None = None) -> None:
        """A pull answered: batched for the endpoints that want pulls (never the outbox); nothing when none do."""
        if self._events.pulls_wanted:
            manifest = isinstance(record, ManifestRecord)
            tag = reference if manifest and reference and ":" not in reference else None  # by tag, not digest
            self.notifications.note_pull(name, digest=record.digest, size=record.size, tag=tag, manifest=manifest,
                                         media_type=record.media_type if manifest else "", caller=caller)

    def deliver_events(self) -> int:
        """One round of the sender (its background loop runs this): the events delivered."""
        return self.notifications.deliver()

    def event_status(self) -> list[dict]:
        """Per endpoint: backlog, parked, retrying queues, oldest waiting event, last success and failure."""
        return self.notifications.status()

    def parked_events(self, endpoint: str, n: int, after: int) -> tuple[list[dict], bool]:
        return self.notifications.parked(endpoint, n, after)

    def replay_events(self, endpoint: str, ids: list[str] | None = None) -> int:
        """Queue the endpoint's parked events again (or those named, parked or retained); how many."""
        return self.notifications.replay(endpoint, ids)

    # -- health --------------------------------------------------------------------------------------------------

    def readiness(self) -> dict[str, str]:
        """Each dependency: "ok", or "failed: <why>"."""
        results = {}
        for name, check in (("database", self._metadata.ping), ("storage", self._store.check)):
            try:
                check()
                results[name] = "ok"
            except RegistryError as exc:
                results[name] = f"failed: {exc.message}"
        return results

    def usage(self) -> StorageUsage:
        return self._metadata.usage()

    def close(self) -> None:
        self.notifications.close()
        if self.mirror is not None:
            self.mirror.close()
        self._metadata.close()
        self._store.close()


class SharedState:
    """The middleware's cross-node state on the shared database: token buckets and secrets (the token signing key)."""

    def __init__(self, metadata: Metadata, clock: Callable[[], float]):
        self._metadata, self._clock = metadata, clock

    def take_token(self, key: str, rate: float, burst: float) -> tuple[bool, float]:
        return self._metadata.take_token(key, rate, burst, self._clock())

    def peek_tokens(self, key: str, rate: float, burst: float) -> float:
        return self._metadata.peek_tokens(key, rate, burst, self._clock())

    def secret(self, name: str, create: Callable[[], str]) -> str:
        key = f"secret:{name}"
        stored = self._metadata.get_state(key)
        return stored if stored is not None else self._metadata.first_state(key, create())
