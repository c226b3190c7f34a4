"""`dockyard migrate-blobs`: a registry's blobs moved from the filesystem to a real S3 store (Swift) and back, the
metadata following, every image pullable byte for byte afterwards, `dockyard fsck` clean, a second run a no-op,
and a blob that cannot be read from the source reported and left as it was."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import webtest

from dockyard.server import cli
from dockyard.server.app import create_app
from dockyard.server.config import Config, StorageConfig
from dockyard.server.storage.s3 import MIN_PART_SIZE
from helpers import image_manifest, put_manifest


def toml_of(config: Config, path) -> str:
    """`config` as a TOML file for the command line (only what these tests set)."""
    lines = [f"data = {json.dumps(config.data)}"]
    if config.database:
        lines.append(f"database = {json.dumps(config.database)}")
    if config.storage.driver == "s3":
        lines.append("[storage]")
        for field in ("driver", "bucket", "endpoint_url", "region", "access_key_id", "secret_access_key"):
            lines.append(f"{field} = {json.dumps(getattr(config.storage, field))}")
        lines += ["path_style = true", f"part_size = {config.storage.part_size}", "timeout = 5"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def pull_everything(client, images: dict) -> dict:
    """{(repository, tag): (manifest bytes, {digest: blob bytes})} as served."""
    pulled = {}
    for (repository, tag) in images:
        manifest = client.get(f"/v2/{repository}/manifests/{tag}").body
        document = json.loads(manifest)
        blobs = {}
        for descriptor in [document["config"], *document["layers"]]:
            body = client.get(f"/v2/{repository}/blobs/{descriptor['digest']}").body
            assert "sha256:" + hashlib.sha256(body).hexdigest() == descriptor["digest"]
            blobs[descriptor["digest"]] = body
        pulled[(repository, tag)] = (manifest, blobs)
    return pulled


def test_blobs_move_to_s3_and_back_and_the_metadata_follows(tmp_path, swift, s3_bucket, capsys, test_database):
    # Both configurations name one database explicitly: the CLI reads TOML, which the --metadata=postgresql
    # fixture cannot redirect the way it redirects apps built here.
    database = test_database or f"sqlite:///{tmp_path / 'data' / 'registry.db'}"
    on_disk = Config(data=str(tmp_path / "data"), database=database)
    client = webtest.TestApp(create_app(on_disk))
    images = {}
    for i in range(3):
        layers = [f"layer {i}.{n}".encode() * 1000 for n in range(2)] + [b"shared layer" * 500]
        repository = f"team/app{i}"
        put_manifest(client, repository, "v1", image_manifest(client, repository, layers=layers))
        images[(repository, "v1")] = None
    before = pull_everything(client, images)
    blob_count = len({digest for _, blobs in before.values() for digest in blobs})
    client.app.registry.close()

    s3 = dataclasses.replace(on_disk, data=str(tmp_path / "s3-node"),
                             storage=StorageConfig(driver="s3", bucket=s3_bucket, endpoint_url=swift.endpoint,
                                                   region=swift.region, path_style=True,
                                                   access_key_id=swift.access_key,
                                                   secret_access_key=swift.secret_key, part_size=MIN_PART_SIZE,
                                                   timeout=5))
    disk_toml, s3_toml = toml_of(on_disk, tmp_path / "disk.toml"), toml_of(s3, tmp_path / "s3.toml")
    assert cli.main(["migrate-blobs", "--from-config", disk_toml, "--config", s3_toml, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["copied"] == blob_count and report["skipped"] == 0 and report["failed"] == []
    on_s3 = webtest.TestApp(create_app(s3))
    assert pull_everything(on_s3, images) == before
    assert on_s3.app.registry.fsck(grace=0).clean
    # Again: nothing to do.
    assert cli.main(["migrate-blobs", "--from-config", disk_toml, "--config", s3_toml, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == blob_count
    on_s3.app.registry.close()

    # And back to a new disk; a blob whose bytes the source lost is reported, its row left alone.
    lost = list(before[("team/app0", "v1")][1])[1]  # its first layer, of team/app0 alone
    record = next(r for r in create_app(s3).registry._metadata.blobs() if r.digest == lost)
    on_s3 = webtest.TestApp(create_app(s3))
    on_s3.app.registry._store.delete(record.key)
    back = dataclasses.replace(s3, data=str(tmp_path / "new-disk"), storage=StorageConfig())
    back_toml = toml_of(back, tmp_path / "back.toml")
    assert cli.main(["migrate-blobs", "--from-config", s3_toml, "--config", back_toml, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["copied"] == blob_count - 1 and [digest for digest, _ in report["failed"]] == [lost]
    on_disk_again = webtest.TestApp(create_app(back))
    assert next(r for r in on_disk_again.app.registry._metadata.blobs() if r.digest == lost).key == record.key
    for repository, tag in images:
        if repository != "team/app0":
            assert pull_everything(on_disk_again, {(repository, tag): None}) == {(repository, tag):
                                                                                before[(repository, tag)]}
