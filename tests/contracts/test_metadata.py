"""The metadata contract (dockyard.server.metadata): what every driver must do, run against every driver.

Each write is one transaction; a manifest is stored only when what it names is readable in its repository; quotas
are checked inside the linking transaction; events are written with the change they describe and never without it;
garbage collection hands keys over as pending deletes.
"""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

from dockyard.server.errors import Denied, ManifestBlobUnknown, Unsupported
from dockyard.server.model import NewEvent, NewManifest, StoredBlob, UploadState
from dockyard.server.quotas import Quota

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes | str) -> str:
    return "sha256:" + hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()


def blob(name: str, size: int = 10, key: str | None = None) -> StoredBlob:
    return StoredBlob(digest(name), size, key or f"key-of-{name}")


def manifest(*blobs: str, children=(), subject=None, artifact_type=None, nonce="") -> NewManifest:
    data = json.dumps({"schemaVersion": 2, "layers": list(blobs), "manifests": list(children), "n": nonce}).encode()
    return NewManifest(digest(data), OCI_MANIFEST, data, [digest(b) for b in blobs], list(children),
                       subject=subject, artifact_type=artifact_type)


def pushed(md, repository: str, *layers: str, tag: str | None = "v1", **kwargs) -> NewManifest:
    for layer in layers:
        md.record_blob(repository, blob(layer))
    m = manifest(*layers, **kwargs)
    md.put_manifest(repository, m, tag)
    return m


# -- blobs ---------------------------------------------------------------------------------------------------------

def test_a_recorded_blob_is_readable_only_where_linked(metadata):
    assert metadata.record_blob("a/app", blob("layer")) is None
    record = metadata.blob("a/app", digest("layer"))
    assert (record.digest, record.size, record.key) == (digest("layer"), 10, "key-of-layer")
    assert metadata.blob("b/app", digest("layer")) is None
    assert metadata.mount_blob("b/app", "nowhere", digest("layer")) is None
    assert metadata.mount_blob("b/app", "a/app", digest("layer")).key == "key-of-layer"
    assert metadata.blob("b/app", digest("layer")).key == "key-of-layer"
    assert metadata.unlink_blob("a/app", digest("layer")) and not metadata.unlink_blob("a/app", digest("layer"))
    assert metadata.blob("a/app", digest("layer")) is None and metadata.blob("b/app", digest("layer"))


def test_a_blob_a_manifest_uses_cannot_be_unlinked(metadata):
    """Issue 12, finding 5: deleting a blob a live manifest uses would break its pulls; refused until the manifest
    goes. Another repository's manifest does not hold this repository's link."""
    m = pushed(metadata, "repo", "layer")
    metadata.mount_blob("other", "repo", digest("layer"))
    with pytest.raises(Unsupported) as refused:
        metadata.unlink_blob("repo", digest("layer"))
    assert refused.value.detail["used_by"] == [m.digest]
    assert metadata.blob("repo", digest("layer")) is not None
    assert metadata.unlink_blob("other", digest("layer"))
    metadata.delete_manifest("repo", m.digest)
    assert metadata.unlink_blob("repo", digest("layer"))


def test_the_same_digest_committed_twice_keeps_one_key(metadata):
    assert metadata.record_blob("a", blob("layer", key="first")) is None
    assert metadata.record_blob("b", blob("layer", key="second")) == "second"  # redundant: the caller deletes it
    assert metadata.record_blob("b", blob("layer", key="first")) is None  # the stored key itself is not redundant
    assert metadata.blob("b", digest("layer")).key == "first"
    assert metadata.known_keys(["first", "second"]) == {"first"}


def test_recording_a_blob_closes_its_upload_session(metadata):
    metadata.create_upload("repo", "s1")
    assert metadata.upload("repo", "s1").length == 0
    metadata.record_blob("repo", blob("layer"), session_id="s1")
    assert metadata.upload("repo", "s1") is None


