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
from typing import Callable, ContextManager

from .metadata import Lifecycle, Metadata
from .storage import BlobStore

BATCH = 500
MONOLITHIC_MIN_AGE = 60.0  # seconds a monolithic session may take to start holding its lock
MONOLITHIC_MAX_AGE = 3600.0  # where the store cannot tell whether a request still holds a monolithic session


@dataclass
class GcReport:
    dry_run: bool
    blobs_removed: int = 0
    manifests_removed: int = 0
    bytes_freed: int = 0
    links_removed: int = 0
    uploads_purged: int = 0
    orphan_files_removed: int = 0
    blobs: list[str] = field(default_factory=list)
    manifests: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class GarbageCollector:
    def __init__(self, metadata: Metadata, store: BlobStore, *, clock: Callable[[], float] = time.time,
                 upload_max_age: float = 86400.0):
        self.metadata = metadata
        self.store = store
        self.clock = clock
        self.upload_max_age = upload_max_age

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
                report.uploads_purged = self.purge_uploads()
                report.orphan_files_removed = self._remove_orphans(cutoff)
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
                    for digest, _ in step.sweep_manifests(repository_id, cutoff):
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

    def purge_uploads(self, *, at_start: bool = False) -> int:
        """Upload sessions idle longer than upload_max_age go with their data; so do monolithic sessions whose
        request is gone (killed mid-body: nobody can continue them), and upload data no session row names (the row
        is always written first, so such data is left by a crash or a cancel). How many went."""
        with self.metadata.lock("purge", blocking=False) as held:
            if not held:
                return 0
            now = self.clock()
            idle_cutoff = now - self.upload_max_age
            # A monolithic session younger than a minute may not hold its lock yet; at start-up none runs here.
            with self.metadata.lifecycle() as step:
                stale = step.stale_uploads(idle_cutoff, now if at_start else now - MONOLITHIC_MIN_AGE)
            doomed = [session for session in stale if session.updated_at < idle_cutoff or self._abandoned(session, now)]
            if doomed:
                with self.metadata.lifecycle() as step:
                    for session in doomed:
                        step.delete_upload(session.id)
                for session in doomed:
                    self.store.abort_upload(session.id, session.state)
            return len(doomed) + self._remove_orphan_uploads()

    def _abandoned(self, session, now: float) -> bool:
        """A monolithic session no request holds any more (where the store cannot tell: one over an hour old)."""
        busy = self.store.upload_in_progress(session.id)
        return busy is False or (busy is None and session.created_at < now - MONOLITHIC_MAX_AGE)

    def _remove_orphan_uploads(self) -> int:
        removed = 0
        ids = list(self.store.iterate_uploads())
        for start in range(0, len(ids), BATCH):
            batch = ids[start:start + BATCH]
            for session_id in set(batch) - self.metadata.known_uploads(batch):
                self.store.abort_upload(session_id)
                removed += 1
        return removed

    def _remove_orphans(self, cutoff: float) -> int:
        """Stored objects no blob row, no pending delete and no session row names, modified before `cutoff`."""
        removed = 0
        batch: list = []

        def flush() -> None:
            nonlocal removed
            # Sessions before keys: a commit's transaction swaps its session row for its blob row, so a commit
            # landing between the two reads still shows in one of them.
            sessions = {obj.key: self.store.session_of(obj.key) for obj in batch}
            live = self.metadata.known_uploads({sid for sid in sessions.values() if sid})
            known = self.metadata.known_keys(obj.key for obj in batch)
            for obj in batch:
                if obj.key not in known and sessions[obj.key] not in live:
                    self.store.delete(obj.key)
                    removed += 1
            batch.clear()

        for obj in self.store.iterate():
            if obj.modified < cutoff:
                batch.append(obj)
                if len(batch) >= BATCH:
                    flush()
        flush()
        return removed

    def recover(self) -> dict:
        """At start-up: finish interrupted deletes, drop monolithic sessions a killed request left and upload data
        no session records. Cheap when there was no crash (it lists pending deletes and upload sessions, not blobs)."""
        return {"deletes_finished": self.finish_deletes(), "uploads_removed": self.purge_uploads(at_start=True)}

    def run_if_due(self, interval: float, *, delete_untagged: bool, grace: float) -> GcReport | None:
        """For the schedule: run unless another process is collecting or a run finished less than `interval` ago."""
        if self.clock() - float(self.metadata.get_state("last_gc") or 0) < interval:
            return None
        with self.metadata.lock("gc-schedule", blocking=False) as held:
            if not held or self.clock() - float(self.metadata.get_state("last_gc") or 0) < interval:
                return None
            self.metadata.set_state("last_gc", str(self.clock()))
        return self.run(grace=grace, delete_untagged=delete_untagged)
