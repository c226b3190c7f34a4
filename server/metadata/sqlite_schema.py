"""The registry's SQLite schema, as numbered migrations (sqlite-utils `Migrations`).

Never edit an applied migration: add the next number. Tables:

- repositories        one row per repository name ever written to
- blobs               every committed blob (digest, size): the content store's index, shared by all repositories
- repository_blobs    which repository may read which blob (pushed or mounted into it)
- manifest_content    manifest bytes exactly as pushed, by digest, shared by all repositories
- manifests           a manifest present in a repository, with what the API needs without parsing it again
- manifest_references the reference graph: manifest -> blob (config, layers) and manifest -> manifest (index children)
- tags                tag -> manifest digest, per repository
- uploads             open upload sessions and the length of their committed bytes
- state               cluster-wide switches shared by all workers (0002)
- counters            change counters that let workers cache listings (0003; repositories.tags_version too)
- pending_deletes     storage keys of forgotten blobs whose bytes are still to be deleted (0004)
- events              the outbox: events written in the transaction of the change they describe (0004)
- uploads.owner       who opened a session, for the limit of open sessions per user (0005)
- cache_tags          pull-through cache: when each tag of a cached repository was last confirmed upstream (0006)
- cache_pulls         pull-through cache: the latest pull of each cached manifest, and of each repository (0006)
- events.uid          the stable id of an event, as receivers see it (0007; events.seq stays NULL in SQLite)
- event_deliveries    an event still to deliver to an endpoint, or parked for it (0007)
- event_queues        per endpoint and repository: events waiting, next try, attempts, the sender's lease (0007)
- event_endpoints     per endpoint: last success and failure, events delivered (0007)
"""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("dockyard")


@migrations(name="0001_initial")
def _initial(db: Database) -> None:
    _run(db, """
        CREATE TABLE repositories (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL
        );
        CREATE TABLE blobs (
            digest TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE repository_blobs (
            repository_id INTEGER NOT NULL REFERENCES repositories(id),
            digest TEXT NOT NULL REFERENCES blobs(digest),
            created_at REAL NOT NULL,
            PRIMARY KEY (repository_id, digest)
        ) WITHOUT ROWID;
        CREATE INDEX repository_blobs_digest ON repository_blobs(digest);
        CREATE TABLE manifest_content (
            digest TEXT PRIMARY KEY,
            data BLOB NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE manifests (
            repository_id INTEGER NOT NULL REFERENCES repositories(id),
            digest TEXT NOT NULL REFERENCES manifest_content(digest),
            media_type TEXT NOT NULL,
            size INTEGER NOT NULL,
            artifact_type TEXT,
            subject TEXT,
            annotations TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (repository_id, digest)
        ) WITHOUT ROWID;
        CREATE INDEX manifests_subject ON manifests(repository_id, subject) WHERE subject IS NOT NULL;
        CREATE INDEX manifests_digest ON manifests(digest);
        CREATE TABLE manifest_references (
            repository_id INTEGER NOT NULL,
            digest TEXT NOT NULL,
            child TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
            PRIMARY KEY (repository_id, digest, child)
        ) WITHOUT ROWID;
        CREATE INDEX manifest_references_child ON manifest_references(child);
        CREATE TABLE tags (
            repository_id INTEGER NOT NULL REFERENCES repositories(id),
            name TEXT NOT NULL,
            digest TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (repository_id, name)
        ) WITHOUT ROWID;
        CREATE INDEX tags_digest ON tags(repository_id, digest);
        CREATE TABLE uploads (
            id TEXT PRIMARY KEY,
            repository_id INTEGER NOT NULL REFERENCES repositories(id),
            length INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID;
        """)


def _run(db: Database, script: str) -> None:
    # Statement by statement: sqlite3's executescript() would COMMIT the migration's transaction first.
    # sqlite3.complete_statement tells where a statement ends, trigger bodies (BEGIN ... END) included.
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement.strip().rstrip(";"))
            statement = ""
    if statement.strip():
        db.execute(statement)


@migrations(name="0002_lifecycle")
def _lifecycle(db: Database) -> None:
    """Garbage collection and maintenance.

    - repository_blobs.referenced: set once a manifest in the repository has referenced the blob. The GC grace
      period protects only links never referenced (an upload waiting for its manifest); a layer whose image was
      deleted is collectable at once.
    - state: small cluster-wide switches and stamps shared by all workers (read-only mode, last GC).
    """
    _run(db, """
        ALTER TABLE repository_blobs ADD COLUMN referenced INTEGER NOT NULL DEFAULT 0;
        UPDATE repository_blobs SET referenced = 1 WHERE EXISTS (
            SELECT 1 FROM manifest_references r
            WHERE r.repository_id = repository_blobs.repository_id AND r.child = repository_blobs.digest);
        CREATE INDEX manifest_references_repository_child ON manifest_references(repository_id, child);
        CREATE TABLE state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX uploads_updated ON uploads(updated_at);
    """)


@migrations(name="0003_listing_versions")
def _listing_versions(db: Database) -> None:
    """Version counters for the tag list of each repository and for the catalog, kept by triggers, so a worker
    may serve a cached tags/list or _catalog page for as long as its counter has not moved."""
    _run(db, """
        ALTER TABLE repositories ADD COLUMN tags_version INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID;
        INSERT INTO counters (name, value) VALUES ('catalog', 0);
        CREATE TRIGGER tags_added AFTER INSERT ON tags BEGIN
            UPDATE repositories SET tags_version = tags_version + 1 WHERE id = NEW.repository_id;
        END;
        CREATE TRIGGER tags_removed AFTER DELETE ON tags BEGIN
            UPDATE repositories SET tags_version = tags_version + 1 WHERE id = OLD.repository_id;
        END;
        CREATE TRIGGER catalog_manifest_added AFTER INSERT ON manifests BEGIN
            UPDATE counters SET value = value + 1 WHERE name = 'catalog';
        END;
        CREATE TRIGGER catalog_manifest_removed AFTER DELETE ON manifests BEGIN
            UPDATE counters SET value = value + 1 WHERE name = 'catalog';
        END;
        CREATE TRIGGER catalog_repository_removed AFTER DELETE ON repositories BEGIN
            UPDATE counters SET value = value + 1 WHERE name = 'catalog';
        END
    """)


