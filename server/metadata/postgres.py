"""The PostgreSQL metadata driver (psycopg 3), for several processes or nodes sharing one database.

Connections
-----------
Each process has a connection pool (psycopg_pool), opened on first use: never before gunicorn forks. A fork closes
the parent's pool first (`os.register_at_fork`), so no connection is ever shared by two processes. Connections are in
autocommit mode: a read is one statement, one round trip; a write sends `BEGIN` (with its advisory lock, in the same
round trip) and `COMMIT` itself. A broken connection is dropped by the pool, which opens new ones in the background,
so the pool recovers by itself after PostgreSQL restarts. A failure of the database (refused, restarted, timed out,
no connection free in time) is `Unavailable` (503 with Retry-After), never a traceback; a read, or a write whose
connection broke before its `COMMIT` was sent, is tried once more on a fresh connection first. The URL's password is
never logged or put in an error.

Dockyard's own options ride on the URL's query and are taken off before libpq sees it: `pool_max_size` (default
10), `pool_min_size` (1), `pool_timeout` (seconds to wait for a free connection, default 10), `statement_timeout`
(milliseconds, default 30000: a stuck query becomes a 503, not a hung worker).

Transactions: the guarantees of `Metadata` at READ COMMITTED
------------------------------------------------------------
SQLite serialises writers; PostgreSQL at READ COMMITTED does not, so the driver serialises exactly what must be:

- Garbage collection against pushes: every lifecycle transaction (a sweep step) takes the exclusive transaction-level
  advisory lock `GC_KEY`; every transaction that links or references blobs (`record_blob`, `mount_blob`,
  `put_manifest`) takes it shared. A sweep and a push serialise, pushes run beside each other, and a manifest PUT
  either commits before a sweep starts (the sweep then sees its references) or starts after it (and sees what the
  sweep left: MANIFEST_BLOB_UNKNOWN when a blob went).
- Quotas: the transaction that links a blob into a quota's scope takes the exclusive advisory lock of that quota
  (in a fixed order when several apply) before counting, so two pushes racing for the last bytes take turns.
- Races on creation: repositories and blobs are inserted with `ON CONFLICT`, tags are upserted; what is left (two
  PUTs of the same new manifest, a push racing a repository delete, a deadlock) fails with a unique, foreign-key,
  serialization or deadlock error, and the whole transaction is run again (up to `ATTEMPTS` times).
- Version counters (tag lists, catalog) are bumped by triggers inside the writing transaction, under the row lock
  of the counter they move, so a new version is visible exactly when the data behind it is.
- `lock(name)`, held across a whole garbage collection of many transactions, is a transaction-level advisory lock
  on a connection of its own (not from the pool) kept in an open transaction for the duration and committed at the
  end; a session-level lock would stay with whichever pooled connection took it. A process that dies releases it
  when its connection closes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
import zlib
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ManifestBlobUnknown, Unavailable
from ..model import (BlobRecord, ManifestRecord, NewEvent, NewManifest, StorageUsage, StoredBlob, UploadLimits,
                     UploadSession, UploadState)
from ..quotas import Quota
from . import Lifecycle, Metadata, blob_in_use, redact, too_many_sessions
from .postgres_cache import (CHANNEL, EVERYTHING, LISTENER_NAME, DigestCache, gone_blob, gone_manifest,
                             gone_repository)
from .postgres_outbox import PostgresOutbox, add_events
from .postgres_schema import CURRENT, MIGRATIONS, MINIMUM, SCHEMA_TABLE, Migration, SchemaError, check_version

try:
    import psycopg
    import psycopg.errors
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None

log = logging.getLogger("dockyard")

T = TypeVar("T")
ATTEMPTS = 4
RETRY_AFTER = "5"
# Advisory lock keys: (DOCKYARD, n). 1 is garbage collection against pushes; named locks and quotas hash into
# classes of their own so they never collide with it.
DOCKYARD = 0x646F636B  # "dock"
GC_KEY = 1
LOCK_CLASS = 0x6C6F636B  # "lock"
QUOTA_CLASS = 0x71756F74  # "quot"
MIGRATE_KEY = 2
EVENTS_SCHEMA = 2  # the schema version event delivery needs (postgres_schema's 0002)
OPTIONS = {"pool_max_size": 10, "pool_min_size": 1, "pool_timeout": 10.0, "statement_timeout": 30000}

# One statement, under the bucket row's lock: refill by the time elapsed (never backwards: nodes' clocks differ a
# little), take a token when there is one. A new bucket starts full. `allowed` records whether this take got one.
_LEVEL = "LEAST(%(burst)s, b.tokens + GREATEST(0, %(now)s - b.updated) * %(rate)s)"
TAKE_TOKEN = f"""
INSERT INTO rate_buckets AS b (key, tokens, updated, allowed)
VALUES (%(key)s, GREATEST(%(burst)s - 1, 0), %(now)s, %(burst)s >= 1)
ON CONFLICT (key) DO UPDATE SET
    tokens = {_LEVEL} - CASE WHEN {_LEVEL} >= 1 THEN 1 ELSE 0 END,
    allowed = {_LEVEL} >= 1,
    updated = GREATEST(b.updated, %(now)s)
RETURNING allowed, tokens
"""
BEGIN_GC_SHARED = f"BEGIN; SELECT pg_advisory_xact_lock_shared({DOCKYARD}, {GC_KEY})"
BEGIN_GC_EXCLUSIVE = f"BEGIN; SELECT pg_advisory_xact_lock({DOCKYARD}, {GC_KEY})"

BLOB_IN_REPOSITORY = (
    "SELECT b.digest, b.size, b.key FROM repositories r JOIN repository_blobs rb ON rb.repository_id = r.id "
    "JOIN blobs b ON b.digest = rb.digest WHERE r.name = %s AND rb.digest = %s")
# One round trip when the repository exists or is new; None only when another transaction created it meanwhile
# (the CTE's snapshot predates that commit): then a plain SELECT finds it.
ENSURE_REPOSITORY = (
    "WITH new AS (INSERT INTO repositories (name, created_at) VALUES (%(name)s, %(now)s) "
    "ON CONFLICT (name) DO NOTHING RETURNING id) "
    "SELECT id FROM new UNION ALL SELECT id FROM repositories WHERE name = %(name)s")
# See the SQLite driver: a link made (again) by an upload or a mount is new until a manifest uses it.
LINK = ("INSERT INTO repository_blobs (repository_id, digest, created_at, referenced) VALUES (%s, %s, %s, FALSE) "
        "ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = excluded.created_at, referenced = FALSE "
        "WHERE NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.repository_id = excluded.repository_id "
        "AND r.child = excluded.digest)")
SESSION_COLUMNS = "u.id, r.name, u.length, u.state, u.created_at, u.updated_at, u.monolithic"

# PostgreSQL allows one recursive term: the edges (index -> child, subject -> referrer) are one relation here.
DEAD_MANIFESTS = """
WITH RECURSIVE edges(parent, child) AS (
    SELECT r.digest, r.child FROM manifest_references r WHERE r.repository_id = %(repository)s AND r.kind = 'manifest'
    UNION ALL
    SELECT m.subject, m.digest FROM manifests m WHERE m.repository_id = %(repository)s AND m.subject IS NOT NULL
), live(digest) AS (
    SELECT digest FROM tags WHERE repository_id = %(repository)s
    UNION
    SELECT e.child FROM edges e JOIN live ON e.parent = live.digest
)
SELECT digest, size FROM manifests
 WHERE repository_id = %(repository)s AND created_at < %(cutoff)s AND digest NOT IN (SELECT digest FROM live)
 ORDER BY digest
