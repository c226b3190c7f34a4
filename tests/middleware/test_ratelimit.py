"""Issue 3: token buckets per client and class, 429 TOOMANYREQUESTS with Retry-After, failed logins counted."""

from __future__ import annotations

import time

import pytest
import webtest

from authcases import PASSWORDS, auth_options, basic, make_config
from dockyard.middleware.ratelimit import BucketStore, Limit
from dockyard.server.app import create_app
from dockyard.server.config import ConfigError


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def limited_app(tmp_path, clock, limits, *, auth=False, **options):
    chain = [{"name": "ratelimit", "options": {"limits": limits, **options}}]
    if auth:
        chain.append({"name": "auth", "options": auth_options(tmp_path)})
    return webtest.TestApp(create_app(make_config(tmp_path, *chain), clock=clock))


def test_burst_then_429_with_retry_after_then_refill(tmp_path):
    clock = Clock()
    app = limited_app(tmp_path, clock, {"manifest_read": {"rate": 2, "burst": 5}})
    statuses = [app.get("/v2/x/y/tags/list", status="*").status_int for _ in range(8)]
    assert statuses == [404] * 5 + [429] * 3
    r = app.get("/v2/x/y/tags/list", status=429)
    assert r.json["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert r.headers["Retry-After"] == "1"
    clock.now += 1.0  # 2 tokens back
    assert [app.get("/v2/x/y/tags/list", status="*").status_int for _ in range(3)] == [404, 404, 429]
    # Other classes have buckets of their own.
    assert app.get("/v2/").status_int == 200


def test_users_have_buckets_of_their_own_and_exempt_ones_none(tmp_path):
    clock = Clock()
    app = limited_app(tmp_path, clock, {"other": {"rate": 0, "burst": 2}}, auth=True, exempt=["admin"])
    for user in ("alice", "bob"):
        assert [app.get("/v2/", headers=basic(user, PASSWORDS[user]), status="*").status_int
                for _ in range(3)] == [200, 200, 429]
    assert all(app.get("/v2/", headers=basic("admin", PASSWORDS["admin"])).status_int == 200 for _ in range(5))


def test_failed_logins_consume_and_then_block_before_bcrypt(tmp_path):
    clock = Clock()
    app = limited_app(tmp_path, clock, {"failed_login": {"rate": 0.01, "burst": 3}}, auth=True)
    assert [app.get("/v2/", headers=basic("alice", "guess"), status="*").status_int
            for _ in range(4)] == [401, 401, 401, 429]
    # Even the right password waits now: the address is locked out until the bucket refills.
    r = app.get("/v2/", headers=basic("alice", PASSWORDS["alice"]), status=429)
    assert int(r.headers["Retry-After"]) == 100
    # Anonymous requests (no credentials) are not affected.
    assert app.get("/v2/", status=401).status_int == 401
    clock.now += 100
    assert app.get("/v2/", headers=basic("alice", PASSWORDS["alice"])).status_int == 200


def test_exempt_addresses(tmp_path):
    app = limited_app(tmp_path, Clock(), {"other": {"rate": 0, "burst": 1}}, exempt=["127.0.0.0/8"])
    assert all(app.get("/v2/").status_int == 200 for _ in range(5))


def test_bucket_store_cost(tmp_path):
    """The price of sharing: one SQLite transaction per request (printed; bounded generously)."""
    store = BucketStore(tmp_path / "rl.db")
    limit = Limit(1e9, 1e9)
    started = time.perf_counter()
    for i in range(2000):
        store.take(f"k{i % 50}", limit)
    per_request = (time.perf_counter() - started) / 2000
    print(f"ratelimit bucket take: {per_request * 1e6:.0f} us")
    assert per_request < 0.005


@pytest.mark.parametrize("options, message", [
    ({"limits": {"nonsense": {"rate": 1, "burst": 1}}}, "'limits.nonsense'"),
    ({"limits": {"write": {"rate": -1}}}, "'limits.write.rate'"),
    ({"limits": {"write": {"burst": 0}}}, "'limits.write.burst'"),
    ({"limits": {"write": {"rate": 1, "size": 3}}}, "'limits.write.size'"),
    ({"trusted_proxies": ["x"]}, "'trusted_proxies'"),
])
def test_bad_options(tmp_path, options, message):
    with pytest.raises(ConfigError, match="middleware 'ratelimit'") as info:
        create_app(make_config(tmp_path, {"name": "ratelimit", "options": options}))
    assert message in str(info.value)
