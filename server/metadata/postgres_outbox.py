"""The PostgreSQL driver's outbox: writing events with their change, and their delivery state (`Outbox`).

Order per repository: ids from the events' identity are taken at insert and do not commit in that order, so each
event also takes its repository's next sequence number from `event_streams` with an upsert, whose row lock is held
to the commit. A second transaction writing an event of the same repository waits there until the first commits
(or rolls back, and then takes the same number): a repository's numbers commit in order and without gaps, so a
reader that sees number n has seen every number below it. Senders deliver in that order.

One node at a time: a sender claims queues with one `UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)`, which
writes its lease (owner, until when) into the queue rows; other senders skip leased rows until the lease runs out
(a sender that died). No transaction is held open across a delivery. Each outcome is one statement.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

from ..errors import NotFound
from ..model import Claim, NewEvent, OutboxEvent
from . import Outbox

if TYPE_CHECKING:
    from .postgres import PostgresMetadata

# One round trip per event: the repository's next number (row-locked to the commit), the event, a delivery per
# endpoint and each endpoint's queue counted. Each step reads the one before, so the sequence's lock comes first.
ADD_EVENT = """
WITH s AS (INSERT INTO event_streams AS s (repository, seq) VALUES (%(r)s, 1)
           ON CONFLICT (repository) DO UPDATE SET seq = s.seq + 1 RETURNING s.seq),
     e AS (INSERT INTO events (repository, action, payload, created_at, seq, uid)
           SELECT %(r)s, %(a)s, %(p)s, %(now)s, s.seq, %(uid)s FROM s RETURNING id, seq),
     d AS (INSERT INTO event_deliveries (endpoint, event, repository, seq)
           SELECT x.endpoint, e.id, %(r)s, e.seq FROM e, unnest(%(endpoints)s::TEXT[]) AS x(endpoint))
INSERT INTO event_queues AS q (endpoint, repository, pending, due)
SELECT x.endpoint, %(r)s, 1, 0 FROM e, unnest(%(endpoints)s::TEXT[]) AS x(endpoint)
ON CONFLICT (endpoint, repository) DO UPDATE SET pending = q.pending + 1
"""
CLAIM = """
UPDATE event_queues q SET lease_owner = %(owner)s, lease_until = %(until)s
  FROM (SELECT endpoint, repository FROM event_queues
         WHERE pending > 0 AND due <= %(now)s AND lease_until <= %(now)s AND endpoint = ANY(%(endpoints)s::TEXT[])
         ORDER BY due LIMIT %(limit)s FOR UPDATE SKIP LOCKED) c
 WHERE q.endpoint = c.endpoint AND q.repository = c.repository
RETURNING q.endpoint, q.repository, q.attempts
"""
DELIVERED = """
WITH gone AS (DELETE FROM event_deliveries WHERE endpoint = %(e)s AND parked_at IS NULL
                AND event = ANY(%(n)s::BIGINT[]) RETURNING 1),
     c AS (SELECT COUNT(*) AS n FROM gone),
     q AS (UPDATE event_queues SET pending = GREATEST(pending - (SELECT n FROM c), 0), attempts = 0,
             due = %(now)s, last_error = NULL,
             lease_until = CASE WHEN lease_owner = %(owner)s THEN %(until)s ELSE lease_until END
           WHERE endpoint = %(e)s AND repository = %(r)s)
INSERT INTO event_endpoints AS p (name, last_success, delivered) SELECT %(e)s, %(now)s, n FROM c
ON CONFLICT (name) DO UPDATE SET last_success = excluded.last_success, delivered = p.delivered + excluded.delivered
"""
PARKED = """
WITH parked AS (UPDATE event_deliveries SET parked_at = %(now)s, attempts = %(attempts)s, last_error = %(err)s
                 WHERE endpoint = %(e)s AND parked_at IS NULL AND event = ANY(%(n)s::BIGINT[]) RETURNING 1),
     c AS (SELECT COUNT(*) AS n FROM parked),
     q AS (UPDATE event_queues SET pending = GREATEST(pending - (SELECT n FROM c), 0), attempts = 0,
             due = %(now)s, last_error = %(err)s,
             lease_until = CASE WHEN lease_owner = %(owner)s THEN 0 ELSE lease_until END
           WHERE endpoint = %(e)s AND repository = %(r)s)
INSERT INTO event_endpoints AS p (name, last_failure, last_error) VALUES (%(e)s, %(now)s, %(err)s)
ON CONFLICT (name) DO UPDATE SET last_failure = excluded.last_failure, last_error = excluded.last_error
"""
RETRY = """
WITH q AS (UPDATE event_queues SET attempts = %(attempts)s, due = %(retry_at)s, last_error = %(err)s,
             lease_until = CASE WHEN lease_owner = %(owner)s THEN 0 ELSE lease_until END
           WHERE endpoint = %(e)s AND repository = %(r)s)
