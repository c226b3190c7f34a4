"""Registry metadata in SQLite: repositories, blob links, manifests, tags, upload sessions.

One connection per process, opened lazily after gunicorn forks, shared by the worker's threads under a lock (a
query here takes microseconds; the lock is never held across network I/O). WAL mode lets readers in other workers
run beside a writer. Every multi-row write is one `BEGIN IMMEDIATE` transaction, so a writer takes the database
lock up front instead of failing to upgrade a read lock under contention. Queries return plain dataclasses; this
module never imports falcon.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from sqlite_utils import Database

from ..cache import ResponseCache
from ..errors import ManifestBlobUnknown
from .lifecycle import MANIFEST_TOTAL_SIZE, REPOSITORY_PAGE, REPOSITORY_USAGE, TAG_PAGE, Maintenance
from .quotas import Quota
from .schema import migrations


@dataclass(slots=True)
class ManifestRecord:
    digest: str
    media_type: str
    size: int
    data: bytes | None = None


@dataclass(slots=True)
class Upload:
    id: str
    repository: str
    length: int
    created_at: float
    updated_at: float


@dataclass(slots=True)
class NewManifest:
    """What a manifest PUT stores; built by the manifest parser."""
    digest: str
    media_type: str
    data: bytes
    blobs: list[str]
    manifests: list[str]
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict | None = None


class Metadata:
    def __init__(self, path: str | os.PathLike, *, clock: Callable[[], float] = time.time,
                 synchronous: str = "NORMAL"):
        self.path = Path(path)
        self._clock = clock
        self._synchronous = synchronous
        self._write_lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._db: Database | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_fd = -1
        self._pid = 0
        self._manifest_bytes = ResponseCache(max_bytes=32 * 1024 * 1024)
        self.migrate()
        # gunicorn forks after this (preload_app): never carry an open SQLite connection across fork.
        self.close()

    # -- connections ---------------------------------------------------------------------------------------------
    #
    # Each process has two connections: a writer, whose transactions also hold an flock shared with every other
    # process on this database, and a reader. Reads never queue behind a write waiting for the database (WAL
    # readers see the last commit), and writers from all workers queue on the flock, which wakes the next one the
    # moment it is released, instead of SQLite's busy handler, which sleeps and retries (up to 100 ms a turn).

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30,
                               cached_statements=512)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        # After a checkpoint, cut the WAL back to 64 MiB: a burst of writes (bench/scale.py seeding 100,000
        # manifests) otherwise leaves a WAL of hundreds of MiB behind for good.
        conn.execute("PRAGMA journal_size_limit=67108864")
        return conn

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # a forked worker: drop what the parent had, open our own on first use
            self._db = None
            self._reader = None
            self._write_fd = -1
            self._pid = os.getpid()

    @property
    def db(self) -> Database:
        """This process's writer connection (sqlite-utils), opened on first use."""
        self._check_pid()
        if self._db is None:
            self._db = Database(self._connect())
        return self._db

    def _reader_connection(self) -> sqlite3.Connection:
        self._check_pid()
        if self._reader is None:
            self._reader = self._connect()
        return self._reader

    def migrate(self) -> None:
        with self._write_lock:
            migrations.apply(self.db)

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            if self._pid == os.getpid():
                for conn in (self._db.conn if self._db else None, self._reader):
                    if conn is not None:
                        conn.close()
                if self._write_fd >= 0:
                    os.close(self._write_fd)
            self._db = None
            self._reader = None
            self._write_fd = -1

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            yield self._reader_connection()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            conn = self.db.conn
            if self._write_fd < 0:
                self._write_fd = os.open(f"{self.path}.writelock", os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(self._write_fd, fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                fcntl.flock(self._write_fd, fcntl.LOCK_UN)

    # -- repositories --------------------------------------------------------------------------------------------

    def _repository_id(self, conn: sqlite3.Connection, name: str) -> int | None:
        row = conn.execute("SELECT id FROM repositories WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def _ensure_repository(self, conn: sqlite3.Connection, name: str) -> int:
        repository_id = self._repository_id(conn, name)
        if repository_id is None:
            repository_id = conn.execute("INSERT INTO repositories (name, created_at) VALUES (?, ?)",
                                         (name, self._clock())).lastrowid
        return repository_id

    def repository_exists(self, name: str) -> bool:
        with self._read() as conn:
            return self._repository_id(conn, name) is not None

    def catalog(self, n: int, last: str | None) -> tuple[list[str], bool]:
        """Repository names after `last` that hold at least one manifest; (page, whether more follow)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name FROM repositories r WHERE name > ? AND EXISTS "
                "(SELECT 1 FROM manifests m WHERE m.repository_id = r.id) ORDER BY name LIMIT ?",
                (last or "", n + 1)).fetchall()
        names = [r[0] for r in rows]
        return names[:n], len(names) > n

    # -- blobs ---------------------------------------------------------------------------------------------------

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of a blob readable in `repository`, or None."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT b.size FROM repositories r JOIN repository_blobs rb ON rb.repository_id = r.id "
                "JOIN blobs b ON b.digest = rb.digest WHERE r.name = ? AND rb.digest = ?",
                (repository, digest)).fetchone()
        return row[0] if row else None

    def add_blob(self, repository: str, digest: str, size: int, *, install: Callable[[], None] | None = None,
                 upload_id: str | None = None, quotas: tuple["Quota", ...] = ()) -> None:
        """Record a verified blob and make it readable in `repository`, closing its upload session if any.

        `install` (the store's rename into place) runs inside this write transaction, so garbage collection, which
        takes the same lock to forget a blob and move its file away, can never interleave with it: the database
        and the disk change together.
        """
        now = self._clock()
        with self._write() as conn:
            repository_id = self._ensure_repository(conn, repository)
            for quota in quotas:
                quota.check(conn, repository_id, digest, size)
            if install is not None:
                install()
            if upload_id is not None:
                conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
            conn.execute("INSERT OR IGNORE INTO blobs (digest, size, created_at) VALUES (?, ?, ?)",
                         (digest, size, now))
            conn.execute("INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES (?, ?, ?) "
                         "ON CONFLICT DO UPDATE SET created_at = excluded.created_at", (repository_id, digest, now))

    def mount_blob(self, repository: str, source: str, digest: str,
                   quotas: tuple["Quota", ...] = ()) -> int | None:
        """Link a blob readable in `source` into `repository`; its size, or None when `source` cannot read it."""
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(
                "SELECT b.size FROM repositories r JOIN repository_blobs rb ON rb.repository_id = r.id "
                "JOIN blobs b ON b.digest = rb.digest WHERE r.name = ? AND rb.digest = ?",
                (source, digest)).fetchone()
            if row is None:
                return None
            repository_id = self._ensure_repository(conn, repository)
            for quota in quotas:
                quota.check(conn, repository_id, digest, row[0])
            conn.execute("INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES (?, ?, ?) "
                         "ON CONFLICT DO UPDATE SET created_at = excluded.created_at", (repository_id, digest, now))
            return row[0]

    def unlink_blob(self, repository: str, digest: str) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM repository_blobs WHERE digest = ? AND repository_id = "
                "(SELECT id FROM repositories WHERE name = ?)", (digest, repository))
            return cur.rowcount > 0

    # -- upload sessions -----------------------------------------------------------------------------------------

    def create_upload(self, repository: str, upload_id: str) -> None:
        now = self._clock()
        with self._write() as conn:
            repository_id = self._ensure_repository(conn, repository)
            conn.execute("INSERT INTO uploads (id, repository_id, length, created_at, updated_at) "
                         "VALUES (?, ?, 0, ?, ?)", (upload_id, repository_id, now, now))

    def get_upload(self, repository: str, upload_id: str) -> Upload | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT u.id, r.name, u.length, u.created_at, u.updated_at FROM uploads u "
                "JOIN repositories r ON r.id = u.repository_id WHERE u.id = ? AND r.name = ?",
                (upload_id, repository)).fetchone()
        return Upload(*row) if row else None

    def set_upload_length(self, upload_id: str, length: int) -> None:
        with self._write() as conn:
            conn.execute("UPDATE uploads SET length = ?, updated_at = ? WHERE id = ?",
                         (length, self._clock(), upload_id))

    def delete_upload(self, upload_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

    # -- manifests -----------------------------------------------------------------------------------------------

    def put_manifest(self, repository: str, manifest: NewManifest, tag: str | None) -> None:
        """Store a manifest (and point `tag` at it) once every blob and child manifest it names is present.

        The check and the insert share one write transaction, so a manifest can never be stored pointing at a blob
        that a concurrent delete removed.
        """
        now = self._clock()
        with self._write() as conn:
            repository_id = self._ensure_repository(conn, repository)
            if conn.execute("SELECT 1 FROM manifests WHERE repository_id = ? AND digest = ?",
                            (repository_id, manifest.digest)).fetchone():
                # Already here (a new tag on a pushed manifest, or a re-push): its references were checked and
                # recorded when it first came; only the tag, or the push time that GC's grace period reads, moves.
                if tag is None:
                    conn.execute("UPDATE manifests SET created_at = ? WHERE repository_id = ? AND digest = ?",
                                 (now, repository_id, manifest.digest))
                else:
                    self._set_tag(conn, repository_id, tag, manifest.digest, now)
                return
            missing = []
            for digest in dict.fromkeys(manifest.blobs):
                if not conn.execute("SELECT 1 FROM repository_blobs WHERE repository_id = ? AND digest = ?",
                                    (repository_id, digest)).fetchone():
                    missing.append(digest)
            for digest in dict.fromkeys(manifest.manifests):
                if not conn.execute("SELECT 1 FROM manifests WHERE repository_id = ? AND digest = ?",
                                    (repository_id, digest)).fetchone():
                    missing.append(digest)
            if missing:
                raise ManifestBlobUnknown({"missing": missing})
            conn.execute("INSERT OR IGNORE INTO manifest_content (digest, data) VALUES (?, ?)",
                         (manifest.digest, manifest.data))
            conn.execute(
                "INSERT INTO manifests (repository_id, digest, media_type, size, artifact_type, subject, "
                "annotations, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (repository_id, manifest.digest, manifest.media_type, len(manifest.data), manifest.artifact_type,
                 manifest.subject, json.dumps(manifest.annotations) if manifest.annotations else None, now))
            conn.executemany(
                "INSERT OR IGNORE INTO manifest_references (repository_id, digest, child, kind) VALUES (?, ?, ?, ?)",
                [(repository_id, manifest.digest, d, "blob") for d in manifest.blobs]
                + [(repository_id, manifest.digest, d, "manifest") for d in manifest.manifests])
            conn.executemany("UPDATE repository_blobs SET referenced = 1 WHERE repository_id = ? AND digest = ?",
                             [(repository_id, d) for d in dict.fromkeys(manifest.blobs)])
            if tag is not None:
                self._set_tag(conn, repository_id, tag, manifest.digest, now)

    @staticmethod
    def _set_tag(conn: sqlite3.Connection, repository_id: int, tag: str, digest: str, now: float) -> None:
        conn.execute("INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest, "
                     "updated_at = excluded.updated_at", (repository_id, tag, digest, now))

    def get_manifest(self, repository: str, *, digest: str | None = None, tag: str | None = None,
                     with_data: bool = True) -> ManifestRecord | None:
        """A manifest present in `repository`, by tag or digest. Its bytes come from a per-process cache by digest
        (content never changes under a digest); presence is always checked in the database."""
        with self._read() as conn:
            if tag is not None:
                row = conn.execute(
                    "SELECT m.digest, m.media_type, m.size FROM repositories r "
                    "JOIN tags t ON t.repository_id = r.id "
                    "JOIN manifests m ON m.repository_id = r.id AND m.digest = t.digest "
                    "WHERE r.name = ? AND t.name = ?", (repository, tag)).fetchone()
            else:
                row = conn.execute(
                    "SELECT m.digest, m.media_type, m.size FROM repositories r "
                    "JOIN manifests m ON m.repository_id = r.id WHERE r.name = ? AND m.digest = ?",
                    (repository, digest)).fetchone()
            if row is None:
                return None
            record = ManifestRecord(*row)
            if with_data:
                cached = self._manifest_bytes.get(record.digest)
                if cached is None:
                    record.data = conn.execute("SELECT data FROM manifest_content WHERE digest = ?",
                                               (record.digest,)).fetchone()[0]
                    self._manifest_bytes.put(record.digest, record.data)
                else:
                    record.data = cached[0]
        return record

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """Remove a manifest and every tag pointing at it from `repository`."""
        with self._write() as conn:
            repository_id = self._repository_id(conn, repository)
            if repository_id is None:
                return False
            cur = conn.execute("DELETE FROM manifests WHERE repository_id = ? AND digest = ?",
                               (repository_id, digest))
            if not cur.rowcount:
                return False
            conn.execute("DELETE FROM tags WHERE repository_id = ? AND digest = ?", (repository_id, digest))
            conn.execute("DELETE FROM manifest_references WHERE repository_id = ? AND digest = ?",
                         (repository_id, digest))
            return True

    def delete_tag(self, repository: str, tag: str) -> bool:
        with self._write() as conn:
            cur = conn.execute("DELETE FROM tags WHERE name = ? AND repository_id = "
                               "(SELECT id FROM repositories WHERE name = ?)", (tag, repository))
            return cur.rowcount > 0

    def tags_version(self, repository: str) -> int | None:
        """The repository's tag-list version (moved by triggers on every tag added or removed); None if unknown."""
        with self._read() as conn:
            row = conn.execute("SELECT tags_version FROM repositories WHERE name = ?", (repository,)).fetchone()
        return row[0] if row else None

    def catalog_version(self) -> int:
        with self._read() as conn:
            return conn.execute("SELECT value FROM counters WHERE name = 'catalog'").fetchone()[0]

    def tags(self, repository: str, n: int | None, last: str | None) -> tuple[list[str], bool] | None:
        """Tags in lexical order after `last`: (page, whether more follow); None for an unknown repository."""
        with self._read() as conn:
            repository_id = self._repository_id(conn, repository)
            if repository_id is None:
                return None
            if n is None:
                rows = conn.execute("SELECT name FROM tags WHERE repository_id = ? AND name > ? ORDER BY name",
                                    (repository_id, last or "")).fetchall()
                return [r[0] for r in rows], False
            rows = conn.execute(
                "SELECT name FROM tags WHERE repository_id = ? AND name > ? ORDER BY name LIMIT ?",
                (repository_id, last or "", n + 1)).fetchall()
        names = [r[0] for r in rows]
        return names[:n], len(names) > n

    def referrers(self, repository: str, subject: str, artifact_type: str | None) -> list[dict]:
        """Descriptors of the manifests in `repository` whose subject is `subject` (OCI 1.1 referrers API)."""
        query = ("SELECT m.media_type, m.digest, m.size, m.artifact_type, m.annotations FROM repositories r "
                 "JOIN manifests m ON m.repository_id = r.id WHERE r.name = ? AND m.subject = ?")
        params: list = [repository, subject]
        if artifact_type is not None:
            query += " AND m.artifact_type = ?"
            params.append(artifact_type)
        with self._read() as conn:
            rows = conn.execute(query + " ORDER BY m.created_at, m.digest", params).fetchall()
        descriptors = []
        for media_type, digest, size, artifact, annotations in rows:
            descriptor = {"mediaType": media_type, "digest": digest, "size": size}
            if artifact:
                descriptor["artifactType"] = artifact
            if annotations:
                descriptor["annotations"] = json.loads(annotations)
            descriptors.append(descriptor)
        return descriptors

    # -- lifecycle and accounting --------------------------------------------------------------------------------

    @contextmanager
    def maintenance(self, *, dry_run: bool = False) -> Iterator[Maintenance]:
        """A write transaction for lifecycle steps; with `dry_run` everything is rolled back at the end."""
        with self._write() as conn:
            if not dry_run:
                yield Maintenance(conn)
                return
            conn.execute("SAVEPOINT dry_run")
            try:
                yield Maintenance(conn)
            finally:
                conn.execute("ROLLBACK TO dry_run")
                conn.execute("RELEASE dry_run")

    def blob_known(self, digest: str) -> bool:
        with self._read() as conn:
            return conn.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone() is not None

    def upload_known(self, upload_id: str) -> bool:
        with self._read() as conn:
            return conn.execute("SELECT 1 FROM uploads WHERE id = ?", (upload_id,)).fetchone() is not None

    def repository_page(self, n: int, last: str | None) -> tuple[list[dict], bool]:
        """Repositories (with manifests) after `last`, with tag and manifest counts and their storage use."""
        with self._read() as conn:
            rows = conn.execute(REPOSITORY_PAGE, (last or "", n + 1)).fetchall()
            page = []
            for repository_id, name, tags, manifests in rows[:n]:
                unique, shared = conn.execute(REPOSITORY_USAGE, (repository_id,)).fetchone()
                page.append({"name": name, "tags": tags, "manifests": manifests, "unique_bytes": unique,
                             "shared_bytes": shared})
        return page, len(rows) > n

    def tag_details(self, repository: str, n: int, last: str | None) -> tuple[list[dict], bool] | None:
        with self._read() as conn:
            repository_id = self._repository_id(conn, repository)
            if repository_id is None:
                return None
            rows = conn.execute(TAG_PAGE, (repository_id, last or "", n + 1)).fetchall()
            sizes: dict[str, int] = {}
            page = []
            for tag, digest, media_type, updated_at in rows[:n]:
                if digest not in sizes:
                    sizes[digest] = conn.execute(MANIFEST_TOTAL_SIZE,
                                                 {"digest": digest, "repository": repository_id}).fetchone()[0]
                page.append({"tag": tag, "digest": digest, "media_type": media_type, "size": sizes[digest],
                             "updated_at": updated_at})
        return page, len(rows) > n

    def storage_totals(self) -> dict:
        with self._read() as conn:
            blobs, blob_bytes = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs").fetchone()
            manifest_bytes = conn.execute("SELECT COALESCE(SUM(length(data)), 0) FROM manifest_content").fetchone()[0]
            repositories = []
            for repository_id, name in conn.execute("SELECT id, name FROM repositories ORDER BY name").fetchall():
                unique, shared = conn.execute(REPOSITORY_USAGE, (repository_id,)).fetchone()
                repositories.append({"name": name, "unique_bytes": unique, "shared_bytes": shared})
        return {"total_bytes": blob_bytes + manifest_bytes, "blob_bytes": blob_bytes, "manifest_bytes": manifest_bytes,
                "blobs": blobs, "repositories": repositories}

    def quota_usage(self, quota: Quota) -> int:
        with self._read() as conn:
            return quota.usage(conn)

    def get_state(self, key: str) -> str | None:
        with self._read() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: str | None) -> None:
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                conn.execute("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT DO UPDATE SET value = "
                             "excluded.value", (key, value))