"""
STALE_LINKS = """
DELETE FROM repository_blobs l
 WHERE (l.referenced OR l.created_at < %(cutoff)s)
   AND NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.repository_id = l.repository_id AND r.child = l.digest)
"""
GARBAGE_BLOBS = """
SELECT b.digest, b.size, b.key FROM blobs b
 WHERE NOT EXISTS (SELECT 1 FROM repository_blobs l WHERE l.digest = b.digest)
   AND NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.child = b.digest AND r.kind = 'blob')
 ORDER BY b.digest LIMIT %(limit)s
"""
ORPHAN_MANIFEST_CONTENT = """
DELETE FROM manifest_content c WHERE NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = c.digest)
RETURNING c.digest, length(c.data)
"""
REPOSITORY_USAGE = """
SELECT COALESCE(SUM(CASE WHEN shared THEN 0 ELSE size END), 0)::BIGINT,
       COALESCE(SUM(CASE WHEN shared THEN size ELSE 0 END), 0)::BIGINT
  FROM (SELECT b.size AS size, EXISTS (SELECT 1 FROM repository_blobs o
                                        WHERE o.digest = l.digest AND o.repository_id != l.repository_id) AS shared
          FROM repository_blobs l JOIN blobs b ON b.digest = l.digest WHERE l.repository_id = %s) s
"""
REPOSITORY_PAGE = """
SELECT r.id, r.name,
       (SELECT COUNT(*) FROM tags t WHERE t.repository_id = r.id),
       r.manifest_count,
       GREATEST((SELECT COALESCE(MAX(t.updated_at), 0) FROM tags t WHERE t.repository_id = r.id),
                (SELECT COALESCE(MAX(m.created_at), 0) FROM manifests m WHERE m.repository_id = r.id))
  FROM repositories r
 WHERE r.name > %s AND r.manifest_count > 0
 ORDER BY r.name LIMIT %s
"""
MANIFEST_TOTAL_SIZE = """
WITH RECURSIVE tree(digest) AS (
    SELECT %(digest)s::TEXT
    UNION
    SELECT r.child FROM manifest_references r JOIN tree ON r.digest = tree.digest
     WHERE r.repository_id = %(repository)s AND r.kind = 'manifest'
)
SELECT ((SELECT COALESCE(SUM(m.size), 0) FROM manifests m
          WHERE m.repository_id = %(repository)s AND m.digest IN (SELECT digest FROM tree))
      + (SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN (
            SELECT r.child FROM manifest_references r
             WHERE r.repository_id = %(repository)s AND r.kind = 'blob'
               AND r.digest IN (SELECT digest FROM tree))))::BIGINT
"""
TAG_PAGE = """
SELECT t.name, t.digest, m.media_type, t.updated_at FROM tags t
  JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest
 WHERE t.repository_id = %s AND t.name > %s ORDER BY t.name LIMIT %s
"""
# The repository and a page of its tags in one round trip (no row at all: no such repository).
TAGS = """
SELECT r.id, t.name FROM repositories r
  LEFT JOIN LATERAL (SELECT name FROM tags WHERE repository_id = r.id AND name > %(last)s
                      ORDER BY name LIMIT %(limit)s) t ON TRUE
 WHERE r.name = %(repository)s ORDER BY t.name
"""

# -- the pull-through cache (see sqlite_queries for what each does) ----------------------------------------------
CACHE_CANDIDATES = """
WITH scope AS (SELECT id, name FROM repositories WHERE name >= %(low)s AND name < %(high)s),
idle AS (
    SELECT s.id, s.name FROM scope s
     WHERE NOT EXISTS (SELECT 1 FROM cache_pulls p WHERE p.repository = s.name AND p.pulled_at > %(after)s)
       AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = s.id AND m.created_at > %(after)s)
)
SELECT i.id, i.name, m.digest, GREATEST(m.created_at, COALESCE(p.pulled_at, 0)) AS last
  FROM idle i JOIN manifests m ON m.repository_id = i.id
  LEFT JOIN cache_pulls p ON p.repository = i.name AND p.digest = m.digest
 WHERE NOT EXISTS (SELECT 1 FROM manifest_references x WHERE x.repository_id = i.id AND x.child = m.digest
                    AND x.kind = 'manifest')
 ORDER BY last, i.name, m.digest LIMIT %(limit)s
"""
REPOSITORY_ACTIVE = """
SELECT EXISTS (SELECT 1 FROM cache_pulls WHERE repository = %(name)s AND pulled_at > %(after)s)
    OR EXISTS (SELECT 1 FROM manifests WHERE repository_id = %(id)s AND created_at > %(after)s)
"""
CONFIRM_TAG = ("INSERT INTO cache_tags (repository, tag, checked_at) VALUES (%s, %s, %s) "
               "ON CONFLICT (repository, tag) DO UPDATE SET checked_at = excluded.checked_at")


def _require_driver() -> None:
    if psycopg is None:
        raise SchemaError("the PostgreSQL driver is not installed: pip install 'dockyard[postgresql]'")


def split_url(url: str) -> tuple[str, dict[str, Any]]:
    """(the URL libpq gets, Dockyard's own options taken off its query)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a postgresql:// URL: {redact(url)}")
    options = dict(OPTIONS)
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in OPTIONS:
            try:
                options[key] = type(OPTIONS[key])(value)
            except ValueError:
                raise ValueError(f"database option {key}: not a number: {value!r}") from None
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), options


