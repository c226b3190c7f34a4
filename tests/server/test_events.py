"""Issue 17: events. What a change writes to the outbox, what each endpoint receives and in which format, retries,
parking and replay, filters, pulls, pruning, the admin API and the CLI, hostile settings and input.

The app runs in-process (webtest) on a fake clock; deliveries go to a real HTTP receiver of the test's own
(`receiver.py`) when the test calls the sender's round (`deliver_events`) itself, as the background loop does.
With `--metadata=postgresql` every test runs on PostgreSQL too.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
import threading
import time

import pytest
import webtest

from dockyard.server import cli
from dockyard.server.app import create_app
from dockyard.server.config import Config, ConfigError, load_config
from dockyard.server.events import DISTRIBUTION_MEDIA_TYPE
from helpers import OCI_MANIFEST, digest_of, image_manifest, push_blob, put_manifest
from receiver import Receiver

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
CONFIG_BLOB = b'{"os":"linux"}'
LAYER = b"layer-1"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def receiver():
    r = Receiver(secret="s3cret")
    yield r
    r.stop()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make_app(config, clock):
    apps = []

    def make(*endpoints: dict, **settings):
        app = create_app(dataclasses.replace(config, notifications=endpoints, **settings), clock=clock)
        apps.append(app)
        return app, webtest.TestApp(app, extra_environ={"REMOTE_ADDR": "10.1.2.3", "REMOTE_PORT": "40404"})
    yield make
    for app in apps:
        app.registry.close()


def endpoint(receiver: Receiver, name: str = "hook", **options) -> dict:
    return {"name": name, "url": receiver.url, "secret": "s3cret", **options}


def push_image(client, name: str, tag: str, *, layer: bytes = LAYER) -> bytes:
    data = image_manifest(client, name, layers=[layer])
    put_manifest(client, name, tag, data)
    return data


def deliver_all(app) -> int:
    total = 0
    while delivered := app.registry.deliver_events():
        total += delivered
    return total


def wire(events: list[dict]) -> list[tuple]:
    """(action, repository, digest or tag) of each event, in the order received."""
    return [(e["action"], e["target"]["repository"], e["target"].get("tag") or e["target"].get("digest"))
            for e in events]


# -- what a push sends ---------------------------------------------------------------------------------------------

def test_a_push_sends_distribution_s_events_signed_with_the_shared_secret(make_app, receiver, clock):
    app, client = make_app(endpoint(receiver))
    headers = {"User-Agent": "docker/27.0 go/go1.22", "Host": "registry.example:5000"}
    config_digest = push_blob(client, "team/app", CONFIG_BLOB)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(CONFIG_BLOB)}, "layers": []}).encode()
    client.put("/v2/team/app/manifests/v1", manifest, headers={**headers, "Content-Type": OCI_MANIFEST}, status=201)
    assert deliver_all(app) == 2
    requests = receiver.requests()
    assert [(r.content_type, len(r.events())) for r in requests] == [(DISTRIBUTION_MEDIA_TYPE, 2)]  # one envelope
    assert all(r.signature_ok for r in requests) and receiver.refused == 0
    blob_event, manifest_event = receiver.events()
    assert UUID_RE.fullmatch(blob_event["id"]) and blob_event["id"] != manifest_event["id"]
    assert blob_event["target"] == {
        "mediaType": "application/octet-stream", "size": len(CONFIG_BLOB), "digest": config_digest,
        "length": len(CONFIG_BLOB), "repository": "team/app",
        "url": f"http://localhost/v2/team/app/blobs/{config_digest}"}
    assert manifest_event == {
        "id": manifest_event["id"], "timestamp": "2023-11-14T22:13:20.000000Z", "action": "push",
        "target": {"mediaType": OCI_MANIFEST, "size": len(manifest), "digest": digest_of(manifest),
                   "length": len(manifest), "repository": "team/app",
                   "url": f"http://registry.example:5000/v2/team/app/manifests/{digest_of(manifest)}", "tag": "v1"},
        "request": {"id": manifest_event["request"]["id"], "addr": "10.1.2.3:40404", "host": "registry.example:5000",
                    "method": "PUT", "useragent": "docker/27.0 go/go1.22"},
        "actor": {}, "source": manifest_event["source"]}
    source = manifest_event["source"]
    assert set(source) == {"addr", "instanceID"} and source["addr"].endswith(":5000") and UUID_RE.fullmatch(
        source["instanceID"])
    assert list(manifest_event["target"]) == ["mediaType", "size", "digest", "length", "repository", "url", "tag"]
    body = requests[0].body
    assert requests[0].headers["x-dockyard-signature"] == "sha256=" + hmac.new(b"s3cret", body,
                                                                               hashlib.sha256).hexdigest()
    assert app.registry.event_status()[0]["delivered"] == 2


def test_cloudevents_carry_the_same_event_as_their_data(make_app, receiver):
    app, client = make_app(endpoint(receiver, format="cloudevents", actions=["push"], media_types=[OCI_MANIFEST]))
    data = push_image(client, "team/app", "v1")
    deliver_all(app)
    [request] = receiver.requests()
    assert request.content_type == "application/cloudevents+json" and request.signature_ok
    event = request.document
    assert event["specversion"] == "1.0" and UUID_RE.fullmatch(event["id"])
    assert event["type"] == "io.dockyard.push" and event["subject"] == "team/app:v1"
    assert event["source"].startswith("dockyard://") and event["time"] == "2023-11-14T22:13:20.000000Z"
    assert event["datacontenttype"] == "application/json"
    assert event["data"]["action"] == "push" and event["data"]["target"]["digest"] == digest_of(data)
    assert set(event["data"]) == {"action", "target", "request", "actor", "source"}


def test_tags_deletes_mounts_and_repository_deletes(make_app, receiver):
    app, client = make_app(endpoint(receiver, actions=["tag", "delete", "mount", "repository_delete"]))
    data = push_image(client, "team/app", "v1")
    digest = digest_of(data)
    put_manifest(client, "team/app", "v2", data)  # only a tag set on a manifest already there
    put_manifest(client, "team/app", "v3", data)
    client.delete("/v2/team/app/manifests/v3", status=202)  # a tag delete
    client.post(f"/v2/team/copy/blobs/uploads/?mount={digest_of(LAYER)}&from=team/app", status=201)
    client.delete(f"/v2/team/copy/blobs/{digest_of(LAYER)}", status=202)
    client.delete(f"/v2/team/app/manifests/{digest}", status=202)  # the manifest and its tags v1, v2
    client.delete("/v2/_dockyard/repositories/team/app", status=202)
    deliver_all(app)
    events = receiver.events()
    app_events = [e for e in events if e["target"]["repository"] == "team/app"]
    copy_events = [e for e in events if e["target"]["repository"] == "team/copy"]
    assert wire(app_events) == [  # in commit order per repository
        ("push", "team/app", "v2"), ("push", "team/app", "v3"), ("delete", "team/app", "v3"),
        ("delete", "team/app", digest), ("delete", "team/app", "v1"), ("delete", "team/app", "v2"),
        ("delete", "team/app", None)]
    assert wire(copy_events) == [("mount", "team/copy", digest_of(LAYER)), ("delete", "team/copy", digest_of(LAYER))]
    assert copy_events[0]["target"]["fromRepository"] == "team/app" and copy_events[0]["target"]["size"] == len(LAYER)
    assert app_events[-1]["target"] == {"repository": "team/app"} and app_events[-1]["request"]["method"] == "DELETE"
    actions = [event.action for _, event, _ in app.registry._metadata.events_after(0, 100)]
    assert actions == ["tag", "tag", "delete", "mount", "delete", "delete", "delete", "delete", "repository_delete"]


def test_a_refused_change_sends_nothing(make_app, receiver):
    app, client = make_app(endpoint(receiver), quotas=(("small/", 10),))
    client.post(f"/v2/small/app/blobs/uploads/?digest={digest_of(b'x' * 20)}", b"x" * 20, status=403)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest_of(b"absent"), "size": 6}, "layers": []}).encode()
    put_manifest(client, "team/app", "v1", manifest, status=400)
    client.delete("/v2/team/app/manifests/nope", status=404)
    assert deliver_all(app) == 0 and receiver.events() == []
    assert app.registry.event_status()[0]["backlog"] == 0


def test_filters_pick_actions_repositories_and_media_types(make_app, receiver):
    app, client = make_app(endpoint(receiver, name="manifests", repositories=["team/*"],
                                    media_types=["application/vnd.oci.image.manifest.*"]),
                           endpoint(receiver, name="deletes", actions=["delete"], repositories=["other"]))
    push_image(client, "team/app", "v1")
    push_image(client, "other", "v1", layer=b"other layer")
    client.delete("/v2/other/manifests/v1", status=202)
    client.delete("/v2/team/app/manifests/v1", status=202)
    deliver_all(app)
    assert sorted(wire(receiver.events())) == sorted([
        ("push", "team/app", "v1"),  # manifests: only the manifest's push (blobs are application/octet-stream)
        ("delete", "team/app", "v1"),  # no media type: passes the media type filter
        ("delete", "other", "v1")])  # deletes: only repository "other"


# -- delivery: order, retries, parking, replay ---------------------------------------------------------------------

def test_events_arrive_in_commit_order_per_repository_batched(make_app, receiver):
    app, client = make_app(endpoint(receiver, batch=3, actions=["push"], media_types=[OCI_MANIFEST]))
    for i in range(7):
        push_image(client, "team/app", f"v{i}", layer=f"layer {i}".encode())
        push_image(client, "team/lib", f"v{i}", layer=f"lib layer {i}".encode())
    assert deliver_all(app) == 14
    assert sorted(len(r.events()) for r in receiver.requests()) == [1, 1, 3, 3, 3, 3]
    for repository in ("team/app", "team/lib"):
        assert [e["target"]["tag"] for e in receiver.events() if e["target"]["repository"] == repository] == \
            [f"v{i}" for i in range(7)]


def test_failures_back_off_then_park_and_replay_delivers(make_app, receiver, clock):
    app, client = make_app(endpoint(receiver, max_attempts=3, backoff=10, max_backoff=15, actions=["push"],
                                    media_types=[OCI_MANIFEST], batch=1))
    push_image(client, "team/app", "v1")
    push_image(client, "team/app", "v2", layer=b"second")
    receiver.status = 503
    assert app.registry.deliver_events() == 0 and receiver.refused == 1
    state = client.get("/v2/_dockyard/events").json["endpoints"][0]
    assert (state["backlog"], state["retrying"], state["parked"]) == (2, 1, 0)
    assert state["last_error"] == "HTTP 503 Service Unavailable" and state["last_failure"] == "2023-11-14T22:13:20Z"
    assert app.registry.deliver_events() == 0 and receiver.refused == 1  # not due before the backoff
    for wait in (10, 15):  # backoff 10, then doubled but capped at 15
        clock.now += wait - 1
        assert app.registry.deliver_events() == 0 and receiver.refused == (1 if wait == 10 else 2)
        clock.now += 1
        app.registry.deliver_events()
    assert receiver.refused == 3  # v1 parked after its third attempt; the queue goes on at once:
    app.registry.deliver_events()
    assert receiver.refused == 4  # v2 failed its first
    state = client.get("/v2/_dockyard/events").json["endpoints"][0]
    assert (state["backlog"], state["parked"]) == (1, 1)
    parked = client.get("/v2/_dockyard/events/hook/parked").json["events"]
    assert [(p["repository"], p["target"]["tag"], p["attempts"], p["last_error"]) for p in parked] == \
        [("team/app", "v1", 3, "HTTP 503 Service Unavailable")]
    receiver.status = 200
    clock.now += 15
    assert deliver_all(app) == 1  # v2
    assert client.post_json("/v2/_dockyard/events/hook/replay", {}).json == {"endpoint": "hook", "replayed": 1}
    assert deliver_all(app) == 1
    assert [e["target"]["tag"] for e in receiver.events()] == ["v2", "v1"]  # a replayed event comes after
    assert len({e["id"] for e in receiver.events()}) == 2 and parked[0]["id"] == receiver.events()[1]["id"]
    state = client.get("/v2/_dockyard/events").json["endpoints"][0]
    assert (state["backlog"], state["parked"], state["delivered"]) == (0, 0, 2)


def test_a_delivered_event_is_replayed_by_id_with_the_same_id(make_app, receiver):
    app, client = make_app(endpoint(receiver, actions=["push"], media_types=[OCI_MANIFEST]))
    push_image(client, "team/app", "v1")
    deliver_all(app)
    [first] = receiver.events()
    resp = client.post_json("/v2/_dockyard/events/hook/replay", {"ids": [first["id"]]})
    assert resp.json["replayed"] == 1 and deliver_all(app) == 1
    assert receiver.events() == [first, first]  # at least once: the same event, byte for byte, the same id


def test_two_nodes_share_the_outbox_and_send_each_event_once(make_app, receiver, config, clock):
    """Two registries on one metadata (two nodes): their senders lease queues, so no event goes out twice."""
    app, client = make_app(endpoint(receiver, actions=["push"], media_types=[OCI_MANIFEST]))
    other, _ = make_app(endpoint(receiver, actions=["push"], media_types=[OCI_MANIFEST]))
    for i in range(12):
        push_image(client, f"team/app{i % 4}", f"v{i}", layer=f"layer {i}".encode())
    receiver.delay = 0.02
    counts = []
    threads = [threading.Thread(target=lambda a=a: counts.append(deliver_all(a))) for a in (app, other, app, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    events = receiver.events()
    assert sum(counts) == 12 and len(events) == 12 and len({e["id"] for e in events}) == 12
    for repository in {e["target"]["repository"] for e in events}:
        tags = [int(e["target"]["tag"][1:]) for e in events if e["target"]["repository"] == repository]
        assert tags == sorted(tags)


# -- the request: extra headers, credentials, timeouts, redirects --------------------------------------------------

def counting_posts(app) -> list[float]:
    """Wrap the sender's POST: the monotonic time of each request it makes, whatever the receiver records."""
    posts: list[float] = []
    post = app.registry.notifications.post

    def counting(*args):
        posts.append(time.monotonic())
        return post(*args)
    counting.close = post.close  # the registry closes its connections at the end
    app.registry.notifications.post = counting
    return posts


