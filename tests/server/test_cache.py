"""Cached listings never outlive the data behind them, whichever worker changed it."""

import webtest

from dockyard.server.app import create_app
from dockyard.server.cache import ENTRY_OVERHEAD, BoundedCache
from helpers import digest_of, image_manifest, put_manifest


def test_tags_list_sees_changes_made_by_another_worker(config, client):
    other = webtest.TestApp(create_app(config))
    data = image_manifest(client, "repo")
    put_manifest(client, "repo", "a", data)
    assert client.get("/v2/repo/tags/list").json["tags"] == ["a"]
    assert client.get("/v2/repo/tags/list?n=1").json["tags"] == ["a"]
    put_manifest(other, "repo", "b", data)
    assert client.get("/v2/repo/tags/list").json["tags"] == ["a", "b"]
    resp = client.get("/v2/repo/tags/list?n=1")
    assert resp.json["tags"] == ["a"] and "last=a" in resp.headers["Link"]
    other.delete("/v2/repo/manifests/a", status=202)
    assert client.get("/v2/repo/tags/list").json["tags"] == ["b"]
    other.delete(f"/v2/repo/manifests/{digest_of(data)}", status=202)
    assert client.get("/v2/repo/tags/list").json["tags"] == []


def test_catalog_sees_changes_made_by_another_worker(config, client):
    other = webtest.TestApp(create_app(config))
    put_manifest(client, "one", "v1", image_manifest(client, "one"))
    assert client.get("/v2/_catalog").json["repositories"] == ["one"]
    put_manifest(other, "two", "v1", image_manifest(other, "two"))
    assert client.get("/v2/_catalog").json["repositories"] == ["one", "two"]
    other.delete("/v2/_dockyard/repositories/one", status=202)
    assert client.get("/v2/_catalog").json["repositories"] == ["two"]
    data = image_manifest(other, "three")
    put_manifest(other, "three", "v1", data)
    assert client.get("/v2/_catalog").json["repositories"] == ["three", "two"]
    other.delete(f"/v2/three/manifests/{digest_of(data)}", status=202)
    assert client.get("/v2/_catalog").json["repositories"] == ["two"]


def test_bounded_cache_is_bounded_and_lru():
    cache = BoundedCache(max_bytes=3 * ENTRY_OVERHEAD, max_entry=6)
    cache.put("a", b"aaaa")
    cache.put("b", b"bbbb")
    assert cache.get("a") == (b"aaaa", None)  # a is now the most recently used
    cache.put("c", b"cccc")  # three entries and their overhead exceed the bound: b, the least recently used, goes
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    cache.put("big", b"x" * 7)  # larger than one entry may be: not kept
    assert cache.get("big") is None