def test_quotas_are_checked_in_the_linking_transaction(metadata):
    quota = Quota("team/", 100)
    metadata.record_blob("team/a", blob("one", 60), quotas=[quota])
    metadata.create_upload("team/b", "s1")
    with pytest.raises(Denied):
        metadata.record_blob("team/b", blob("two", 60), session_id="s1", quotas=[quota])
    assert metadata.blob("team/b", digest("two")) is None and metadata.upload("team/b", "s1") is not None
    assert metadata.quota_usage(quota) == 60
    # A blob already in scope costs nothing more, wherever else in scope it is linked.
    assert metadata.mount_blob("team/b", "team/a", digest("one"), quotas=[quota]).size == 60
    assert metadata.quota_usage(quota) == 60
    with pytest.raises(Denied):
        metadata.mount_blob("solo", "team/a", digest("one"), quotas=[Quota("solo", 10)])


def at_once(count: int, work) -> list:
    """work(i) in `count` threads released together; each result, or the exception it raised."""
    barrier, results = threading.Barrier(count), [None] * count

    def run(i):
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_racing_pushes_cannot_pass_a_quota_together(metadata):
    for team in range(5):  # a few rounds: a missing lock lets two in only some of the time
        quota = Quota(f"team{team}/", 100)
        results = at_once(8, lambda i: metadata.record_blob(f"team{team}/app{i}", blob(f"layer{team}.{i}", 60),
                                                            quotas=[quota]))
        assert sum(r is None for r in results) == 1 and sum(isinstance(r, Denied) for r in results) == 7, results
        assert metadata.quota_usage(quota) == 60


def test_racing_commits_of_one_digest_into_a_new_repository_keep_one_key(metadata):
    results = at_once(8, lambda i: metadata.record_blob("new/repo", blob("same", key=f"key-{i}")))
    stored = metadata.blob("new/repo", digest("same")).key
    assert results.count(None) == 1 and sorted(r for r in results if r) == sorted(
        f"key-{i}" for i in range(8) if f"key-{i}" != stored)
    m = manifest("same")
    assert at_once(8, lambda i: metadata.put_manifest("new/repo", m, f"t{i}")) == [None] * 8
    assert metadata.tags("new/repo", None, None) == ([f"t{i}" for i in range(8)], False)
    assert metadata.catalog(10, None) == (["new/repo"], False)


# -- upload sessions -----------------------------------------------------------------------------------------------

def test_upload_sessions_save_their_state_only_from_the_recorded_length(metadata, clock):
    metadata.create_upload("repo", "s1")
    session = metadata.upload("repo", "s1")
    assert (session.id, session.repository, session.length, session.created_at) == ("s1", "repo", 0, clock.now)
    assert metadata.upload("other", "s1") is None
    clock.advance(5)
    state = UploadState(100, b"\x01" * 112, {"parts": [1, 2]})
    assert metadata.save_upload("s1", 0, state)
    assert not metadata.save_upload("s1", 0, UploadState(7))  # another request moved it meanwhile
    session = metadata.upload("repo", "s1")
    assert (session.state, session.updated_at) == (state, clock.now)
    assert metadata.delete_upload("s1") and not metadata.delete_upload("s1")
    assert not metadata.save_upload("s1", 100, state)
    assert metadata.known_uploads(["s1", "s2"]) == set()


# -- manifests and tags --------------------------------------------------------------------------------------------

def test_a_manifest_is_stored_only_when_what_it_names_is_readable(metadata):
    metadata.record_blob("elsewhere", blob("layer"))
    m = manifest("layer")
    with pytest.raises(ManifestBlobUnknown) as refused:
        metadata.put_manifest("repo", m, "v1")
    assert refused.value.detail == {"missing": [digest("layer")]}
    assert metadata.manifest("repo", tag="v1") is None
    metadata.mount_blob("repo", "elsewhere", digest("layer"))
    metadata.put_manifest("repo", m, "v1")
    by_tag, by_digest = metadata.manifest("repo", tag="v1"), metadata.manifest("repo", digest=m.digest)
    assert by_tag == by_digest and (by_tag.digest, by_tag.media_type, by_tag.size) == (m.digest, OCI_MANIFEST,
                                                                                       len(m.data))
    assert metadata.manifest_data(m.digest) == m.data
    index = manifest(children=[m.digest, digest("missing child")])
    with pytest.raises(ManifestBlobUnknown):
        metadata.put_manifest("repo", index, "multi")


