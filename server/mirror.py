"""The pull-through cache: repositories served from an upstream registry, stored as they are pulled.

A repository whose name an `[[upstreams]]` table serves (`upstream.py`) is a cached repository. Reads go through
here (`Registry.manifest`, `.blob`, `.read_blob`, `.tags`, `.referrers` hand them over); writes are refused (DENIED:
nobody with push rights may plant a `library/alpine` for every mirror user); the admin API may delete one (the
cache refills on the next pull). What is cached is ordinary registry content, stored by the same protocols as a
push, so listings, garbage collection, fsck and the auth rules treat it like any other.

- A manifest by digest, and a blob, never change: fetched once, then served locally until evicted.
- A manifest by tag is served while the upstream confirmed it less than `freshness` seconds ago; then a HEAD asks
  the upstream (Docker Hub does not count HEADs against its pull limit) and the manifest is fetched again only if
  the digest moved. Manifests are fetched with the full Accept list: an index is never replaced by one platform's
  manifest. A manifest is stored as it passes (`Metadata.cache_manifest`), before its blobs, which are fetched when
  a client asks for them; from then on its references hold them against garbage collection.
- The upstream down or refusing: cached content keeps being served, a stale tag included, marked with
  `X-Dockyard-Cache: stale` and logged; what is not cached is UPSTREAM_ERROR (502) naming the upstream (or the
  upstream's own 404 and 429).
- A blob not cached is fetched by one request (the leader) under the metadata lock of (repository, digest), shared
  by every worker and node on the metadata: it streams into an upload session exactly as a monolithic push would
  (the session row, `open_upload`, `append` under the session's lock, `commit`, which verifies the digest, then
  `record_blob`), and to the leader's client at the same time, one block behind: the last block is held back until
  the digest is verified, so a client of a blob whose bytes do not match gets a body cut short (an error), and
  nothing is cached. The fill runs in a thread of its own, so a leader's client that goes away, or reads too slowly
  (`body_timeout` with a full buffer), does not stop it. Requests for the same blob meanwhile (followers) wait on
  the lock, then read the committed blob from the store like any hit; if the leader failed, one of them leads.
- Pulls are noted in memory and written in batches (`PullLog`, every FLUSH_INTERVAL seconds per worker), with every
  repository a blob is being streamed from marked as pulled at each write. When an upstream's cached blobs exceed
  its `max_size`, the least recently pulled manifests are evicted (`Lifecycle.evict_manifest`), never those of a
  repository pulled from within ACTIVE_WINDOW seconds (being pulled), and garbage collection frees what they held.
- In read-only mode nothing is written: cached content is served (stale tags marked), anything else is 503.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

from .config import Config
from .errors import (BlobUnknown, Denied, DigestInvalid, ManifestInvalid, ManifestUnknown, NameUnknown,
                     RegistryError, TooManyRequests, Unavailable, UpstreamError)
from .manifests import parse_manifest
from .metadata import Metadata
from .metrics import Family
from .model import BlobRecord, ManifestRecord, UploadState
from .names import TAG_RE, Digest, parse_digest
from .quotas import Quota
from .storage import BlobStore
from .upstream import BlobDownload, Upstream, UpstreamClient

log = logging.getLogger("dockyard")

CACHE_HEADER = "X-Dockyard-Cache"
FLUSH_INTERVAL = 2.0  # seconds between two writes of a worker's pull times
ACTIVE_WINDOW = 10.0  # a repository pulled from within this many seconds is in use: eviction leaves it alone
EVICT_INTERVAL = 10.0  # seconds between two looks at an upstream's size by one worker
TEE_BLOCKS = 16  # blocks buffered for the leader's client
CLAIM_GRACE = 5.0  # seconds a fill waits for its leader's client to start reading (it may have answered 416)
LEADER_ATTEMPTS = 3
TAG_LISTS = 1000  # tag lists kept per worker

HITS = "dockyard_cache_hits_total"
MISSES = "dockyard_cache_misses_total"
REVALIDATIONS = "dockyard_cache_revalidations_total"
UPSTREAM_ERRORS = "dockyard_cache_upstream_errors_total"
FETCHED_BYTES = "dockyard_cache_fetched_bytes_total"
EVICTIONS = "dockyard_cache_evictions_total"

FAMILIES = (
    Family(HITS, "counter", "Pull-through cache: manifests and blobs served from the cache, by upstream and kind."),
    Family(MISSES, "counter", "Pull-through cache: manifests and blobs fetched from the upstream, by upstream and "
                              "kind."),
    Family(REVALIDATIONS, "counter", "Pull-through cache: stale tags asked of the upstream, by upstream and result "
                                     "(unchanged, changed, failed: served stale)."),
    Family(UPSTREAM_ERRORS, "counter", "Pull-through cache: upstream requests that failed, by upstream and code."),
    Family(FETCHED_BYTES, "counter", "Pull-through cache: bytes fetched from the upstream, by upstream and kind."),
    Family(EVICTIONS, "counter", "Pull-through cache: manifests evicted over an upstream's max_size, by upstream."),
)


@dataclass(slots=True)
class CachedManifest(ManifestRecord):
    cache: str = "hit"  # hit, miss, revalidated, stale: the X-Dockyard-Cache header


@dataclass(frozen=True, slots=True)
class CachedBlob(BlobRecord):
    repository: str = ""
    cache: str = "hit"
    fetch: "BlobFetch | None" = field(default=None, compare=False, repr=False)  # the leader's fill, on a miss


def _lock_name(kind: str, key: str) -> str:
    """A lock name safe as a file name, one per repository and digest or tag."""
    return f"cache-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:40]}"


class PullLog:
    """Pull times noted in memory and written in batches: at most one write per FLUSH_INTERVAL per worker."""

    def __init__(self, metadata: Metadata, clock: Callable[[], float], read_only: Callable[[], bool]):
        self.metadata = metadata
        self._clock = clock
        self._read_only = read_only
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], float] = {}
        self._streaming: dict[str, int] = {}
        self._flushed = clock()

    def note(self, repository: str, digest: str = "") -> None:
        now = self._clock()
        with self._lock:
            if len(self._pending) < 100_000:
                self._pending[(repository, digest)] = now
            due = now - self._flushed >= FLUSH_INTERVAL
        if due:
            self.flush()

    def started(self, repository: str) -> Callable[[], None]:
        """A blob of `repository` is being sent: until the returned function is called, every write of pull times
        marks the repository as pulled then."""
        with self._lock:
            self._streaming[repository] = self._streaming.get(repository, 0) + 1
        ended = []

        def end() -> None:
            if ended:
                return
            ended.append(True)
            with self._lock:
                left = self._streaming[repository] - 1
                if left:
                    self._streaming[repository] = left
                else:
                    del self._streaming[repository]
        return end

    def flush(self) -> None:
        now = self._clock()
        with self._lock:
            batch, self._pending = self._pending, {}
            for repository in self._streaming:
                batch[(repository, "")] = now
            self._flushed = now
        if not batch or self._read_only():
            return
        try:
            self.metadata.record_pulls([(repository, digest, at) for (repository, digest), at in batch.items()])
        except RegistryError as exc:  # eviction order is all that is lost
            log.warning("pull times not recorded: %s", exc.message)


class ActiveRead:
    """A stored blob being sent from a cached repository: the repository counts as pulled until it is closed.
    Keeps the stream's `fileno` where it has one, so the server's sendfile path stays open."""

    def __init__(self, fh: BinaryIO, done: Callable[[], None]):
        self._fh = fh
        self._done = done
        if hasattr(fh, "fileno"):
            self.fileno = fh.fileno

    def read(self, size: int = -1) -> bytes:
        return self._fh.read(size)

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            self._done()


_END = object()


class BlobFetch:
    """One upstream download of a blob into the cache, led by the request that found it missing (see the module
    docstring): `start` says whether this request leads, another is fetching, or the blob has just arrived."""

    def __init__(self, mirror: "Mirror", upstream: Upstream, name: str, digest: Digest):
        self.mirror = mirror
        self.upstream = upstream
        self.name = name
        self.digest = digest
        self.lock_name = _lock_name("blob", f"{name}@{digest}")
        self.size: int | None = None
        self.error: RegistryError | None = None
        self._outcome: object = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._blocks: queue.Queue = queue.Queue(maxsize=TEE_BLOCKS)
        self._client_gone = threading.Event()
        self._reading = threading.Event()

    # -- the request's side ------------------------------------------------------------------------------------

    def start(self) -> str:
        """"leading" (this request streams the fill), "busy" (another request fetches it) or "present"."""
        threading.Thread(target=self._run, name="cache-fetch", daemon=True).start()
        if not self._ready.wait(self.upstream.timeout + 30):
            self.detach()
            raise self.mirror.client(self.upstream).failure("the blob's download did not start")
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def stream(self) -> Iterator[bytes]:
        """The blob for the leader's client, one block behind the fill: the last block goes out only once the
        digest is verified and the blob recorded; otherwise the body ends short (the client sees an error)."""
        held = None
        self._reading.set()
        idle = 0
        try:
            while True:
                try:
                    item = self._blocks.get(timeout=1.0)
                except queue.Empty:
                    if self._client_gone.is_set():  # the fill went on without this client: its copy is short
                        raise self.mirror.client(self.upstream).failure(
                            "the client read too slowly to be sent the blob while it was cached: pull again") from None
                    idle += 1
                    if idle > self.upstream.timeout + 30:
                        raise self.mirror.client(self.upstream).failure("the blob's download stalled") from None
                    continue
                idle = 0
                if item is _END:
                    if self.error is not None:
                        raise self.error
                    if held is not None:
                        yield held
                    return
                if held is not None:
                    yield held
                held = item
        finally:
            self.detach()

    def detach(self) -> None:
        """The client is gone (or will read from the store): the fill goes on without it."""
        self._client_gone.set()
        try:
            while True:
                self._blocks.get_nowait()
        except queue.Empty:
            pass

    def wait(self) -> None:
        self.detach()
        self._done.wait()

    # -- the fill ------------------------------------------------------------------------------------------------

    def _signal(self, outcome: object) -> None:
        self._outcome = outcome
        self._ready.set()

    def _run(self) -> None:
        mirror = self.mirror
        try:
            with mirror.metadata.lock(self.lock_name, blocking=False, transient=True) as held:
                if not held:
                    self._signal("busy")
                    return
                if mirror.metadata.blob(self.name, str(self.digest)) is not None:
                    self._signal("present")
                    return
                try:
                    download = mirror.client(self.upstream).open_blob(self.upstream.remote_name(self.name),
                                                                      str(self.digest))
                except RegistryError as exc:
                    mirror.upstream_failed(self.upstream, exc)
                    self._signal(exc)
                    return
                self.size = download.size
                self._signal("leading")
                filled = self._fill(download)
            self._done.set()
            if filled:  # outside the lock: the requests waiting for this blob need not wait for an eviction
                try:
                    mirror.after_fetch(self.upstream)
                except Exception:  # the blob is cached; the next look at the cap (every few seconds) tries again
                    log.exception("cache: keeping %s within its max_size failed", self.upstream.name)
        except BaseException as exc:  # the lock itself failed (the database), or a bug: said, never swallowed
            if not self._ready.is_set():
                self._signal(exc if isinstance(exc, RegistryError) else Unavailable(
                    {"reason": type(exc).__name__}, message="the cache could not start the blob's download"))
            else:
                self._finish(exc if isinstance(exc, RegistryError) else UpstreamError(
                    {"reason": type(exc).__name__}, message="the blob's download failed"))
            if not isinstance(exc, RegistryError):
                log.exception("cache fetch of %s@%s failed", self.name, self.digest)
        finally:
            self._done.set()

    def offer(self, block: bytes) -> None:
        if self._client_gone.is_set():
            return
        try:
            self._blocks.put(block, timeout=self.mirror.config.body_timeout if self._reading.is_set()
                             else CLAIM_GRACE)
        except queue.Full:
            log.warning("cache: the first client of %s@%s reads too slowly; the download goes on without it",
                        self.name, self.digest)
            self.detach()

    def _finish(self, error: RegistryError | None) -> None:
        self.error = error
        if self._client_gone.is_set():
            return
        try:
            self._blocks.put(_END, timeout=self.mirror.config.body_timeout)
        except queue.Full:
            self.detach()

    def _fill(self, download: BlobDownload) -> bool:
        mirror, store, metadata = self.mirror, self.mirror.store, self.mirror.metadata
        session_id = mirror.new_id()
        state = UploadState()
        source = TeeSource(download, self, limit=download.size if download.size is not None else
                           (self.upstream.max_size or None))
        try:
            # The row first, as for any upload: a crash leaves nothing the purge cannot find.
            metadata.create_upload(self.name, session_id, monolithic=True)
            try:
                state = store.open_upload(session_id)
                with store.upload_lock(session_id):
                    state = store.append(session_id, state, source)
                    if download.size is not None and state.length != download.size:
                        raise mirror.client(self.upstream).failure(
                            f"sent {state.length} bytes of a blob it announced as {download.size}")
                    try:
                        stored = store.commit(session_id, state, self.digest)
                    except DigestInvalid as exc:
                        raise mirror.client(self.upstream).failure(
                            "sent bytes that do not match the blob's digest: nothing was cached",
                            digest=str(self.digest), actual=(exc.detail or {}).get("actual")) from None
            except BaseException:
                metadata.delete_upload(session_id)
                store.abort_upload(session_id, state)
                raise
        except RegistryError as exc:
            if isinstance(exc, UpstreamError):
                mirror.upstream_failed(self.upstream, exc)
            log.warning("cache: %s@%s not cached: %s", self.name, self.digest, exc.message)
            self._finish(exc)
            return False
        finally:
            download.close()
        try:
            redundant = metadata.record_blob(self.name, stored, session_id=session_id)
        except RegistryError as exc:
            store.delete(stored.key)
            metadata.delete_upload(session_id)
            self._finish(exc)
            return False
        if redundant is not None:
            store.delete(redundant)
        mirror.count(MISSES, self.upstream, kind="blob")
        mirror.count(FETCHED_BYTES, self.upstream, stored.size, kind="blob")
        self._finish(None)
        return True


class TeeSource:
    """The upstream's blob as a body for `BlobStore.append` (`bodies.Source`), each block also offered to the
    leader's client. Never more than `limit` bytes."""

    def __init__(self, download: BlobDownload, fetch: BlobFetch, limit: int | None):
        self._chunks = download.chunks()
        self._fetch = fetch
        self._limit = limit
        self._pending = memoryview(b"")
        self.received = 0

    def readinto(self, buf: memoryview) -> int:
        filled = 0
        while filled < len(buf):
            if not self._pending:
                try:
                    self._pending = memoryview(next(self._chunks))
                except StopIteration:
                    break
                except Exception as exc:  # httpx's errors: the connection broke, a read timed out
                    raise self._fetch.mirror.client(self._fetch.upstream).failure(
                        f"the blob's download broke off: {type(exc).__name__}") from None
            take = min(len(buf) - filled, len(self._pending))
            buf[filled:filled + take] = self._pending[:take]
            self._pending = self._pending[take:]
            filled += take
        self.received += filled
        if self._limit is not None and self.received > self._limit:
            raise self._fetch.mirror.client(self._fetch.upstream).failure(
                f"sent more than {self._limit} bytes of a blob (its Content-Length, or the upstream's max_size)")
        if filled:
            self._fetch.offer(bytes(buf[:filled]))
        return filled


