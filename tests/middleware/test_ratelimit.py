"""Issue 3: token buckets per client and class, 429 TOOMANYREQUESTS with Retry-After."""

from __future__ import annotations

import dataclasses

import pytest
import webtest

from authcases import PASSWORDS, auth_options, basic, make_config
from dockyard.middleware.buckets import BucketStore, Limit
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


def test_failed_login_limits_moved_to_auth(tmp_path):
    with pytest.raises(ConfigError, match="failed_logins"):
        limited_app(tmp_path, Clock(), {"failed_login": {"rate": 0.01, "burst": 3}})


def test_exempt_addresses(tmp_path):
    app = limited_app(tmp_path, Clock(), {"other": {"rate": 0, "burst": 1}}, exempt=["127.0.0.0/8"])
    assert all(app.get("/v2/").status_int == 200 for _ in range(5))


def test_bucket_store_refills_by_elapsed_time_and_is_shared(tmp_path):
    clock = Clock()
    one, other = BucketStore(tmp_path / "rl.db", clock=clock), BucketStore(tmp_path / "rl.db", clock=clock)
    limit = Limit(rate=0.5, burst=2)
    assert [one.take("k", limit), other.take("k", limit)] == [0.0, 0.0]  # two handles, one bucket
    assert one.take("k", limit) == pytest.approx(2.0) and other.empty("k", limit) == pytest.approx(2.0)
    clock.now += 2.0
    assert other.take("k", limit) == 0.0 and one.take("other key", limit) == 0.0


def test_nodes_on_one_postgresql_database_draw_from_one_bucket(tmp_path, postgresql_url):
    """A cluster: three nodes, each with its own data directory, on one database. The limit is the limit of one
    node, not three times it, and the signing key of tokens is one for all (a token from one node works on all)."""
    clock = Clock()
    chain = ({"name": "ratelimit", "options": {"limits": {"other": {"rate": 1, "burst": 6}}}},
             {"name": "auth", "options": {**auth_options(tmp_path), "token": {"service": "dockyard-test"}}})
    nodes = []
    for n in range(3):
        config = make_config(tmp_path / f"node{n}", *chain)
        nodes.append(webtest.TestApp(create_app(dataclasses.replace(config, database=postgresql_url), clock=clock)))
    statuses = [nodes[i % 3].get("/v2/", headers=basic("alice", PASSWORDS["alice"]), status="*").status_int
                for i in range(9)]
    assert statuses == [200] * 6 + [429] * 3
    assert not any((tmp_path / f"node{n}" / "data" / "ratelimit.db").exists() for n in range(3))
    clock.now += 3  # three tokens back, for the whole cluster
    token = nodes[0].get("/auth/token?service=dockyard-test&scope=repository:team/app:pull",
                         headers=basic("alice", PASSWORDS["alice"])).json["token"]
    assert [node.get("/v2/", headers={"Authorization": f"Bearer {token}"}, status="*").status_int
            for node in nodes + nodes[:1]] == [200, 200, 200, 429]


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


def test_a_bucket_file_that_cannot_be_opened_is_named(tmp_path):
    """`dockyard check-config` on a host whose data directory does not exist yet said "cannot open ''" (found by
    issue 14's cluster test): the message names the default file it tried."""
    from dockyard.server.pipeline import build_request_path

    config = make_config(tmp_path, {"name": "ratelimit"})
    config = dataclasses.replace(config, data=str(tmp_path / "no such directory"))
    with pytest.raises(ConfigError, match="no such directory/ratelimit.db"):
        build_request_path(config, None)
