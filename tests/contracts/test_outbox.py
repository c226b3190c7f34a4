"""The outbox's contract (`dockyard.server.metadata.Outbox`), run against every metadata driver.

Events written with a change get increasing numbers in their repository's commit order and one delivery per
endpoint they name;
a repository's events become visible in sequence order even when the transaction that took the lower number commits
last; a claimed queue is leased to one sender until the lease runs out; delivered events leave the queue, failures
push its next try back, parked events are kept until replayed; pruning takes only old events nobody waits for.
"""

from __future__ import annotations

import threading
import time

import pytest

from dockyard.server.errors import ManifestBlobUnknown, NotFound
from dockyard.server.model import NewEvent

from test_metadata import manifest, pushed


def event(repository: str, uid: str, *endpoints: str, action: str = "push") -> NewEvent:
    return NewEvent(repository, action, {"id": uid, "target": {"repository": repository}}, tuple(endpoints))


def write(metadata, *events: NewEvent) -> None:
    """Events written in a transaction of their own (garbage collection's door: any driver, no other change)."""
    with metadata.lifecycle() as step:
        step.add_events(list(events))


def uids(events) -> list[str]:
    return [e.uid for e in events]


def test_each_repository_numbers_its_events_and_each_endpoint_gets_a_delivery(metadata):
    write(metadata, event("a", "a1", "hook", "chat"), event("b", "b1", "hook"))
    write(metadata, event("a", "a2", "hook"), event("a", "a3"))  # a3: no endpoint wants it
    outbox = metadata.outbox()
    hook_a = outbox.pending("hook", "a", 10)
    assert [(e.uid, e.repository, e.action) for e in hook_a] == [("a1", "a", "push"), ("a2", "a", "push")]
    assert hook_a[0].seq < hook_a[1].seq
    assert hook_a[0].payload == {"id": "a1", "target": {"repository": "a"}}
    assert uids(outbox.pending("chat", "a", 10)) == ["a1"] and uids(outbox.pending("hook", "b", 10)) == ["b1"]
    states = outbox.endpoint_states()
    assert states["hook"]["backlog"] == 3 and states["chat"]["backlog"] == 1
    assert states["hook"]["parked"] == 0 and states["hook"]["oldest_pending"] is not None
    assert [e.payload["id"] for _, e, _ in metadata.events_after(0)] == ["a1", "b1", "a2", "a3"]


def test_events_of_a_refused_change_are_never_written(metadata):
    outbox = metadata.outbox()
    with pytest.raises(ManifestBlobUnknown):
        metadata.put_manifest("repo", manifest("never uploaded"), "v1", events=[event("repo", "x", "hook")])
    assert outbox.pending("hook", "repo", 10) == [] and outbox.endpoint_states() == {}
    assert not metadata.delete_tag("repo", "nope", events=[event("repo", "y", "hook")])
    assert outbox.pending("hook", "repo", 10) == []


def test_a_repository_s_events_become_visible_in_sequence_order(metadata):
    """Issue 17: the transaction that took the lower number commits last; until it does, a reader sees neither
    event, never the later one alone (PostgreSQL's ids are taken at insert and commit out of order; the sequence's
    row lock makes the second writer wait)."""
    pushed(metadata, "repo", "layer", tag="t1")
    outbox = metadata.outbox()
    first_written, release = threading.Event(), threading.Event()
    errors = []

    def slow_first():
        try:
            with metadata.lifecycle() as step:
                step.add_events([event("repo", "first", "hook")])
                first_written.set()
                release.wait(30)
        except Exception as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    def second():
        try:
            metadata.delete_tag("repo", "t1", events=[event("repo", "second", "hook", action="delete")])
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    a = threading.Thread(target=slow_first)
    a.start()
    assert first_written.wait(30)
    b = threading.Thread(target=second)
    b.start()
    time.sleep(0.5)  # the second writer is waiting (for the sequence's lock, or SQLite's write lock)
    assert b.is_alive() and outbox.pending("hook", "repo", 10) == []
    release.set()
    a.join(30)
    b.join(30)
    assert not errors, errors
    first, second = outbox.pending("hook", "repo", 10)
    assert (first.uid, second.uid) == ("first", "second") and first.seq < second.seq


def test_a_claimed_queue_is_leased_to_one_sender_until_the_lease_runs_out(metadata, clock):
    write(metadata, event("a", "a1", "hook"), event("b", "b1", "hook"), event("c", "c1", "other"))
    outbox = metadata.outbox()
    now = clock()
    assert outbox.due(["hook"], now) and not outbox.due(["nobody"], now) and not outbox.due([], now)
    first = outbox.claim(["hook"], "node-1", now, now + 60, 1)
    second = outbox.claim(["hook"], "node-2", now, now + 600, 10)
    assert len(first) == 1 and len(second) == 1 and first[0].repository != second[0].repository
    assert outbox.claim(["hook"], "node-3", now, now + 60, 10) == [] and not outbox.due(["hook"], now)
    # node-1 dies holding its lease: once it runs out, another sender takes the queue up
    assert outbox.claim(["hook"], "node-3", now + 61, now + 121, 10) == [first[0]]
    outbox.release(second[0], "node-2")  # an empty-handed release makes the queue claimable again at once
    assert [c.repository for c in outbox.claim(["hook"], "node-4", now, now + 60, 10)] == [second[0].repository]


