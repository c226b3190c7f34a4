"""`dockyard migrate-metadata --from sqlite:///... --to postgresql://...` (issue 14): a populated single-node
registry (1,000 repositories, 10,000 tags, built straight through the metadata interface) moves to PostgreSQL
without losing a tag: every tag, manifest, blob, link, reference, upload session, switch and event identical
afterwards, and a registry on the target serves and takes new pushes. A copy that fails leaves the target empty;
a target holding data is refused unless told."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import closing

import psycopg
import pytest
import webtest

from dockyard.server import cli
from dockyard.server.app import create_app
from dockyard.server.config import Config
from dockyard.server.metadata.postgres import PostgresMetadata, split_url
from dockyard.server.metadata.sqlite import SqliteMetadata
from dockyard.server.model import NewEvent, NewManifest, StoredBlob, UploadState
from helpers import image_manifest, put_manifest

REPOSITORIES, TAGS_PER_REPOSITORY = 1000, 10
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def populate(md: SqliteMetadata) -> None:
    for r in range(REPOSITORIES):
        name = f"team{r % 7}/app{r:04d}"
        layers = [f"{name} layer {i}".encode() for i in range(2)] + [b"shared base layer"]
        for layer in layers:
            md.record_blob(name, StoredBlob(digest(layer), len(layer), f"key/{name}/{digest(layer)}"))
        images = []
        for t in range(TAGS_PER_REPOSITORY):
            data = json.dumps({"schemaVersion": 2, "layers": [digest(x) for x in layers], "n": t}).encode()
            m = NewManifest(digest(data), OCI_MANIFEST, data, [digest(x) for x in layers], [],
                            annotations={"n": str(t)} if t % 3 == 0 else None)
            md.put_manifest(name, m, f"v{t}")
            images.append(m.digest)
        if r % 50 == 0:  # an index over two of the images, a signature of the first, an open upload session
            index = json.dumps({"schemaVersion": 2, "manifests": images[:2]}).encode()
            md.put_manifest(name, NewManifest(digest(index), OCI_INDEX, index, [], images[:2]), "multi")
            signature = json.dumps({"sig": name}).encode()
            md.put_manifest(name, NewManifest(digest(signature), OCI_MANIFEST, signature, [digest(layers[0])], [],
                                              subject=images[0], artifact_type="application/x-sig"), None)
            md.create_upload(name, f"session-{r}", owner=f"user{r % 3}")
            md.save_upload(f"session-{r}", 0, UploadState(5, b"\x01" * 112, {"part": r}))
    md.record_blob("team0/app0000", StoredBlob(digest(b"loose"), 5, "key/loose"))
    md.record_blob("team1/app0001", StoredBlob(digest(b"loose"), 5, "key/loose"))  # still linked here: no garbage
    md.unlink_blob("team0/app0000", digest(b"loose"), events=[NewEvent("x", "unlink", {"n": 1})])
    md.set_state("read_only", "1")


def dump(query_rows) -> dict:
    """Everything that must survive, as comparable values."""
    q = query_rows
    return {
        "tags": q("SELECT r.name, t.name, t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id "
                  "ORDER BY 1, 2"),
        "manifests": q("SELECT r.name, m.digest, m.media_type, m.size, m.subject, m.artifact_type, m.annotations "
                       "FROM manifests m JOIN repositories r ON r.id = m.repository_id ORDER BY 1, 2"),
        "content": [(d, digest(bytes(data))) for d, data in q("SELECT digest, data FROM manifest_content ORDER BY 1")],
        "blobs": q("SELECT digest, size, key FROM blobs ORDER BY 1"),
        "links": q("SELECT r.name, l.digest FROM repository_blobs l JOIN repositories r ON r.id = l.repository_id "
                   "ORDER BY 1, 2"),
        "references": q("SELECT r.name, x.digest, x.child, x.kind FROM manifest_references x "
                        "JOIN repositories r ON r.id = x.repository_id ORDER BY 1, 2, 3"),
        "uploads": q("SELECT u.id, r.name, u.length, u.state, u.owner FROM uploads u JOIN repositories r ON r.id = "
                     "u.repository_id ORDER BY 1"),
        "state": q("SELECT key, value FROM state ORDER BY 1"),
        "events": q("SELECT id, repository, action, payload FROM events ORDER BY 1"),
    }


def dump_sqlite(path) -> dict:
    with closing(sqlite3.connect(path)) as conn:
        return dump(lambda sql: [tuple(row) for row in conn.execute(sql).fetchall()])


def dump_postgres(url) -> dict:
    with psycopg.connect(split_url(url)[0], autocommit=True) as conn:
        return dump(lambda sql: [tuple(row) for row in conn.execute(sql).fetchall()])


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    path = tmp_path_factory.mktemp("single-node") / "registry.db"
    md = SqliteMetadata(path, synchronous="OFF")
    started = time.monotonic()
    populate(md)
    md.close()
    return path, time.monotonic() - started


def test_every_tag_and_digest_survives_the_move_to_postgresql(populated, postgresql, tmp_path, capsys):
    path, seconds = populated
    url = postgresql.url(postgresql.new_database(template=None))  # empty: the command migrates it
    assert cli.main(["migrate-metadata", "--from", f"sqlite:///{path}", "--to", url, "--batch", "700"]) == 0
    out = capsys.readouterr()
    assert f"{REPOSITORIES * TAGS_PER_REPOSITORY + REPOSITORIES // 50} tags" in out.out
    assert "warning" not in out.err  # the source was read-only

    before, after = dump_sqlite(path), dump_postgres(url)
    assert len(before["tags"]) == REPOSITORIES * TAGS_PER_REPOSITORY + REPOSITORIES // 50
    for key in before:
        assert before[key] == after[key], key

    # Through the interface: the same catalog, tag lists, manifests by tag, blobs; the counters the triggers keep.
    source, target = SqliteMetadata(path), PostgresMetadata(url)
    assert source.catalog(5000, None) == target.catalog(5000, None)
    for name in source.catalog(5000, None)[0]:
        assert source.tags(name, None, None) == target.tags(name, None, None)
        assert source.manifest(name, tag="v3") == target.manifest(name, tag="v3")
    assert source.referrers("team0/app0000", before["tags"][0][2], None) == \
        target.referrers("team0/app0000", before["tags"][0][2], None)
    assert source.storage_totals() == target.storage_totals()
    with target.lifecycle(dry_run=True) as step:  # nothing became garbage on the way
        assert step.sweep_links(cutoff=time.time() - 3600) == 0 and step.sweep_blobs(10) == []
    source.close()
    target.close()

    # A registry on the target serves what was there and takes new pushes (new ids follow the copied ones).
    target.set_state("read_only", None)
    client = webtest.TestApp(create_app(Config(data=str(tmp_path / "data"), database=url)))
    assert client.get("/v2/team3/app0010/tags/list?n=3").json["tags"] == ["v0", "v1", "v2"]
    put_manifest(client, "brand/new", "v1", image_manifest(client, "brand/new"))
    assert client.get("/v2/_catalog?n=2000").json["repositories"][:1] == ["brand/new"]
    client.app.registry.close()

    # Running it again: refused while the target holds data, done again from scratch when told.
    assert cli.main(["migrate-metadata", "--from", f"sqlite:///{path}", "--to", url]) == 2
    assert "already holds data" in capsys.readouterr().err
    assert cli.main(["migrate-metadata", "--from", f"sqlite:///{path}", "--to", url, "--replace"]) == 0
    assert dump_postgres(url) == before


def test_a_failed_copy_leaves_the_target_as_it_was(postgresql, tmp_path, capsys):
    path = tmp_path / "registry.db"
    md = SqliteMetadata(path)
    md.record_blob("repo", StoredBlob(digest(b"layer"), 5, "key"))
    md.close()
    conn = sqlite3.connect(path)  # a tag of a repository that does not exist (SQLite does not check)
    conn.execute("INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (999, 'x', 'sha256:0', 0)")
    conn.commit()
    conn.close()
    url = postgresql.url(postgresql.new_database())
    assert cli.main(["migrate-metadata", "--from", f"sqlite:///{path}", "--to", url]) == 2
    assert "rolled back" in capsys.readouterr().err
    with psycopg.connect(split_url(url)[0]) as conn:
        assert conn.execute("SELECT (SELECT COUNT(*) FROM repositories), (SELECT COUNT(*) FROM blobs)").fetchone() == (
            0, 0)


def test_events_waiting_for_delivery_move_with_their_order(postgresql, tmp_path):
    """Issue 17: the outbox moves too. Events still waiting for an endpoint are waiting on PostgreSQL, in the same
    order, and a repository's new events come after them (its sequence goes on after the highest SQLite id)."""
    from dockyard.server.model import NewEvent

    def event(uid: str) -> NewEvent:
        return NewEvent("team/app", "push", {"id": uid}, ("hook",))

    path = tmp_path / "registry.db"
    source = SqliteMetadata(path)
    for uid in ("delivered", "first", "second"):
        with source.lifecycle() as step:
            step.add_events([event(uid)])
    outbox = source.outbox()
    [claim] = outbox.claim(["hook"], "me", time.time(), time.time() + 60, 5)
    outbox.delivered(claim, [outbox.pending("hook", "team/app", 1)[0].number], "me", time.time(), 0)
    source.set_state("read_only", "1")
    source.close()
    url = postgresql.url(postgresql.new_database(template=None))
    assert cli.main(["migrate-metadata", "--from", f"sqlite:///{path}", "--to", url]) == 0
    target = PostgresMetadata(url)
    with target.lifecycle() as step:
        step.add_events([event("third")])
    waiting = target.outbox().pending("hook", "team/app", 10)
    assert [e.uid for e in waiting] == ["first", "second", "third"] and waiting[1].seq < waiting[2].seq
    assert target.outbox().endpoint_states()["hook"]["backlog"] == 3
    target.close()