class PostgresMetadata(Metadata):
    driver = "postgresql"
    shared_by_hosts = True

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, check_schema: bool = True,
                 migrations: Sequence[Migration] = MIGRATIONS, minimum: int = MINIMUM):
        _require_driver()
        self._conninfo, self._options = split_url(url)
        parts = urlsplit(url)
        self._secrets = [s for s in (parts.password,) if s]
        self._clock = clock
        self._migrations = tuple(migrations)
        self._minimum = minimum
        self._pool: ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        self._pid = os.getpid()
        self._warned_no_buckets = False
        self._takes = 0
        self.digests = DigestCache(self._listener_connection)
        _INSTANCES.add(self)
        if check_schema:
            self.check_schema()

    # -- connections ---------------------------------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        return {"autocommit": True, "options": f"-c statement_timeout={int(self._options['statement_timeout'])}"}

    def _get_pool(self) -> ConnectionPool:
        if self._pid != os.getpid():  # a child of a fork made some other way: never touch the parent's pool
            self._pool = None
            self._pid = os.getpid()
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ConnectionPool(
                        self._conninfo, kwargs=self._connect_kwargs(), open=False,
                        min_size=int(self._options["pool_min_size"]), max_size=int(self._options["pool_max_size"]),
                        timeout=float(self._options["pool_timeout"]), name="dockyard", reconnect_timeout=0)
                    self._pool.open(wait=False)
                pool = self._pool
        return pool

    def _unavailable(self, exc: BaseException) -> Unavailable:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        log.warning("database unavailable: %s", text)
        return Unavailable({"database": text}, message="the database is unavailable",
                           headers={"Retry-After": RETRY_AFTER})

    def _direct_connection(self):
        """A connection of its own, outside the pool (migrations, checks, `lock`)."""
        try:
            return psycopg.connect(self._conninfo, connect_timeout=max(1, int(self._options["pool_timeout"])),
                                   **self._connect_kwargs())
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None

    def _listener_connection(self):
        """The digest cache's LISTEN connection: outside the pool, with TCP keepalives so that a vanished server
        is noticed in seconds, not at the kernel's default of hours."""
        return psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5, keepalives=1,
                               keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                               application_name=LISTENER_NAME)

    @staticmethod
    def _notify(cur, payload: str) -> None:
        """Tell every process's digest cache, when this transaction commits, that a record is gone."""
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    def _run(self, body: Callable[[Any], T], *, write: str | None = None, retry: bool = False) -> T:
        """Run `body(cursor)` on a pooled connection: alone (a read, or a write of one statement) or in a
        transaction opened by `write` (the BEGIN statement). Retried on a broken connection; a transaction (or a
        single statement with `retry`) also on a deadlock, a serialization failure or a constraint race."""
        for attempt in range(ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            try:
                pool = self._get_pool()
                with pool.connection() as conn:
                    committing = False
                    try:
                        with conn.cursor() as cur:
                            if write is None:
                                return body(cur)
                            cur.execute(write)
                            try:
                                result = body(cur)
                            except BaseException:
                                if not conn.broken:
                                    cur.execute("ROLLBACK")
                                raise
                            committing = True
                            cur.execute("COMMIT")
                            return result
                    except psycopg.OperationalError:
                        if committing or last or not conn.broken:
                            raise
                # A stale connection (PostgreSQL restarted): its idle siblings are most likely dead too. Test them
                # (the pool replaces those that fail), then once more on a fresh connection.
                pool.check()
                continue
            except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
                    psycopg.errors.UniqueViolation, psycopg.errors.ForeignKeyViolation,
                    psycopg.errors.NotNullViolation):
                if last or (write is None and not retry):
                    raise
                time.sleep(0.001 * (attempt + 1))
            except PoolTimeout as exc:
                raise self._unavailable(exc) from None
            except psycopg.OperationalError as exc:
                raise self._unavailable(exc) from None
            except psycopg.InterfaceError as exc:
                raise self._unavailable(exc) from None
        raise AssertionError("unreachable")

    def _read(self, body: Callable[[Any], T]) -> T:
        return self._run(body)

    def _write(self, body: Callable[[Any], T], *, gc: bool = False) -> T:
        return self._run(body, write=BEGIN_GC_SHARED if gc else "BEGIN")

    def _add_events(self, cur, events: Sequence[NewEvent]) -> None:
        if events:
            add_events(cur, events, self._clock())

    # -- lifetime ------------------------------------------------------------------------------------------------

    def schema_version(self) -> int:
        conn = self._direct_connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
                if not cur.fetchone()[0]:
                    return 0
                cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                return cur.fetchone()[0]
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        finally:
            conn.close()

    def check_schema(self) -> int:
        """Refuse to start on a schema this code cannot use (postgres_schema's rules); the version found."""
        found = self.schema_version()
        check_version(found, current=self._migrations[-1].version, minimum=self._minimum)
        self._schema_found = found
        return found

    def migrate(self) -> list[str]:
        """Apply the missing migrations in one transaction, under an advisory lock; their names."""
        conn = self._direct_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"BEGIN; SELECT pg_advisory_xact_lock({DOCKYARD}, {MIGRATE_KEY})")
                cur.execute(SCHEMA_TABLE)
                cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                found = cur.fetchone()[0]
                known = self._migrations[-1].version
                if found > known:
                    cur.execute("ROLLBACK")
                    if found > known + 1:
                        raise SchemaError(f"the database schema is version {found}, newer than this release knows "
                                          f"({known}): upgrade this node")
                    return []
                applied = []
                for migration in self._migrations:
                    if migration.version > found:
                        cur.execute(migration.sql)
                        cur.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                    (migration.version, migration.name))
                        applied.append(migration.name)
                cur.execute("COMMIT")
                self._schema_found = max(found, known)
                return applied
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        finally:
            conn.close()

    def close(self) -> None:
        self.digests.stop()
        with self._pool_lock:
            pool, self._pool = self._pool, None
            if pool is not None and self._pid == os.getpid():
                pool.close()

    def _before_fork(self) -> None:
        # Called in the parent just before a fork (gunicorn's workers, preload_app): the child must not inherit
        # open connections, and the parent reopens its pool lazily too.
        self.close()

    def ping(self) -> None:
        conn = self._direct_connection()
        try:
            conn.execute("SELECT 1 FROM repositories LIMIT 1").fetchall()
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        finally:
            conn.close()

    # -- repositories and listings -------------------------------------------------------------------------------

    def _ensure_repository(self, cur, name: str) -> int:
        cur.execute(ENSURE_REPOSITORY, {"name": name, "now": self._clock()})
        row = cur.fetchone()
        if row is None:
            cur.execute("SELECT id FROM repositories WHERE name = %s", (name,))
            row = cur.fetchone()
        return row[0]

    @staticmethod
    def _repository_id(cur, name: str) -> int | None:
        cur.execute("SELECT id FROM repositories WHERE name = %s", (name,))
        row = cur.fetchone()
        return row[0] if row else None

    def repository_exists(self, name: str) -> bool:
        return self._read(lambda cur: self._repository_id(cur, name) is not None)

    def catalog(self, n: int, last: str | None) -> tuple[list[str], bool]:
        def body(cur):
            cur.execute("SELECT name FROM repositories WHERE name > %s AND manifest_count > 0 ORDER BY name "
                        "LIMIT %s", (last or "", n + 1))
            return [r[0] for r in cur.fetchall()]
        names = self._read(body)
        return names[:n], len(names) > n

    def catalog_version(self) -> int:
        def body(cur):
            cur.execute("SELECT value FROM counters WHERE name = 'catalog'")
            return cur.fetchone()[0]
        return self._read(body)

    def tags(self, repository: str, n: int | None, last: str | None) -> tuple[list[str], bool] | None:
        def body(cur):
            cur.execute(TAGS, {"repository": repository, "last": last or "", "limit": None if n is None else n + 1})
            return cur.fetchall()
        rows = self._read(body)
        if not rows:
            return None
        names = [name for _, name in rows if name is not None]
        if n is None:
            return names, False
        return names[:n], len(names) > n

    def tags_version(self, repository: str) -> int | None:
        def body(cur):
            cur.execute("SELECT tags_version FROM repositories WHERE name = %s", (repository,))
            return cur.fetchone()
        row = self._read(body)
        return row[0] if row else None

    # -- blobs ---------------------------------------------------------------------------------------------------

    def blob(self, repository: str, digest: str) -> BlobRecord | None:
        cached = self.digests.get("b", repository, digest)
        if cached is not None:
            return cached
        generation = self.digests.generation()

        def body(cur):
            cur.execute(BLOB_IN_REPOSITORY, (repository, digest))
            return cur.fetchone()
        row = self._read(body)
        if not row:
            return None
        record = BlobRecord(*row)
        self.digests.put("b", repository, digest, record, generation)
        return record

    def record_blob(self, repository: str, blob: StoredBlob, *, session_id: str | None = None,
                    quotas: Sequence[Quota] = (), events: Sequence[NewEvent] = ()) -> str | None:
        def body(cur):
            now = self._clock()
            repository_id = self._ensure_repository(cur, repository)
            self._check_quotas(cur, quotas, blob.digest, blob.size)
            # The session closes, and the blob is inserted, or the key already stored for the digest found (the
            # statement waits for a racing insert of the same digest).
            cur.execute("WITH closed AS (DELETE FROM uploads WHERE id = %(session)s), "
                        "new AS (INSERT INTO blobs (digest, size, created_at, key) "
                        "VALUES (%(digest)s, %(size)s, %(now)s, %(key)s) "
                        "ON CONFLICT (digest) DO NOTHING RETURNING key) "
                        "SELECT key, TRUE FROM new UNION ALL SELECT key, FALSE FROM blobs WHERE digest = %(digest)s",
                        {"session": session_id, "digest": blob.digest, "size": blob.size, "now": now,
                         "key": blob.key})
            row = cur.fetchone()
            if row is None:  # inserted and committed by another transaction after this statement's snapshot
                cur.execute("SELECT key, FALSE FROM blobs WHERE digest = %s", (blob.digest,))
                row = cur.fetchone()
            cur.execute(LINK, (repository_id, blob.digest, now))
            self._add_events(cur, events)
            return row
        key, inserted = self._write(body, gc=True)
        return None if inserted or key == blob.key else blob.key

    def mount_blob(self, repository: str, source: str, digest: str, *, quotas: Sequence[Quota] = (),
                   events: Sequence[NewEvent] = ()) -> BlobRecord | None:
        def body(cur):
            cur.execute(BLOB_IN_REPOSITORY, (source, digest))
            row = cur.fetchone()
            if row is None:
                return None
            record = BlobRecord(*row)
            repository_id = self._ensure_repository(cur, repository)
            self._check_quotas(cur, quotas, digest, record.size)
            cur.execute(LINK, (repository_id, digest, self._clock()))
            self._add_events(cur, events)
            return record
        return self._write(body, gc=True)

    def unlink_blob(self, repository: str, digest: str, *, events: Sequence[NewEvent] = ()) -> bool:
        def body(cur):
            # Exclusive, like a sweep: a manifest PUT (which holds it shared) cannot start using the link between
            # the check below and the delete. Blob deletes are rare enough to wait for the pushes in flight.
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (DOCKYARD, GC_KEY))
            cur.execute("SELECT x.digest FROM manifest_references x JOIN repositories r ON r.id = x.repository_id "
                        "WHERE r.name = %s AND x.child = %s AND x.kind = 'blob' LIMIT 5", (repository, digest))
            users = [row[0] for row in cur.fetchall()]
            if users:
                raise blob_in_use(digest, users)
            cur.execute("DELETE FROM repository_blobs WHERE digest = %s AND repository_id = "
                        "(SELECT id FROM repositories WHERE name = %s)", (digest, repository))
            if not cur.rowcount:
                return False
            self._add_events(cur, events)
            self._notify(cur, gone_blob(repository, digest))
            return True
        unlinked = self._write(body)
        if unlinked:
            self.digests.gone(gone_blob(repository, digest))
        return unlinked

    # -- upload sessions -----------------------------------------------------------------------------------------

    def create_upload(self, repository: str, session_id: str, *, monolithic: bool = False, owner: str | None = None,
                      limits: UploadLimits = UploadLimits()) -> None:
        values = {"name": repository, "id": session_id, "monolithic": monolithic, "owner": owner,
                  "per_repository": limits.per_repository, "per_user": limits.per_user if owner is not None else 0}

        def body(cur):
            values["now"] = self._clock()
            # One statement, so atomic without BEGIN/COMMIT: the repository (created if new), the open sessions
            # counted, and the session inserted if the limits allow. A repository created by a racing transaction
            # after this statement's snapshot leaves the id NULL: the NOT NULL violation runs it again, and then it
            # is seen. Sessions opened at the same instant may pass a limit together: it bounds abuse (thousands of
            # sessions), not a budget, so a round trip of locks is not spent on exactness.
            cur.execute(
                "WITH new AS (INSERT INTO repositories (name, created_at) VALUES (%(name)s, %(now)s) "
                "ON CONFLICT (name) DO NOTHING RETURNING id), "
                "r AS (SELECT COALESCE((SELECT id FROM new), (SELECT id FROM repositories WHERE name = %(name)s)) "
                "AS id), "
                "c AS (SELECT r.id, "
                "CASE WHEN %(per_repository)s > 0 THEN (SELECT COUNT(*) FROM uploads u WHERE u.repository_id = r.id) "
                "ELSE 0 END AS here, "
                "CASE WHEN %(per_user)s > 0 THEN (SELECT COUNT(*) FROM uploads u WHERE u.owner = %(owner)s) "
                "ELSE 0 END AS mine FROM r), "
                "ins AS (INSERT INTO uploads (id, repository_id, length, state, created_at, updated_at, monolithic, "
                "owner) SELECT %(id)s, c.id, 0, NULL, %(now)s, %(now)s, %(monolithic)s, %(owner)s FROM c "
                "WHERE (%(per_repository)s = 0 OR c.here < %(per_repository)s) "
                "AND (%(per_user)s = 0 OR c.mine < %(per_user)s) RETURNING 1) "
                "SELECT c.here, EXISTS (SELECT 1 FROM ins) FROM c", values)
            return cur.fetchone()
        here, inserted = self._run(body, retry=True)
        if not inserted:
            if limits.per_repository and here >= limits.per_repository:
                raise too_many_sessions("repository", limits.per_repository)
            raise too_many_sessions("user", limits.per_user)

    def upload(self, repository: str, session_id: str) -> UploadSession | None:
        def body(cur):
            cur.execute(f"SELECT {SESSION_COLUMNS} FROM uploads u JOIN repositories r ON r.id = u.repository_id "
                        "WHERE u.id = %s AND r.name = %s", (session_id, repository))
            return cur.fetchone()
        row = self._read(body)
        return _session(row) if row else None

    def save_upload(self, session_id: str, expected_length: int, state: UploadState) -> bool:
        def body(cur):
            cur.execute("UPDATE uploads SET length = %s, state = %s, updated_at = %s WHERE id = %s AND length = %s",
                        (state.length, state.to_json(), self._clock(), session_id, expected_length))
            return cur.rowcount > 0
        return self._read(body)  # one statement: atomic without BEGIN/COMMIT

    def delete_upload(self, session_id: str) -> bool:
        def body(cur):
            cur.execute("DELETE FROM uploads WHERE id = %s", (session_id,))
            return cur.rowcount > 0
        return self._read(body)

    # -- manifests -----------------------------------------------------------------------------------------------

    def put_manifest(self, repository: str, manifest: NewManifest, tag: str | None, *,
                     events: Sequence[NewEvent] = ()) -> None:
        blobs = list(dict.fromkeys(manifest.blobs))
        children = list(dict.fromkeys(manifest.manifests))

        def body(cur):
            now = self._clock()
            repository_id = self._ensure_repository(cur, repository)
            # What the manifest names and the repository cannot read, and whether the manifest is already here.
            cur.execute(
                "SELECT EXISTS (SELECT 1 FROM manifests WHERE repository_id = %(r)s AND digest = %(d)s), "
                "ARRAY(SELECT b FROM unnest(%(blobs)s::TEXT[]) WITH ORDINALITY AS x(b, i) WHERE NOT EXISTS "
                "  (SELECT 1 FROM repository_blobs l WHERE l.repository_id = %(r)s AND l.digest = x.b) ORDER BY i), "
                "ARRAY(SELECT c FROM unnest(%(children)s::TEXT[]) WITH ORDINALITY AS x(c, i) WHERE NOT EXISTS "
                "  (SELECT 1 FROM manifests m WHERE m.repository_id = %(r)s AND m.digest = x.c) ORDER BY i)",
                {"r": repository_id, "d": manifest.digest, "blobs": blobs, "children": children})
            present, missing_blobs, missing_children = cur.fetchone()
            if present:
                # Already here: only the tag, or the push time that GC's grace period reads, moves.
                if tag is None:
                    cur.execute("UPDATE manifests SET created_at = %s WHERE repository_id = %s AND digest = %s",
                                (now, repository_id, manifest.digest))
                else:
                    self._set_tag(cur, repository_id, tag, manifest.digest, now)
                self._add_events(cur, events)
                return
            missing = missing_blobs + missing_children
            if missing:
                raise ManifestBlobUnknown({"missing": missing})
            self._insert_manifest(cur, repository_id, manifest, blobs, children, now)
            if tag is not None:
                self._set_tag(cur, repository_id, tag, manifest.digest, now)
            self._add_events(cur, events)

        self._write(body, gc=True)

    @staticmethod
    def _insert_manifest(cur, repository_id: int, manifest: NewManifest, blobs: list[str], children: list[str],
                         now: float) -> None:
        """A manifest new to the repository: its bytes (shared by digest), its row, what it names, and the links
        of the blobs it names marked as used (garbage collection's grace period no longer covers them)."""
        cur.execute(
            "WITH content AS (INSERT INTO manifest_content (digest, data) VALUES (%(d)s, %(data)s) "
            "ON CONFLICT (digest) DO NOTHING) "
            "INSERT INTO manifests (repository_id, digest, media_type, size, artifact_type, subject, "
            "annotations, created_at) VALUES (%(r)s, %(d)s, %(media_type)s, %(size)s, %(artifact_type)s, "
            "%(subject)s, %(annotations)s, %(now)s)",
            {"r": repository_id, "d": manifest.digest, "data": manifest.data, "media_type": manifest.media_type,
             "size": len(manifest.data), "artifact_type": manifest.artifact_type, "subject": manifest.subject,
             "annotations": json.dumps(manifest.annotations) if manifest.annotations else None, "now": now})
        if blobs or children:
            cur.execute(
                "WITH refs AS (INSERT INTO manifest_references (repository_id, digest, child, kind) "
                "SELECT %(r)s, %(d)s, child, kind FROM unnest(%(children)s::TEXT[], %(kinds)s::TEXT[]) "
                "AS x(child, kind) ON CONFLICT DO NOTHING) "
                "UPDATE repository_blobs SET referenced = TRUE WHERE repository_id = %(r)s "
                "AND digest = ANY(%(blobs)s::TEXT[]) AND NOT referenced",
                {"r": repository_id, "d": manifest.digest, "children": blobs + children,
                 "kinds": ["blob"] * len(blobs) + ["manifest"] * len(children), "blobs": blobs})

    @staticmethod
    def _set_tag(cur, repository_id: int, tag: str, digest: str, now: float) -> None:
        cur.execute("INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest, "
                    "updated_at = excluded.updated_at", (repository_id, tag, digest, now))

    def manifest(self, repository: str, *, digest: str | None = None, tag: str | None = None) -> ManifestRecord | None:
        if tag is None:
            cached = self.digests.get("m", repository, digest)
            if cached is not None:
                return cached
        generation = self.digests.generation()

        def body(cur):
            if tag is not None:
                cur.execute("SELECT m.digest, m.media_type, m.size FROM repositories r "
                            "JOIN tags t ON t.repository_id = r.id "
                            "JOIN manifests m ON m.repository_id = r.id AND m.digest = t.digest "
                            "WHERE r.name = %s AND t.name = %s", (repository, tag))
            else:
                cur.execute("SELECT m.digest, m.media_type, m.size FROM repositories r "
                            "JOIN manifests m ON m.repository_id = r.id WHERE r.name = %s AND m.digest = %s",
                            (repository, digest))
            return cur.fetchone()
        row = self._read(body)
        if not row:
            return None
        record = ManifestRecord(*row)
        if tag is None:
            self.digests.put("m", repository, digest, record, generation)
        return record

    def manifest_data(self, digest: str) -> bytes | None:
        def body(cur):
            cur.execute("SELECT data FROM manifest_content WHERE digest = %s", (digest,))
            return cur.fetchone()
        row = self._read(body)
        return bytes(row[0]) if row else None

    def delete_manifest(self, repository: str, digest: str, *, events: Sequence[NewEvent] = ()) -> bool:
        def body(cur):
            repository_id = self._repository_id(cur, repository)
            if repository_id is None:
                return False
            cur.execute("DELETE FROM manifests WHERE repository_id = %s AND digest = %s", (repository_id, digest))
            if not cur.rowcount:
                return False
            cur.execute("DELETE FROM tags WHERE repository_id = %s AND digest = %s", (repository_id, digest))
            cur.execute("DELETE FROM manifest_references WHERE repository_id = %s AND digest = %s",
                        (repository_id, digest))
            self._add_events(cur, events)
            self._notify(cur, gone_manifest(repository, digest))
            return True
        deleted = self._write(body)
        if deleted:
            self.digests.gone(gone_manifest(repository, digest))
        return deleted

    def delete_tag(self, repository: str, tag: str, *, events: Sequence[NewEvent] = ()) -> bool:
        def body(cur):
            cur.execute("DELETE FROM tags WHERE name = %s AND repository_id = "
                        "(SELECT id FROM repositories WHERE name = %s)", (tag, repository))
            deleted = cur.rowcount > 0
            if deleted:
                self._add_events(cur, events)
            return deleted
        return self._write(body) if events else self._read(body)

    def referrers(self, repository: str, subject: str, artifact_type: str | None) -> list[dict]:
        query = ("SELECT m.media_type, m.digest, m.size, m.artifact_type, m.annotations FROM repositories r "
                 "JOIN manifests m ON m.repository_id = r.id WHERE r.name = %s AND m.subject = %s")
        params: list = [repository, subject]
        if artifact_type is not None:
            query += " AND m.artifact_type = %s"
            params.append(artifact_type)

        def body(cur):
            cur.execute(query + " ORDER BY m.created_at, m.digest", params)
            return cur.fetchall()
        descriptors = []
        for media_type, digest, size, artifact, annotated in self._read(body):
            descriptor = {"mediaType": media_type, "digest": digest, "size": size}
            if artifact:
                descriptor["artifactType"] = artifact
            if annotated:
                descriptor["annotations"] = json.loads(annotated)
            descriptors.append(descriptor)
        return descriptors

    def delete_repository(self, name: str, *,
                          events: Sequence[NewEvent] = ()) -> tuple[dict, list[UploadSession]] | None:
        def body(cur):
            # The row lock first: a push racing the delete either finishes before it or fails and is retried.
            cur.execute("SELECT id FROM repositories WHERE name = %s FOR UPDATE", (name,))
            row = cur.fetchone()
            if row is None:
                return None
            repository_id = row[0]
            cur.execute("SELECT (SELECT COUNT(*) FROM manifests WHERE repository_id = %(r)s), "
                        "(SELECT COUNT(*) FROM tags WHERE repository_id = %(r)s)", {"r": repository_id})
            manifests, tags = cur.fetchone()
            cur.execute(f"SELECT {SESSION_COLUMNS} FROM uploads u JOIN repositories r ON r.id = u.repository_id "
                        "WHERE u.repository_id = %s", (repository_id,))
            sessions = [_session(r) for r in cur.fetchall()]
            for table in ("tags", "manifest_references", "manifests", "repository_blobs", "uploads"):
                cur.execute(f"DELETE FROM {table} WHERE repository_id = %s", (repository_id,))
            cur.execute("DELETE FROM repositories WHERE id = %s", (repository_id,))
            self._add_events(cur, events)
            self._notify(cur, gone_repository(name))
            return {"repository": name, "manifests": manifests, "tags": tags}, sessions
        result = self._write(body)
        if result is not None:
            self.digests.gone(gone_repository(name))
        return result

    # -- quotas --------------------------------------------------------------------------------------------------

    @staticmethod
    def _scope(quota: Quota) -> tuple[str, tuple]:
        """The SQL condition on r.name for the quota's scope (PostgreSQL text holds no NUL: no "\\0" bound)."""
        if quota.is_prefix:
            return "r.name >= %s AND r.name < %s", quota.name_range()
        return "r.name = %s", (quota.pattern,)

    def _quota_usage(self, cur, quota: Quota) -> int:
        condition, params = self._scope(quota)
        cur.execute("SELECT COALESCE(SUM(b.size), 0)::BIGINT FROM blobs b WHERE b.digest IN (SELECT l.digest FROM "
                    f"repository_blobs l JOIN repositories r ON r.id = l.repository_id WHERE {condition})", params)
        return cur.fetchone()[0]

    def _check_quotas(self, cur, quotas: Sequence[Quota], digest: str, size: int) -> None:
        """DENIED when linking `digest` would take a scope past its limit; each scope's lock held to the commit."""
        for quota in sorted(quotas, key=lambda q: q.pattern):
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (QUOTA_CLASS, _key(quota.pattern)))
            condition, params = self._scope(quota)
            cur.execute("SELECT 1 FROM repository_blobs l JOIN repositories r ON r.id = l.repository_id "
                        f"WHERE l.digest = %s AND {condition} LIMIT 1", (digest, *params))
            if cur.fetchone():
                continue
            used = self._quota_usage(cur, quota)
            if used + size > quota.limit:
                raise quota.exceeded(used, size)

    def quota_usage(self, quota: Quota) -> int:
        return self._read(lambda cur: self._quota_usage(cur, quota))

    # -- accounting ----------------------------------------------------------------------------------------------

    def repository_page(self, n: int, last: str | None) -> tuple[list[dict], bool]:
        def body(cur):
            cur.execute(REPOSITORY_PAGE, (last or "", n + 1))
            rows = cur.fetchall()
            page = []
            for repository_id, name, tags, manifests, last_push in rows[:n]:
                cur.execute(REPOSITORY_USAGE, (repository_id,))
                unique, shared = cur.fetchone()
                page.append({"name": name, "tags": tags, "manifests": manifests, "unique_bytes": unique,
                             "shared_bytes": shared, "last_push": last_push})
            return page, len(rows) > n
        return self._read(body)

    def tag_details(self, repository: str, n: int, last: str | None) -> tuple[list[dict], bool] | None:
        def body(cur):
            repository_id = self._repository_id(cur, repository)
            if repository_id is None:
                return None
            cur.execute(TAG_PAGE, (repository_id, last or "", n + 1))
            rows = cur.fetchall()
            sizes: dict[str, int] = {}
            page = []
            for tag, digest, media_type, updated_at in rows[:n]:
                if digest not in sizes:
                    cur.execute(MANIFEST_TOTAL_SIZE, {"digest": digest, "repository": repository_id})
                    sizes[digest] = cur.fetchone()[0]
                page.append({"tag": tag, "digest": digest, "media_type": media_type, "size": sizes[digest],
                             "updated_at": updated_at})
            return page, len(rows) > n
        return self._read(body)

    def storage_totals(self) -> dict:
        def body(cur):
            cur.execute("SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM blobs")
            blobs, blob_bytes = cur.fetchone()
            cur.execute("SELECT COALESCE(SUM(length(data)), 0)::BIGINT FROM manifest_content")
            manifest_bytes = cur.fetchone()[0]
            repositories = []
            cur.execute("SELECT id, name FROM repositories ORDER BY name")
            for repository_id, name in cur.fetchall():
                cur.execute(REPOSITORY_USAGE, (repository_id,))
                unique, shared = cur.fetchone()
                repositories.append({"name": name, "unique_bytes": unique, "shared_bytes": shared})
            return {"total_bytes": blob_bytes + manifest_bytes, "blob_bytes": blob_bytes,
                    "manifest_bytes": manifest_bytes, "blobs": blobs, "repositories": repositories}
        return self._read(body)

    def usage(self) -> StorageUsage:
        def body(cur):
            cur.execute("SELECT (SELECT COUNT(*) FROM blobs), (SELECT COALESCE(SUM(size), 0)::BIGINT FROM blobs), "
                        "(SELECT COUNT(*) FROM uploads)")
            return cur.fetchone()
        return StorageUsage(*self._read(body))

    # -- lifecycle -----------------------------------------------------------------------------------------------

    @contextmanager
    def lifecycle(self, *, dry_run: bool = False) -> Iterator[Lifecycle]:
        try:
            with self._get_pool().connection() as conn:
                with conn.cursor() as cur:
                    cur.execute(BEGIN_GC_EXCLUSIVE)
                    step = PostgresLifecycle(cur, self._clock)
                    try:
                        yield step
                    except BaseException:
                        if not conn.broken:
                            cur.execute("ROLLBACK")
                        raise
                    cur.execute("ROLLBACK" if dry_run else "COMMIT")
                    if step.removed and not dry_run:
                        self.digests.gone(EVERYTHING)
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from None

    def pending_deletes(self, limit: int = 1000) -> list[str]:
        def body(cur):
            cur.execute("SELECT key FROM pending_deletes ORDER BY created_at, key LIMIT %s", (limit,))
            return [r[0] for r in cur.fetchall()]
        return self._read(body)

    def forget_pending(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self._read(lambda cur: cur.execute("DELETE FROM pending_deletes WHERE key = ANY(%s::TEXT[])", (keys,)))

    def known_keys(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        if not keys:
            return set()

        def body(cur):
            cur.execute("SELECT key FROM blobs WHERE key = ANY(%(k)s::TEXT[]) "
                        "UNION SELECT key FROM pending_deletes WHERE key = ANY(%(k)s::TEXT[])", {"k": keys})
            return {r[0] for r in cur.fetchall()}
        return self._read(body)

    def known_uploads(self, session_ids: Iterable[str]) -> set[str]:
        ids = list(session_ids)
        if not ids:
            return set()

        def body(cur):
            cur.execute("SELECT id FROM uploads WHERE id = ANY(%s::TEXT[])", (ids,))
            return {r[0] for r in cur.fetchall()}
        return self._read(body)

    def rekey_blob(self, digest: str, old_key: str, new_key: str) -> bool:
        def body(cur):
            cur.execute("UPDATE blobs SET key = %s WHERE digest = %s AND key = %s", (new_key, digest, old_key))
            if not cur.rowcount:
                return False
            self._notify(cur, EVERYTHING)  # cached blob records carry the key
            return True
        rekeyed = self._write(body, gc=True)
        if rekeyed:
            self.digests.gone(EVERYTHING)
        return rekeyed

    def forget_blob(self, digest: str) -> None:
        def body(cur):
            cur.execute("DELETE FROM repository_blobs WHERE digest = %s", (digest,))
            cur.execute("DELETE FROM blobs WHERE digest = %s", (digest,))
            self._notify(cur, EVERYTHING)
        self._write(body, gc=True)
        self.digests.gone(EVERYTHING)

    def upload_sessions(self) -> Iterator[UploadSession]:
        def body(cur):
            cur.execute(f"SELECT {SESSION_COLUMNS} FROM uploads u JOIN repositories r ON r.id = u.repository_id "
                        "ORDER BY u.id")
            return cur.fetchall()
        yield from (_session(row) for row in self._read(body))

    def broken_references(self) -> list[tuple[str, str, str]]:
        def body(cur):
            cur.execute("SELECT r.name, t.name, t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id "
                        "WHERE NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = t.repository_id "
                        "AND m.digest = t.digest)")
            tags = cur.fetchall()
            cur.execute("SELECT r.name, m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id "
                        "WHERE NOT EXISTS (SELECT 1 FROM manifest_content c WHERE c.digest = m.digest)")
            contentless = cur.fetchall()
            cur.execute("SELECT r.name, x.digest, x.child, x.kind FROM manifest_references x "
                        "JOIN repositories r ON r.id = x.repository_id WHERE "
                        "(x.kind = 'blob' AND NOT EXISTS (SELECT 1 FROM repository_blobs l JOIN blobs b "
                        "ON b.digest = l.digest WHERE l.repository_id = x.repository_id AND l.digest = x.child)) OR "
                        "(x.kind = 'manifest' AND NOT EXISTS (SELECT 1 FROM manifests m "
                        "WHERE m.repository_id = x.repository_id AND m.digest = x.child))")
            return tags, contentless, cur.fetchall()
        tags, contentless, dangling = self._read(body)
        return ([("broken reference", f"{name}:{tag}", f"the tag names {digest}, which the repository does not hold")
                 for name, tag, digest in tags]
                + [("broken reference", f"{name}@{digest}", "the manifest's bytes are missing")
                   for name, digest in contentless]
                + [("broken reference", f"{name}@{digest}", f"it uses {kind} {child}, which the repository does "
                    "not hold") for name, digest, child, kind in dangling])

    def blobs(self) -> Iterator[BlobRecord]:
        last = ""
        while True:
            def body(cur, after=last):
                cur.execute("SELECT digest, size, key FROM blobs WHERE digest > %s ORDER BY digest LIMIT 1000",
                            (after,))
                return cur.fetchall()
            rows = self._read(body)
            yield from (BlobRecord(*row) for row in rows)
            if len(rows) < 1000:
                return
            last = rows[-1][0]

    @contextmanager
    def lock(self, name: str, *, blocking: bool = True, transient: bool = False) -> Iterator[bool]:
        # An advisory lock leaves nothing behind, transient or not.
        conn = self._direct_connection()
        try:
            try:
                with conn.cursor() as cur:
                    cur.execute("BEGIN")
                    if blocking:
                        # No statement timeout while waiting: a collection may run for a long time.
                        cur.execute("SET LOCAL statement_timeout = 0")
                        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, _key(name)))
                        held = True
                    else:
                        cur.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (LOCK_CLASS, _key(name)))
                        held = cur.fetchone()[0]
            except psycopg.Error as exc:
                raise self._unavailable(exc) from None
            yield held
            try:
                conn.execute("COMMIT")
            except psycopg.Error:
                pass  # the connection died: the lock went with it
        finally:
            conn.close()

    # -- pull-through cache --------------------------------------------------------------------------------------

    @contextmanager
    def _cache_tables(self) -> Iterator[None]:
        """This release on a schema-1 database (a rolling upgrade not migrated yet): cached repositories answer
        503 with what to run, everything else serves as usual."""
        try:
            yield
        except psycopg.errors.UndefinedTable:
            raise Unavailable({"database": "schema"}, headers={"Retry-After": RETRY_AFTER},
                              message="the pull-through cache needs the database schema of this release: "
                                      "run `dockyard migrate`") from None

    def cache_manifest(self, repository: str, manifest: NewManifest, tag: str | None) -> None:
        blobs = list(dict.fromkeys(manifest.blobs))
        children = list(dict.fromkeys(manifest.manifests))

        def body(cur):
            now = self._clock()
            repository_id = self._ensure_repository(cur, repository)
            cur.execute("SELECT 1 FROM manifests WHERE repository_id = %s AND digest = %s",
                        (repository_id, manifest.digest))
            if cur.fetchone() is None:
                self._insert_manifest(cur, repository_id, manifest, blobs, children, now)
            if tag is not None:
                self._set_tag(cur, repository_id, tag, manifest.digest, now)
                cur.execute(CONFIRM_TAG, (repository, tag, now))
            cur.execute("INSERT INTO cache_pulls (repository, digest, pulled_at) VALUES (%s, %s, %s) "
                        "ON CONFLICT (repository, digest) DO UPDATE SET "
                        "pulled_at = GREATEST(cache_pulls.pulled_at, excluded.pulled_at)",
                        (repository, manifest.digest, now))

        with self._cache_tables():
            self._write(body, gc=True)

    def cached_tag(self, repository: str, tag: str) -> tuple[ManifestRecord, float | None] | None:
        def body(cur):
            cur.execute("SELECT m.digest, m.media_type, m.size, c.checked_at FROM repositories r "
                        "JOIN tags t ON t.repository_id = r.id "
                        "JOIN manifests m ON m.repository_id = r.id AND m.digest = t.digest "
                        "LEFT JOIN cache_tags c ON c.repository = r.name AND c.tag = t.name "
                        "WHERE r.name = %s AND t.name = %s", (repository, tag))
            return cur.fetchone()
        with self._cache_tables():
            row = self._read(body)
        return (ManifestRecord(*row[:3]), row[3]) if row else None

    def confirm_cached_tag(self, repository: str, tag: str) -> None:
        with self._cache_tables():
            self._run(lambda cur: cur.execute(CONFIRM_TAG, (repository, tag, self._clock())), retry=True)

    def record_pulls(self, pulls: Sequence[tuple[str, str, float]]) -> None:
        latest: dict[tuple[str, str], float] = {}
        for repository, digest, at in pulls:
            latest[(repository, digest)] = max(at, latest.get((repository, digest), at))
        if not latest:
            return
        keys = sorted(latest)  # one order for every writer: concurrent batches never deadlock

        def body(cur):
            cur.execute("INSERT INTO cache_pulls (repository, digest, pulled_at) "
                        "SELECT * FROM unnest(%s::TEXT[], %s::TEXT[], %s::DOUBLE PRECISION[]) "
                        "ON CONFLICT (repository, digest) DO UPDATE SET "
                        "pulled_at = GREATEST(cache_pulls.pulled_at, excluded.pulled_at)",
                        ([r for r, _ in keys], [d for _, d in keys], [latest[k] for k in keys]))
        with self._cache_tables():
            self._run(body, retry=True)

    def cache_candidates(self, prefix: str, active_after: float, limit: int) -> list[tuple[str, str, float, int]]:
        def body(cur):
            cur.execute(CACHE_CANDIDATES, {"low": prefix, "high": prefix[:-1] + "0", "after": active_after,
                                           "limit": limit})
            candidates = []
            for repository_id, name, digest, last in cur.fetchall():
                cur.execute(MANIFEST_TOTAL_SIZE, {"digest": digest, "repository": repository_id})
                candidates.append((name, digest, last, cur.fetchone()[0]))
            return candidates
        with self._cache_tables():
            return self._read(body)

    # -- switches and events -------------------------------------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        def body(cur):
            cur.execute("SELECT value FROM state WHERE key = %s", (key,))
            return cur.fetchone()
        row = self._read(body)
        return row[0] if row else None

    def set_state(self, key: str, value: str | None) -> None:
        def body(cur):
            if value is None:
                cur.execute("DELETE FROM state WHERE key = %s", (key,))
            else:
                cur.execute("INSERT INTO state (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET "
                            "value = excluded.value", (key, value))
        self._read(body)

    def first_state(self, key: str, value: str) -> str:
        def body(cur):
            cur.execute("INSERT INTO state (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, value))
            cur.execute("SELECT value FROM state WHERE key = %s", (key,))
            return cur.fetchone()[0]
        return self._run(body, write="BEGIN")

    def take_token(self, key: str, rate: float, burst: float, now: float) -> tuple[bool, float]:
        self._takes += 1
        forget = self._takes % 10000 == 0  # buckets idle for a day are full again: forget them now and then

        def body(cur):
            cur.execute(TAKE_TOKEN, {"key": key, "rate": rate, "burst": burst, "now": now})
            allowed, tokens = cur.fetchone()
            if forget:
                cur.execute("DELETE FROM rate_buckets WHERE updated < %s", (now - 86400,))
            return allowed, tokens
        try:
            return self._run(body)
        except psycopg.errors.UndefinedTable:
            return self._no_buckets_yet()

    def peek_tokens(self, key: str, rate: float, burst: float, now: float) -> float:
        def body(cur):
            cur.execute("SELECT LEAST(%(burst)s, tokens + GREATEST(0, %(now)s - updated) * %(rate)s) "
                        "FROM rate_buckets WHERE key = %(key)s", {"key": key, "rate": rate, "burst": burst, "now": now})
            row = cur.fetchone()
            return burst if row is None else row[0]
        try:
            return self._read(body)
        except psycopg.errors.UndefinedTable:
            return self._no_buckets_yet()[1]

    def _no_buckets_yet(self) -> tuple[bool, float]:
        """A node of this release on a database still at the previous schema (a rolling upgrade before `dockyard
        migrate`): rate limits are not enforced until the table exists, rather than failing every request."""
        if not self._warned_no_buckets:
            self._warned_no_buckets = True
            log.warning("the rate_buckets table is missing (schema older than this release): rate limits are off "
                        "until `dockyard migrate` runs")
        return True, float("inf")

    def events_after(self, after: int, limit: int = 100) -> list[tuple[int, NewEvent, float]]:
        def body(cur):
            cur.execute("SELECT id, repository, action, payload, created_at FROM events WHERE id > %s "
                        "ORDER BY id LIMIT %s", (after, limit))
            return cur.fetchall()
        return [(row[0], NewEvent(row[1], row[2], json.loads(row[3])), row[4]) for row in self._read(body)]

    def outbox(self) -> PostgresOutbox:
        if getattr(self, "_schema_found", EVENTS_SCHEMA) < EVENTS_SCHEMA:
            raise SchemaError(f"event delivery needs schema version {EVENTS_SCHEMA} (the database has "
                              f"{self._schema_found}): run `dockyard migrate`")
        return PostgresOutbox(self)

    def tags_of(self, repository: str, digest: str) -> list[str]:
        def body(cur):
            cur.execute("SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id "
                        "WHERE r.name = %s AND t.digest = %s ORDER BY t.name", (repository, digest))
            return [r[0] for r in cur.fetchall()]
        return self._read(body)


def _key(name: str) -> int:
    """A name as the int4 second half of an advisory lock key."""
    return zlib.crc32(name.encode()) - 2**31


def _session(row) -> UploadSession:
    session_id, name, length, state, created_at, updated_at, monolithic = row
    return UploadSession(session_id, name, UploadState.from_json(length, state), created_at, updated_at,
                         bool(monolithic))


class PostgresLifecycle(Lifecycle):
    def __init__(self, cur, clock: Callable[[], float]):
        self.cur = cur
        self._clock = clock
        self.removed = False  # whether a step took a manifest or a blob link away: every digest cache empties

    def _removed(self) -> None:
        if not self.removed:
            self.removed = True
            PostgresMetadata._notify(self.cur, EVERYTHING)

    def repositories(self) -> list[tuple[int, str]]:
        self.cur.execute("SELECT id, name FROM repositories ORDER BY name")
        return [tuple(r) for r in self.cur.fetchall()]

    def sweep_manifests(self, repository_id: int, cutoff: float) -> list[tuple[str, int]]:
        self.cur.execute(DEAD_MANIFESTS, {"repository": repository_id, "cutoff": cutoff})
        dead = [tuple(r) for r in self.cur.fetchall()]
        if dead:
            self._removed()
            digests = [d for d, _ in dead]
            for table in ("manifests", "tags", "manifest_references"):
                self.cur.execute(f"DELETE FROM {table} WHERE repository_id = %s AND digest = ANY(%s::TEXT[])",
                                 (repository_id, digests))
        return dead

    def sweep_links(self, cutoff: float) -> int:
        self.cur.execute(STALE_LINKS, {"cutoff": cutoff})
        swept = self.cur.rowcount
        if swept:
            self._removed()
        return swept

    def sweep_blobs(self, limit: int) -> list[BlobRecord]:
        self.cur.execute(GARBAGE_BLOBS, {"limit": limit})
        garbage = [BlobRecord(*row) for row in self.cur.fetchall()]
        if garbage:
            self._removed()
            self.cur.execute("DELETE FROM blobs WHERE digest = ANY(%s::TEXT[])", ([b.digest for b in garbage],))
            self.cur.execute("INSERT INTO pending_deletes (key, created_at) SELECT k, %s FROM unnest(%s::TEXT[]) k "
                             "ON CONFLICT DO NOTHING", (self._clock(), [b.key for b in garbage]))
        return garbage

    def sweep_manifest_content(self) -> list[tuple[str, int]]:
        self.cur.execute(ORPHAN_MANIFEST_CONTENT)
        return [tuple(r) for r in self.cur.fetchall()]

    def stale_uploads(self, idle_cutoff: float, monolithic_cutoff: float) -> list[UploadSession]:
        self.cur.execute(
            f"SELECT {SESSION_COLUMNS} FROM uploads u JOIN repositories r ON r.id = u.repository_id "
            "WHERE u.updated_at < %s OR (u.monolithic AND u.created_at < %s)", (idle_cutoff, monolithic_cutoff))
        return [_session(row) for row in self.cur.fetchall()]

    def delete_upload(self, session_id: str) -> None:
        self.cur.execute("DELETE FROM uploads WHERE id = %s", (session_id,))

    def evict_manifest(self, repository: str, digest: str, active_after: float) -> list[str]:
        cur = self.cur
        # The repository's row lock: a manifest fetched into it meanwhile waits, then sees what went.
        cur.execute("SELECT id FROM repositories WHERE name = %s FOR UPDATE", (repository,))
        row = cur.fetchone()
        if row is None:
            return []
        repository_id = row[0]
        cur.execute(REPOSITORY_ACTIVE, {"name": repository, "id": repository_id, "after": active_after})
        if cur.fetchone()[0]:
            return []
        cur.execute("SELECT 1 FROM manifests WHERE repository_id = %s AND digest = %s", (repository_id, digest))
        if cur.fetchone() is None:
            return []
        cur.execute("SELECT x.child FROM manifest_references x WHERE x.repository_id = %(r)s AND x.digest = %(d)s "
                    "AND x.kind = 'manifest' AND NOT EXISTS (SELECT 1 FROM manifest_references o WHERE "
                    "o.repository_id = %(r)s AND o.child = x.child AND o.kind = 'manifest' AND o.digest != %(d)s)",
                    {"r": repository_id, "d": digest})
        doomed = [digest] + [r[0] for r in cur.fetchall()]
        for table in ("manifests", "tags", "manifest_references"):
            cur.execute(f"DELETE FROM {table} WHERE repository_id = %s AND digest = ANY(%s::TEXT[])",
                        (repository_id, doomed))
        cur.execute("DELETE FROM cache_pulls WHERE repository = %s AND digest != '' AND digest NOT IN "
                    "(SELECT digest FROM manifests WHERE repository_id = %s)", (repository, repository_id))
        cur.execute("DELETE FROM cache_tags WHERE repository = %s AND tag NOT IN "
                    "(SELECT name FROM tags WHERE repository_id = %s)", (repository, repository_id))
        cur.execute("UPDATE repository_blobs l SET referenced = TRUE WHERE l.repository_id = %s AND NOT l.referenced "
                    "AND NOT EXISTS (SELECT 1 FROM manifest_references x WHERE x.repository_id = l.repository_id "
                    "AND x.child = l.digest)", (repository_id,))
        return doomed

    def add_events(self, events: Sequence[NewEvent]) -> None:
        add_events(self.cur, events, self._clock())


_INSTANCES: "weakref.WeakSet[PostgresMetadata]" = weakref.WeakSet()


def _close_before_fork() -> None:
    for metadata in list(_INSTANCES):
        metadata._before_fork()


os.register_at_fork(before=_close_before_fork)

__all__ = ["CURRENT", "PostgresMetadata", "SchemaError", "redact", "split_url"]