def test_delivered_events_leave_the_queue_and_the_endpoint_records_its_success(metadata, clock):
    write(metadata, *(event("repo", f"e{i}", "hook") for i in range(3)))
    outbox = metadata.outbox()
    [claim] = outbox.claim(["hook"], "me", clock(), clock() + 60, 5)
    batch = outbox.pending("hook", "repo", 2)
    assert uids(batch) == ["e0", "e1"]
    outbox.delivered(claim, [e.number for e in batch], "me", clock(), clock() + 60)
    assert uids(outbox.pending("hook", "repo", 10)) == ["e2"]
    state = outbox.endpoint_states()["hook"]
    assert (state["backlog"], state["delivered"], state["last_success"]) == (1, 2, clock())
    outbox.delivered(claim, [outbox.pending("hook", "repo", 1)[0].number], "me", clock(), 0)
    assert outbox.endpoint_states()["hook"]["backlog"] == 0 and not outbox.due(["hook"], clock() + 1000)


def test_a_failure_pushes_the_next_try_back_and_the_last_attempt_parks(metadata, clock):
    write(metadata, event("repo", "e0", "hook"), event("repo", "e1", "hook"))
    outbox = metadata.outbox()
    now = clock()
    [claim] = outbox.claim(["hook"], "me", now, now + 60, 5)
    first = outbox.pending("hook", "repo", 1)
    outbox.failed(claim, [e.number for e in first], "me", now, "HTTP 503", 1, now + 30, park=False)
    assert not outbox.due(["hook"], now + 29) and outbox.due(["hook"], now + 30)
    state = outbox.endpoint_states()["hook"]
    assert (state["retrying"], state["last_failure"], state["last_error"], state["backlog"]) == (1, now, "HTTP 503", 2)
    [claim] = outbox.claim(["hook"], "me", now + 30, now + 90, 5)
    assert claim.attempts == 1
    outbox.failed(claim, [e.number for e in first], "me", now + 30, "HTTP 500", 2, now + 90, park=True)
    assert outbox.due(["hook"], now + 30)  # the queue goes on with the next event at once
    assert uids(outbox.pending("hook", "repo", 10)) == ["e1"]
    [parked] = outbox.parked("hook", 10, 0)
    assert (parked["uid"], parked["attempts"], parked["last_error"], parked["parked_at"]) == ("e0", 2, "HTTP 500",
                                                                                             now + 30)
    assert outbox.endpoint_states()["hook"]["parked"] == 1 and outbox.parked("hook", 10, parked["number"]) == []


def test_replay_queues_parked_events_again_and_named_ones_even_after_delivery(metadata, clock):
    write(metadata, *(event("repo", f"e{i}", "hook") for i in range(3)))
    outbox = metadata.outbox()
    now = clock()
    [claim] = outbox.claim(["hook"], "me", now, now + 60, 5)
    events = outbox.pending("hook", "repo", 3)
    outbox.failed(claim, [events[0].number, events[1].number], "me", now, "down", 5, now, park=True)
    outbox.delivered(claim, [events[2].number], "me", now, 0)
    assert outbox.endpoint_states()["hook"]["backlog"] == 0
    with pytest.raises(NotFound):
        outbox.replay("hook", ["e0", "no-such-event"], now)
    assert len(outbox.parked("hook", 10, 0)) == 2  # nothing was done
    assert outbox.replay("hook", None, now) == 2
    assert outbox.parked("hook", 10, 0) == [] and uids(outbox.pending("hook", "repo", 10)) == ["e0", "e1"]
    assert outbox.replay("hook", ["e2", "e0"], now) == 1  # e2 delivered, still retained: sent again; e0 waits anyway
    assert uids(outbox.pending("hook", "repo", 10)) == ["e0", "e1", "e2"]
    assert outbox.endpoint_states()["hook"]["backlog"] == 3 and outbox.due(["hook"], now)


def test_pruning_takes_only_old_events_nobody_waits_for(metadata, clock):
    write(metadata, event("repo", "delivered", "hook"), event("repo", "parked", "hook"),
          event("repo", "waiting", "hook"), event("repo", "unwanted"))
    outbox = metadata.outbox()
    now = clock()
    [claim] = outbox.claim(["hook"], "me", now, now + 60, 5)
    delivered, parked, _ = outbox.pending("hook", "repo", 3)
    outbox.delivered(claim, [delivered.number], "me", now, now + 60)
    outbox.failed(claim, [parked.number], "me", now, "down", 3, now, park=True)
    assert outbox.prune(now, 100) == 0  # none is old enough yet
    clock.advance(10)
    assert outbox.prune(clock() - 5, 100) == 2  # delivered and unwanted
    assert [e.payload["id"] for _, e, _ in metadata.events_after(0)] == ["parked", "waiting"]
    assert outbox.replay("hook", None, clock()) == 1


def test_a_queue_that_lost_its_events_counts_them_again(metadata, clock):
    """A replay racing the pruning of the same old event can leave a delivery whose event is gone: `release` with
    `resync` forgets it, so the queue stops being claimed for nothing."""
    write(metadata, event("repo", "old", "hook"))
    outbox = metadata.outbox()
    now = clock()
    [claim] = outbox.claim(["hook"], "me", now, now + 60, 5)
    [old] = outbox.pending("hook", "repo", 1)
    outbox.delivered(claim, [old.number], "me", now, 0)
    clock.advance(100)
    assert outbox.replay("hook", ["old"], clock()) == 1
    with metadata.lifecycle() as step:  # the race's outcome, made directly: the event is gone
        getattr(step, "conn", None) and step.conn.execute("DELETE FROM events")
        getattr(step, "cur", None) and step.cur.execute("DELETE FROM events")
    [claim] = outbox.claim(["hook"], "me", clock(), clock() + 60, 5)
    assert outbox.pending("hook", "repo", 10) == []
    outbox.release(claim, "me", resync=True)
    assert not outbox.due(["hook"], clock()) and outbox.endpoint_states()["hook"]["backlog"] == 0
