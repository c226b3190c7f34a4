"""The metadata interface: repositories, blobs and their storage keys, manifests, tags, upload sessions, switches.

Everything the registry knows except blob bytes lives behind `Metadata`. Drivers: SQLite (`sqlite.py`, the embedded
default) and PostgreSQL (`postgres.py`, for several nodes on one database), chosen by the `database` setting's URL
(`open_metadata`). Every driver passes the same contract suite (tests/contracts/test_metadata.py).

Guarantees every driver gives
-----------------------------
- Each write method is one transaction: all of it happens, or none of it. Reads see only committed data.
- A manifest is stored only if every blob and child manifest it names is readable in its repository *in the same
  transaction*; garbage collection forgets blobs in transactions that re-derive what is unreachable. So a manifest
  PUT racing a collection either finds its blobs or fails with MANIFEST_BLOB_UNKNOWN: a stored manifest never points
  at a forgotten blob.
- Quotas are counted and checked inside the transaction that links a blob.
- `events` given to a write method are written in the same transaction, only when the change takes effect (the
  outbox: a committed change always has its event, a refused or rolled-back one never does). A repository's events
  carry increasing numbers in commit order, and no reader ever sees one before an earlier one, so a sender that
  delivers a repository's events in that order cannot skip one that commits late. On PostgreSQL, where ids taken at
  insert do not commit in order, each event takes its repository's next number under that sequence's row lock,
  held to the commit; SQLite commits one writer at a time, so there the id is the number. Each event names its endpoints; one delivery row per endpoint is written with it, and the
  endpoint's queue for that repository counts it (`Outbox`).
- No method calls the blob store; the protocol between the two is in `..storage`'s docstring. Keys to delete are
  handed over as pending-delete rows (`Lifecycle.sweep_blobs`, `pending_deletes`, `forget_pending`).

This package never imports falcon: failures are the domain errors of `..errors`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Callable, Iterable, Iterator, Sequence

from ..model import (BlobRecord, Claim, ManifestRecord, NewEvent, NewManifest, OutboxEvent, StorageUsage, StoredBlob,
                     UploadLimits, UploadSession, UploadState)
from ..errors import TooManyRequests, Unsupported
from ..quotas import Quota


class Lifecycle(ABC):
    """The steps of garbage collection and upload purging, on one open write transaction (`Metadata.lifecycle`)."""

    @abstractmethod
    def repositories(self) -> list[tuple[int, str]]:
        """(id, name) of every repository."""

    @abstractmethod
    def sweep_manifests(self, repository_id: int, cutoff: float) -> list[tuple[str, int]]:
        """Delete the repository's manifests nothing keeps alive (not tagged, not a child of a live index, not a
        referrer of a live manifest) pushed before `cutoff`; their (digest, size)."""

    @abstractmethod
    def sweep_links(self, cutoff: float) -> int:
        """Drop repository -> blob links no manifest of the repository uses: at once for a link a manifest used,
        after `cutoff` for one never used yet (an upload waiting for its manifest). The number dropped."""

    @abstractmethod
    def sweep_blobs(self, limit: int) -> list[BlobRecord]:
        """Forget up to `limit` blobs no link and no manifest refers to; each key becomes a pending delete."""

    @abstractmethod
    def sweep_manifest_content(self) -> list[tuple[str, int]]:
        """Forget manifest bytes no repository holds; their (digest, size)."""

    @abstractmethod
    def stale_uploads(self, idle_cutoff: float, monolithic_cutoff: float) -> list[UploadSession]:
        """Upload sessions idle since before `idle_cutoff`, and monolithic ones started before `monolithic_cutoff`
        (the caller asks the store whether a request still holds those)."""

    @abstractmethod
    def delete_upload(self, session_id: str) -> None:
        """Forget a session (the caller throws its bytes away after the transaction)."""

    @abstractmethod
    def evict_manifest(self, repository: str, digest: str, active_after: float) -> list[str]:
        """Pull-through cache eviction: delete a cached manifest with its tags, and its child manifests no other
        manifest of the repository names, unless the repository was pulled from (or fetched into) after
        `active_after`; the repository's links no manifest uses any more become collectable at once (the sweeps
        free them). The digests deleted (none: the repository is in use)."""

    @abstractmethod
    def add_events(self, events: Sequence[NewEvent]) -> None:
        """Write events in this transaction (garbage collection's: a manifest it removed)."""


class Outbox(ABC):
    """Delivery of the outbox's events (`Metadata.outbox()`), shared by every sender of every node.

    Work is handed out per endpoint and repository: a queue row counts the events waiting, when the next try is due
    and who holds the lease. A sender claims due queues (a lease until a time: one sender at a time per queue,
    whatever the number of processes and nodes; PostgreSQL hands them out with `FOR UPDATE SKIP LOCKED`), sends
    each queue's events in sequence order, and records the outcome: delivered rows go, failures push the queue's
    next try back, and after the endpoint's number of attempts the events tried are parked (kept, set aside,
    replayable) and the queue moves on. Events every endpoint is done with are pruned after the retention period.
    """

    @abstractmethod
    def due(self, endpoints: Sequence[str], now: float) -> bool:
        """Whether any queue of these endpoints has events due and no live lease (a cheap read)."""

    @abstractmethod
    def claim(self, endpoints: Sequence[str], owner: str, now: float, lease_until: float, limit: int) -> list[Claim]:
        """Lease up to `limit` due queues of these endpoints to `owner`, the longest due first."""

    @abstractmethod
    def pending(self, endpoint: str, repository: str, limit: int) -> list[OutboxEvent]:
        """The queue's next events, in the repository's sequence order."""

    @abstractmethod
    def delivered(self, claim: Claim, numbers: Sequence[int], owner: str, now: float, lease_until: float) -> None:
        """The endpoint accepted these events: they leave the queue; the lease runs to `lease_until` (0 ends it)."""

    @abstractmethod
    def failed(self, claim: Claim, numbers: Sequence[int], owner: str, now: float, error: str, attempts: int,
               retry_at: float, park: bool) -> None:
        """A try failed: the queue's next try is at `retry_at` after `attempts` failures, or, with `park`, these
        events are parked and the queue goes on at once. The lease ends."""

    @abstractmethod
    def release(self, claim: Claim, owner: str, *, resync: bool = False) -> None:
        """End the lease (nothing more to send). With `resync` (the queue counted events `pending` could not
        find), count them again, forgetting deliveries of events that are gone."""

    @abstractmethod
    def endpoint_states(self) -> dict[str, dict]:
        """Per endpoint with any state: backlog, parked, retrying (queues failing), oldest_pending (created_at of
        the oldest waiting event), last_success, last_failure, last_error, delivered (a count)."""

    @abstractmethod
    def parked(self, endpoint: str, limit: int, after: int) -> list[dict]:
        """Parked events of the endpoint after event number `after`: number, uid, repository, action, payload,
        created_at, parked_at, attempts, last_error."""

    @abstractmethod
    def replay(self, endpoint: str, uids: Sequence[str] | None, now: float) -> int:
        """Queue events for the endpoint again: every parked one (`uids` None), or those named (parked, or still
        retained after delivery). NOT_FOUND naming the unknown ids, and nothing done, when some are not in the
        outbox. How many were queued."""

    @abstractmethod
    def prune(self, before: float, limit: int) -> int:
        """Delete up to `limit` events created before `before` that no endpoint has left to deliver or parked."""


class Metadata(ABC):
    driver: str = ""
    # True for a database several hosts share (PostgreSQL): the state the middleware must share across nodes (rate
    # buckets, the token signing key) then lives there too; a local database leaves it in the data directory.
    shared_by_hosts: bool = False

    # -- lifetime ------------------------------------------------------------------------------------------------

    @abstractmethod
    def migrate(self) -> None:
        """Bring the schema up to date (idempotent)."""

    @abstractmethod
    def close(self) -> None:
        """Close this process's connections (a forked worker opens its own on first use)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise an error naming the problem unless the database answers a query now."""

    # -- repositories and listings -----------------------------------------------------------------------------

    @abstractmethod
    def repository_exists(self, name: str) -> bool: ...

    @abstractmethod
    def catalog(self, n: int, last: str | None) -> tuple[list[str], bool]:
        """Names after `last` of the repositories holding at least one manifest: (page, whether more follow)."""

    @abstractmethod
    def catalog_version(self) -> int:
        """A number that changes whenever the catalog may have (for caches of catalog pages)."""

    @abstractmethod
    def tags(self, repository: str, n: int | None, last: str | None) -> tuple[list[str], bool] | None:
        """Tags in lexical order after `last`: (page, whether more follow); None for an unknown repository."""

    @abstractmethod
    def tags_version(self, repository: str) -> int | None:
        """A number that changes whenever the repository's tag list may have; None for an unknown repository."""

    # -- blobs ---------------------------------------------------------------------------------------------------

    @abstractmethod
    def blob(self, repository: str, digest: str) -> BlobRecord | None:
        """The blob, when it is readable in `repository`."""

    @abstractmethod
    def record_blob(self, repository: str, blob: StoredBlob, *, session_id: str | None = None,
                    quotas: Sequence[Quota] = (), events: Sequence[NewEvent] = ()) -> str | None:
        """Make a committed blob readable in `repository` and close its upload session. When the digest is already
        stored, the repository is linked to the stored blob and `blob.key` is returned: redundant, the caller
        deletes it. None when `blob.key` is now the digest's key. DENIED (a quota) leaves everything as it was."""

    @abstractmethod
    def mount_blob(self, repository: str, source: str, digest: str, *, quotas: Sequence[Quota] = (),
                   events: Sequence[NewEvent] = ()) -> BlobRecord | None:
        """Link a blob readable in `source` into `repository`; None when `source` cannot read it."""

    @abstractmethod
    def unlink_blob(self, repository: str, digest: str, *, events: Sequence[NewEvent] = ()) -> bool:
        """Make a blob unreadable in `repository`; UNSUPPORTED while a manifest of the repository uses it (its
        pulls would break: delete the manifest first); False when it was not readable there."""

    # -- upload sessions -----------------------------------------------------------------------------------------

    @abstractmethod
    def create_upload(self, repository: str, session_id: str, *, monolithic: bool = False, owner: str | None = None,
                      limits: UploadLimits = UploadLimits()) -> None:
        """Open a session for `owner` (a user name; None for anonymous). TOOMANYREQUESTS when the repository or the
        owner already has as many open as `limits` allow (counted in the same transaction)."""

    @abstractmethod
    def upload(self, repository: str, session_id: str) -> UploadSession | None: ...

    @abstractmethod
    def save_upload(self, session_id: str, expected_length: int, state: UploadState) -> bool:
        """Record a session's new state if its recorded length is still `expected_length` (False otherwise: another
        request moved it, or it is gone)."""

    @abstractmethod
    def delete_upload(self, session_id: str) -> bool: ...

    # -- manifests -----------------------------------------------------------------------------------------------

    @abstractmethod
    def put_manifest(self, repository: str, manifest: NewManifest, tag: str | None, *,
                     events: Sequence[NewEvent] = ()) -> None:
        """Store a manifest (and point `tag` at it) once every blob and child manifest it names is readable in the
        repository; MANIFEST_BLOB_UNKNOWN otherwise."""

    @abstractmethod
    def manifest(self, repository: str, *, digest: str | None = None, tag: str | None = None) -> ManifestRecord | None:
        """A manifest present in `repository`, by tag or digest, without its bytes."""

    @abstractmethod
    def manifest_data(self, digest: str) -> bytes | None:
        """A manifest's bytes exactly as pushed."""

    @abstractmethod
    def delete_manifest(self, repository: str, digest: str, *, events: Sequence[NewEvent] = ()) -> bool:
        """Remove a manifest and every tag pointing at it."""

    @abstractmethod
    def delete_tag(self, repository: str, tag: str, *, events: Sequence[NewEvent] = ()) -> bool: ...

    @abstractmethod
    def referrers(self, repository: str, subject: str, artifact_type: str | None) -> list[dict]:
        """Descriptors of the manifests in `repository` whose subject is `subject` (OCI 1.1 referrers)."""

    @abstractmethod
    def delete_repository(self, name: str, *, events: Sequence[NewEvent] = ()) -> tuple[dict, list[UploadSession]] | None:
        """Forget a repository: (counts of what went, its open upload sessions to throw away); None if unknown."""

    # -- accounting ----------------------------------------------------------------------------------------------

    @abstractmethod
    def repository_page(self, n: int, last: str | None) -> tuple[list[dict], bool]:
        """Repositories holding manifests, after `last`: name, tags, manifests, unique_bytes, shared_bytes, and
        last_push (the latest manifest push or tag update, a timestamp)."""

    @abstractmethod
    def tag_details(self, repository: str, n: int, last: str | None) -> tuple[list[dict], bool] | None:
        """Tags with digest, media type, pulled size and push time, after `last`; None for an unknown repository."""

    @abstractmethod
    def storage_totals(self) -> dict: ...

    @abstractmethod
    def usage(self) -> StorageUsage: ...

    @abstractmethod
    def quota_usage(self, quota: Quota) -> int:
        """Bytes held in the quota's scope, each blob once however many repositories in scope link it."""

    # -- lifecycle -----------------------------------------------------------------------------------------------

    @abstractmethod
    def lifecycle(self, *, dry_run: bool = False) -> AbstractContextManager[Lifecycle]:
        """A write transaction for lifecycle steps; with `dry_run` it is rolled back at the end."""

    @abstractmethod
    def pending_deletes(self, limit: int = 1000) -> list[str]:
        """Storage keys whose blobs were forgotten and whose bytes may not have been deleted yet."""

    @abstractmethod
    def forget_pending(self, keys: Iterable[str]) -> None:
        """The store has deleted these keys."""

    @abstractmethod
    def known_keys(self, keys: Iterable[str]) -> set[str]:
        """Those of `keys` a blob row or a pending delete names."""

    @abstractmethod
    def known_uploads(self, session_ids: Iterable[str]) -> set[str]:
        """Those of `session_ids` with a session row."""

    @abstractmethod
    def blobs(self) -> Iterator[BlobRecord]:
        """Every blob row (for fsck)."""

    @abstractmethod
    def forget_blob(self, digest: str) -> None:
        """Forget a blob whose bytes are gone (fsck --repair): its row and every repository's link to it, so the
        same content pushed again is stored afresh. Manifests that use it are left to report."""

    @abstractmethod
    def rekey_blob(self, digest: str, old_key: str, new_key: str) -> bool:
        """Point the blob's row at `new_key` (its bytes copied to another store, `dockyard migrate-blobs`) if it
        still names `old_key`; whether it did."""

    @abstractmethod
    def upload_sessions(self) -> Iterator[UploadSession]:
        """Every upload session (for fsck)."""

    @abstractmethod
    def broken_references(self) -> list[tuple[str, str, str]]:
        """(kind, subject, detail) of every reference that points nowhere: a tag naming no manifest of its
        repository, a manifest without its bytes, a manifest naming a blob or child its repository does not hold."""

    @abstractmethod
    def lock(self, name: str, *, blocking: bool = True, transient: bool = False) -> AbstractContextManager[bool]:
        """An exclusive lock shared by every process using this metadata (garbage collection, upload purge): the
        context's value says whether it is held (always True when `blocking`). `transient`: one of many names
        used once or twice (the pull-through cache takes one per blob), so nothing of it may stay behind."""

    # -- pull-through cache --------------------------------------------------------------------------------------

    @abstractmethod
    def cache_manifest(self, repository: str, manifest: NewManifest, tag: str | None) -> None:
        """Store a manifest fetched from an upstream in a cached repository and point `tag` at it, confirmed now,
        without put_manifest's check that its blobs and children are here (a cache fetches them when they are
        asked for; once stored, the manifest's references keep them from garbage collection). Records a pull."""

    @abstractmethod
    def cached_tag(self, repository: str, tag: str) -> tuple[ManifestRecord, float | None] | None:
        """The manifest a tag names and when the upstream last confirmed it (None: never), in one read."""

    @abstractmethod
    def confirm_cached_tag(self, repository: str, tag: str) -> None:
        """The upstream still names the same manifest for `tag`: it is fresh from now."""

    @abstractmethod
    def record_pulls(self, pulls: Sequence[tuple[str, str, float]]) -> None:
        """(repository, manifest digest or "" for the repository as a whole, time), in one transaction; a pull
        time only ever moves forward."""

    @abstractmethod
    def cache_candidates(self, prefix: str, active_after: float, limit: int) -> list[tuple[str, str, float, int]]:
        """Eviction candidates under a name prefix ("dockerhub/"): manifests no other manifest of their repository
        names (what clients pull: images, indexes, artifacts), least recently pulled first, leaving out
        repositories pulled from after `active_after`: (repository, digest, last pull, bytes it and its children
        reference)."""

    # -- switches and events -------------------------------------------------------------------------------------

    @abstractmethod
    def get_state(self, key: str) -> str | None: ...

    @abstractmethod
    def set_state(self, key: str, value: str | None) -> None: ...

    @abstractmethod
    def first_state(self, key: str, value: str) -> str:
        """Set `key` to `value` unless it is set; the value stored either way, so that processes racing to set it
        (nodes starting at once, each with a new signing key) all end up with the same one."""

    def take_token(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        """A token bucket every host shares: refill `key` by the time since its last take (`rate` a second, up to
        `burst`; a new bucket is full), take one token if there is one, in one statement under the row's lock.
        (Whether a token was taken, the tokens left.) Only drivers `shared_by_hosts` keep buckets."""
        raise NotImplementedError(f"the {self.driver} driver keeps no shared buckets")

    def peek_tokens(self, key: str, rate: float, burst: float, now: float) -> float:
        """The tokens `take_token` would find in `key` now, taking none."""
        raise NotImplementedError(f"the {self.driver} driver keeps no shared buckets")

    @abstractmethod
    def events_after(self, after: int, limit: int = 100) -> list[tuple[int, NewEvent, float]]:
        """Outbox rows with an id above `after`, oldest first: (id, event, created_at)."""

    def outbox(self) -> Outbox:
        """The delivery state of the events (see `Outbox`)."""
        raise Unsupported({"reason": f"the {self.driver} metadata driver has no outbox"})

    def tags_of(self, repository: str, digest: str) -> list[str]:
        """Tags of `repository` pointing at the manifest `digest` (drivers answer from an index)."""
        found, last = [], None
        while True:
            page = self.tag_details(repository, 1000, last)
            if page is None:
                return found
            rows, more = page
            found += [row["tag"] for row in rows if row["digest"] == digest]
            if not more or not rows:
                return found
            last = rows[-1]["tag"]


def too_many_sessions(scope: str, limit: int) -> TooManyRequests:
    """The refusal of one upload session too many (`create_upload`), the same from every driver."""
    return TooManyRequests({"reason": f"too many open upload sessions for this {scope}", "scope": scope,
                            "limit": limit}, headers={"Retry-After": "60"},
                           message=f"too many open upload sessions: a {scope} may have {limit}; finish or cancel "
                                   "some, or wait for idle ones to expire")


def blob_in_use(digest: str, manifests: list[str]) -> Unsupported:
    """The refusal of a blob delete while manifests of the repository use the blob, the same from every driver."""
    return Unsupported({"digest": digest, "used_by": manifests,
                        "reason": "manifests of this repository use the blob: delete them first"},
                       message="the blob is used by a manifest of this repository; delete the manifest first")


def database_url(config) -> str:
    """The `database` setting, or the default: SQLite in the data directory."""
    return config.database or f"sqlite:///{config.data_path / 'registry.db'}"


def redact(url: str) -> str:
    """A database URL without its password, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))


def sqlite_path(url: str) -> str:
    """The file of a `sqlite:///PATH` URL (`sqlite:///rel/x.db` is relative, `sqlite:////abs/x.db` absolute)."""
    return url[len("sqlite:///"):]


def open_metadata(config, *, clock: Callable[[], float], check_schema: bool = True) -> Metadata:
    """The configured metadata backend. PostgreSQL's schema is checked here (`dockyard migrate` applies it), unless
    `check_schema` is False (the migrate command itself); SQLite migrates itself as it opens."""
    url = database_url(config)
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteMetadata

        return SqliteMetadata(sqlite_path(url), clock=clock)
    from .postgres import PostgresMetadata

    return PostgresMetadata(url, clock=clock, check_schema=check_schema)


__all__ = ["Lifecycle", "Metadata", "Outbox", "database_url", "open_metadata", "redact", "sqlite_path"]
