"""Online garbage collection: what nothing reachable refers to goes, while the registry keeps serving.

Roots are tags. From them the graph reaches index children and referrers of live manifests (signatures, SBOMs);
with `delete_untagged`, manifests outside that set (and older than the grace period) are deleted. Then repository
links no manifest uses are dropped (at once for layers of deleted images, after the grace period for uploads that
never got their manifest), then blobs no link and no manifest refers to, then orphaned manifest bytes, expired
upload sessions, and stored objects and upload data no metadata row names (left by a crash between a store step
and its transaction; see the protocol in `storage`).

Each step is its own short metadata transaction that re-derives the garbage inside it, so pushes and pulls go on in
between, and a manifest PUT racing with a sweep either finds its blobs or gets MANIFEST_BLOB_UNKNOWN. A blob is
forgotten in a transaction that records its key as a pending delete; the store deletes the bytes after the commit,
and a crash in between leaves the pending rows for the next run (and start-up) to finish. A dry run performs the
same steps in one transaction and rolls it back, so its report is exactly what a real run would do at that moment.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, ContextManager, Iterator

from .events import Events
from .metadata import Lifecycle, Metadata
from .model import StoredObject
from .storage import BlobStore

BATCH = 500
MONOLITHIC_MIN_AGE = 5.0  # seconds a monolithic session may take to start holding its lock (a few ms, in truth)
MONOLITHIC_MAX_AGE = 3600.0  # where the store cannot tell whether a request still holds a monolithic session


@dataclass
class GcReport:
    dry_run: bool
    blobs_removed: int = 0
    manifests_removed: int = 0
    bytes_freed: int = 0
    links_removed: int = 0
    uploads_purged: int = 0
    upload_bytes_freed: int = 0
    orphan_files_removed: int = 0
    orphan_bytes_freed: int = 0
    blobs: list[str] = field(default_factory=list)
    manifests: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class GarbageCollector:
    def __init__(self, metadata: Metadata, store: BlobStore, *, clock: Callable[[], float] = time.time,
                 upload_max_age: float = 86400.0, events: Events | None = None):
        self.metadata = metadata
        self.store = store
        self.clock = clock
        self.upload_max_age = upload_max_age
        self.events = events  # a `gc` event per manifest removed, written in the sweep's transaction

    def run(self, *, dry_run: bool = False, grace: float = 3600.0, delete_untagged: bool = False) -> GcReport:
        started = time.monotonic()
        report = GcReport(dry_run=dry_run)
        cutoff = self.clock() - grace
        with self.metadata.lock("gc"):
            if dry_run:
                with self.metadata.lifecycle(dry_run=True) as shared:
                    self._collect(report, cutoff, delete_untagged, lambda: nullcontext(shared))
            else:
                self.finish_deletes()
                self._collect(report, cutoff, delete_untagged, self.metadata.lifecycle)
                report.uploads_purged, report.upload_bytes_freed = self.purge_uploads()
                report.orphan_files_removed, report.orphan_bytes_freed = self._remove_orphans(cutoff)
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def _collect(self, report: GcReport, cutoff: float, delete_untagged: bool,
                 transaction: Callable[[], ContextManager[Lifecycle]]) -> None:
        """The sweeps, each step in `transaction()`: its own in a real run, one shared in a dry run."""
        if delete_untagged:
            with transaction() as step:
                repositories = step.repositories()
            for repository_id, name in repositories:
                with transaction() as step:
                    dead = step.sweep_manifests(repository_id, cutoff)
                    if dead and self.events:
                        step.add_events(self.events.collected(name, dead))
                    for digest, _ in dead:
                        report.manifests.append({"repository": name, "digest": digest})
            report.manifests_removed = len(report.manifests)
        with transaction() as step:
            report.links_removed = step.sweep_links(cutoff)
        while True:
            with transaction() as step:
                batch = step.sweep_blobs(BATCH)
            if not report.dry_run:
                self._delete([blob.key for blob in batch])
            report.blobs.extend(blob.digest for blob in batch)
            report.bytes_freed += sum(blob.size for blob in batch)
            if len(batch) < BATCH:
                break
        report.blobs_removed = len(report.blobs)
        with transaction() as step:
            report.bytes_freed += sum(size for _, size in step.sweep_manifest_content())

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            self.store.delete(key)
        self.metadata.forget_pending(keys)

    def finish_deletes(self) -> int:
        """Carry out pending deletes a crash interrupted; how many."""
        done = 0
        while keys := self.metadata.pending_deletes(BATCH):
            self._delete(keys)
            done += len(keys)
            if len(keys) < BATCH:
                break
        return done

    def purge_uploads(self, *, at_start: bool = False) -> tuple[int, int]:
        """Upload sessions idle longer than upload_max_age go with their data; so do monolithic sessions whose
        request is gone (killed mid-body: nobody can continue them), and upload data no session row names (the row
        is always written first, so such data is left by a crash or a cancel). (How many went, bytes freed.)"""
        with self.metadata.lock("purge", blocking=False) as held:
            if not held:
                return 0, 0
            now = self.clock()
            idle_cutoff = now - self.upload_max_age
            # A monolithic session a few seconds old may have created its file and not yet locked it. At start-up
            # no request of this server runs yet, and a file left unlocked by a killed request must not outlive the
            # start; another process's request would have to be within microseconds of its start to be caught
            # there (it would answer 404, never lose an acknowledged blob: a missing file is never judged).
            with self.metadata.lifecycle() as step:
                stale = step.stale_uploads(idle_cutoff, now if at_start else now - MONOLITHIC_MIN_AGE)
            doomed = [session for session in stale if session.updated_at < idle_cutoff or self._abandoned(session, now)]
            freed = 0
            if doomed:
                with self.metadata.lifecycle() as step:
                    for session in doomed:
                        step.delete_upload(session.id)
                for session in doomed:
                    freed += self.store.abort_upload(session.id, session.state)
            orphaned, orphan_bytes = self._remove_orphan_uploads()
            return len(doomed) + orphaned, freed + orphan_bytes

    def _abandoned(self, session, now: float) -> bool:
        """A monolithic session no request holds any more (where the store cannot tell: one over an hour old)."""
        busy = self.store.upload_in_progress(session.id)
        return busy is False or (busy is None and session.created_at < now - MONOLITHIC_MAX_AGE)

    def _remove_orphan_uploads(self) -> tuple[int, int]:
        removed = freed = 0
        ids = list(self.store.iterate_uploads())
        for start in range(0, len(ids), BATCH):
            batch = ids[start:start + BATCH]
            for session_id in set(batch) - self.metadata.known_uploads(batch):
                freed += self.store.abort_upload(session_id)
                removed += 1
        return removed, freed

    def _remove_orphans(self, cutoff: float) -> tuple[int, int]:
        """Stored objects nothing names (see `orphans`): those of a session that is gone at any age, those of
        no session (stored before keys were per session) once modified before `cutoff`. (How many, bytes.)"""
        removed = freed = 0
        for obj, session_gone in orphans(self.store, self.metadata):
            if session_gone or obj.modified < cutoff:
                self.store.delete(obj.key)
                removed += 1
                freed += obj.size
        return removed, freed

    def recover(self) -> dict:
        """At start-up: finish interrupted deletes, drop monolithic sessions a killed request left and upload data
        no session records, and when that found any (there was a crash), the blobs those sessions had stored but
        not yet recorded. Cheap when there was no crash: it lists pending deletes and upload sessions, not blobs."""
        finished = self.finish_deletes()
        removed, _ = self.purge_uploads(at_start=True)
        orphans_removed = self._remove_orphans(cutoff=float("-inf"))[0] if removed else 0
        return {"deletes_finished": finished, "uploads_removed": removed, "orphans_removed": orphans_removed}

    def run_if_due(self, interval: float, *, delete_untagged: bool, grace: float) -> GcReport | None:
        """For the schedule: run unless another process is collecting or a run finished less than `interval` ago."""
        if self.clock() - float(self.metadata.get_state("last_gc") or 0) < interval:
            return None
        with self.metadata.lock("gc-schedule", blocking=False) as held:
            if not held or self.clock() - float(self.metadata.get_state("last_gc") or 0) < interval:
                return None
            self.metadata.set_state("last_gc", str(self.clock()))
        return self.run(grace=grace, delete_untagged=delete_untagged)


def orphans(store: BlobStore, metadata: Metadata) -> Iterator[tuple[StoredObject, bool]]:
    """Stored objects no blob row and no pending delete names, except those of a session whose row is still there
    (a commit in flight, or one a crash interrupted: the session's purge makes it garbage): (object, whether its
    session is gone). Session rows are read before blob rows, a batch at a time: a commit moves a key from one to
    the other in one transaction, so a key read as neither is never one being committed."""
    batch: list[StoredObject] = []

    def judge() -> Iterator[tuple[StoredObject, bool]]:
        sessions = {obj.key: store.session_of(obj.key) for obj in batch}
        live = metadata.known_uploads({sid for sid in sessions.values() if sid})
        known = metadata.known_keys(obj.key for obj in batch)
        for obj in batch:
            sid = sessions[obj.key]
            if obj.key not in known and sid not in live:
                yield obj, sid is not None
        batch.clear()

    for obj in store.iterate():
        batch.append(obj)
        if len(batch) >= BATCH:
            yield from judge()
    yield from judge()
