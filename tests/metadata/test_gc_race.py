"""Garbage collection racing manifest PUTs, on both metadata backends (issue 14): SQLite serialises writers,
PostgreSQL at READ COMMITTED does not, and the driver's locks must make up the difference.

Pushers (threads of this process, sharing one registry as a gunicorn worker's threads do, and processes of their
own) replace their images in their own and two shared repositories, reusing shared layers without uploading them
again when the registry says it has them, right after deleting the image that used them there; collectors (a
thread and a process) run garbage collection with a 2 s grace period and untagged manifests deleted, over and over.
Bounded: each side stops after a number of rounds or a deadline. Afterwards every tag in the registry must resolve
to a manifest whose blobs are all readable with the right bytes, and every image a pusher was told was stored, and
did not delete itself, must be there under its tag, and each pusher checks, just before it deletes an image, that
every blob of the image is still readable: a stored manifest never points at a collected blob, and no
acknowledged blob is lost.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dockyard.server.app import build_registry
from dockyard.server.config import Config

import race_worker

WORKER = Path(race_worker.__file__)
ROUNDS, SECONDS = 80, 15.0


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgresql_url")
    return f"sqlite:///{tmp_path / 'data' / 'registry.db'}"


def test_gc_never_takes_a_blob_of_a_stored_manifest(tmp_path, database):
    data = tmp_path / "data"
    registry = build_registry(Config(data=str(data), database=database))
    processes = [subprocess.Popen([sys.executable, str(WORKER), role, str(data), database, worker, str(ROUNDS),
                                   str(SECONDS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
                 for role, worker in (("push", "p1"), ("push", "p2"), ("gc", "g1"))]
    for process in processes:  # every registry built (start-up recovery done) before anyone pushes
        assert process.stdout.readline().strip() == "ready", process.stderr.read()[-3000:]
    outputs: dict[str, io.StringIO] = {}
    errors: list[BaseException] = []

    def in_thread(role: str, worker: str) -> None:
        outputs[worker] = io.StringIO()
        try:
            race_worker.run(role, registry, worker, ROUNDS, SECONDS, outputs[worker])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=in_thread, args=args) for args in (("push", "t1"), ("push", "t2"),
                                                                         ("gc", "g2"))]
    for thread in threads:
        thread.start()
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    for thread in threads:
        thread.join(SECONDS + 60)
    lines = []
    for process in processes:
        out, err = process.communicate(timeout=SECONDS + 60)
        assert process.returncode == 0, err[-3000:]
        lines += out.splitlines()
    assert not errors, errors
    events = [json.loads(line) for line in lines + [x for o in outputs.values() for x in o.getvalue().splitlines()]]

    pushed = [e for e in events if e["event"] == "pushed"]
    deleted = {(e["repository"], e["digest"]) for e in events if e["event"] == "deleted"}
    collections = [e for e in events if e["event"] == "gc"]
    assert len(pushed) >= 20 and len(collections) >= 4, (len(pushed), len(collections))
    assert sum(e["blobs"] for e in collections) > 0, "the collectors never collected anything: no race was run"

    lost = [e for e in events if e["event"] == "lost"]
    assert not lost, f"images lost blobs while they stood: {lost}"

    def readable(name: str, digest: str) -> bool:
        return race_worker.readable(registry, name, digest)

    # Every image acknowledged and not deleted by its pusher is there, under its tag, with every blob readable.
    for push in pushed:
        if (push["repository"], push["digest"]) in deleted:
            continue
        record = registry.manifest(push["repository"], push["tag"])
        assert record.digest == push["digest"]
        assert all(readable(push["repository"], d) for d in push["blobs"]), push
    # And every tag the registry holds, whoever pushed it, names a manifest whose blobs are all readable.
    for name in {push["repository"] for push in pushed}:
        tags, _ = registry.tags(name, None, None)
        for tag in tags:
            document = json.loads(registry.manifest(name, tag).data)
            for descriptor in [document["config"], *document["layers"]]:
                assert readable(name, descriptor["digest"]), (name, tag, descriptor)
    registry.close()
