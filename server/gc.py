"""Online garbage collection: what nothing reachable refers to goes, while the registry keeps serving.

Roots are tags. From them the graph reaches index children and referrers of live manifests (signatures, SBOMs);
with `delete_untagged`, manifests outside that set (and older than the grace period) are deleted. Then repository
links no manifest uses are dropped (at once for layers of deleted images, after the grace period for uploads that
never got their manifest), then blobs no link and no manifest refers to, then orphaned manifest bytes, expired
upload sessions, and files on disk the database does not know (left by a crash between a file's rename and its
transaction's commit).

Each step is its own short write transaction that re-derives the garbage inside it, so pushes and pulls go on in
between, and a manifest PUT racing with a sweep either finds its blobs or gets MANIFEST_BLOB_UNKNOWN. A blob's
file is moved to trash inside the transaction that forgets it and deleted after the commit; after a crash,
`recover` puts back trashed files the database still records. A dry run performs the same steps in one
transaction and rolls it back, so its report is exactly what a real run would have done at that moment.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import asdict, dataclass, field
from contextlib import nullcontext
from typing import Callable, ContextManager

from .metadata import Metadata
from .metadata.lifecycle import Maintenance
from .names import parse_digest
from .storage import BlobStore

BATCH = 500


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
        with self._exclusive():
            self.store.recover_trash(self.metadata.blob_known)
            if dry_run:
                with self.metadata.maintenance(dry_run=True) as shared:
                    self._collect(report, cutoff, delete_untagged, lambda: nullcontext(shared), remove=None)
            else:
                self._collect(report, cutoff, delete_untagged, self.metadata.maintenance, remove=self._trash)
                self._purge_uploads(report)
                self._remove_orphan_files(report)
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def _collect(self, report: GcReport, cutoff: float, delete_untagged: bool,
                 transaction: Callable[[], ContextManager[Maintenance]], remove: Callable[[str], None] | None) -> None:
        """The sweeps, each step in `transaction()`: its own in a real run, one shared in a dry run."""
        if delete_untagged:
            with transaction() as m:
                repositories = m.repository_ids()
            for repository_id, name in repositories:
                with transaction() as m:
                    for digest, _ in m.sweep_manifests(repository_id, cutoff):
                        report.manifests.append({"repository": name, "digest": digest})
            report.manifests_removed = len(report.manifests)
        with transaction() as m:
            report.links_removed = m.sweep_links(cutoff)
        while True:
            with transaction() as m:
                batch = m.sweep_blobs(remove or (lambda digest: None), BATCH)
            if remove is not None:
                self.store.empty_trash()
            report.blobs.extend(digest for digest, _ in batch)
            report.bytes_freed += sum(size for _, size in batch)
            if len(batch) < BATCH:
                break
        report.blobs_removed = len(report.blobs)
        with transaction() as m:
            report.bytes_freed += sum(size for _, size in m.sweep_manifest_content())

    def _trash(self, digest: str) -> None:
        self.store.trash(parse_digest(digest))

    def _purge_uploads(self, report: GcReport) -> None:
        """Upload sessions idle longer than upload_max_age go with their files (unless a request holds them)."""
        with self.metadata.maintenance() as m:
            expired = m.expired_uploads(self.clock() - self.upload_max_age)
        for upload_id in expired:
            if self.store.try_remove_upload(upload_id, forget=lambda: self._forget_upload(upload_id)):
                report.uploads_purged += 1

    def _forget_upload(self, upload_id: str) -> None:
        with self.metadata.maintenance() as m:
            m.delete_upload(upload_id)

    def _remove_orphan_files(self, report: GcReport) -> None:
        report.orphan_files_removed += self._sweep_orphan_files()
        report.orphan_files_removed += self.store.remove_orphan_uploads(self.metadata.upload_known)

    def _sweep_orphan_files(self) -> int:
        """Files under blobs/ with no database row: a crash came between a rename and its commit."""
        removed = 0
        digests = list(self.store.digests())
        for start in range(0, len(digests), BATCH):
            with self.metadata.maintenance() as m:
                # Under the write lock no install is half done, so a file without a row is truly an orphan.
                for digest in digests[start:start + BATCH]:
                    if not m.blob_known(str(digest)) and self.store.delete(digest):
                        removed += 1
        return removed

    def recover(self) -> dict:
        """Make the disk agree with the database after a crash: trashed blobs the database still records come back,
        the rest of the trash goes, and so do blob files no row records. Cheap when there was no crash."""
        restored, deleted = self.store.recover_trash(self.metadata.blob_known)
        return {"restored": restored, "trash_deleted": deleted, "orphans_removed": self._sweep_orphan_files(),
                "orphan_uploads_removed": self.store.remove_orphan_uploads(self.metadata.upload_known)}

    def run_if_due(self, interval: float, *, delete_untagged: bool, grace: float) -> GcReport | None:
        """For the schedule: run unless another process is collecting or a run finished less than `interval` ago."""
        last = float(self.metadata.get_state("last_gc") or 0)
        if self.clock() - last < interval:
            return None
        lock = _FileLock(self.store.root / "gc.lock", blocking=False)
        with lock:
            if not lock.held:
                return None
            last = float(self.metadata.get_state("last_gc") or 0)
            if self.clock() - last < interval:
                return None
            self.metadata.set_state("last_gc", str(self.clock()))
        return self.run(grace=grace, delete_untagged=delete_untagged)

    def _exclusive(self):
        """One collection at a time per data directory (workers, the schedule and `dockyard gc` alike)."""
        return _FileLock(self.store.root / "gc.lock")


class _FileLock:
    def __init__(self, path, *, blocking: bool = True):
        self.path = path
        self.blocking = blocking
        self.fd = -1
        self.held = False

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
            self.held = True
        except BlockingIOError:
            self.held = False
        return self

    def __exit__(self, *exc):
        if self.held:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        return False