def test_tags_listing_versions_and_deletes(metadata):
    m = pushed(metadata, "repo", "layer", tag="b")
    before = metadata.tags_version("repo")
    for tag in ("c", "a"):
        metadata.put_manifest("repo", m, tag)
    assert metadata.tags_version("repo") != before
    assert metadata.tags("repo", None, None) == (["a", "b", "c"], False)
    assert metadata.tags("repo", 2, None) == (["a", "b"], True)
    assert metadata.tags("repo", 2, "b") == (["c"], False)
    assert metadata.tags("nowhere", None, None) is None and metadata.tags_version("nowhere") is None
    assert metadata.delete_tag("repo", "a") and not metadata.delete_tag("repo", "a")
    assert metadata.manifest("repo", digest=m.digest) is not None  # a tag delete leaves the manifest
    assert metadata.delete_manifest("repo", m.digest) and not metadata.delete_manifest("repo", m.digest)
    assert metadata.tags("repo", None, None) == ([], False)  # and a manifest delete takes its tags


def test_catalog_lists_repositories_holding_manifests(metadata):
    version = metadata.catalog_version()
    for name in ("b", "a", "c"):
        pushed(metadata, name, f"layer-{name}")
    metadata.record_blob("only-blobs", blob("x"))
    assert metadata.catalog_version() != version
    assert metadata.catalog(10, None) == (["a", "b", "c"], False)
    assert metadata.catalog(2, None) == (["a", "b"], True) and metadata.catalog(2, "b") == (["c"], False)
    assert metadata.repository_exists("only-blobs") and not metadata.repository_exists("nothing")


def test_referrers(metadata):
    subject = pushed(metadata, "repo", "layer")
    for kind in ("sig", "sbom"):
        metadata.record_blob("repo", blob(kind))
        metadata.put_manifest("repo", manifest(kind, subject=subject.digest, artifact_type=f"application/{kind}"),
                              None)
    found = metadata.referrers("repo", subject.digest, None)
    assert sorted(d["artifactType"] for d in found) == ["application/sbom", "application/sig"]
    assert [d["artifactType"] for d in metadata.referrers("repo", subject.digest, "application/sig")] == [
        "application/sig"]
    assert metadata.referrers("other", subject.digest, None) == []


def test_repository_delete_returns_its_open_sessions(metadata):
    pushed(metadata, "doomed", "layer")
    metadata.create_upload("doomed", "s1")
    counts, sessions = metadata.delete_repository("doomed")
    assert counts == {"repository": "doomed", "manifests": 1, "tags": 1} and [s.id for s in sessions] == ["s1"]
    assert metadata.delete_repository("doomed") is None and metadata.catalog(10, None) == ([], False)


# -- events (the outbox) -------------------------------------------------------------------------------------------

def test_events_are_written_with_their_change_and_never_without_it(metadata):
    event = NewEvent("repo", "push", {"tag": "v1"})
    with pytest.raises(ManifestBlobUnknown):
        metadata.put_manifest("repo", manifest("not uploaded"), "v1", events=[event])
    assert not metadata.delete_tag("repo", "v1", events=[NewEvent("repo", "delete", {})])
    assert metadata.events_after(0) == []
    m = pushed(metadata, "repo", "layer", tag=None)
    metadata.put_manifest("repo", m, "v1", events=[event])
    metadata.delete_tag("repo", "v1", events=[NewEvent("repo", "delete", {"tag": "v1"})])
    (first_id, first, _), (second_id, second, _) = metadata.events_after(0)
    assert (first, second) == (event, NewEvent("repo", "delete", {"tag": "v1"})) and second_id > first_id
    assert metadata.events_after(first_id) == metadata.events_after(0)[1:]


# -- lifecycle -----------------------------------------------------------------------------------------------------

def test_collected_blobs_become_pending_deletes(metadata):
    pushed(metadata, "repo", "kept")
    metadata.record_blob("repo", blob("garbage", key="garbage-key"))
    metadata.unlink_blob("repo", digest("garbage"))
    with metadata.lifecycle(dry_run=True) as step:
        assert [b.key for b in step.sweep_blobs(10)] == ["garbage-key"]
    assert metadata.pending_deletes() == []  # the dry run changed nothing
    with metadata.lifecycle() as step:
        assert [b.digest for b in step.sweep_blobs(10)] == [digest("garbage")]
    assert metadata.pending_deletes() == ["garbage-key"]
    assert metadata.known_keys(["garbage-key", "key-of-kept", "unknown"]) == {"garbage-key", "key-of-kept"}
    metadata.forget_pending(["garbage-key"])
    assert metadata.pending_deletes() == [] and metadata.known_keys(["garbage-key"]) == set()
    assert [b.digest for b in metadata.blobs()] == [digest("kept")]