@migrations(name="0004_storage_keys")
def _storage_keys(db: Database) -> None:
    """The blob store and the metadata meet through storage keys, not paths derived from digests.

    - blobs.key: where the blob's bytes are in the store. Blobs stored before this keep the path they had
      (`<algorithm>/<2 hex>/<hex>`); new commits get a key of their own that is never reused.
    - uploads.state: the session's saved running hash and the store's own data (JSON), so any worker or host can
      continue it; uploads.length stays the recorded length. uploads.monolithic: a session of one request (a POST
      with the whole blob), which nobody can continue once that request is gone.
    - pending_deletes: keys of forgotten blobs, written in the transaction that forgets them and removed once the
      store has deleted the bytes (see the protocol in `dockyard.server.storage`).
    - events: the outbox.
    """
    _run(db, """
        ALTER TABLE blobs ADD COLUMN key TEXT NOT NULL DEFAULT '';
        UPDATE blobs SET key = substr(digest, 1, instr(digest, ':') - 1) || '/'
                            || substr(digest, instr(digest, ':') + 1, 2) || '/' || substr(digest, instr(digest, ':') + 1);
        CREATE UNIQUE INDEX blobs_key ON blobs(key);
        ALTER TABLE uploads ADD COLUMN state TEXT;
        ALTER TABLE uploads ADD COLUMN monolithic INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE pending_deletes (
            key TEXT PRIMARY KEY,
            created_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            repository TEXT NOT NULL,
            action TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL
        );
    """)


@migrations(name="0005_upload_owners")
def _upload_owners(db: Database) -> None:
    """Open upload sessions are limited per repository and per user: who opened each, and indexes to count them."""
    _run(db, """
        ALTER TABLE uploads ADD COLUMN owner TEXT;
        CREATE INDEX uploads_repository ON uploads(repository_id);
        CREATE INDEX uploads_owner ON uploads(owner) WHERE owner IS NOT NULL;
    """)


@migrations(name="0006_pull_through_cache")
def _pull_through_cache(db: Database) -> None:
    """The pull-through cache (`dockyard.server.mirror`). Keyed by repository name, not id: rows of a repository
    deleted and cached again meanwhile are harmless (a tag is trusted only while it exists; pull times only order
    eviction), and eviction removes those of what it deletes.

    - cache_tags: when the upstream last confirmed the manifest a cached tag names (fetched or revalidated).
    - cache_pulls: the latest pull of a cached manifest (digest), or of anything in the repository (digest ''),
      written in batches; eviction takes the least recently pulled first and never a repository pulled from
      recently.
    """
    _run(db, """
        CREATE TABLE cache_tags (
            repository TEXT NOT NULL,
            tag TEXT NOT NULL,
            checked_at REAL NOT NULL,
            PRIMARY KEY (repository, tag)
        ) WITHOUT ROWID;
        CREATE TABLE cache_pulls (
            repository TEXT NOT NULL,
            digest TEXT NOT NULL,
            pulled_at REAL NOT NULL,
            PRIMARY KEY (repository, digest)
        ) WITHOUT ROWID;
    """)


@migrations(name="0007_event_delivery")
def _event_delivery(db: Database) -> None:
    """Delivery of the outbox's events to the notification endpoints (`dockyard.server.metadata.Outbox`).

    - events.uid: the stable id receivers see (also in the payload). events.seq is PostgreSQL's per-repository
      sequence; SQLite commits one writer at a time, in id order, so the id is the sequence and seq stays NULL
      (a copy into PostgreSQL, `migrate-metadata`, starts each repository's sequence after its highest id).
    - event_deliveries: one row per event and endpoint until the endpoint has it; parked_at set once the endpoint's
      attempts ran out (kept until replayed).
    - event_queues: per endpoint and repository, the events pending (a count), when the next try is due, failed
      attempts in a row, the lease of the sender working on it.
    - event_endpoints: per endpoint, the last success and failure and the count delivered.
    """
    _run(db, """
        ALTER TABLE events ADD COLUMN seq INTEGER;
        ALTER TABLE events ADD COLUMN uid TEXT;
        CREATE UNIQUE INDEX events_uid ON events(uid);
        CREATE TABLE event_deliveries (
            endpoint TEXT NOT NULL,
            event INTEGER NOT NULL,
            repository TEXT NOT NULL,
            seq INTEGER NOT NULL,
            parked_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            PRIMARY KEY (event, endpoint)
        ) WITHOUT ROWID;
        CREATE INDEX event_deliveries_pending ON event_deliveries(endpoint, repository, seq) WHERE parked_at IS NULL;
        CREATE INDEX event_deliveries_parked ON event_deliveries(endpoint, event) WHERE parked_at IS NOT NULL;
        CREATE TABLE event_queues (
            endpoint TEXT NOT NULL,
            repository TEXT NOT NULL,
            pending INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            due REAL NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            PRIMARY KEY (endpoint, repository)
        ) WITHOUT ROWID;
        CREATE INDEX event_queues_due ON event_queues(due) WHERE pending > 0;
        CREATE TABLE event_endpoints (
            name TEXT PRIMARY KEY,
            last_success REAL,
            last_failure REAL,
            last_error TEXT,
            delivered INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
    """)
