"""The SQLite metadata driver (the embedded default), through sqlite-utils.

Each process has two connections, opened lazily after gunicorn forks and shared by the worker's threads under a
lock (a query takes microseconds; no lock is ever held across network I/O): a writer, whose transactions also hold
an flock shared with every other process on this database, and a reader. Reads never queue behind a write waiting
for the database (WAL readers see the last commit), and writers from all workers queue on the flock, which wakes the
next one the moment it is released, instead of SQLite's busy handler, which sleeps and retries. Every write is one
`BEGIN IMMEDIATE` transaction, so a writer takes the database lock up front instead of failing to upgrade a read
lock under contention. Schema: numbered migrations in `sqlite_schema.py`.

A full disk: SQLITE_FULL is INSUFFICIENT_STORAGE (507), never a 500. A preallocated reserve file beside the database
(`registry.db.reserve`) is given up when the filesystem is about to be full, so the transactions that free space
(deletes, garbage collection) can still commit; it is taken back once there is room again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from sqlite_utils import Database

from ..errors import InsufficientStorage, ManifestBlobUnknown, Unavailable
from ..model import (BlobRecord, ManifestRecord, NewEvent, NewManifest, StorageUsage, StoredBlob, UploadLimits,
                     UploadSession, UploadState)
from ..quotas import Quota
from . import Lifecycle, Metadata, blob_in_use, too_many_sessions
from .sqlite_queries import (CACHE_CANDIDATES, DEAD_MANIFESTS, GARBAGE_BLOBS, MANIFEST_TOTAL_SIZE,
                             ORPHAN_MANIFEST_CONTENT, REPOSITORY_ACTIVE, REPOSITORY_PAGE, REPOSITORY_USAGE, STALE_LINKS,
                             TAG_PAGE)
from .sqlite_outbox import SqliteOutbox, add_events
from .sqlite_schema import migrations

log = logging.getLogger("dockyard")

BLOB_IN_REPOSITORY = (
    "SELECT b.digest, b.size, b.key FROM repositories r JOIN repository_blobs rb ON rb.repository_id = r.id "
    "JOIN blobs b ON b.digest = rb.digest WHERE r.name = ? AND rb.digest = ?")
# A link made (again) by an upload or a mount is new: the grace period protects it until a manifest uses it, even
# if an earlier manifest used it once (issue 12, finding 1: otherwise GC takes a blob just uploaded).
LINK = ("INSERT INTO repository_blobs (repository_id, digest, created_at, referenced) VALUES (?, ?, ?, 0) "
        "ON CONFLICT DO UPDATE SET created_at = excluded.created_at, referenced = 0 "
        "WHERE NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.repository_id = excluded.repository_id "
        "AND r.child = excluded.digest)")


RESERVE = 8 * 1024 * 1024  # room kept beside the database for the writes that free space
SQLITE_FULL = 13


def registry_error(exc: sqlite3.Error):
    """The registry error a database error means for the client: a full disk, or the database unavailable."""
    if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "database or disk is full" in str(exc):
        return InsufficientStorage({"database": "full"}, headers={"Retry-After": "60"},
                                   message="the registry's storage is full")
    return Unavailable({"database": str(exc)[:200]}, headers={"Retry-After": "5"},
                       message=f"the database is unavailable: {exc}")


class SqliteMetadata(Metadata):
    driver = "sqlite"

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
        self._reserve = Path(f"{self.path}.reserve")
        self._writes = 0
        self.migrate()
        self._keep_room(force=True)
        # gunicorn forks after this (preload_app): never carry an open SQLite connection across fork.
        self.close()

    # -- connections ---------------------------------------------------------------------------------------------

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

    def ping(self) -> None:
        # A connection of its own: a probe never waits behind, or interleaves with, a request's transaction.
        try:
            if not self.path.exists():
                raise sqlite3.OperationalError(f"database {os.fspath(self.path)!r} does not exist")
            with closing(sqlite3.connect(self.path, timeout=5, isolation_level=None)) as conn:
                conn.execute("SELECT 1 FROM repositories LIMIT 1").fetchall()
            self._keep_room(force=True)
        except sqlite3.Error as exc:
            raise Unavailable({"database": str(exc)}, message=f"the database does not answer: {exc}") from None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            try:
                yield self._reader_connection()
            except sqlite3.Error as exc:
                raise registry_error(exc) from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            self._keep_room()
            conn = self.db.conn
            if self._write_fd < 0:
                self._write_fd = os.open(f"{self.path}.writelock", os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(self._write_fd, fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL does)
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise registry_error(exc) from None
            finally:
                fcntl.flock(self._write_fd, fcntl.LOCK_UN)

    def _keep_room(self, *, force: bool = False) -> None:
        """Give up the reserve beside the database when the disk is about to be full (this write may need it);
        take it back, now and then, once there is room again."""
        self._writes += 1
        try:
            st = os.statvfs(self.path.parent)
            free = st.f_bavail * st.f_frsize
            if free < RESERVE and self._reserve.exists():
                self._reserve.unlink(missing_ok=True)
                log.warning("the disk of %s is nearly full: its reserve is given up so deletes can commit", self.path)
            elif (force or self._writes % 200 == 0) and free > 4 * RESERVE and not self._reserve.exists():
                fd = os.open(self._reserve, os.O_CREAT | os.O_WRONLY, 0o600)
                try:
                    os.posix_fallocate(fd, 0, RESERVE)
                finally:
                    os.close(fd)
        except OSError:
            pass  # no room even for the reserve: the next look tries again

    def _add_events(self, conn: sqlite3.Connection, events: Sequence[NewEvent]) -> None:
        if events:
            add_events(conn, events, self._clock())

    # -- repositories and listings -------------------------------------------------------------------------------

    @staticmethod
    def _repository_id(conn: sqlite3.Connection, name: str) -> int | None:
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
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name FROM repositories r WHERE name > ? AND EXISTS "
                "(SELECT 1 FROM manifests m WHERE m.repository_id = r.id) ORDER BY name LIMIT ?",
                (last or "", n + 1)).fetchall()
        names = [r[0] for r in rows]
        return names[:n], len(names) > n

    def catalog_version(self) -> int:
        with self._read() as conn:
            return conn.execute("SELECT value FROM counters WHERE name = 'catalog'").fetchone()[0]

    def tags(self, repository: str, n: int | None, last: str | None) -> tuple[list[str], bool] | None:
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

    def tags_version(self, repository: str) -> int | None:
        with self._read() as conn:
            row = conn.execute("SELECT tags_version FROM repositories WHERE name = ?", (repository,)).fetchone()
        return row[0] if row else None

    # -- blobs ---------------------------------------------------------------------------------------------------

    def blob(self, repository: str, digest: str) -> BlobRecord | None:
        with self._read() as conn:
            row = conn.execute(BLOB_IN_REPOSITORY, (repository, digest)).fetchone()
        return BlobRecord(*row) if row else None

    def record_blob(self, repository: str, blob: StoredBlob, *, session_id: str | None = None,
                    quotas: Sequence[Quota] = (), events: Sequence[NewEvent] = ()) -> str | None:
        now = self._clock()
        with self._write() as conn:
            repository_id = self._ensure_repository(conn, repository)
            for quota in quotas:
                self._check_quota(conn, quota, blob.digest, blob.size)
            if session_id is not None:
                conn.execute("DELETE FROM uploads WHERE id = ?", (session_id,))
            row = conn.execute("SELECT key FROM blobs WHERE digest = ?", (blob.digest,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO blobs (digest, size, created_at, key) VALUES (?, ?, ?, ?)",
                             (blob.digest, blob.size, now, blob.key))
            conn.execute(LINK, (repository_id, blob.digest, now))
            self._add_events(conn, events)
        return None if row is None or row[0] == blob.key else blob.key

    def mount_blob(self, repository: str, source: str, digest: str, *, quotas: Sequence[Quota] = (),
                   events: Sequence[NewEvent] = ()) -> BlobRecord | None:
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(BLOB_IN_REPOSITORY, (source, digest)).fetchone()
            if row is None:
                return None
            record = BlobRecord(*row)
            repository_id = self._ensure_repository(conn, repository)
            for quota in quotas:
                self._check_quota(conn, quota, digest, record.size)
            conn.execute(LINK, (repository_id, digest, now))
            self._add_events(conn, events)
            return record

    def unlink_blob(self, repository: str, digest: str, *, events: Sequence[NewEvent] = ()) -> bool:
        with self._write() as conn:
            users = [row[0] for row in conn.execute(
                "SELECT r.digest FROM manifest_references r JOIN repositories p ON p.id = r.repository_id "
                "WHERE p.name = ? AND r.child = ? AND r.kind = 'blob' LIMIT 5", (repository, digest))]
            if users:
                raise blob_in_use(digest, users)
            cur = conn.execute(
                "DELETE FROM repository_blobs WHERE digest = ? AND repository_id = "
                "(SELECT id FROM repositories WHERE name = ?)", (digest, repository))
            if cur.rowcount:
                self._add_events(conn, events)
            return cur.rowcount > 0

    # -- upload sessions -----------------------------------------------------------------------------------------

    def create_upload(self, repository: str, session_id: str, *, monolithic: bool = False, owner: str | None = None,
                      limits: UploadLimits = UploadLimits()) -> None:
        now = self._clock()
        with self._write() as conn:
            repository_id = self._ensure_repository(conn, repository)
            if limits.per_repository:
                open_here = conn.execute("SELECT COUNT(*) FROM uploads WHERE repository_id = ?",
                                         (repository_id,)).fetchone()[0]
                if open_here >= limits.per_repository:
                    raise too_many_sessions("repository", limits.per_repository)
            if limits.per_user and owner is not None:
                open_by = conn.execute("SELECT COUNT(*) FROM uploads WHERE owner = ?", (owner,)).fetchone()[0]
                if open_by >= limits.per_user:
                    raise too_many_sessions("user", limits.per_user)
            conn.execute("INSERT INTO uploads (id, repository_id, length, state, created_at, updated_at, monolithic, "
                         "owner) VALUES (?, ?, 0, NULL, ?, ?, ?, ?)",
                         (session_id, repository_id, now, now, int(monolithic), owner))

    def upload(self, repository: str, session_id: str) -> UploadSession | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM uploads u JOIN repositories r ON r.id = u.repository_id "
                "WHERE u.id = ? AND r.name = ?", (session_id, repository)).fetchone()
        return _session(row) if row else None

    def save_upload(self, session_id: str, expected_length: int, state: UploadState) -> bool:
        with self._write() as conn:
            cur = conn.execute("UPDATE uploads SET length = ?, state = ?, updated_at = ? WHERE id = ? AND length = ?",
                               (state.length, state.to_json(), self._clock(), session_id, expected_length))
            return cur.rowcount > 0

    def delete_upload(self, session_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM uploads WHERE id = ?", (session_id,)).rowcount > 0

    # -- manifests -----------------------------------------------------------------------------------------------

    def put_manifest(self, repository: str, manifest: NewManifest, tag: str | None, *,
                     events: Sequence[NewEvent] = ()) -> None:
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
                self._add_events(conn, events)
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
            self._insert_manifest(conn, repository_id, manifest, now)
            if tag is not None:
                self._set_tag(conn, repository_id, tag, manifest.digest, now)
            self._add_events(conn, events)

    @staticmethod
    def _insert_manifest(conn: sqlite3.Connection, repository_id: int, manifest: NewManifest, now: float) -> None:
        """A manifest new to the repository: its bytes (shared by digest), its row, what it names, and the links
        of the blobs it names marked as used (garbage collection's grace period no longer covers them)."""
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

    @staticmethod
    def _set_tag(conn: sqlite3.Connection, repository_id: int, tag: str, digest: str, now: float) -> None:
        conn.execute("INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest, "
                     "updated_at = excluded.updated_at", (repository_id, tag, digest, now))

    def manifest(self, repository: str, *, digest: str | None = None, tag: str | None = None) -> ManifestRecord | None:
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
        return ManifestRecord(*row) if row else None

    def manifest_data(self, digest: str) -> bytes | None:
        with self._read() as conn:
            row = conn.execute("SELECT data FROM manifest_content WHERE digest = ?", (digest,)).fetchone()
        return row[0] if row else None

    def delete_manifest(self, repository: str, digest: str, *, events: Sequence[NewEvent] = ()) -> bool:
        with self._write() as conn:
            repository_id = self._repository_id(conn, repository)
            if repository_id is None:
                return False
            if not conn.execute("DELETE FROM manifests WHERE repository_id = ? AND digest = ?",
                                (repository_id, digest)).rowcount:
                return False
            conn.execute("DELETE FROM tags WHERE repository_id = ? AND digest = ?", (repository_id, digest))
            conn.execute("DELETE FROM manifest_references WHERE repository_id = ? AND digest = ?",
                         (repository_id, digest))
            self._add_events(conn, events)
            return True

    def delete_tag(self, repository: str, tag: str, *, events: Sequence[NewEvent] = ()) -> bool:
        with self._write() as conn:
            cur = conn.execute("DELETE FROM tags WHERE name = ? AND repository_id = "
                               "(SELECT id FROM repositories WHERE name = ?)", (tag, repository))
            if cur.rowcount:
                self._add_events(conn, events)
            return cur.rowcount > 0

    def referrers(self, repository: str, subject: str, artifact_type: str | None) -> list[dict]:
        query = ("SELECT m.media_type, m.digest, m.size, m.artifact_type, m.annotations FROM repositories r "
                 "JOIN manifests m ON m.repository_id = r.id WHERE r.name = ? AND m.subject = ?")
        params: list = [repository, subject]
        if artifact_type is not None:
            query += " AND m.artifact_type = ?"
            params.append(artifact_type)
        with self._read() as conn:
            rows = conn.execute(query + " ORDER BY m.created_at, m.digest", params).fetchall()
        descriptors = []
        for media_type, digest, size, artifact, annotated in rows:
            descriptor = {"mediaType": media_type, "digest": digest, "size": size}
            if artifact:
                descriptor["artifactType"] = artifact
            if annotated:
                descriptor["annotations"] = json.loads(annotated)
            descriptors.append(descriptor)
        return descriptors

    def delete_repository(self, name: str, *, events: Sequence[NewEvent] = ()) -> tuple[dict, list[UploadSession]] | None:
        with self._write() as conn:
            repository_id = self._repository_id(conn, name)
            if repository_id is None:
                return None
            counts = {
                "repository": name,
                "manifests": conn.execute("SELECT COUNT(*) FROM manifests WHERE repository_id = ?",
                                          (repository_id,)).fetchone()[0],
                "tags": conn.execute("SELECT COUNT(*) FROM tags WHERE repository_id = ?",
                                     (repository_id,)).fetchone()[0],
            }
            sessions = [_session(row) for row in conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM uploads u JOIN repositories r ON r.id = u.repository_id "
                "WHERE u.repository_id = ?", (repository_id,))]
            for table in ("tags", "manifest_references", "manifests", "repository_blobs", "uploads"):
                conn.execute(f"DELETE FROM {table} WHERE repository_id = ?", (repository_id,))
            conn.execute("DELETE FROM repositories WHERE id = ?", (repository_id,))
            self._add_events(conn, events)
        return counts, sessions

    # -- quotas --------------------------------------------------------------------------------------------------

    @staticmethod
    def _quota_usage(conn: sqlite3.Connection, quota: Quota) -> int:
        low, high = quota.name_range()
        return conn.execute(
            "SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN (SELECT l.digest FROM "
            "repository_blobs l JOIN repositories r ON r.id = l.repository_id WHERE r.name >= ? AND r.name < ?)",
            (low, high)).fetchone()[0]

    def _check_quota(self, conn: sqlite3.Connection, quota: Quota, digest: str, size: int) -> None:
        """DENIED when linking `digest` would take the scope past its limit. Pulls and deletes never get here."""
        low, high = quota.name_range()
        if conn.execute("SELECT 1 FROM repository_blobs l JOIN repositories r ON r.id = l.repository_id "
                        "WHERE l.digest = ? AND r.name >= ? AND r.name < ? LIMIT 1", (digest, low, high)).fetchone():
            return
        used = self._quota_usage(conn, quota)
        if used + size > quota.limit:
            raise quota.exceeded(used, size)

    def quota_usage(self, quota: Quota) -> int:
        with self._read() as conn:
            return self._quota_usage(conn, quota)

    # -- accounting ----------------------------------------------------------------------------------------------

    def repository_page(self, n: int, last: str | None) -> tuple[list[dict], bool]:
        with self._read() as conn:
            rows = conn.execute(REPOSITORY_PAGE, (last or "", n + 1)).fetchall()
            page = []
            for repository_id, name, tags, manifests, last_push in rows[:n]:
                unique, shared = conn.execute(REPOSITORY_USAGE, (repository_id,)).fetchone()
                page.append({"name": name, "tags": tags, "manifests": manifests, "unique_bytes": unique,
                             "shared_bytes": shared, "last_push": last_push})
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

    def usage(self) -> StorageUsage:
        # A connection of its own, like `ping`: a metrics scrape never queues behind a request.
        with closing(sqlite3.connect(self.path, timeout=5, isolation_level=None)) as conn:
            blobs, blob_bytes = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs").fetchone()
            sessions = conn.execute("SELECT COUNT(*) FROM uploads").fetchone()[0]
        return StorageUsage(blobs, blob_bytes, sessions)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    @contextmanager
    def lifecycle(self, *, dry_run: bool = False) -> Iterator[Lifecycle]:
        with self._write() as conn:
            if not dry_run:
                yield SqliteLifecycle(conn, self._clock)
                return
            conn.execute("SAVEPOINT dry_run")
            try:
                yield SqliteLifecycle(conn, self._clock)
            finally:
                conn.execute("ROLLBACK TO dry_run")
                conn.execute("RELEASE dry_run")

    def pending_deletes(self, limit: int = 1000) -> list[str]:
        with self._read() as conn:
            return [r[0] for r in conn.execute("SELECT key FROM pending_deletes ORDER BY created_at LIMIT ?",
                                               (limit,))]

    def forget_pending(self, keys: Iterable[str]) -> None:
        keys = [(k,) for k in keys]
        if keys:
            with self._write() as conn:
                conn.executemany("DELETE FROM pending_deletes WHERE key = ?", keys)

    def known_keys(self, keys: Iterable[str]) -> set[str]:
        known = set()
        with self._read() as conn:
            for key in keys:
                if conn.execute("SELECT 1 FROM blobs WHERE key = ? UNION ALL SELECT 1 FROM pending_deletes "
                                "WHERE key = ? LIMIT 1", (key, key)).fetchone():
                    known.add(key)
        return known

    def known_uploads(self, session_ids: Iterable[str]) -> set[str]:
        with self._read() as conn:
            return {sid for sid in session_ids
                    if conn.execute("SELECT 1 FROM uploads WHERE id = ?", (sid,)).fetchone()}

    def blobs(self) -> Iterator[BlobRecord]:
        last = ""
        while True:
            with self._read() as conn:
                rows = conn.execute("SELECT digest, size, key FROM blobs WHERE digest > ? ORDER BY digest LIMIT 1000",
                                    (last,)).fetchall()
            yield from (BlobRecord(*row) for row in rows)
            if len(rows) < 1000:
                return
            last = rows[-1][0]

    def rekey_blob(self, digest: str, old_key: str, new_key: str) -> bool:
        with self._write() as conn:
            return conn.execute("UPDATE blobs SET key = ? WHERE digest = ? AND key = ?",
                                (new_key, digest, old_key)).rowcount > 0

    def forget_blob(self, digest: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM repository_blobs WHERE digest = ?", (digest,))
            conn.execute("DELETE FROM blobs WHERE digest = ?", (digest,))

    def upload_sessions(self) -> Iterator[UploadSession]:
        with self._read() as conn:
            rows = conn.execute(f"SELECT {SESSION_COLUMNS} FROM uploads u "
                                "JOIN repositories r ON r.id = u.repository_id ORDER BY u.id").fetchall()
        yield from (_session(row) for row in rows)

    def broken_references(self) -> list[tuple[str, str, str]]:
        with self._read() as conn:
            tags = conn.execute(
                "SELECT r.name, t.name, t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id "
                "WHERE NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = t.repository_id "
                "AND m.digest = t.digest)").fetchall()
            contentless = conn.execute(
                "SELECT r.name, m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id "
                "WHERE NOT EXISTS (SELECT 1 FROM manifest_content c WHERE c.digest = m.digest)").fetchall()
            dangling = conn.execute(
                "SELECT r.name, x.digest, x.child, x.kind FROM manifest_references x "
                "JOIN repositories r ON r.id = x.repository_id WHERE "
                "(x.kind = 'blob' AND NOT EXISTS (SELECT 1 FROM repository_blobs l JOIN blobs b ON b.digest = l.digest "
                "WHERE l.repository_id = x.repository_id AND l.digest = x.child)) OR "
                "(x.kind = 'manifest' AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = x.repository_id "
                "AND m.digest = x.child))").fetchall()
        return ([("broken reference", f"{name}:{tag}", f"the tag names {digest}, which the repository does not hold")
                 for name, tag, digest in tags]
                + [("broken reference", f"{name}@{digest}", "the manifest's bytes are missing")
                   for name, digest in contentless]
                + [("broken reference", f"{name}@{digest}", f"it uses {kind} {child}, which the repository does "
                    "not hold") for name, digest, child, kind in dangling])

    @contextmanager
    def lock(self, name: str, *, blocking: bool = True, transient: bool = False) -> Iterator[bool]:
        if transient:
            with self._transient_lock(name, blocking) as held:
                yield held
            return
        fd = os.open(f"{self.path}.{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextmanager
    def _transient_lock(self, name: str, blocking: bool) -> Iterator[bool]:
        """A lock whose file is there only while someone holds or waits for it: the holder removes it before
        unlocking, and whoever then gets the lock of a removed file tries again on the path's new one."""
        path = f"{self.path}.{name}.lock"
        while True:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                yield False
                return
            try:
                held = os.fstat(fd)
                current = os.stat(path)
                if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # a file its holder removed: it locks nobody out any more
        try:
            yield True
        finally:
            try:
                os.unlink(path)
            finally:
                os.close(fd)

    # -- pull-through cache --------------------------------------------------------------------------------------

    def cache_manifest(self, repository: str, manifest: NewManifest, tag: str | None) -> None:
        now = self._clock()
        with self._write() as conn:
            repository_id = self._ensure_repository(conn, repository)
            if not conn.execute("SELECT 1 FROM manifests WHERE repository_id = ? AND digest = ?",
                                (repository_id, manifest.digest)).fetchone():
                self._insert_manifest(conn, repository_id, manifest, now)
            if tag is not None:
                self._set_tag(conn, repository_id, tag, manifest.digest, now)
                conn.execute("INSERT INTO cache_tags (repository, tag, checked_at) VALUES (?, ?, ?) "
                             "ON CONFLICT DO UPDATE SET checked_at = excluded.checked_at", (repository, tag, now))
            conn.execute("INSERT INTO cache_pulls (repository, digest, pulled_at) VALUES (?, ?, ?) "
                         "ON CONFLICT DO UPDATE SET pulled_at = MAX(pulled_at, excluded.pulled_at)",
                         (repository, manifest.digest, now))

    def cached_tag(self, repository: str, tag: str) -> tuple[ManifestRecord, float | None] | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT m.digest, m.media_type, m.size, c.checked_at FROM repositories r "
                "JOIN tags t ON t.repository_id = r.id "
                "JOIN manifests m ON m.repository_id = r.id AND m.digest = t.digest "
                "LEFT JOIN cache_tags c ON c.repository = r.name AND c.tag = t.name "
                "WHERE r.name = ? AND t.name = ?", (repository, tag)).fetchone()
        return (ManifestRecord(*row[:3]), row[3]) if row else None

    def confirm_cached_tag(self, repository: str, tag: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO cache_tags (repository, tag, checked_at) VALUES (?, ?, ?) "
                         "ON CONFLICT DO UPDATE SET checked_at = excluded.checked_at", (repository, tag, self._clock()))

    def record_pulls(self, pulls: Sequence[tuple[str, str, float]]) -> None:
        if pulls:
            with self._write() as conn:
                conn.executemany("INSERT INTO cache_pulls (repository, digest, pulled_at) VALUES (?, ?, ?) "
                                 "ON CONFLICT DO UPDATE SET pulled_at = MAX(pulled_at, excluded.pulled_at)", pulls)

    def cache_candidates(self, prefix: str, active_after: float, limit: int) -> list[tuple[str, str, float, int]]:
        with self._read() as conn:
            rows = conn.execute(CACHE_CANDIDATES, {"low": prefix, "high": prefix[:-1] + "0", "after": active_after,
                                                   "limit": limit}).fetchall()
            return [(name, digest, last, conn.execute(MANIFEST_TOTAL_SIZE, {"digest": digest,
                                                                            "repository": repository_id}).fetchone()[0])
                    for repository_id, name, digest, last in rows]

    # -- switches and events -------------------------------------------------------------------------------------

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

    def first_state(self, key: str, value: str) -> str:
        with self._write() as conn:
            conn.execute("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, value))
            return conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()[0]

    def events_after(self, after: int, limit: int = 100) -> list[tuple[int, NewEvent, float]]:
        with self._read() as conn:
            rows = conn.execute("SELECT id, repository, action, payload, created_at FROM events WHERE id > ? "
                                "ORDER BY id LIMIT ?", (after, limit)).fetchall()
        return [(row[0], NewEvent(row[1], row[2], json.loads(row[3])), row[4]) for row in rows]

    def outbox(self) -> SqliteOutbox:
        return SqliteOutbox(self)

    def tags_of(self, repository: str, digest: str) -> list[str]:
        with self._read() as conn:
            return [row[0] for row in conn.execute(
                "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id "
                "WHERE r.name = ? AND t.digest = ? ORDER BY t.name", (repository, digest))]


SESSION_COLUMNS = "u.id, r.name, u.length, u.state, u.created_at, u.updated_at, u.monolithic"


def _session(row) -> UploadSession:
    session_id, name, length, state, created_at, updated_at, monolithic = row
    return UploadSession(session_id, name, UploadState.from_json(length, state), created_at, updated_at,
                         bool(monolithic))


class SqliteLifecycle(Lifecycle):
    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float]):
        self.conn = conn
        self._clock = clock

    def repositories(self) -> list[tuple[int, str]]:
        return self.conn.execute("SELECT id, name FROM repositories ORDER BY name").fetchall()

    def sweep_manifests(self, repository_id: int, cutoff: float) -> list[tuple[str, int]]:
        dead = self.conn.execute(DEAD_MANIFESTS, {"repository": repository_id, "cutoff": cutoff}).fetchall()
        for digest, _ in dead:
            self.conn.execute("DELETE FROM manifests WHERE repository_id = ? AND digest = ?", (repository_id, digest))
            self.conn.execute("DELETE FROM tags WHERE repository_id = ? AND digest = ?", (repository_id, digest))
            self.conn.execute("DELETE FROM manifest_references WHERE repository_id = ? AND digest = ?",
                              (repository_id, digest))
        return dead

    def sweep_links(self, cutoff: float) -> int:
        stale = self.conn.execute(STALE_LINKS, {"cutoff": cutoff}).fetchall()
        self.conn.executemany("DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?", stale)
        return len(stale)

    def sweep_blobs(self, limit: int) -> list[BlobRecord]:
        garbage = [BlobRecord(*row) for row in self.conn.execute(GARBAGE_BLOBS, {"limit": limit}).fetchall()]
        now = self._clock()
        for blob in garbage:
            self.conn.execute("DELETE FROM blobs WHERE digest = ?", (blob.digest,))
            self.conn.execute("INSERT OR IGNORE INTO pending_deletes (key, created_at) VALUES (?, ?)", (blob.key, now))
        return garbage

    def sweep_manifest_content(self) -> list[tuple[str, int]]:
        orphans = self.conn.execute(ORPHAN_MANIFEST_CONTENT).fetchall()
        self.conn.executemany("DELETE FROM manifest_content WHERE digest = ?", [(d,) for d, _ in orphans])
        return orphans

    def stale_uploads(self, idle_cutoff: float, monolithic_cutoff: float) -> list[UploadSession]:
        rows = self.conn.execute(
            f"SELECT {SESSION_COLUMNS} FROM uploads u JOIN repositories r ON r.id = u.repository_id "
            "WHERE u.updated_at < ? OR (u.monolithic = 1 AND u.created_at < ?)", (idle_cutoff, monolithic_cutoff))
        return [_session(row) for row in rows.fetchall()]

    def delete_upload(self, session_id: str) -> None:
        self.conn.execute("DELETE FROM uploads WHERE id = ?", (session_id,))

    def evict_manifest(self, repository: str, digest: str, active_after: float) -> list[str]:
        row = self.conn.execute("SELECT id FROM repositories WHERE name = ?", (repository,)).fetchone()
        if row is None:
            return []
        repository_id = row[0]
        if self.conn.execute(REPOSITORY_ACTIVE, {"name": repository, "id": repository_id,
                                                 "after": active_after}).fetchone()[0]:
            return []
        if not self.conn.execute("SELECT 1 FROM manifests WHERE repository_id = ? AND digest = ?",
                                 (repository_id, digest)).fetchone():
            return []
        doomed = [digest] + [child for (child,) in self.conn.execute(
            "SELECT x.child FROM manifest_references x WHERE x.repository_id = :r AND x.digest = :d "
            "AND x.kind = 'manifest' AND NOT EXISTS (SELECT 1 FROM manifest_references o WHERE "
            "o.repository_id = :r AND o.child = x.child AND o.kind = 'manifest' AND o.digest != :d)",
            {"r": repository_id, "d": digest}).fetchall()]
        for gone in doomed:
            for table in ("manifests", "tags", "manifest_references"):
                self.conn.execute(f"DELETE FROM {table} WHERE repository_id = ? AND digest = ?", (repository_id, gone))
        self.conn.execute("DELETE FROM cache_pulls WHERE repository = ? AND digest != '' AND digest NOT IN "
                          "(SELECT digest FROM manifests WHERE repository_id = ?)", (repository, repository_id))
        self.conn.execute("DELETE FROM cache_tags WHERE repository = ? AND tag NOT IN "
                          "(SELECT name FROM tags WHERE repository_id = ?)", (repository, repository_id))
        # Links of blobs fetched for what went: collectable at once, not after the grace period of fresh uploads.
        self.conn.execute("UPDATE repository_blobs SET referenced = 1 WHERE repository_id = ? AND NOT EXISTS "
                          "(SELECT 1 FROM manifest_references x WHERE x.repository_id = repository_blobs.repository_id "
                          "AND x.child = repository_blobs.digest)", (repository_id,))
        return doomed

    def add_events(self, events: Sequence[NewEvent]) -> None:
        add_events(self.conn, events, self._clock())