def test_a_blob_uploaded_again_is_protected_by_the_grace_period(metadata, clock):
    """Issue 12, finding 1: a link a deleted manifest once used, refreshed by a new upload, is new again."""
    m = pushed(metadata, "repo", "layer")
    metadata.delete_manifest("repo", m.digest)
    clock.advance(10)
    metadata.record_blob("repo", blob("layer"))  # uploaded again, its manifest not pushed yet
    with metadata.lifecycle() as step:
        assert step.sweep_links(cutoff=clock.now - 3600) == 0
        assert step.sweep_blobs(10) == []
    assert metadata.blob("repo", digest("layer")) is not None
    with metadata.lifecycle() as step:  # past the grace period it goes
        assert step.sweep_links(cutoff=clock.now + 1) == 1


def test_gc_sweeps_untagged_manifests_and_keeps_what_is_reachable(metadata, clock):
    tagged = pushed(metadata, "repo", "a", nonce="tagged")
    untagged = pushed(metadata, "repo", "b", tag=None, nonce="untagged")
    metadata.record_blob("repo", blob("sig"))
    signature = manifest("sig", subject=tagged.digest)
    metadata.put_manifest("repo", signature, None)
    clock.advance(100)
    with metadata.lifecycle() as step:
        ((repository_id, name),) = step.repositories()
        assert step.sweep_manifests(repository_id, clock.now) == [(untagged.digest, len(untagged.data))]
        assert step.sweep_links(clock.now) == 1
        assert [b.digest for b in step.sweep_blobs(10)] == [digest("b")]
        assert step.sweep_manifest_content() == [(untagged.digest, len(untagged.data))]
    assert metadata.manifest("repo", digest=signature.digest) is not None


def test_stale_upload_sessions(metadata, clock):
    metadata.create_upload("repo", "old")
    metadata.create_upload("repo", "one-request", monolithic=True)
    clock.advance(1000)
    metadata.create_upload("repo", "new")
    metadata.create_upload("repo", "one-request-new", monolithic=True)
    with metadata.lifecycle() as step:
        assert [s.id for s in step.stale_uploads(clock.now - 2000, clock.now - 2000)] == []
        assert {(s.id, s.monolithic) for s in step.stale_uploads(clock.now - 2000, clock.now - 10)} == {
            ("one-request", True)}
        assert {s.id for s in step.stale_uploads(clock.now - 10, clock.now - 2000)} == {"old", "one-request"}
        step.delete_upload("old")
    assert metadata.known_uploads(["old", "new", "one-request"]) == {"new", "one-request"}


def test_the_lock_is_exclusive(metadata):
    with metadata.lock("gc") as held:
        assert held
        with metadata.lock("gc", blocking=False) as again:
            assert not again
        with metadata.lock("other", blocking=False) as other:
            assert other


# -- accounting, switches, health ----------------------------------------------------------------------------------

def test_accounting(metadata):
    metadata.record_blob("a", blob("shared", 700))
    metadata.record_blob("b", blob("shared", 700))
    m = pushed(metadata, "a", "own", tag="v1")
    metadata.put_manifest("b", manifest("shared"), "v1")
    page, more = metadata.repository_page(10, None)
    assert not more and [(r["name"], r["tags"], r["manifests"], r["unique_bytes"], r["shared_bytes"])
                         for r in page] == [("a", 1, 1, 10, 700), ("b", 1, 1, 0, 700)]
    assert all(isinstance(r["last_push"], float) and r["last_push"] > 0 for r in page)
    (detail,), more = metadata.tag_details("a", 10, None)
    assert detail["tag"] == "v1" and detail["digest"] == m.digest and detail["size"] == len(m.data) + 10
    assert metadata.tag_details("nowhere", 10, None) is None
    totals = metadata.storage_totals()
    assert totals["blobs"] == 2 and totals["blob_bytes"] == 710
    usage = metadata.usage()
    assert (usage.blobs, usage.blob_bytes, usage.upload_sessions) == (2, 710, 0)


def test_state_switches(metadata):
    assert metadata.get_state("read_only") is None
    metadata.set_state("read_only", "1")
    assert metadata.get_state("read_only") == "1"
    metadata.set_state("read_only", None)
    assert metadata.get_state("read_only") is None


