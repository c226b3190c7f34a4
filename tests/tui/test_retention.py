"""The retention planner: which tags the rules pick, and the bytes a deletion frees, shared layers counted right."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dockyard.tui.client import RepositoryStats
from dockyard.tui.images import Footprint, Inventory, TagRow, load_tags
from dockyard.tui.retention import (NO_REFERRERS_API, NOTHING_REFERS, RetentionRules, blobs_held_elsewhere,
                                    make_plan, plan, select, with_referrers)
from seed import LAYERS, SIGNATURE_TYPE, Seeder, seed

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


def days_ago(n: float) -> datetime:
    return NOW - timedelta(days=n)


TAGS = [TagRow("v1", pushed=days_ago(40)), TagRow("v2", pushed=days_ago(20)), TagRow("v3", pushed=days_ago(5)),
        TagRow("pr-1", pushed=days_ago(30)), TagRow("pr-2", pushed=days_ago(1)), TagRow("nodate")]


@pytest.mark.parametrize("rules, doomed", [
    (RetentionRules(), []),
    (RetentionRules(keep_newest=2), ["nodate", "pr-1", "v1", "v2"]),
    (RetentionRules(older_than_days=10), ["pr-1", "v1", "v2"]),
    (RetentionRules(keep_newest=1, older_than_days=10), ["pr-1", "v1", "v2"]),
    (RetentionRules(keep_newest=4, older_than_days=10), ["v1"]),
    (RetentionRules(pattern="pr-*"), ["pr-1", "pr-2"]),
    (RetentionRules(pattern="pr-*", keep_newest=1), ["pr-1"]),
    (RetentionRules(pattern="v*", older_than_days=25), ["v1"]),
    (RetentionRules(keep_newest=0, pattern="nomatch*"), []),
])
def test_rules_select_tags(rules, doomed):
    assert select(TAGS, rules, NOW) == doomed


def fp(digest: str, blobs: dict, manifest_bytes: int = 100, children=()) -> Footprint:
    return Footprint(digest, "application/vnd.oci.image.manifest.v1+json", manifest_bytes, dict(blobs),
                     list(children))


def test_shared_layers_free_nothing_while_a_kept_manifest_uses_them():
    footprints = {"m1": fp("m1", {"base": 1000, "l1": 10}), "m2": fp("m2", {"base": 1000, "l2": 20}),
                  "m3": fp("m3", {"l3": 30})}
    tags = {"a": "m1", "b": "m2", "b-alias": "m2", "c": "m3"}
    p = plan("r", tags, footprints, ["a", "b"])
    # m2 keeps its other tag: only the tag goes; m1 goes; base stays because m2 still uses it
    assert p.manifests == ["m1"] and p.untag == ["b"]
    assert p.blobs == {"l1": 10} and p.bytes_freed == 10 + 100
    p = plan("r", tags, footprints, ["a", "b", "b-alias"])
    assert p.manifests == ["m1", "m2"] and p.untag == []
    assert p.blobs == {"base": 1000, "l1": 10, "l2": 20} and p.bytes_freed == 1030 + 200
    p = plan("r", tags, footprints, ["a", "b", "b-alias"], held_elsewhere={"base"})
    assert p.blobs == {"l1": 10, "l2": 20} and p.kept_by_others == {"base": 1000}


def test_an_index_takes_its_children_unless_a_kept_index_lists_them():
    child1, child2 = fp("c1", {"x": 5}, 50), fp("c2", {"y": 7}, 60)
    footprints = {"i1": fp("i1", {}, 300, [child1, child2]), "i2": fp("i2", {}, 400, [child2]),
                  "c1": child1, "c2": child2}
    tags = {"multi": "i1", "other": "i2", "amd64": "c1"}
    p = plan("r", tags, footprints, ["multi"])
    # c1 still has its own tag: it stays, and so do its blobs
    assert p.manifests == ["i1"] and p.blobs == {} and p.bytes_freed == 300
    p = plan("r", tags, footprints, ["multi", "amd64"])
    assert p.manifests == ["i1", "c1"] and p.blobs == {"x": 5} and p.bytes_freed == 5 + 300 + 50
    # a platform tag on a child that a kept index lists: the tag goes, the manifest stays
    p = plan("r", {"multi": "i1", "amd64": "c1"}, footprints, ["amd64"])
    assert p.manifests == [] and p.untag == ["amd64"] and p.bytes_freed == 0


def test_deleting_a_manifest_by_digest_takes_every_tag_that_points_at_it():
    footprints = {"m1": fp("m1", {"l1": 10}), "m2": fp("m2", {"l2": 20})}
    p = plan("r", {"a": "m1", "a2": "m1", "b": "m2"}, footprints, [], manifests=["m1"])
    assert p.tags == ["a", "a2"] and p.manifests == ["m1"] and p.bytes_freed == 110


@pytest.fixture
def seeded(registry):
    """The real app in this process, seeded; a client; and apps/web's inventory as the tags screen loads it."""
    s = seed(registry.url, transport=registry.transport)
    client = registry.client()
    inventory = Inventory("apps/web")
    load_tags(client, inventory, admin=True, on_rows=lambda rows: None)
    return registry.transport, s, client, inventory


