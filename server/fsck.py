"""`dockyard fsck`: do the metadata and the blob store agree, both ways? Written against the two interfaces only, so
it checks every driver alike.

What it looks for, and what `--repair` does about each (only what is safe on a running registry):

- **missing blob**: a blob row whose key the store does not hold (or holds with another size). The bytes are gone;
  repair forgets the row and its repository links, so a push of the same content stores it afresh (otherwise the
  row would keep answering "already stored" for bytes that are not there). Manifests that use it stay, reported.
- **corrupt blob** (`--verify-digests`): stored bytes whose digest is not the row's. Repair forgets the row as above.
- **orphan blob**: a stored object no blob row and no pending delete names, and whose upload session is gone (a
  crash between the store's commit and the metadata's; see `gc.orphans`). Repair deletes it; one of a key with no
  session (stored before keys were per session) only once older than `grace`. An object whose session row is
  still there is a commit in flight, not a problem.
- **orphan upload**: upload data no session row names. Repair deletes it.
- **lost upload**: a session row whose data the store does not hold. Repair forgets the row.
- **pending delete**: a forgotten blob whose bytes a crash left. Repair deletes them.
- **broken reference**: a tag naming no manifest, a manifest without its bytes, a manifest naming a blob or child
  manifest its repository does not hold. Reported only: the fix is a push, a delete or garbage collection.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from .gc import orphans
from .metadata import Metadata
from .storage import BlobStore

BATCH = 500


@dataclass
class Problem:
    kind: str
    subject: str
    detail: str
    repaired: bool = False


@dataclass
class FsckReport:
    blobs_checked: int = 0
    objects_checked: int = 0
    uploads_checked: int = 0
    digests_verified: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not [p for p in self.problems if not p.repaired]

    def to_dict(self) -> dict:
        return {**asdict(self), "clean": self.clean}


def fsck(store: BlobStore, metadata: Metadata, *, repair: bool = False, verify_digests: bool = False,
         grace: float = 3600.0, clock: Callable[[], float] = time.time) -> FsckReport:
    started = time.monotonic()
    report = FsckReport()
    with metadata.lock("gc"):  # no garbage collection moves things meanwhile
        _blobs(store, metadata, report, repair, verify_digests)
        _objects(store, metadata, report, repair, clock() - grace)
        _uploads(store, metadata, report, repair)
        _pending(store, metadata, report, repair)
        for kind, subject, detail in metadata.broken_references():
            report.problems.append(Problem(kind, subject, detail))
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _blobs(store, metadata, report, repair, verify_digests) -> None:
    for blob in metadata.blobs():
        report.blobs_checked += 1
        size = store.stat(blob.key)
        problem = None
        if size is None:
            problem = Problem("missing blob", blob.digest, f"the store holds nothing at {blob.key}")
        elif size != blob.size:
            problem = Problem("missing blob", blob.digest, f"{blob.key} holds {size} bytes, not {blob.size}")
        elif verify_digests:
            report.digests_verified += 1
            actual = _digest_of(store, blob.key, blob.digest.split(":", 1)[0])
            if actual != blob.digest:
                problem = Problem("corrupt blob", blob.digest, f"{blob.key} hashes to {actual}")
        if problem is not None:
            if repair:
                metadata.forget_blob(blob.digest)
                if problem.kind == "corrupt blob":
                    store.delete(blob.key)
                problem.repaired = True
            report.problems.append(problem)


def _digest_of(store: BlobStore, key: str, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    stream = store.read(key)
    try:
        while chunk := stream.read(1024 * 1024):
            hasher.update(chunk)
    finally:
        stream.close()
    return f"{algorithm}:{hasher.hexdigest()}"


def _objects(store, metadata, report, repair, cutoff) -> None:
    report.objects_checked = sum(1 for _ in store.iterate())
    for obj, session_gone in orphans(store, metadata):
        problem = Problem("orphan blob", obj.key, f"{obj.size} bytes no blob row names")
        if repair and (session_gone or obj.modified < cutoff):
            store.delete(obj.key)
            problem.repaired = True
        report.problems.append(problem)


def _uploads(store, metadata, report, repair) -> None:
    in_store = set(store.iterate_uploads())
    report.uploads_checked = len(in_store)
    known = metadata.known_uploads(in_store)
    for session_id in sorted(in_store - known):
        problem = Problem("orphan upload", session_id, "upload data no session row names")
        if repair:
            store.abort_upload(session_id)
            problem.repaired = True
        report.problems.append(problem)
    # A session whose commit stored its object but did not record it yet (in flight, or interrupted by a crash)
    # holds its bytes in that object, no longer as upload data: not lost.
    committed = {store.session_of(obj.key) for obj in store.iterate()}
    for session in metadata.upload_sessions():
        if session.id not in in_store and session.id not in committed and session.length > 0:
            problem = Problem("lost upload", session.id, f"{session.repository}: {session.length} bytes recorded, "
                                                         "none stored")
            if repair:
                metadata.delete_upload(session.id)
                problem.repaired = True
            report.problems.append(problem)


def _pending(store, metadata, report, repair) -> None:
    keys = metadata.pending_deletes(BATCH)
    for key in keys:
        problem = Problem("pending delete", key, "a forgotten blob whose bytes were not deleted")
        if repair:
            store.delete(key)
            problem.repaired = True
        report.problems.append(problem)
    if repair and keys:
        metadata.forget_pending(keys)
