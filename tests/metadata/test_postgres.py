"""What only the PostgreSQL driver has: migrations and the rolling-upgrade window, the `database` URL (its options
and its password), and a pool that turns a database going away into 503s and recovers by itself (issue 14)."""

from __future__ import annotations

import hashlib
import json
import logging
import time

import psycopg
import pytest
import webtest

from dockyard.server import cli
from dockyard.server.app import create_app
from dockyard.server.config import Config, ConfigError, load_config
from dockyard.server.errors import Unavailable
from dockyard.server.metadata import open_metadata
from dockyard.server.metadata.postgres import DOCKYARD, GC_KEY, PostgresMetadata, split_url
from dockyard.server.metadata.postgres_schema import CURRENT, MIGRATIONS, Migration, SchemaError, check_version
from dockyard.server.model import StoredBlob
from helpers import image_manifest, put_manifest

NEXT = Migration(CURRENT + 1, f"{CURRENT + 1:04d}_test_column",
                 "ALTER TABLE blobs ADD COLUMN media_type TEXT; CREATE INDEX blobs_media_type ON blobs(media_type)")
AFTER_NEXT = Migration(CURRENT + 2, f"{CURRENT + 2:04d}_test_table", "CREATE TABLE later (id INTEGER)")


def blob(name: str) -> StoredBlob:
    return StoredBlob("sha256:" + name.encode().hex().ljust(64, "0")[:64], 10, f"key-{name}")


@pytest.fixture
def empty_url(postgresql) -> str:
    return postgresql.url(postgresql.new_database(template=None), pool_timeout=2)


def versions(url: str) -> list[int]:
    with psycopg.connect(split_url(url)[0]) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


# -- migrations -----------------------------------------------------------------------------------------------------

def test_dockyard_migrate_creates_the_schema_once_and_start_up_checks_it(empty_url, tmp_path, capsys):
    config = Config(data=str(tmp_path / "data"), database=empty_url)
    with pytest.raises(SchemaError, match="run `dockyard migrate`"):
        open_metadata(config, clock=time.time)
    capsys.readouterr()
    assert cli.main(["migrate", "--database", empty_url]) == 0
    applied = ", ".join(m.name for m in MIGRATIONS)
    assert capsys.readouterr().out.strip() == f"dockyard migrate: postgresql: applied {applied}"
    assert cli.main(["migrate", "--database", empty_url]) == 0
    assert "the schema is up to date" in capsys.readouterr().out
    assert versions(empty_url) == [m.version for m in MIGRATIONS]
    metadata = open_metadata(config, clock=time.time)
    assert metadata.driver == "postgresql" and metadata.check_schema() == CURRENT
    metadata.close()


