"""Issue 17: events end to end. `dockyard serve` (and the reference registry, Distribution 2.8.2 from Debian's
docker-registry, with its `notifications` section) as real processes, real clients, and a real HTTP receiver of the
test's own (tests/receiver.py) that records every request and checks every signature with the shared secret.

- docker, podman and skopeo pushes, a manifest delete, a tag delete and a repository delete produce exactly the
  expected events, in Distribution's format with the fields the reference sends, and in CloudEvents;
- the receiver down for a minute, then up: everything arrives, in order per repository;
- kill -9 after a push's commit and before its delivery: delivered after the restart, with the same ids;
- 1,000 pushes from 8 clients: 1,000 distinct event ids; on PostgreSQL with two nodes pushing to one repository
  at once, too, and the receiver gets that repository's events in its commit order;
- a receiver that always fails: events parked after the configured attempts; `dockyard events replay` delivers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from e2e_reference import reference_config
from receiver import Receiver

pytestmark = pytest.mark.e2e

SECRET = "e2e-shared-secret"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")

REFERENCE_NOTIFICATIONS = """\
notifications:
  endpoints:
    - name: e2e
      url: {url}
      timeout: 2s
      threshold: 3
      backoff: 1s
      ignore:
        # 2.8.2 applies `actions` only when some media type is ignored too (notifications/sinks.go)
        mediatypes: [application/x-dockyard-none]
        actions: [pull]
"""


def endpoint_toml(url: str, name: str = "hook", **options) -> str:
    lines = [f'[[notifications]]\nname = "{name}"\nurl = "{url}"\nsecret = "{SECRET}"']
    for key, value in options.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(0.1)


def push_small_image(http: requests.Session, base: str, repository: str, tag: str) -> str:
    """A push through the HTTP API, as clients make it: the config blob (monolithic), then the manifest by tag."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": uuid.uuid4().hex}).encode()
    r = http.post(f"{base}/v2/{repository}/blobs/uploads/?digest={sha256(config)}", data=config, timeout=60)
    assert r.status_code == 201, r.text
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha256(config), "size": len(config)}, "layers": []}).encode()
    r = http.put(f"{base}/v2/{repository}/manifests/{tag}", data=manifest,
                 headers={"Content-Type": OCI_MANIFEST}, timeout=60)
    assert r.status_code == 201, r.text
    return sha256(manifest)


def distinct(events: list[dict]) -> list[dict]:
    """At least once: keep each id's first arrival."""
    seen, kept = set(), []
    for event in events:
        if event["id"] not in seen:
            seen.add(event["id"])
            kept.append(event)
    return kept


def signed(receiver: Receiver) -> None:
    assert receiver.refused == 0 and all(r.signature_ok for r in receiver.requests()), \
        "a request's signature did not verify with the shared secret"


@pytest.fixture
def receiver():
    r = Receiver(secret=SECRET)
    yield r
    r.stop()


# -- what the clients' pushes and deletes send, against the reference registry's ---------------------------------