INSERT INTO event_endpoints AS p (name, last_failure, last_error) VALUES (%(e)s, %(now)s, %(err)s)
ON CONFLICT (name) DO UPDATE SET last_failure = excluded.last_failure, last_error = excluded.last_error
"""
QUEUE_ADD = """
INSERT INTO event_queues AS q (endpoint, repository, pending, due) VALUES (%s, %s, %s, %s)
ON CONFLICT (endpoint, repository) DO UPDATE SET pending = q.pending + excluded.pending,
                                                 due = LEAST(q.due, excluded.due)
"""


def add_events(cur, events: Sequence[NewEvent], now: float) -> None:
    """Write events in the caller's transaction (see the module docstring for the order they commit in)."""
    for event in events:
        cur.execute(ADD_EVENT, {"r": event.repository, "a": event.action, "now": now, "uid": event.payload.get("id"),
                                "p": json.dumps(event.payload, separators=(",", ":")),
                                "endpoints": list(event.endpoints)})


class PostgresOutbox(Outbox):
    def __init__(self, metadata: "PostgresMetadata"):
        self.md = metadata

    def due(self, endpoints: Sequence[str], now: float) -> bool:
        def body(cur):
            cur.execute("SELECT EXISTS (SELECT 1 FROM event_queues WHERE pending > 0 AND due <= %(now)s "
                        "AND lease_until <= %(now)s AND endpoint = ANY(%(e)s::TEXT[]))",
                        {"now": now, "e": list(endpoints)})
            return cur.fetchone()[0]
        return bool(endpoints) and self.md._read(body)

    def claim(self, endpoints: Sequence[str], owner: str, now: float, lease_until: float, limit: int) -> list[Claim]:
        def body(cur):
            cur.execute(CLAIM, {"owner": owner, "until": lease_until, "now": now, "endpoints": list(endpoints),
                                "limit": limit})
            return [Claim(*row) for row in cur.fetchall()]
        return self.md._run(body, retry=True) if endpoints else []

    def pending(self, endpoint: str, repository: str, limit: int) -> list[OutboxEvent]:
        def body(cur):
            cur.execute("SELECT e.id, e.uid, e.repository, d.seq, e.action, e.payload, e.created_at "
                        "FROM event_deliveries d JOIN events e ON e.id = d.event WHERE d.endpoint = %s "
                        "AND d.repository = %s AND d.parked_at IS NULL ORDER BY d.seq LIMIT %s",
                        (endpoint, repository, limit))
            return cur.fetchall()
        return [OutboxEvent(number, uid or "", repo, seq, action, json.loads(payload), created)
                for number, uid, repo, seq, action, payload, created in self.md._read(body)]

    def delivered(self, claim: Claim, numbers: Sequence[int], owner: str, now: float, lease_until: float) -> None:
        self.md._run(lambda cur: cur.execute(DELIVERED, {
            "e": claim.endpoint, "r": claim.repository, "n": list(numbers), "now": now, "owner": owner,
            "until": lease_until}), retry=True)

    def failed(self, claim: Claim, numbers: Sequence[int], owner: str, now: float, error: str, attempts: int,
               retry_at: float, park: bool) -> None:
        values = {"e": claim.endpoint, "r": claim.repository, "n": list(numbers), "now": now, "owner": owner,
                  "err": error[:500], "attempts": attempts, "retry_at": retry_at}
        self.md._run(lambda cur: cur.execute(PARKED if park else RETRY, values), retry=True)

    def release(self, claim: Claim, owner: str, *, resync: bool = False) -> None:
        def body(cur):
            if resync:
                # The queue's row first: a writer counting an event in it commits before the count below, or
                # counts after it (READ COMMITTED: the next statement sees what committed while we waited).
                cur.execute("SELECT 1 FROM event_queues WHERE endpoint = %s AND repository = %s FOR UPDATE",
                            (claim.endpoint, claim.repository))
                cur.execute("DELETE FROM event_deliveries d WHERE endpoint = %s AND repository = %s AND NOT EXISTS "
                            "(SELECT 1 FROM events e WHERE e.id = d.event)", (claim.endpoint, claim.repository))
                cur.execute("UPDATE event_queues SET pending = (SELECT COUNT(*) FROM event_deliveries d "
                            "WHERE d.endpoint = %(e)s AND d.repository = %(r)s AND d.parked_at IS NULL) "
                            "WHERE endpoint = %(e)s AND repository = %(r)s",
                            {"e": claim.endpoint, "r": claim.repository})
            cur.execute("UPDATE event_queues SET lease_until = 0 WHERE endpoint = %s AND repository = %s "
                        "AND lease_owner = %s", (claim.endpoint, claim.repository, owner))
        self.md._write(body)

    def endpoint_states(self) -> dict[str, dict]:
        def body(cur):
            cur.execute("SELECT endpoint, SUM(pending)::BIGINT, COUNT(*) FILTER (WHERE pending > 0 AND attempts > 0) "
                        "FROM event_queues GROUP BY endpoint")
            queues = cur.fetchall()
            cur.execute("SELECT endpoint, COUNT(*) FROM event_deliveries WHERE parked_at IS NOT NULL "
                        "GROUP BY endpoint")
            parked = cur.fetchall()
            cur.execute("SELECT d.endpoint, MIN(e.created_at) FROM event_deliveries d JOIN events e "
                        "ON e.id = d.event WHERE d.parked_at IS NULL GROUP BY d.endpoint")
            oldest = cur.fetchall()
            cur.execute("SELECT name, last_success, last_failure, last_error, delivered FROM event_endpoints")
            return queues, parked, oldest, cur.fetchall()
        queues, parked, oldest, endpoints = self.md._read(body)
        states: dict[str, dict] = {}

        def state(name: str) -> dict:
            return states.setdefault(name, {"backlog": 0, "parked": 0, "retrying": 0, "oldest_pending": None,
                                            "last_success": None, "last_failure": None, "last_error": None,
                                            "delivered": 0})
        for name, backlog, retrying in queues:
            state(name).update(backlog=backlog, retrying=retrying)
        for name, count in parked:
            state(name)["parked"] = count
        for name, created in oldest:
            state(name)["oldest_pending"] = created
        for name, success, failure, error, delivered in endpoints:
            state(name).update(last_success=success, last_failure=failure, last_error=error, delivered=delivered)
        return states

    def parked(self, endpoint: str, limit: int, after: int) -> list[dict]:
        def body(cur):
            cur.execute("SELECT e.id, e.uid, e.repository, e.action, e.payload, e.created_at, d.parked_at, "
                        "d.attempts, d.last_error FROM event_deliveries d JOIN events e ON e.id = d.event "
                        "WHERE d.endpoint = %s AND d.parked_at IS NOT NULL AND d.event > %s ORDER BY d.event LIMIT %s",
                        (endpoint, after, limit))
            return cur.fetchall()
        return [{"number": number, "uid": uid, "repository": repository, "action": action,
                 "payload": json.loads(payload), "created_at": created, "parked_at": parked_at,
                 "attempts": attempts, "last_error": error}
                for number, uid, repository, action, payload, created, parked_at, attempts, error
                in self.md._read(body)]

    def replay(self, endpoint: str, uids: Sequence[str] | None, now: float) -> int:
        def body(cur):
            if uids is None:
                cur.execute("UPDATE event_deliveries SET parked_at = NULL, attempts = 0, last_error = NULL "
                            "WHERE endpoint = %s AND parked_at IS NOT NULL RETURNING repository", (endpoint,))
                repositories = [r[0] for r in cur.fetchall()]
            else:
                wanted = list(dict.fromkeys(uids))
                cur.execute("SELECT uid, id, repository, COALESCE(seq, id) FROM events WHERE uid = ANY(%s::TEXT[]) "
                            "FOR SHARE",
                            (wanted,))
                found = {uid: (number, repository, seq) for uid, number, repository, seq in cur.fetchall()}
                unknown = [uid for uid in wanted if uid not in found]
                if unknown:
                    raise NotFound({"unknown": unknown[:20]},
                                   message="no such event in the outbox (pruned, or never written)")
                numbers = [found[uid][0] for uid in wanted]
                cur.execute("UPDATE event_deliveries SET parked_at = NULL, attempts = 0, last_error = NULL "
                            "WHERE endpoint = %s AND parked_at IS NOT NULL AND event = ANY(%s::BIGINT[]) "
                            "RETURNING repository", (endpoint, numbers))
                repositories = [r[0] for r in cur.fetchall()]
                rows = [(endpoint, *found[uid]) for uid in wanted]
                cur.execute("INSERT INTO event_deliveries (endpoint, event, repository, seq) "
                            "SELECT * FROM unnest(%s::TEXT[], %s::BIGINT[], %s::TEXT[], %s::BIGINT[]) "
                            "ON CONFLICT DO NOTHING RETURNING repository",
                            tuple(list(column) for column in zip(*rows)))
                repositories += [r[0] for r in cur.fetchall()]
            counts: dict[str, int] = {}
            for repository in repositories:
                counts[repository] = counts.get(repository, 0) + 1
            for repository in sorted(counts):
                cur.execute(QUEUE_ADD, (endpoint, repository, counts[repository], now))
            return len(repositories)
        return self.md._write(body)

    def prune(self, before: float, limit: int) -> int:
        def body(cur):
            cur.execute("DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE e.created_at < %s "
                        "AND NOT EXISTS (SELECT 1 FROM event_deliveries d WHERE d.event = e.id) "
                        "ORDER BY e.id LIMIT %s)", (before, limit))
            return cur.rowcount
        return self.md._run(body, retry=True)