def test_the_first_state_set_wins_every_race(metadata):
    """Nodes starting at once each make a signing key: every one of them must end up using the same."""
    results = []
    threads = [threading.Thread(target=lambda n=n: results.append(metadata.first_state("secret:race", f"key-{n}")))
               for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and results[0].startswith("key-")
    assert metadata.first_state("secret:race", "another") == results[0] == metadata.get_state("secret:race")


def test_shared_token_buckets(metadata):
    """Drivers several hosts share keep the rate limiter's buckets: exact under concurrency, refilled by time."""
    if not metadata.shared_by_hosts:
        with pytest.raises(NotImplementedError):
            metadata.take_token("k", 1.0, 5.0, 1000.0)
        return
    taken = []
    threads = [threading.Thread(target=lambda: taken.append(metadata.take_token("client", 1.0, 5.0, 1000.0)[0]))
               for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert taken.count(True) == 5 and metadata.peek_tokens("client", 1.0, 5.0, 1000.0) < 1
    assert metadata.take_token("client", 1.0, 5.0, 1002.5) == (True, pytest.approx(1.5))  # 2.5 s refilled 2.5
    assert metadata.take_token("client", 1.0, 5.0, 1001.0)[1] == pytest.approx(0.5)  # a clock behind adds nothing
    assert metadata.peek_tokens("other", 1.0, 5.0, 1000.0) == 5.0  # an unknown key is a full bucket


def test_a_blob_row_moves_to_a_new_key_only_from_the_key_it_names(metadata):
    metadata.record_blob("team/app", blob("moved", key="old-key"))
    assert not metadata.rekey_blob(digest("moved"), "some-other-key", "new-key")
    assert metadata.blob("team/app", digest("moved")).key == "old-key"
    assert metadata.rekey_blob(digest("moved"), "old-key", "new-key")
    assert metadata.blob("team/app", digest("moved")).key == "new-key"
    assert [b.key for b in metadata.blobs()] == ["new-key"]
    assert not metadata.rekey_blob(digest("unknown"), "old-key", "new-key")


def test_ping(metadata):
    metadata.ping()


# -- the pull-through cache (issue 16) -----------------------------------------------------------------------------

def index(*children: NewManifest, nonce="") -> NewManifest:
    data = json.dumps({"schemaVersion": 2, "manifests": [c.digest for c in children], "n": nonce}).encode()
    return NewManifest(digest(data), "application/vnd.oci.image.index.v1+json", data, [], [c.digest for c in children])


def test_a_cached_manifest_is_stored_before_its_blobs_and_keeps_them_once_fetched(metadata, clock):
    """A cache stores a manifest as it passes through and fetches what it names when a client asks for it: the
    manifest is there at once, and the blobs recorded later are held by its references (no grace period)."""
    image = manifest("layer", nonce="cached")
    metadata.cache_manifest("hub/app", image, "1")
    assert metadata.manifest("hub/app", tag="1").digest == image.digest
    assert metadata.manifest_data(image.digest) == image.data
    record, checked = metadata.cached_tag("hub/app", "1")
    assert record.digest == image.digest and record.size == len(image.data) and checked == clock.now
    metadata.cache_manifest("hub/app", image, "1")  # again (another worker fetched it too): nothing changes
    metadata.record_blob("hub/app", blob("layer"))
    clock.advance(10_000)
    with metadata.lifecycle() as step:
        assert step.sweep_links(cutoff=clock.now) == 0 and step.sweep_blobs(10) == []
    assert metadata.blob("hub/app", digest("layer")) is not None
    assert metadata.cached_tag("hub/app", "2") is None and metadata.cached_tag("elsewhere", "1") is None


def test_a_cached_tag_is_confirmed_and_moved(metadata, clock):
    first, second = manifest("a", nonce="first"), manifest("b", nonce="second")
    metadata.cache_manifest("hub/app", first, "latest")
    clock.advance(100)
    metadata.confirm_cached_tag("hub/app", "latest")
    assert metadata.cached_tag("hub/app", "latest")[1] == clock.now
    clock.advance(100)
    metadata.cache_manifest("hub/app", second, "latest")  # the upstream moved the tag
    record, checked = metadata.cached_tag("hub/app", "latest")
    assert record.digest == second.digest and checked == clock.now
    assert metadata.manifest("hub/app", digest=first.digest) is not None  # the old one stays until evicted
    pushed(metadata, "local/app", "c")  # a tag no upstream ever confirmed
    assert metadata.cached_tag("local/app", "v1")[1] is None


def test_eviction_takes_the_least_recently_pulled_and_never_a_repository_in_use(metadata, clock):
    old, recent = manifest("old-layer", nonce="old"), manifest("recent-layer", nonce="recent")
    child = manifest("child-layer", nonce="child")
    multi = index(child, nonce="index")
    metadata.cache_manifest("hub/old", old, "1")
    metadata.cache_manifest("hub/multi", multi, "1")
    metadata.cache_manifest("hub/multi", child, None)
    metadata.cache_manifest("hub/recent", recent, "1")
    metadata.cache_manifest("other/x", manifest("x", nonce="x"), "1")
    for name, layer in (("hub/old", "old-layer"), ("hub/recent", "recent-layer"), ("hub/multi", "child-layer")):
        metadata.record_blob(name, blob(layer, size=100))
    clock.advance(100)
    metadata.record_pulls([("hub/multi", multi.digest, clock.now - 50), ("hub/recent", recent.digest, clock.now - 10),
                           ("hub/recent", recent.digest, clock.now - 90)])  # a pull time only moves forward
    candidates = metadata.cache_candidates("hub/", clock.now - 5, 10)
    # The index stands for its children; other/ is another scope; sizes count what each references.
    assert [(r, d) for r, d, _, _ in candidates] == [("hub/old", old.digest), ("hub/multi", multi.digest),
                                                     ("hub/recent", recent.digest)]
    assert [size for *_, size in candidates] == [len(old.data) + 100, len(multi.data) + len(child.data) + 100,
                                                 len(recent.data) + 100]
    assert candidates[1][2] == clock.now - 50
    metadata.record_pulls([("hub/old", "", clock.now)])  # a blob of hub/old is being pulled right now
    assert [r for r, *_ in metadata.cache_candidates("hub/", clock.now - 5, 10)] == ["hub/multi", "hub/recent"]
    with metadata.lifecycle() as step:
        assert step.evict_manifest("hub/old", old.digest, clock.now - 5) == []  # in use: refused
        assert step.evict_manifest("hub/multi", multi.digest, clock.now - 5) == [multi.digest, child.digest]
        assert step.evict_manifest("hub/multi", multi.digest, clock.now - 5) == []
    assert metadata.manifest("hub/multi", digest=child.digest) is None and metadata.tags("hub/multi", None, None) == (
        [], False)
    assert metadata.manifest("hub/old", digest=old.digest) is not None
    with metadata.lifecycle() as step:  # what the eviction let go is collected at once, without the grace period
        assert step.sweep_links(cutoff=0) == 1
        assert [b.digest for b in step.sweep_blobs(10)] == [digest("child-layer")]


def test_eviction_keeps_a_child_another_index_uses(metadata, clock):
    shared = manifest("shared-layer", nonce="shared")
    first, second = index(shared, nonce="first"), index(shared, nonce="second")
    for tag, m in (("a", first), ("b", second)):
        metadata.cache_manifest("hub/multi", m, tag)
    metadata.cache_manifest("hub/multi", shared, None)
    clock.advance(100)
    with metadata.lifecycle() as step:
        assert step.evict_manifest("hub/multi", first.digest, clock.now - 5) == [first.digest]
    assert metadata.manifest("hub/multi", digest=shared.digest) is not None


def test_locks_leave_no_files_behind_and_exclude_across_handles(metadata, tmp_path):
    """The cache takes a lock per digest: nothing may pile up per name, and exclusion must survive the removal."""
    name = "cache-blob-" + "ab" * 32
    order = []

    def second_holder():
        with metadata.lock(name, transient=True) as held:
            order.append(("second", held))

    with metadata.lock(name, transient=True) as held:
        assert held
        waiter = threading.Thread(target=second_holder)
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive()  # waiting for the first holder
        order.append(("first", True))
    waiter.join(10)
    assert order == [("first", True), ("second", True)]
    with metadata.lock(name, blocking=False, transient=True) as held:
        assert held
        with metadata.lock(name, blocking=False, transient=True) as again:
            assert not again
    assert not [p for p in tmp_path.rglob("*.lock") if name in p.name]