def start_reference(e2e, workdir: Path, url: str):
    """The reference registry with its `notifications` section, on a free port; (process, base URL)."""
    port = e2e.free_port()
    config = workdir / "reference.yml"
    config.write_text(reference_config(workdir / "reference-data", port, REFERENCE_NOTIFICATIONS.format(url=url)))
    with open(workdir / "reference.log", "wb") as log:
        proc = subprocess.Popen([e2e.need("docker-registry"), "serve", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(base), 30, "the reference registry")
    return proc, base


def _answers(base: str) -> bool:
    try:
        return requests.get(f"{base}/v2/", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def push_with_every_client(e2e, docker, podman, skopeo, host: str, workdir: Path, images: dict) -> dict:
    """docker, podman and skopeo each push one image to `host`; the pushed manifest's digest per repository."""
    digests = {}
    docker("tag", images["docker"], f"{host}/e2e/events-docker:1")
    out = docker("push", f"{host}/e2e/events-docker:1").out
    digests["e2e/events-docker"] = out.split("digest: ")[1].split()[0]
    digest_file = workdir / f"podman-digest-{host.replace(':', '_')}"
    podman("push", "--tls-verify=false", "--digestfile", digest_file, images["podman"], f"{host}/e2e/events-podman:1")
    digests["e2e/events-podman"] = digest_file.read_text().strip()
    skopeo.copy(images["skopeo"].ref("1"), f"docker://{host}/e2e/events-skopeo:1", "--preserve-digests")
    digests["e2e/events-skopeo"] = images["skopeo_digest"]
    return digests


def expected_push_events(base: str, repository: str, digest: str) -> list[tuple]:
    """What a push of the manifest `digest` to `repository` must send: a push per blob, then the manifest's."""
    manifest = requests.get(f"{base}/v2/{repository}/manifests/{digest}",
                            headers={"Accept": ", ".join(MANIFEST_TYPES)}, timeout=30)
    document = manifest.json()
    blobs = {d["digest"]: d["size"] for d in [document["config"], *document["layers"]]}
    return sorted(("push", repository, "application/octet-stream", d, s, None) for d, s in blobs.items()) + [
        ("push", repository, manifest.headers["Content-Type"], digest, len(manifest.content), "1")]


def shape(event: dict) -> tuple:
    target = event["target"]
    return (event["action"], target["repository"], target.get("mediaType"), target.get("digest"), target.get("size"),
            target.get("tag"))


def per_repository(events: list[dict], repository: str) -> list[tuple]:
    mine = [shape(e) for e in events if e["target"]["repository"] == repository]
    blobs = sorted(s for s in mine if s[2] == "application/octet-stream")  # uploads may run in parallel
    return blobs + [s for s in mine if s[2] != "application/octet-stream"]


def test_clients_pushes_and_deletes_send_the_events_the_reference_registry_sends(
        e2e, start_dockyard, docker, podman, skopeo, workdir, receiver):
    # one image per client, pushed to both registries
    (workdir / "context").mkdir()
    (workdir / "context" / "a.bin").write_bytes(os.urandom(20000))
    (workdir / "context" / "b.bin").write_bytes(os.urandom(30000))
    (workdir / "context" / "Dockerfile").write_text(f"FROM scratch\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\n"
                                                    f"LABEL nonce={uuid.uuid4().hex}\n")
    docker("build", "-q", "-t", "events-e2e:1", workdir / "context")
    layout = e2e.OCILayout(workdir / "layout")
    skopeo_image = layout.add_image(tag="1")
    # podman names an image pulled from a layout after its path, which must be a valid reference (no "_")
    podman_layout = e2e.OCILayout(Path(f"/tmp/dyevents-{uuid.uuid4().hex}"))
    try:
        podman_layout.add_image(tag="1")
        podman_id = podman("pull", f"oci:{podman_layout.path}:1").out.strip().splitlines()[-1]
    finally:
        shutil.rmtree(podman_layout.path, ignore_errors=True)
    images = {"docker": "events-e2e:1", "podman": podman_id, "skopeo": layout, "skopeo_digest": skopeo_image.digest}

    cloud = Receiver(secret=SECRET)
    try:
        server = start_dockyard(config=endpoint_toml(receiver.url) + endpoint_toml(cloud.url, "bus",
                                                                                   format="cloudevents"))
        reference_receiver = Receiver()
        reference, reference_base = start_reference(e2e, workdir, reference_receiver.url)
        try:
            pushed = push_with_every_client(e2e, docker, podman, skopeo, server.host, workdir, images)
            reference_pushed = push_with_every_client(e2e, docker, podman, skopeo, reference_base[7:], workdir,
                                                      images)
            assert reference_pushed == pushed  # the same manifests went to both
            deleted = pushed["e2e/events-skopeo"]
            for base in (server.url, reference_base):
                r = requests.delete(f"{base}/v2/e2e/events-skopeo/manifests/{deleted}", timeout=30)
                assert r.status_code == 202, r.text
            expected = {repository: expected_push_events(server.url, repository, digest)
                        for repository, digest in pushed.items() if repository != "e2e/events-skopeo"}
            expected["e2e/events-skopeo"] = sorted(
                ("push", "e2e/events-skopeo", "application/octet-stream", d, len(layout.blob(d)), None)
                for d in skopeo_image.blob_digests) + [
                ("push", "e2e/events-skopeo", OCI_MANIFEST, deleted, len(skopeo_image.manifest), "1"),
                ("delete", "e2e/events-skopeo", None, deleted, None, None),
                ("delete", "e2e/events-skopeo", None, None, None, "1")]
            total = sum(len(v) for v in expected.values())
            events = receiver.wait_for(total, 60)
            reference_events = reference_receiver.wait_for(total, 60)
            time.sleep(1)  # nothing more may come
            events, reference_events = receiver.events(), reference_receiver.events()
        finally:
            reference.send_signal(signal.SIGTERM)
            reference.wait(30)
            reference_receiver.stop()

        # exactly the expected events, on both registries
        assert len(events) == total == len({e["id"] for e in events})
        for repository, wanted in expected.items():
            assert per_repository(events, repository) == wanted, repository
            assert per_repository(reference_events, repository) == wanted, f"reference: {repository}"
        signed(receiver)

        # the same fields where the reference sends them, with the same values (host and port aside)
        by_shape = {shape(e): e for e in events}
        for theirs in reference_events:
            ours = by_shape[shape(theirs)]
            assert set(theirs) == set(ours) == {"id", "timestamp", "action", "target", "request", "actor", "source"}
            for section in ("target", "request", "actor", "source"):
                assert set(theirs[section]) <= set(ours[section]), (section, theirs[section], ours[section])
            for key, value in theirs["target"].items():
                mine = ours["target"][key]
                assert (mine.replace(server.host, "H") if key == "url" else mine) == \
                    (value.replace(reference_base[7:], "H") if key == "url" else value), key
            assert ours["request"]["method"] == theirs["request"]["method"]
            assert ours["request"]["useragent"] == theirs["request"]["useragent"]
            assert ours["request"]["host"] == server.host and theirs["request"]["host"] == reference_base[7:]
            assert ours["request"]["addr"].startswith("127.0.0.1:") and theirs["request"]["addr"].startswith(
                "127.0.0.1:")
            assert ours["actor"] == theirs["actor"] == {}

        # a tag delete and a repository delete: Dockyard's own (the reference has neither)
        requests.put(f"{server.url}/v2/e2e/events-docker/manifests/extra",
                     data=requests.get(f"{server.url}/v2/e2e/events-docker/manifests/1",
                                       headers={"Accept": ", ".join(MANIFEST_TYPES)}).content,
                     headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}, timeout=30)
        assert requests.delete(f"{server.url}/v2/e2e/events-docker/manifests/extra", timeout=30).status_code == 202
        assert requests.delete(f"{server.url}/v2/_dockyard/repositories/e2e/events-podman",
                               timeout=30).status_code == 202
        more = receiver.wait_for(total + 3, 30)
        docker_size = expected["e2e/events-docker"][-1][4]
        assert per_repository(more[total:], "e2e/events-docker") == [
            ("push", "e2e/events-docker", "application/vnd.docker.distribution.manifest.v2+json",
             pushed["e2e/events-docker"], docker_size, "extra"),
            ("delete", "e2e/events-docker", None, None, None, "extra")]
        assert per_repository(more[total:], "e2e/events-podman") == [("delete", "e2e/events-podman", None, None,
                                                                      None, None)]
        assert len(more) == total + 3

        # the same events, as CloudEvents, with the same ids
        cloud_events = cloud.wait_for(total + 3, 30)
        signed(cloud)
        assert all(r.content_type == "application/cloudevents+json" for r in cloud.requests())
        assert {e["id"] for e in cloud_events} == {e["id"] for e in more}
        for event in cloud_events:
            ours = next(e for e in more if e["id"] == event["id"])
            assert event["specversion"] == "1.0" and event["type"].startswith("io.dockyard.")
            assert event["data"]["target"] == ours["target"] and event["time"] == ours["timestamp"]
    finally:
        cloud.stop()


# -- durability and order -----------------------------------------------------------------------------------------

def test_a_receiver_down_for_a_minute_gets_everything_in_order_per_repository(start_dockyard, receiver):
    port = receiver.port
    receiver.stop()
    server = start_dockyard(config=endpoint_toml(receiver.url, backoff=1, max_backoff=8, max_attempts=1000,
                                                 actions=["push"], media_types=[OCI_MANIFEST]))
    http = requests.Session()
    pushed = {f"e2e/outage-{i}": [] for i in range(3)}
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 60:  # a minute of pushes while the receiver is down
        repository = f"e2e/outage-{n % 3}"
        pushed[repository].append(push_small_image(http, server.url, repository, f"t{n}"))
        n += 1
        time.sleep(1.5)
    state = http.get(f"{server.url}/v2/_dockyard/events", timeout=30).json()["endpoints"][0]
    assert state["backlog"] == n and state["retrying"] >= 1 and state["delivered"] == 0
    assert "ConnectionRefusedError" in state["last_error"]
    receiver.port = port
    receiver.start()
    events = distinct(receiver.wait_for(n, 60))
    assert len(events) == n
    for repository, digests in pushed.items():
        assert [e["target"]["digest"] for e in events if e["target"]["repository"] == repository] == digests
    signed(receiver)
    state = wait_until(lambda: (s := http.get(f"{server.url}/v2/_dockyard/events", timeout=30).json()[
        "endpoints"][0])["backlog"] == 0 and s, 30, "an empty backlog")
    assert state["delivered"] >= n and state["parked"] == 0


def test_kill_9_after_the_commit_and_before_delivery_delivers_after_the_restart(start_dockyard, receiver, workdir):
    port = receiver.port
    receiver.stop()  # nothing can be delivered before the kill
    config = endpoint_toml(receiver.url, backoff=0.2, max_backoff=1, actions=["push"], media_types=[OCI_MANIFEST])
    data = workdir / "data"
    server = start_dockyard(data=data, config=config)
    http = requests.Session()
    digests = [push_small_image(http, server.url, "e2e/killed", f"t{i}") for i in range(3)]
    with sqlite3.connect(data / "registry.db") as db:  # committed: the outbox has them, with their ids
        ids = [row[0] for row in db.execute("SELECT uid FROM events WHERE repository = 'e2e/killed' ORDER BY id")]
    assert len(ids) == 3
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(30)
    receiver.port = port
    receiver.start()
    restarted = start_dockyard(data=data, config=config)
    events = distinct(receiver.wait_for(3, 60))
    assert [e["id"] for e in events] == ids and [e["target"]["digest"] for e in events] == digests
    signed(receiver)
    assert restarted.proc.poll() is None


def push_concurrently(bases: list[str], repositories: list[str], clients: int, pushes: int) -> dict:
    """`clients` threads, each pushing `pushes // clients` images one after the other, to its registry and
    repository (round robin); {client: [(repository, manifest digest), ...]} in the order each client pushed."""
    done: dict[int, list] = {c: [] for c in range(clients)}
    errors = []

    def client(c: int) -> None:
        http = requests.Session()
        try:
            for k in range(pushes // clients):
                repository = repositories[c % len(repositories)]
                done[c].append((repository, push_small_image(http, bases[c % len(bases)], repository, f"c{c}-{k}")))
        except Exception as exc:  # shown below
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors[:5]
    return done


def check_load(receiver: Receiver, done: dict, pushes: int) -> list[dict]:
    events = receiver.wait_for(pushes, 180, what=lambda e: True)
    unique = distinct(events)
    assert len(unique) == pushes, f"{len(unique)} distinct event ids of {pushes} pushes"
    assert {e["target"]["digest"] for e in unique} == {d for pushed in done.values() for _, d in pushed}
    for c, pushed in done.items():  # each client's pushes were one after another: their events too
        mine = [e["target"]["tag"] for e in unique if e["target"]["tag"].startswith(f"c{c}-")]
        assert mine == [f"c{c}-{k}" for k in range(len(pushed))], f"client {c} out of order"
    signed(receiver)
    return unique


def test_a_thousand_pushes_from_eight_clients_a_thousand_event_ids(start_dockyard, receiver):
    server = start_dockyard(config=endpoint_toml(receiver.url, actions=["push"], media_types=[OCI_MANIFEST]))
    done = push_concurrently([server.url], [f"e2e/load-{i}" for i in range(4)], clients=8, pushes=1000)
    check_load(receiver, done, 1000)


def test_two_postgresql_nodes_pushing_to_one_repository_keep_its_order(start_dockyard, receiver, postgresql_url):
    config = f'database = "{postgresql_url}"\n' + endpoint_toml(receiver.url, actions=["push"],
                                                                 media_types=[OCI_MANIFEST])
    nodes = [start_dockyard(config=config), start_dockyard(config=config)]
    done = push_concurrently([n.url for n in nodes], ["e2e/shared"], clients=8, pushes=1000)
    unique = check_load(receiver, done, 1000)
    import psycopg

    with psycopg.connect(postgresql_url.split("?")[0]) as conn:
        seq = dict(conn.execute("SELECT uid, seq FROM events WHERE repository = 'e2e/shared'").fetchall())
    received = [seq[e["id"]] for e in unique]
    assert received == sorted(received) == list(range(1, 1001))  # the repository's commit order, nothing skipped
    assert len({e["source"]["instanceID"] for e in unique}) == 2  # both nodes took pushes


# -- parking and replay -----------------------------------------------------------------------------------------

def test_an_endpoint_that_always_fails_parks_its_events_and_replay_delivers_them(start_dockyard, receiver, workdir,
                                                                                  dockyard_bin):
    receiver.status = 500
    config = endpoint_toml(receiver.url, max_attempts=3, backoff=0.2, max_backoff=0.4, actions=["push"], batch=1,
                           media_types=[OCI_MANIFEST])
    data = workdir / "data"
    server = start_dockyard(data=data, config=config)
    http = requests.Session()
    digests = [push_small_image(http, server.url, "e2e/parked", f"t{i}") for i in range(3)]
    wait_until(lambda: http.get(f"{server.url}/v2/_dockyard/events", timeout=30).json()["endpoints"][0][
        "parked"] == 3, 60, "three parked events")
    assert receiver.refused == 9  # three attempts each
    toml = workdir / "cli.toml"
    toml.write_text(f'data = "{data}"\n' + config)
    listed = json.loads(subprocess.run([dockyard_bin, "events", "parked", "hook", "--json", "--config", str(toml)],
                                       capture_output=True, text=True, timeout=60, check=True).stdout)["events"]
    assert [row["attempts"] for row in listed] == [3, 3, 3]
    receiver.status = 200
    out = subprocess.run([dockyard_bin, "events", "replay", "hook", "--config", str(toml)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "3 events queued again" in out
    events = distinct(receiver.wait_for(3, 30))
    assert [e["target"]["digest"] for e in events] == digests
    assert [e["id"] for e in events] == [row["uid"] for row in listed]
    signed_ok = [r.signature_ok for r in receiver.requests()]
    assert signed_ok and all(signed_ok)