def test_plan_against_seeded_registry_counts_the_layer_apps_api_shares(seeded):
    transport, s, client, inventory = seeded
    tags = {t: r.digest for t, r in inventory.tags.items()}
    # every tag of apps/web goes: BASE would be freed here, but apps/api holds it too
    everything = plan("apps/web", tags, inventory.footprints, list(tags))
    assert LAYERS["base"] in everything.blobs.values()
    stats = {r.name: r for page in client.repositories() for r in page}
    held = blobs_held_elsewhere(client, "apps/web", everything.blobs, stats)
    base = next(d for d, size in s.a.blobs.items() if size == LAYERS["base"])
    assert held == {base}
    p = plan("apps/web", tags, inventory.footprints, list(tags), held_elsewhere=held)
    assert base not in p.blobs and p.kept_by_others == {base: LAYERS["base"]}
    expected_blobs = {**s.a.blobs, **s.b.blobs, **s.c.blobs, **s.amd64.blobs, **s.arm64.blobs}
    del expected_blobs[base]
    assert p.blobs == expected_blobs
    assert p.manifest_bytes == sum(x.manifest_bytes for x in (s.a, s.b, s.c, s.multi, s.amd64, s.arm64))


@pytest.mark.parametrize("admin", [True, False])
def test_make_plan_leaves_out_what_other_repositories_hold_only_where_it_can_ask(seeded, admin):
    transport, s, client, inventory = seeded
    stats = {r.name: r for page in client.repositories() for r in page}
    base = next(d for d, size in s.a.blobs.items() if size == LAYERS["base"])
    transport.clear()
    result, note = make_plan(client, admin, inventory, stats, list(inventory.tags))
    assert note == ""
    assert (base in result.kept_by_others) is admin and (base in result.blobs) is not admin
    assert result.other_repositories_checked is (True if admin else None)
    # apps/api is the one other repository sharing bytes: only it is asked, one HEAD per candidate blob
    heads = transport.sent("HEAD", "/v2/*")
    assert {r.url.path.split("/blobs/")[0] for r in heads} == ({"/v2/apps/api"} if admin else set())
    assert len(heads) == (len(result.blobs) + len(result.kept_by_others) if admin else 0)


def test_held_elsewhere_asks_nobody_when_the_repository_shares_nothing(seeded):
    transport, s, client, inventory = seeded
    stats = {"tools/cli": RepositoryStats("tools/cli", 1, 1, 643, 0),
             "apps/web": RepositoryStats("apps/web", 6, 6, 1, 4096)}
    before = len(transport.log)
    assert blobs_held_elsewhere(client, "tools/cli", ["sha256:x"], stats) == set()
    assert len(transport.log) == before
    stats["apps/api"] = RepositoryStats("apps/api", 1, 1, 1, 4096)
    assert blobs_held_elsewhere(client, "apps/api", [f"sha256:{i}" for i in range(10)], stats, limit=5) is None
    assert len(transport.log) == before


# -- issue 15: the same deletion with the manifests' referrers ------------------------------------------------------


def test_referrers_go_first_and_blobs_kept_referrers_use_are_kept(make_registry):
    registry = make_registry()
    s = seed(registry.url, transport=registry.transport)  # c's SBOM uses the empty config {}
    seeder = Seeder(registry.url, registry.transport)
    sig = seeder.signature("apps/web", s.b, "b")  # b's signature uses {} too
    seeder.close()
    empty = next(d for d, size in sig.blobs.items() if size == 2)
    client = registry.client()
    inventory = Inventory("apps/web")
    load_tags(client, inventory, admin=True, on_rows=lambda rows: None)
    alone, _ = make_plan(client, True, inventory, {}, [], [s.b.digest])
    choice = with_referrers(client, True, inventory, {}, [], [s.b.digest], alone)
    assert choice.plan.manifests == [sig.digest, s.b.digest]  # the referrer before its subject
    assert choice.plan.referrers == {sig.digest: SIGNATURE_TYPE}
    assert empty not in choice.plan.blobs and choice.note == ""  # c's SBOM keeps it
    assert choice.plan.bytes_freed == alone.bytes_freed + sig.manifest_bytes + sum(sig.blobs.values()) - 2

    # past the limit of kept manifests to ask, the count says it is an upper bound
    bound = with_referrers(client, True, inventory, {}, [], [s.b.digest], alone, kept_limit=0)
    assert empty in bound.plan.blobs and "upper bound" in bound.note

    nothing = make_plan(client, True, inventory, {}, [], [s.a.digest])[0]
    assert with_referrers(client, True, inventory, {}, [], [s.a.digest], nothing).reason == NOTHING_REFERS
    untag_only = make_plan(client, True, inventory, {}, ["stable"])[0]
    assert untag_only.manifests == [] and with_referrers(client, True, inventory, {}, ["stable"], [],
                                                         untag_only) is None


def test_without_the_referrers_api_the_choice_says_why(make_registry):
    registry = make_registry(like_distribution=True)
    s = seed(registry.url, transport=registry.transport, referrer=False)
    client = registry.client()
    inventory = Inventory("apps/web")
    load_tags(client, inventory, admin=False, on_rows=lambda rows: None)
    alone, _ = make_plan(client, False, inventory, {}, [], [s.multi.digest])
    assert len(alone.manifests) == 3  # the index and its two platforms
    choice = with_referrers(client, False, inventory, {}, [], [s.multi.digest], alone)
    assert choice.plan is None and choice.reason == NO_REFERRERS_API
    assert registry.transport.count("GET", "/v2/apps/web/referrers/*") == 1  # asked once, not per manifest
