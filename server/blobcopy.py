"""`dockyard migrate-blobs`: move a registry's blobs from one blob store to another (the filesystem to S3, one
bucket to another, S3 back to a disk), through the two interfaces only, so any pair of drivers works.

Keys are the target driver's own (the drivers name objects differently: a file per digest and session on disk,
`blobs/<session>` on S3), so copying the files or objects with `rclone`/`aws s3 sync` is not enough: each blob is
uploaded into the target as a new session would be (streamed, hashed, its digest checked by the target's commit),
then its row is switched to the new key with a compare-and-set (`Metadata.rekey_blob`). What the source holds is
left untouched: delete it once the registry runs on the target.

Resumable and idempotent: a blob whose row already names a key the target holds with the right size is skipped, so
a copy cut off by a kill or a failing store is simply run again. It holds the garbage-collection lock throughout
(no collection runs meanwhile: a copied object belongs to no upload session, and the orphan sweep would take it
before its row names it). Run it while the registry is read-only (uploads would go to whichever store the nodes are
configured with).
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import Callable

from .bodies import StreamSource
from .errors import BlobUnknown
from .metadata import Metadata
from .names import parse_digest
from .storage import BlobStore


@dataclass
class CopyReport:
    copied: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (digest, why)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _size_in(store: BlobStore, key: str) -> int | None:
    """The size of `key` in `store`; None when it does not hold it, or when the key is not of its kind at all."""
    try:
        return store.stat(key)
    except BlobUnknown:
        return None


def copy_blobs(metadata: Metadata, source: BlobStore, target: BlobStore, *, new_id: Callable[[], str],
               progress: Callable[[CopyReport], None] | None = None) -> CopyReport:
    started = time.monotonic()
    report = CopyReport()
    with metadata.lock("gc"):
        for record in metadata.blobs():
            if _size_in(target, record.key) == record.size:
                report.skipped += 1
                continue
            session_id = new_id()
            state = None
            try:
                state = target.open_upload(session_id)
                with closing(source.read(record.key)) as stream, target.upload_lock(session_id):
                    state = target.append(session_id, state, StreamSource(stream, record.size))
                    stored = target.commit(session_id, state, parse_digest(record.digest))
            except Exception as exc:  # noqa: BLE001 - one blob's failure is reported; the others go on
                if state is not None:
                    target.abort_upload(session_id, state)
                report.failed.append((record.digest, f"{type(exc).__name__}: {exc}"[:300]))
                continue
            if metadata.rekey_blob(record.digest, record.key, stored.key):
                report.copied += 1
                report.bytes_copied += record.size
            else:  # the row changed meanwhile (the blob was collected): the copy is nobody's
                target.delete(stored.key)
                report.skipped += 1
            if progress is not None and report.copied % 100 == 0:
                progress(report)
    report.seconds = round(time.monotonic() - started, 3)
    return report
