"""One side of the garbage-collection race (test_gc_race.py), as a thread or as a process of its own.

`push`: images into a repository of its own and two shared ones, as a client does it: HEAD each layer and upload
only the missing ones, PUT the manifest under a new tag (MANIFEST_BLOB_UNKNOWN: upload what is missing again and
retry); before each push it deletes its previous image in that repository, which leaves the shared layers' links
there unused, so collectable at once, just as the next manifest names them. Every acknowledged push and delete is
written as a JSON line. `gc`: collect garbage with a 2 s grace period, deleting untagged
manifests, again and again. Both stop after a number of rounds or at a deadline, whichever comes first.

    python race_worker.py push|gc DATA_DIR DATABASE_URL WORKER_ID ROUNDS SECONDS
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
import time

from dockyard.server.app import build_registry
from dockyard.server.bodies import StreamSource
from dockyard.server.config import Config
from dockyard.server.errors import ManifestBlobUnknown, RegistryError
from dockyard.server.registry import Body, Registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPOSITORIES = ("race/one", "race/two")
GRACE = 2.0
SHARED_LAYERS = [f"shared layer {i}".encode() * 50 for i in range(4)]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload_missing(registry: Registry, name: str, blobs: list[bytes]) -> None:
    for data in blobs:
        digest = digest_of(data)
        try:
            registry.blob(name, digest)  # HEAD: a client skips what the registry says it has
            continue
        except Exception:  # noqa: BLE001 - BLOB_UNKNOWN
            pass
        registry.monolithic_upload(name, digest, Body(StreamSource(io.BytesIO(data), len(data)), len(data)))


def readable(registry: Registry, name: str, digest: str) -> bool:
    """The blob is readable in `name`, and its bytes are the digest's."""
    try:
        blob = registry.blob(name, digest)
        with registry.read_blob(blob) as stream:
            return digest_of(stream.read()) == digest
    except RegistryError:  # BLOB_UNKNOWN: collected, or its link in the repository was
        return False


def manifest_of(config: bytes, layers: list[bytes]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(layer),
                    "size": len(layer)} for layer in layers],
    }).encode()


def push(registry: Registry, worker: str, rounds: int, deadline: float, out) -> None:
    """Each round replaces the worker's previous image: delete it, then push the next one over the same shared
    layers (a CI job cleaning up before it pushes). Between the two, the shared layers' links in that repository are
    unused, hence collectable at once, while the next manifest PUT is about to name them: the race."""
    rng = random.Random(worker)
    previous: dict[str, str] = {}
    for number in range(rounds):
        if time.monotonic() > deadline:
            break
        name = rng.choice((f"race/{worker}", f"race/{worker}", REPOSITORIES[number % 2]))
        if name in previous:
            # The image stood through a round of collections: every blob it names must still be readable here.
            digest, blobs = previous[name]
            lost = [d for d in blobs if not readable(registry, name, d)]
            if lost:
                out.write(json.dumps({"event": "lost", "repository": name, "digest": digest, "blobs": lost}) + "\n")
            registry.delete_manifest(name, digest)
            out.write(json.dumps({"event": "deleted", "repository": name, "digest": previous.pop(name)[0]}) + "\n")
            out.flush()
        config = f'{{"worker": "{worker}", "n": {number}}}'.encode()
        layers = [f"{worker} layer {number}".encode() * 20] + rng.sample(SHARED_LAYERS, rng.randint(2, 4))
        data = manifest_of(config, layers)
        tag = f"{worker}-{number}"
        for attempt in range(20):
            upload_missing(registry, name, [config, *layers])
            try:
                registry.put_manifest(name, tag, data, OCI_MANIFEST)
                break
            except ManifestBlobUnknown:  # collected between the HEAD and the PUT: a client uploads again
                continue
        else:
            raise AssertionError(f"{tag}: MANIFEST_BLOB_UNKNOWN 20 times in a row")
        out.write(json.dumps({"event": "pushed", "repository": name, "tag": tag, "digest": digest_of(data),
                              "blobs": [digest_of(b) for b in (config, *layers)]}) + "\n")
        out.flush()
        previous[name] = (digest_of(data), [digest_of(b) for b in (config, *layers)])


def collect(registry: Registry, rounds: int, deadline: float, out) -> None:
    runs = 0
    while runs < rounds and time.monotonic() < deadline:
        # Not 0: the orphan sweep would then take a blob the store has committed and the metadata not yet recorded
        # (a commit in flight looks like an orphan; only the grace period protects it). The links and blobs of
        # deleted images, which this race is about, are collectable at once whatever the grace.
        report = registry.collect_garbage(grace=GRACE, delete_untagged=True)
        runs += 1
        out.write(json.dumps({"event": "gc", "blobs": report.blobs_removed,
                              "manifests": report.manifests_removed}) + "\n")
        out.flush()


def run(role: str, registry: Registry, worker: str, rounds: int, seconds: float, out) -> None:
    deadline = time.monotonic() + seconds
    (push if role == "push" else collect)(registry, *((worker,) if role == "push" else ()), rounds, deadline, out)


def main(argv: list[str]) -> int:
    role, data, database, worker, rounds, seconds = argv
    registry = build_registry(Config(data=data, database=database))
    # Start-up recovery drops monolithic sessions as if no other process were uploading: every process is built
    # before any pushes (see the report of issue 14), then all go at once.
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        run(role, registry, worker, int(rounds), float(seconds), sys.stdout)
    finally:
        registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