def test_an_endpoint_s_extra_headers_go_with_every_request(make_app, receiver, clock):
    """A first try, its retry, the next queued event and a pull batch: each request carries the extra headers, next
    to the content type and signature Dockyard sets; a User-Agent of theirs replaces Dockyard's, once."""
    headers = {"X-Team": "platform", "Authorization": "Bearer t0ken", "X-Empty": "", "user-agent": "platform-hook/1"}
    app, client = make_app(endpoint(receiver, headers=headers, actions=["push", "pull"], media_types=[OCI_MANIFEST],
                                    batch=1, backoff=5))
    push_image(client, "team/app", "v1")
    push_image(client, "team/app", "v2", layer=b"second")
    receiver.status = 500
    assert app.registry.deliver_events() == 0 and receiver.refused == 1
    receiver.status = 200
    clock.now += 5
    assert deliver_all(app) == 2  # v1 retried, then v2
    client.get("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert app.registry.notifications.flush_pulls() == 1
    requests = receiver.requests()
    assert [wire(r.events()) for r in requests] == [
        [("push", "team/app", "v1")], [("push", "team/app", "v2")], [("pull", "team/app", "v1")]]
    for request in requests:
        assert (request.headers.get("x-team"), request.headers.get("authorization"), request.headers.get("x-empty")) \
            == ("platform", "Bearer t0ken", "")
        assert request.content_type == DISTRIBUTION_MEDIA_TYPE and request.signature_ok
        assert [value for name, value in request.fields if name.lower() == "user-agent"] == ["platform-hook/1"]


@pytest.mark.parametrize("settings", [
    {"headers": {"content-type": "text/plain"}},
    {"headers": {"CONTENT-LENGTH": "0"}},
    {"headers": {"Host": "elsewhere.example"}},
    {"headers": {"x-dockyard-signature": "sha256=00"}},  # the default signature header, in any case
    {"headers": {"X-Dockyard-Signature": "sha256=00"}, "secret": ""},  # reserved even when nothing is signed
    {"headers": {"X-Hub-Signature-256": "sha256=00"}, "signature_header": "x-hub-signature-256"},
])
def test_extra_headers_cannot_replace_the_content_type_the_framing_or_the_signature(tmp_path, settings):
    entry = {"name": "a", "url": "http://x/", "secret": "s3cret", **settings}
    with pytest.raises(ConfigError, match=re.escape("notifications[0] (a).headers: ")):
        Config(data=str(tmp_path), notifications=(entry,))


@pytest.mark.parametrize("userinfo,credentials", [
    ("bot:pa55word", "bot:pa55word"),
    ("bot:p%40ss%3Aw0rd", "bot:p@ss:w0rd"),  # percent-encoded in the URL, decoded in the header
    ("bot", "bot:"),
])
def test_credentials_in_the_url_are_sent_as_basic_auth(make_app, receiver, userinfo, credentials):
    url = f"http://{userinfo}@127.0.0.1:{receiver.port}/events?team=app"
    app, client = make_app({"name": "hook", "url": url, "secret": "s3cret", "actions": ["push"],
                            "media_types": [OCI_MANIFEST], "batch": 1})
    push_image(client, "team/app", "v1")
    push_image(client, "team/app", "v2", layer=b"second")
    assert deliver_all(app) == 2
    requests = receiver.requests()
    assert len(requests) == 2 and all(r.signature_ok for r in requests)
    basic = "Basic " + base64.b64encode(credentials.encode()).decode()
    for request in requests:
        assert request.headers.get("authorization") == basic
        assert request.path == "/events?team=app" and request.headers["host"] == f"127.0.0.1:{receiver.port}"
    shown = client.get("/v2/_dockyard/events").json["endpoints"][0]["url"]
    assert shown == url.replace(userinfo, "bot:***" if ":" in userinfo else userinfo)


def test_a_receiver_slower_than_the_timeout_is_a_failed_attempt_retried_later(make_app, receiver, clock):
    app, client = make_app(endpoint(receiver, timeout=0.5, backoff=5, actions=["push"], media_types=[OCI_MANIFEST]))
    posts = counting_posts(app)
    push_image(client, "team/app", "v1")
    receiver.delay = 2.5  # then it answers 200: too late, the sender has given up
    started = time.monotonic()
    assert app.registry.deliver_events() == 0
    assert time.monotonic() - started < 2.0 and len(posts) == 1  # given up at the timeout, not at the answer
    state = client.get("/v2/_dockyard/events").json["endpoints"][0]
    assert (state["backlog"], state["retrying"], state["parked"], state["delivered"], state["last_success"]) == \
        (1, 1, 0, 0, None)
    assert "timed out" in state["last_error"] and state["last_failure"] == "2023-11-14T22:13:20Z"
    receiver.delay = 0
    clock.now += 4
    assert app.registry.deliver_events() == 0 and len(posts) == 1  # not due before its backoff
    clock.now += 1
    assert deliver_all(app) == 1 and len(posts) == 2
    state = client.get("/v2/_dockyard/events").json["endpoints"][0]
    assert (state["backlog"], state["retrying"], state["delivered"], state["last_success"]) == \
        (0, 0, 1, "2023-11-14T22:13:25Z")
    # The slow receiver took the first request in the end: at least once, the same event with the same id.
    events = receiver.wait_for(2, 10)
    assert wire(events) == [("push", "team/app", "v1")] * 2 and events[0]["id"] == events[1]["id"]


@pytest.mark.parametrize("status,reason", [
    (301, "Moved Permanently"), (302, "Found"), (307, "Temporary Redirect"), (308, "Permanent Redirect")])
def test_a_redirect_is_a_failure_not_a_delivery(make_app, receiver, clock, status, reason):
    """Distribution counts a 3xx as delivered; Dockyard as a wrong URL: retried, and never followed."""
    elsewhere = Receiver(secret="s3cret")
    try:
        app, client = make_app(endpoint(receiver, backoff=5, actions=["push"], media_types=[OCI_MANIFEST]))
        push_image(client, "team/app", "v1")
        receiver.status, receiver.location = status, elsewhere.url
        assert app.registry.deliver_events() == 0 and receiver.refused == 1 and receiver.events() == []
        assert elsewhere.events() == [] and elsewhere.refused == 0  # not followed either
        state = client.get("/v2/_dockyard/events").json["endpoints"][0]
        assert (state["backlog"], state["retrying"], state["delivered"], state["last_success"]) == (1, 1, 0, None)
        assert state["last_error"] == f"HTTP {status} {reason}"
        receiver.status = 200
        clock.now += 5
        assert deliver_all(app) == 1 and wire(receiver.events()) == [("push", "team/app", "v1")]
        assert client.get("/v2/_dockyard/events").json["endpoints"][0]["delivered"] == 1
    finally:
        elsewhere.stop()


# -- pulls, garbage collection, pruning ----------------------------------------------------------------------------

def test_pull_events_are_batched_off_the_outbox(make_app, receiver):
    app, client = make_app(endpoint(receiver, actions=["pull"]))
    data = push_image(client, "team/app", "v1")
    before = app.registry._metadata.events_after(0, 1000)
    for _ in range(3):
        client.get("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    client.get(f"/v2/team/app/blobs/{digest_of(LAYER)}")
    client.head("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})  # a HEAD pulls nothing
    assert app.registry._metadata.events_after(0, 1000) == before == []  # no outbox write, not even for the push
    assert app.registry.notifications.flush_pulls() == 4
    [request] = receiver.requests()
    assert request.signature_ok and wire(request.events()) == [("pull", "team/app", "v1")] * 3 + [
        ("pull", "team/app", digest_of(LAYER))]
    assert request.events()[0]["target"]["digest"] == digest_of(data)
    assert app.registry.notifications.flush_pulls() == 0


def test_pulls_cost_nothing_unless_an_endpoint_wants_them(make_app, receiver):
    app, client = make_app(endpoint(receiver))
    push_image(client, "team/app", "v1")
    client.get("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert not app.registry.pulls_wanted and app.registry.notifications.pulls.take() == []


def test_garbage_collection_reports_the_manifests_it_removes(make_app, receiver, clock):
    app, client = make_app(endpoint(receiver, actions=["gc"]))
    data = push_image(client, "team/app", "v1")
    put_manifest(client, "team/app", "v1", image_manifest(client, "team/app", layers=[b"new"]))
    clock.now += 10
    client.post_json("/v2/_dockyard/gc", {"grace_seconds": 0, "delete_untagged": True, "dry_run": True})
    assert deliver_all(app) == 0  # a dry run rolls its events back with the rest
    client.post_json("/v2/_dockyard/gc", {"grace_seconds": 0, "delete_untagged": True})
    deliver_all(app)
    assert wire(receiver.events()) == [("delete", "team/app", digest_of(data))]
    assert [e.action for _, e, _ in app.registry._metadata.events_after(0)] == ["gc"]


def test_delivered_events_are_pruned_after_the_retention_period(make_app, receiver, clock):
    app, client = make_app(endpoint(receiver, actions=["push"], media_types=[OCI_MANIFEST]), events_retention=3600)
    push_image(client, "team/app", "v1")
    assert deliver_all(app) == 1
    receiver.status = 500
    push_image(client, "team/lib", "v1")  # waiting: kept however old
    deliver_all(app)
    clock.now += 3600
    assert app.registry.notifications.prune() == 0  # not older than the retention period yet
    clock.now += 1
    assert app.registry.notifications.prune() == 1
    assert [event.repository for _, event, _ in app.registry._metadata.events_after(0)] == ["team/lib"]


# -- hostile settings and input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry,named", [
    ({"url": "http://x/"}, "name"),
    ({"name": "../etc", "url": "http://x/"}, "name"),
    ({"name": "a"}, "url"),
    ({"name": "a", "url": "ftp://x/"}, "url"),
    ({"name": "a", "url": "http:///nohost"}, "url"),
    ({"name": "a", "url": "http://x:99999999/"}, "url"),
    ({"name": "a", "url": "http://x/\r\nHost: evil"}, "url"),
    ({"name": "a", "url": "http://x/", "headers": {"X-A": "1\r\nX-Injected: 2"}}, "headers"),
    ({"name": "a", "url": "http://x/", "headers": {"Content-Type": "text/plain"}}, "headers"),
    ({"name": "a", "url": "http://x/", "headers": {"Bad Name": "v"}}, "headers"),
    ({"name": "a", "url": "http://x/", "headers": ["X-A: 1"]}, "headers"),
    ({"name": "a", "url": "http://x/", "timeout": -1}, "timeout"),
    ({"name": "a", "url": "http://x/", "timeout": "5s"}, "timeout"),
    ({"name": "a", "url": "http://x/", "timeout": True}, "timeout"),
    ({"name": "a", "url": "http://x/", "actions": ["push", "explode"]}, "actions"),
    ({"name": "a", "url": "http://x/", "actions": [1]}, "actions"),
    ({"name": "a", "url": "http://x/", "format": "xml"}, "format"),
    ({"name": "a", "url": "http://x/", "format": "cloudevents", "batch": 5}, "batch"),
    ({"name": "a", "url": "http://x/", "max_attempts": 0}, "max_attempts"),
    ({"name": "a", "url": "http://x/", "max_attempts": 2.5}, "max_attempts"),
    ({"name": "a", "url": "http://x/", "backoff": 10, "max_backoff": 1}, "max_backoff"),
    ({"name": "a", "url": "http://x/", "secret": 42}, "secret"),
    ({"name": "a", "url": "http://x/", "signature_header": "Content-Length"}, "signature_header"),
    ({"name": "a", "url": "http://x/", "repositories": [""]}, "repositories"),
    ({"name": "a", "url": "http://x/", "surprise": 1}, "surprise"),
    ("http://x/", "expected a table"),
])
def test_hostile_notification_settings_stop_start_up_naming_the_key(tmp_path, entry, named):
    with pytest.raises(ConfigError, match=re.escape(named)) as caught:
        Config(data=str(tmp_path), notifications=(entry,))
    assert "setting 'notifications'" in str(caught.value)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(overrides={"notifications": [entry]}, environ={})
    with pytest.raises(ConfigError, match="expected a list"):
        load_config(overrides={"notifications": "http://x/"}, environ={})


def test_notification_settings_come_from_the_file_only_and_never_echo_a_secret(tmp_path, capsys):
    config = tmp_path / "dockyard.toml"
    config.write_text('[[notifications]]\nname = "ci"\nurl = "https://bot:pa55word@ci.example/hook"\n'
                      'secret = "s3cret-value"\nheaders = { Authorization = "Bearer t0ken" }\n'
                      '[[notifications]]\nname = "ci"\nurl = "http://other/"\n')
    with pytest.raises(ConfigError, match="used twice: ci"):
        load_config(config, environ={})
    config.write_text('[[notifications]]\nname = "ci"\nurl = "https://bot:pa55word@ci.example/hook"\n'
                      'secret = "s3cret-value"\nheaders = { Authorization = "Bearer t0ken" }\n')
    loaded = load_config(config, environ={})
    assert loaded.notifications[0].headers == (("Authorization", "Bearer t0ken"),)
    with pytest.raises(ConfigError, match="notifications"):
        load_config(environ={"DOCKYARD_NOTIFICATIONS": "[]"})
    assert cli.main(["check-config", "--config", str(config), "--data", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "notifications = (Endpoint(name='ci', url='https://bot:***@ci.example/hook'" in out
    for secret in ("s3cret-value", "t0ken", "pa55word"):
        assert secret not in out


ADMIN_REFUSALS = [
    ("get", "/v2/_dockyard/events/nobody/parked", None, 404, "NOT_FOUND"),
    ("post_json", "/v2/_dockyard/events/nobody/replay", {}, 404, "NOT_FOUND"),
    ("get", "/v2/_dockyard/events/hook/parked?n=-1", None, 400, "PAGINATION_NUMBER_INVALID"),
    ("get", "/v2/_dockyard/events/hook/parked?n=x", None, 400, "PAGINATION_NUMBER_INVALID"),
    ("get", "/v2/_dockyard/events/hook/parked?last=-3", None, 400, "BAD_REQUEST"),
    ("get", "/v2/_dockyard/events/hook/parked?last=" + "9" * 5000, None, 400, "BAD_REQUEST"),
    ("post_json", "/v2/_dockyard/events/hook/replay", {"ids": "all"}, 400, "BAD_REQUEST"),
    ("post_json", "/v2/_dockyard/events/hook/replay", {"ids": []}, 400, "BAD_REQUEST"),
    ("post_json", "/v2/_dockyard/events/hook/replay", {"ids": [1, 2]}, 400, "BAD_REQUEST"),
    ("post_json", "/v2/_dockyard/events/hook/replay", {"ids": ["x" * 101]}, 400, "BAD_REQUEST"),
    ("post_json", "/v2/_dockyard/events/hook/replay", {"ids": ["a"] * 1001}, 400, "BAD_REQUEST"),
    ("post_json", "/v2/_dockyard/events/hook/replay", {"ids": ["00000000-0000-4000-8000-000000000000"]}, 404,
     "NOT_FOUND"),
    ("post_json", "/v2/_dockyard/events/hook/replay", [], 400, "BAD_REQUEST"),
    ("post", "/v2/_dockyard/events/hook/replay", b"{not json", 400, "BAD_REQUEST"),
    ("post", "/v2/_dockyard/events/hook/replay", b"[" * 100000, 413, "TOO_LARGE"),
    ("delete", "/v2/_dockyard/events", None, 405, "UNSUPPORTED"),
    ("get", "/v2/_dockyard/events/hook/replay", None, 405, "UNSUPPORTED"),
    ("get", "/v2/_dockyard/events/%00/parked", None, 400, "BAD_REQUEST"),
    ("get", "/v2/_dockyard/events/h%C3%A9/parked", None, 404, "NOT_FOUND"),
]


@pytest.mark.parametrize("method,path,body,status,code", ADMIN_REFUSALS)
def test_hostile_admin_input_is_a_4xx_in_the_spec_s_shape(make_app, receiver, method, path, body, status, code):
    app, client = make_app(endpoint(receiver))
    kwargs = {} if body is None else {"params": body}
    if method == "post":
        kwargs["headers"] = {"Content-Type": "application/json"}
    resp = getattr(client, method)(path, status=status, **kwargs)
    error = resp.json["errors"][0]
    assert error["code"] == code and set(error) == {"code", "message", "detail"}


def test_the_admin_api_lists_parked_events_page_by_page(make_app, receiver, clock):
    app, client = make_app(endpoint(receiver, max_attempts=1, actions=["push"], media_types=[OCI_MANIFEST]))
    receiver.status = 500
    for i in range(3):
        push_image(client, "team/app", f"v{i}", layer=f"layer {i}".encode())
    for _ in range(3):  # each round parks one (max_attempts 1) and stops there
        app.registry.deliver_events()
    first = client.get("/v2/_dockyard/events/hook/parked?n=2")
    assert [e["target"]["tag"] for e in first.json["events"]] == ["v0", "v1"]
    last = first.json["events"][-1]["number"]
    assert first.headers["Link"] == f'<http://localhost/v2/_dockyard/events/hook/parked?n=2&last={last}>; rel="next"'
    assert [e["target"]["tag"] for e in client.get(f"/v2/_dockyard/events/hook/parked?n=2&last={last}").json[
        "events"]] == ["v2"]
    assert client.get("/v2/_dockyard/events").json["endpoints"][0]["parked"] == 3


def test_no_endpoint_no_events_no_cost(config):
    app = create_app(config)
    client = webtest.TestApp(app)
    push_image(client, "team/app", "v1")
    assert client.get("/v2/_dockyard/events").json == {"endpoints": []}
    assert app.registry._metadata.events_after(0) == [] and app.registry.deliver_events() == 0
    app.registry.close()


def test_the_events_command_shows_lists_and_replays(make_app, receiver, config, tmp_path, capsys):
    app, client = make_app(endpoint(receiver, max_attempts=1, actions=["push"], media_types=[OCI_MANIFEST]))
    receiver.status = 500
    push_image(client, "team/app", "v1")
    deliver_all(app)
    toml = tmp_path / "dockyard.toml"
    toml.write_text(f'data = "{config.data}"\n' + (f'database = "{config.database}"\n' if config.database else "")
                    + f'[[notifications]]\nname = "hook"\nurl = "{receiver.url}"\nsecret = "s3cret"\n')
    assert cli.main(["events", "status", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hook: backlog 0, parked 1, retrying 0, delivered 0") and "HTTP 500" in out
    assert cli.main(["events", "parked", "hook", "--json", "--config", str(toml)]) == 0
    [parked] = json.loads(capsys.readouterr().out)["events"]
    assert cli.main(["events", "parked", "hook", "--config", str(toml)]) == 0
    assert f"{parked['uid']}  #{parked['number']}  push  team/app:v1" in capsys.readouterr().out
    assert cli.main(["events", "replay", "nobody", "--config", str(toml)]) == 2
    assert "no such notification endpoint" in capsys.readouterr().err
    assert cli.main(["events", "replay", "hook", "--id", "not-an-event", "--config", str(toml)]) == 2
    assert "no such event" in capsys.readouterr().err
    assert cli.main(["events", "parked", "--config", str(toml)]) == 2
    for bad in (["--limit", "0"], ["--limit", "x"], ["--after", "-1"], ["--limit", "9" * 30]):
        with pytest.raises(SystemExit) as exited:
            cli.main(["events", "parked", "hook", *bad, "--config", str(toml)])
        assert exited.value.code == 2
    capsys.readouterr()
    assert cli.main(["events", "replay", "hook", "--config", str(toml)]) == 0
    assert "1 events queued again for hook" in capsys.readouterr().out
    receiver.status = 200
    assert deliver_all(app) == 1 and [e["target"]["tag"] for e in receiver.events()] == ["v1"]


def test_one_worker_per_node_sends_and_a_standby_takes_over(make_app, receiver):
    """The sender threads of a node's workers: the holder of the node's lock delivers, the others stand by (they
    would only compete for the same queues); when the holder stops, a standby takes over."""
    first, client = make_app(endpoint(receiver, actions=["push"], media_types=[OCI_MANIFEST]))
    second, _ = make_app(endpoint(receiver, actions=["push"], media_types=[OCI_MANIFEST]))  # same data directory
    sent = {"first": 0, "second": 0}

    def counting(name, post):
        def wrapped(*args):
            sent[name] += 1
            return post(*args)
        wrapped.close = post.close  # the registry closes its connections at the end
        return wrapped
    first.registry.notifications.post = counting("first", first.registry.notifications.post)
    second.registry.notifications.post = counting("second", second.registry.notifications.post)
    stops = {"first": threading.Event(), "second": threading.Event()}
    threads = {name: threading.Thread(target=app.registry.notifications.run, args=(stops[name],), daemon=True)
               for name, app in (("first", first), ("second", second))}
    threads["first"].start()
    time.sleep(0.3)
    threads["second"].start()
    push_image(client, "team/app", "v1")
    assert len(receiver.wait_for(1, 10)) == 1 and sent == {"first": 1, "second": 0}
    stops["first"].set()
    threads["first"].join(10)
    push_image(client, "team/app", "v2", layer=b"second")
    assert len(receiver.wait_for(2, 15)) == 2 and sent == {"first": 1, "second": 1}
    stops["second"].set()
    threads["second"].join(10)