class Mirror:
    """The cached repositories of every configured upstream (see the module docstring)."""

    def __init__(self, config: Config, store: BlobStore, metadata: Metadata, *, collect: Callable[[], object],
                 read_only: Callable[[], bool], clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str], transport=None):
        self.config = config
        self.store = store
        self.metadata = metadata
        self.upstreams: tuple[Upstream, ...] = tuple(config.upstreams)
        self.clock = clock
        self.new_id = new_id
        self.read_only = read_only
        self.metrics = None  # set by observability.install: counters go there
        self.pulls = PullLog(metadata, clock, read_only)
        self._collect = collect
        self._clients = {u.name: UpstreamClient(u, transport=transport, block_size=config.io_block_size)
                         for u in self.upstreams}
        self._tag_lists: dict[str, tuple[float, list[str], int]] = {}
        self._tag_lock = threading.Lock()
        self._evicted_at: dict[str, float] = {}
        self._tables_ready = False

    # -- plumbing --------------------------------------------------------------------------------------------------

    def _usable(self) -> None:
        """On a database whose schema predates the cache (PostgreSQL before `dockyard migrate` in a rolling
        upgrade), every request for a cached repository is a 503 saying what to run, before anything is asked of
        the upstream. Once the cache's tables are there they stay, so this reads the database once per process."""
        if not self._tables_ready:
            self.metadata.cached_tag("", "")  # Unavailable while the cache's tables are missing
            self._tables_ready = False

    def upstream_for(self, name: str) -> Upstream | None:
        for upstream in self.upstreams:
            if upstream.serves(name):
                return upstream
        return None

    def client(self, upstream: Upstream) -> UpstreamClient:
        return self._clients[upstream.name]

    def count(self, family: str, upstream: Upstream, amount: float = 1, **labels: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(family, (("upstream", upstream.name), *labels.items()), amount)

    def upstream_failed(self, upstream: Upstream, error: RegistryError) -> None:
        """Counted: the upstream unreachable or misbehaving, or limiting us (its 404s are answers, not failures)."""
        if isinstance(error, (UpstreamError, TooManyRequests)):
            self.count(UPSTREAM_ERRORS, upstream, code=error.code)

    def describe(self, name: str) -> dict | None:
        """For the admin API: where a cached repository comes from."""
        upstream = self.upstream_for(name)
        if upstream is None:
            return None
        return {**upstream.describe(), "repository": upstream.remote_name(name)}

    def refuse_write(self, name: str) -> None:
        upstream = self.upstream_for(name)
        if upstream is not None:
            raise Denied({"repository": name, "upstream": upstream.name, "url": upstream.url},
                         message=f"{name} is a read-only mirror of {upstream.url} (upstream {upstream.name}): "
                                 "push to a repository outside its names")

    def _writable(self) -> None:
        if self.read_only():
            raise Unavailable({"read_only": True}, headers={"Retry-After": "60"},
                              message="the registry is in read-only maintenance mode: the cache serves what it "
                                      "holds and fetches nothing new")

    def _once(self, lock_name: str, lookup: Callable[[], object], fetch: Callable[[], object]):
        """`fetch` by one request at a time across workers and nodes; those that waited find what it stored."""
        with self.metadata.lock(lock_name, blocking=False, transient=True) as held:
            if held:
                return lookup() or fetch()
        with self.metadata.lock(lock_name, transient=True):
            return lookup() or fetch()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    # -- manifests -------------------------------------------------------------------------------------------------

    def manifest(self, name: str, ref: str | Digest) -> CachedManifest:
        self._usable()
        upstream = self.upstream_for(name)
        if isinstance(ref, Digest):
            hit = self._manifest_hit(upstream, name, str(ref))
            if hit is not None:
                return hit
            self._writable()
            return self._once(_lock_name("manifest", f"{name}@{ref}"),
                              lambda: self._manifest_hit(upstream, name, str(ref)),
                              lambda: self._fetch_manifest(upstream, name, str(ref), ref.algorithm, None, "miss"))
        found = self.metadata.cached_tag(name, ref)
        if found is not None:
            record, checked = found
            if checked is not None and self.clock() - checked < upstream.freshness:
                return self._hit(upstream, name, record)
            return self._revalidate(upstream, name, ref, record)
        self._writable()

        def fresh():
            again = self.metadata.cached_tag(name, ref)
            if again is not None and again[1] is not None and self.clock() - again[1] < upstream.freshness:
                return self._hit(upstream, name, again[0])
            return None
        return self._once(_lock_name("manifest", f"{name}:{ref}"), fresh,
                          lambda: self._fetch_manifest(upstream, name, ref, "sha256", ref, "miss"))

    def _manifest_hit(self, upstream: Upstream, name: str, digest: str) -> CachedManifest | None:
        record = self.metadata.manifest(name, digest=digest)
        return None if record is None else self._hit(upstream, name, record)

    def _hit(self, upstream: Upstream, name: str, record: ManifestRecord, cache: str = "hit") -> CachedManifest:
        if cache == "hit":
            self.count(HITS, upstream, kind="manifest")
        self.pulls.note(name, record.digest)
        return CachedManifest(record.digest, record.media_type, record.size, record.data, cache=cache)

    def _revalidate(self, upstream: Upstream, name: str, tag: str, record: ManifestRecord) -> CachedManifest:
        if self.read_only():
            return self._stale(upstream, name, tag, record, "read-only maintenance mode")
        client = self.client(upstream)
        try:
            digest = client.head_manifest(upstream.remote_name(name), tag)
        except (UpstreamError, TooManyRequests, ManifestUnknown, NameUnknown) as exc:
            self.upstream_failed(upstream, exc)
            return self._stale(upstream, name, tag, record, exc.message)
        if digest == record.digest:
            self.metadata.confirm_cached_tag(name, tag)
            self.count(REVALIDATIONS, upstream, result="unchanged")
            return self._hit(upstream, name, record, cache="revalidated")
        try:
            fetched = self._fetch_manifest(upstream, name, tag, "sha256", tag, "revalidated")
        except (UpstreamError, TooManyRequests, ManifestUnknown, NameUnknown) as exc:
            return self._stale(upstream, name, tag, record, exc.message)
        self.count(REVALIDATIONS, upstream, result="changed" if fetched.digest != record.digest else "unchanged")
        return fetched

    def _stale(self, upstream: Upstream, name: str, tag: str, record: ManifestRecord, why: str) -> CachedManifest:
        log.warning("cache: serving %s:%s (%s) stale: the upstream %s could not confirm it: %s", name, tag,
                    record.digest, upstream.name, why)
        self.count(REVALIDATIONS, upstream, result="failed")
        return self._hit(upstream, name, record, cache="stale")

    def _fetch_manifest(self, upstream: Upstream, name: str, reference: str, algorithm: str, tag: str | None,
                        cache: str) -> CachedManifest:
        client = self.client(upstream)
        try:
            fetched = client.get_manifest(upstream.remote_name(name), reference, self.config.max_manifest_size)
            digest = Digest.of(fetched.data, algorithm)
            if reference.startswith(f"{algorithm}:") and str(digest) != reference:
                raise client.failure("sent a manifest that does not match the digest asked for",
                                     expected=reference, actual=str(digest))
            if fetched.digest:
                try:
                    named = parse_digest(fetched.digest)
                except DigestInvalid:
                    raise client.failure("named its manifest with an invalid digest") from None
                if Digest.of(fetched.data, named.algorithm) != named:
                    raise client.failure("sent a manifest that does not match its Docker-Content-Digest",
                                         named=fetched.digest)
            try:
                manifest = parse_manifest(fetched.data, fetched.media_type, digest)
            except (ManifestInvalid, DigestInvalid) as exc:
                raise client.failure(f"sent a manifest Dockyard cannot read: {exc.message}",
                                     invalid=exc.detail) from None
        except (UpstreamError, TooManyRequests) as exc:
            self.upstream_failed(upstream, exc)
            raise
        self.metadata.cache_manifest(name, manifest, tag)
        self.count(MISSES, upstream, kind="manifest")
        self.count(FETCHED_BYTES, upstream, len(fetched.data), kind="manifest")
        return CachedManifest(manifest.digest, manifest.media_type, len(fetched.data), fetched.data, cache=cache)

    # -- blobs -----------------------------------------------------------------------------------------------------

    def blob(self, name: str, digest: str, *, fetch: bool) -> CachedBlob:
        """A blob of a cached repository: stored (a hit), else with `fetch` (a GET) the leader's fill or the
        blob another request just fetched, else (a HEAD) what the upstream says of it, fetching nothing."""
        self._usable()
        upstream = self.upstream_for(name)
        parsed = parse_digest(digest)
        record = self.metadata.blob(name, str(parsed))
        if record is not None:
            return self._blob_hit(upstream, name, record)
        if not fetch:
            size = self.client(upstream).head_blob(upstream.remote_name(name), str(parsed))
            return CachedBlob(str(parsed), size, "", repository=name, cache="miss")
        self._writable()
        for _ in range(LEADER_ATTEMPTS):
            fetch_ = BlobFetch(self, upstream, name, parsed)
            outcome = fetch_.start()
            if outcome == "leading":
                if fetch_.size is None:  # no Content-Length: the client needs one, so it waits for the store
                    fetch_.wait()
                    if fetch_.error is not None:
                        raise fetch_.error
                else:
                    return CachedBlob(str(parsed), fetch_.size, "", repository=name, cache="miss", fetch=fetch_)
            elif outcome == "busy":  # another worker or node is fetching it: wait for it to be done
                with self.metadata.lock(fetch_.lock_name, transient=True):
                    pass
            record = self.metadata.blob(name, str(parsed))
            if record is not None:
                return self._blob_hit(upstream, name, record)
        raise self.client(upstream).failure("the blob could not be fetched (the requests that tried failed)",
                                            digest=str(parsed))

    def _blob_hit(self, upstream: Upstream, name: str, record: BlobRecord) -> CachedBlob:
        self.count(HITS, upstream, kind="blob")
        self.pulls.note(name)
        return CachedBlob(record.digest, record.size, record.key, repository=name, cache="hit")

    def read(self, blob: CachedBlob, start: int = 0, length: int | None = None):
        """The bytes of a blob `blob` returned: the leader's stream, or the store's, while the repository counts
        as being pulled."""
        fetch = blob.fetch
        if fetch is not None:
            if start == 0 and (length is None or length == fetch.size):
                return _Streamed(fetch, self.pulls.started(blob.repository))
            fetch.wait()  # a range of a blob still arriving: served from the store once it is there
            if fetch.error is not None:
                raise fetch.error
            stored = self.metadata.blob(fetch.name, str(fetch.digest))
            if stored is None:
                raise BlobUnknown({"digest": blob.digest})
            blob = CachedBlob(stored.digest, stored.size, stored.key, repository=fetch.name)
        fh = self.store.read(blob.key, start, length)
        return ActiveRead(fh, self.pulls.started(blob.repository))

    def not_fetched_yet(self, kind: str, subject: str, detail: str) -> bool:
        """An fsck finding that only says a cached manifest's blob or child has not been pulled yet."""
        return (kind == "broken reference" and detail.startswith("it uses ")
                and self.upstream_for(subject.partition("@")[0]) is not None)

    @staticmethod
    def fetching(blob: BlobRecord) -> bool:
        """Whether `blob` is still arriving (no redirect can serve it)."""
        return getattr(blob, "fetch", None) is not None

    # -- listings --------------------------------------------------------------------------------------------------

    def _tag_list(self, name: str) -> tuple[list[str], int]:
        """The upstream's tags (refreshed after `freshness`), and a version for the listing cache's key; the
        cached repository's own tags when the upstream cannot answer."""
        upstream = self.upstream_for(name)
        now = self.clock()
        cached = self._tag_lists.get(name)
        if cached is not None and now - cached[0] < upstream.freshness:
            return cached[1], cached[2]
        try:
            if self.read_only():
                raise Unavailable({"read_only": True}, message="read-only maintenance mode")
            tags = sorted({t for t in self.client(upstream).tags(upstream.remote_name(name)) if TAG_RE.fullmatch(t)})
        except (UpstreamError, TooManyRequests, Unavailable) as exc:
            if not isinstance(exc, Unavailable):
                self.upstream_failed(upstream, exc)
            local = self.metadata.tags(name, None, None)
            if local is None:
                if isinstance(exc, Unavailable):
                    raise NameUnknown({"name": name}) from None
                raise
            log.warning("cache: the tags of %s are the cached ones: the upstream %s could not list them: %s",
                        name, upstream.name, exc.message)
            return local[0], int(now * 1000) & 0x7FFFFFFFFFFF
        version = int(hashlib.sha256("\n".join(tags).encode()).hexdigest()[:12], 16)
        with self._tag_lock:
            if len(self._tag_lists) >= TAG_LISTS:
                self._tag_lists.clear()
            self._tag_lists[name] = (now, tags, version)
        return tags, version

    def tags_version(self, name: str) -> int:
        self._usable()
        return self._tag_list(name)[1]

    def tags(self, name: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        self._usable()
        tags = [t for t in self._tag_list(name)[0] if last is None or t > last]
        if n is None:
            return tags, False
        return tags[:n], len(tags) > n

    def referrers(self, name: str, digest: str, artifact_type: str | None) -> list[dict]:
        """The upstream's referrers of `digest` with the cached ones; the cached ones alone when the upstream has
        no referrers API or cannot answer."""
        self._usable()
        upstream = self.upstream_for(name)
        local = self.metadata.referrers(name, digest, artifact_type)
        if self.read_only():
            return local
        try:
            remote = self.client(upstream).referrers(upstream.remote_name(name), digest)
        except (ManifestUnknown, NameUnknown):
            return local
        except (UpstreamError, TooManyRequests) as exc:
            self.upstream_failed(upstream, exc)
            return local
        merged = {d["digest"]: d for d in (_descriptor(item) for item in remote) if d is not None
                  and (artifact_type is None or d.get("artifactType") == artifact_type)}
        for descriptor in local:
            merged.setdefault(descriptor["digest"], descriptor)
        return list(merged.values())

    # -- eviction --------------------------------------------------------------------------------------------------

    def usage(self, upstream: Upstream) -> int:
        """Bytes of blobs cached for `upstream` (each once per name prefix it serves)."""
        return sum(self.metadata.quota_usage(Quota(scope, 0)) for scope in upstream.scopes)

    def after_fetch(self, upstream: Upstream) -> None:
        if upstream.max_size and self.clock() - self._evicted_at.get(upstream.name, 0) >= 1.0:
            self.evict(upstream)

    def maintain(self) -> None:
        """The background job of each worker: write the pull times, keep every upstream within its max_size."""
        self.pulls.flush()
        for upstream in self.upstreams:
            if upstream.max_size and self.clock() - self._evicted_at.get(upstream.name, 0) >= EVICT_INTERVAL:
                self.evict(upstream)

    def evict(self, upstream: Upstream) -> list[tuple[str, str]]:
        """Over `max_size`: evict the least recently pulled manifests of repositories not in use until enough
        bytes are let go, then collect garbage, which frees them. What was evicted: (repository, digest)."""
        self._evicted_at[upstream.name] = self.clock()
        if not upstream.max_size or self.read_only():
            return []
        evicted: list[tuple[str, str]] = []
        with self.metadata.lock(f"cache-evict-{upstream.name}", blocking=False) as held:
            if not held:
                return []
            self.pulls.flush()
            excess = self.usage(upstream) - upstream.max_size
            if excess <= 0:
                return []
            active_after = self.clock() - ACTIVE_WINDOW
            candidates = sorted((c for scope in upstream.scopes
                                 for c in self.metadata.cache_candidates(scope, active_after, 500)),
                                key=lambda c: (c[2], c[0], c[1]))
            freed = 0
            for repository, digest, _, size in candidates:
                if freed >= excess:
                    break
                with self.metadata.lifecycle() as step:
                    gone = step.evict_manifest(repository, digest, active_after)
                if gone:
                    evicted.append((repository, digest))
                    freed += size
            if evicted:
                self.count(EVICTIONS, upstream, len(evicted))
                log.warning("cache: %s over its max_size (%d bytes too many): evicted %d manifest(s), least "
                            "recently pulled first: %s", upstream.name, excess, len(evicted),
                            ", ".join(f"{r}@{d}" for r, d in evicted[:20]))
        if evicted:
            self._collect()
        return evicted


class _Streamed:
    """The WSGI body of a blob the leader's client receives while it is being cached."""

    def __init__(self, fetch: BlobFetch, done: Callable[[], None]):
        self._fetch = fetch
        self._done = done

    def __iter__(self) -> Iterator[bytes]:
        return self._fetch.stream()

    def close(self) -> None:
        self._fetch.detach()
        self._done()


def _descriptor(item: dict) -> dict | None:
    """A referrer descriptor from an upstream, kept only in the shape the spec gives it."""
    try:
        digest = str(parse_digest(item.get("digest")))
    except DigestInvalid:
        return None
    media_type, size = item.get("mediaType"), item.get("size")
    if not isinstance(media_type, str) or len(media_type) > 255 or not isinstance(size, int) or isinstance(
            size, bool) or size < 0:
        return None
    descriptor = {"mediaType": media_type, "digest": digest, "size": size}
    artifact_type = item.get("artifactType")
    if isinstance(artifact_type, str) and len(artifact_type) <= 255:
        descriptor["artifactType"] = artifact_type
    annotations = item.get("annotations")
    if isinstance(annotations, dict) and len(annotations) <= 64 and all(
            isinstance(k, str) and isinstance(v, str) and len(k) + len(v) <= 4096 for k, v in annotations.items()):
        descriptor["annotations"] = annotations
    return descriptor


__all__ = ["CACHE_HEADER", "CachedBlob", "CachedManifest", "FAMILIES", "Mirror"]