def test_serve_refuses_an_unmigrated_database_with_a_message(empty_url, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOCKYARD_DATABASE", empty_url)
    assert cli.main(["serve", "--data", str(tmp_path / "data"), "--bind", "127.0.0.1:0"]) == 2
    assert "run `dockyard migrate`" in capsys.readouterr().err


def test_the_schema_window_for_rolling_upgrades():
    check_version(CURRENT)
    check_version(CURRENT + 1)  # a newer node (or an operator) already migrated: this node keeps serving
    for found, why in ((0, "no Dockyard schema"), (CURRENT + 2, "upgrade this node")):
        with pytest.raises(SchemaError, match=why):
            check_version(found)
    check_version(1, current=2, minimum=1)  # a new release starting before anyone migrated
    with pytest.raises(SchemaError, match="run `dockyard migrate`"):
        check_version(1, current=3, minimum=2)


def test_event_delivery_arrives_by_migration_without_stopping_the_previous_release(empty_url, tmp_path):
    """Issue 17: 0002 adds the outbox's delivery tables. The release before it (schema 1) keeps serving on the
    migrated database; this release starts on schema 1 too, but its outbox asks for `dockyard migrate` first
    (`serve` with notification endpoints configured refuses to start until then)."""
    previous = PostgresMetadata(empty_url, check_schema=False, migrations=MIGRATIONS[:1])
    assert previous.migrate() == [MIGRATIONS[0].name]
    previous.record_blob("repo", blob("before"))
    current = PostgresMetadata(empty_url)  # schema 1: inside this release's window
    with pytest.raises(SchemaError, match="run `dockyard migrate`"):
        current.outbox()
    hooked = Config(data=str(tmp_path / "data"), database=empty_url,
                    notifications=({"name": "ci", "url": "http://127.0.0.1:9/"},))
    with pytest.raises(SchemaError, match="event delivery needs schema version 2"):
        create_app(hooked)
    create_app(Config(data=str(tmp_path / "data"), database=empty_url)).registry.close()  # no endpoint: serves
    assert current.migrate() == [m.name for m in MIGRATIONS[1:]]
    assert current.outbox().endpoint_states() == {}  # the same process, once migrated
    previous.check_schema()
    previous.record_blob("repo", blob("after"))  # the previous release on the new schema
    migrated = PostgresMetadata(empty_url)
    assert migrated.outbox().endpoint_states() == {}
    for metadata in (previous, current, migrated):
        metadata.close()


def test_old_and_new_releases_share_a_database_during_an_upgrade(empty_url):
    """The previous release runs on the schema the next release migrated to, and the next release starts on the
    previous release's schema; two steps apart, each refuses with a message."""
    old = PostgresMetadata(empty_url, check_schema=False)
    assert old.migrate() == [m.name for m in MIGRATIONS]
    old.record_blob("repo", blob("before"))
    new = PostgresMetadata(empty_url, migrations=MIGRATIONS + (NEXT,), minimum=CURRENT)  # previous schema: accepted
    assert new.blob("repo", blob("before").digest) is not None
    assert new.migrate() == [NEXT.name]
    old.check_schema()  # one step newer than it knows: accepted
    old.record_blob("repo", blob("after"))  # and its queries still work on the added schema
    assert {b.key for b in new.blobs()} == {"key-before", "key-after"}
    assert old.migrate() == []  # an old node's `dockyard migrate` changes nothing
    newest = PostgresMetadata(empty_url, check_schema=False, migrations=MIGRATIONS + (NEXT, AFTER_NEXT))
    newest.migrate()
    with pytest.raises(SchemaError, match="upgrade this node"):
        old.check_schema()
    with pytest.raises(SchemaError, match="newer than this release knows"):
        old.migrate()
    for metadata in (old, new, newest):
        metadata.close()


def test_concurrent_migrations_take_turns(empty_url):
    import threading

    results = []
    nodes = [PostgresMetadata(empty_url, check_schema=False) for _ in range(4)]
    threads = [threading.Thread(target=lambda m=m: results.append(m.migrate())) for m in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results, key=len) == [[], [], [], [m.name for m in MIGRATIONS]]
    assert versions(empty_url) == [m.version for m in MIGRATIONS]


# -- the database URL -----------------------------------------------------------------------------------------------

def test_dockyard_options_are_taken_off_the_url():
    conninfo, options = split_url("postgresql://u:p@db:5433/reg?pool_max_size=3&sslmode=disable&pool_timeout=1.5")
    assert conninfo == "postgresql://u:p@db:5433/reg?sslmode=disable"
    assert (options["pool_max_size"], options["pool_timeout"], options["pool_min_size"]) == (3, 1.5, 1)
    with pytest.raises(ValueError, match="pool_max_size"):
        split_url("postgresql://db/reg?pool_max_size=many")


def test_the_password_is_never_echoed(tmp_path, capsys, caplog):
    secret = "s3cret-pw"
    with pytest.raises(ConfigError) as refused:
        load_config(environ={"DOCKYARD_DATABASE": f"mysql://root:{secret}@db/x"})
    assert secret not in str(refused.value)
    url = f"postgresql://dockyard:{secret}@127.0.0.1:1/nowhere?pool_timeout=1&connect_timeout=1"
    assert cli.main(["check-config", "--data", str(tmp_path)]) == 0
    capsys.readouterr()
    import os
    os.environ["DOCKYARD_DATABASE"] = url
    try:
        assert cli.main(["check-config", "--data", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "dockyard:***@127.0.0.1:1/nowhere" in out and secret not in out
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(Unavailable) as down:
                PostgresMetadata(url)
            assert cli.main(["migrate"]) == 1
        assert secret not in str(down.value.detail) + down.value.message + capsys.readouterr().err + caplog.text
    finally:
        del os.environ["DOCKYARD_DATABASE"]


# -- the database going away ----------------------------------------------------------------------------------------

def test_a_restarted_database_gives_503_then_the_pool_recovers(new_postgresql_server, tmp_path, caplog):
    server = new_postgresql_server
    url = server.url("dockyard", pool_timeout=1, pool_max_size=4).replace("dockyard@", "dockyard:pw-never-shown@")
    PostgresMetadata(url, check_schema=False).migrate()
    config = Config(data=str(tmp_path / "data"), database=url)
    app = create_app(config)
    client = webtest.TestApp(app)
    put_manifest(client, "repo", "v1", image_manifest(client, "repo"))
    for _ in range(3):
        client.get("/v2/repo/manifests/v1", status=200)

    server.stop()
    for path in ("/v2/repo/manifests/v1", "/v2/repo/tags/list", "/v2/_catalog?n=5"):
        resp = client.get(path, status=503)
        assert resp.headers["Retry-After"] == "5"
        (error,) = resp.json["errors"]
        assert error["code"] == "UNAVAILABLE" and "pw-never-shown" not in resp.text
    resp = client.post("/v2/repo/blobs/uploads/", status=503)
    assert resp.json["errors"][0]["code"] == "UNAVAILABLE"
    assert json.loads(client.get("/readyz", status=503).body)["checks"]["database"].startswith("failed")

    server.start()  # same port, same data: the registry's process is not restarted
    deadline = time.monotonic() + 30
    statuses = []
    while time.monotonic() < deadline:
        statuses.append(client.get("/v2/repo/manifests/v1", expect_errors=True).status_int)
        if statuses[-1] == 200:
            break
        time.sleep(0.2)
    assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
    assert [client.get("/v2/repo/manifests/v1", expect_errors=True).status_int for _ in range(20)] == [200] * 20
    # Restarted between two requests: the pooled connections are all dead, and the next request finds out.
    server.restart()
    assert client.get("/v2/repo/manifests/v1", expect_errors=True).status_int == 200
    put_manifest(client, "repo", "v2", image_manifest(client, "repo", layers=[b"after the restart"]))
    assert client.get("/v2/repo/tags/list").json["tags"] == ["v1", "v2"]
    assert "pw-never-shown" not in caplog.text
    app.registry.close()


def test_a_statement_timeout_is_a_503_not_a_hung_worker(postgresql, postgresql_url, tmp_path):
    """A push waiting longer than `statement_timeout` (here behind a garbage-collection step that holds the
    exclusive lock) gives up with 503 and Retry-After; once the step commits, pushes go through again."""
    client = webtest.TestApp(create_app(Config(data=str(tmp_path / "data"),
                                               database=postgresql_url + "&statement_timeout=300")))
    digest = "sha256:" + hashlib.sha256(b"blob").hexdigest()
    with psycopg.connect(split_url(postgresql_url)[0]) as sweep:
        sweep.execute("SELECT pg_advisory_xact_lock(%s, %s)", (DOCKYARD, GC_KEY))
        started = time.monotonic()
        resp = client.post(f"/v2/repo/blobs/uploads/?digest={digest}", b"blob", status=503)
        assert resp.headers["Retry-After"] == "5" and resp.json["errors"][0]["code"] == "UNAVAILABLE"
        assert time.monotonic() - started < 5
    client.post(f"/v2/repo/blobs/uploads/?digest={digest}", b"blob", status=201)
    client.app.registry.close()
