"""The SQLite driver's outbox: writing events with their change, and their delivery state (`Outbox`).

SQLite has one writer at a time (the driver's flock and `BEGIN IMMEDIATE`): events commit in the order of their
ids, so an event's id is its number in its repository's sequence (no `event_streams` row to keep; `events.seq`
stays NULL), and a claim is a plain read-then-lease inside a write transaction. Senders look with a read first
(`due`), so an idle sender never takes the write lock.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Sequence

from ..errors import NotFound
from ..model import Claim, NewEvent, OutboxEvent
from . import Outbox

if TYPE_CHECKING:
    from .sqlite import SqliteMetadata

QUEUE_ADD = ("INSERT INTO event_queues (endpoint, repository, pending, due) VALUES (?, ?, ?, ?) "
             "ON CONFLICT (endpoint, repository) DO UPDATE SET pending = pending + excluded.pending")
PENDING = ("SELECT e.id, e.uid, e.repository, d.seq, e.action, e.payload, e.created_at FROM event_deliveries d "
           "JOIN events e ON e.id = d.event WHERE d.endpoint = ? AND d.repository = ? AND d.parked_at IS NULL "
           "ORDER BY d.seq LIMIT ?")


def add_events(conn: sqlite3.Connection, events: Sequence[NewEvent], now: float) -> None:
    """Write events in the caller's transaction: one delivery row per endpoint an event names (its id for its
    place in the repository's order), counted in that endpoint's queue for the repository."""
    for event in events:
        number = conn.execute(
            "INSERT INTO events (repository, action, payload, created_at, uid) VALUES (?, ?, ?, ?, ?)",
            (event.repository, event.action, json.dumps(event.payload, separators=(",", ":")), now,
             event.payload.get("id"))).lastrowid
        for endpoint in event.endpoints:
            conn.execute("INSERT INTO event_deliveries (endpoint, event, repository, seq) VALUES (?, ?, ?, ?)",
                         (endpoint, number, event.repository, number))
            conn.execute(QUEUE_ADD, (endpoint, event.repository, 1, 0))


def _marks(values: Sequence) -> str:
    return ", ".join("?" * len(values))


class SqliteOutbox(Outbox):
    def __init__(self, metadata: "SqliteMetadata"):
        self.md = metadata

    def due(self, endpoints: Sequence[str], now: float) -> bool:
        if not endpoints:
            return False
        with self.md._read() as conn:
            return conn.execute(
                f"SELECT 1 FROM event_queues WHERE pending > 0 AND due <= ? AND lease_until <= ? "
                f"AND endpoint IN ({_marks(endpoints)}) LIMIT 1", (now, now, *endpoints)).fetchone() is not None

    def claim(self, endpoints: Sequence[str], owner: str, now: float, lease_until: float, limit: int) -> list[Claim]:
        if not endpoints:
            return []
        with self.md._write() as conn:
            rows = conn.execute(
                f"SELECT endpoint, repository, attempts FROM event_queues WHERE pending > 0 AND due <= ? "
                f"AND lease_until <= ? AND endpoint IN ({_marks(endpoints)}) ORDER BY due LIMIT ?",
                (now, now, *endpoints, limit)).fetchall()
            conn.executemany("UPDATE event_queues SET lease_owner = ?, lease_until = ? "
                             "WHERE endpoint = ? AND repository = ?",
                             [(owner, lease_until, endpoint, repository) for endpoint, repository, _ in rows])
        return [Claim(*row) for row in rows]

    def pending(self, endpoint: str, repository: str, limit: int) -> list[OutboxEvent]:
        with self.md._read() as conn:
            rows = conn.execute(PENDING, (endpoint, repository, limit)).fetchall()
        return [OutboxEvent(number, uid or "", repo, seq, action, json.loads(payload), created)
                for number, uid, repo, seq, action, payload, created in rows]

    def delivered(self, claim: Claim, numbers: Sequence[int], owner: str, now: float, lease_until: float) -> None:
        with self.md._write() as conn:
            gone = conn.execute(f"DELETE FROM event_deliveries WHERE endpoint = ? AND parked_at IS NULL "
                                f"AND event IN ({_marks(numbers)})", (claim.endpoint, *numbers)).rowcount
            conn.execute("UPDATE event_queues SET pending = MAX(pending - ?, 0), attempts = 0, due = ?, "
                         "last_error = NULL, lease_until = CASE WHEN lease_owner = ? THEN ? ELSE lease_until END "
                         "WHERE endpoint = ? AND repository = ?",
                         (gone, now, owner, lease_until, claim.endpoint, claim.repository))
            conn.execute("INSERT INTO event_endpoints (name, last_success, delivered) VALUES (?, ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET last_success = excluded.last_success, "
                         "delivered = delivered + excluded.delivered", (claim.endpoint, now, gone))

    def failed(self, claim: Claim, numbers: Sequence[int], owner: str, now: float, error: str, attempts: int,
               retry_at: float, park: bool) -> None:
        error = error[:500]
        with self.md._write() as conn:
            if park:
                parked = conn.execute(
                    f"UPDATE event_deliveries SET parked_at = ?, attempts = ?, last_error = ? WHERE endpoint = ? "
                    f"AND parked_at IS NULL AND event IN ({_marks(numbers)})",
                    (now, attempts, error, claim.endpoint, *numbers)).rowcount
                conn.execute("UPDATE event_queues SET pending = MAX(pending - ?, 0), attempts = 0, due = ?, "
                             "last_error = ?, lease_until = CASE WHEN lease_owner = ? THEN 0 ELSE lease_until END "
                             "WHERE endpoint = ? AND repository = ?",
                             (parked, now, error, owner, claim.endpoint, claim.repository))
            else:
                conn.execute("UPDATE event_queues SET attempts = ?, due = ?, last_error = ?, "
                             "lease_until = CASE WHEN lease_owner = ? THEN 0 ELSE lease_until END "
                             "WHERE endpoint = ? AND repository = ?",
                             (attempts, retry_at, error, owner, claim.endpoint, claim.repository))
            conn.execute("INSERT INTO event_endpoints (name, last_failure, last_error) VALUES (?, ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET last_failure = excluded.last_failure, "
                         "last_error = excluded.last_error", (claim.endpoint, now, error))

    def release(self, claim: Claim, owner: str, *, resync: bool = False) -> None:
        with self.md._write() as conn:
            if resync:
                conn.execute("DELETE FROM event_deliveries WHERE endpoint = ? AND repository = ? AND NOT EXISTS "
                             "(SELECT 1 FROM events e WHERE e.id = event_deliveries.event)",
                             (claim.endpoint, claim.repository))
                conn.execute("UPDATE event_queues SET pending = (SELECT COUNT(*) FROM event_deliveries d "
                             "WHERE d.endpoint = ? AND d.repository = ? AND d.parked_at IS NULL) "
                             "WHERE endpoint = ? AND repository = ?", (claim.endpoint, claim.repository) * 2)
            conn.execute("UPDATE event_queues SET lease_until = 0 WHERE endpoint = ? AND repository = ? "
                         "AND lease_owner = ?", (claim.endpoint, claim.repository, owner))

    def endpoint_states(self) -> dict[str, dict]:
        with self.md._read() as conn:
            states: dict[str, dict] = {}

            def state(name: str) -> dict:
                return states.setdefault(name, {"backlog": 0, "parked": 0, "retrying": 0, "oldest_pending": None,
                                                "last_success": None, "last_failure": None, "last_error": None,
                                                "delivered": 0})
            for name, backlog, retrying in conn.execute(
                    "SELECT endpoint, SUM(pending), SUM(pending > 0 AND attempts > 0) FROM event_queues "
                    "GROUP BY endpoint"):
                state(name).update(backlog=backlog, retrying=retrying)
            for name, parked in conn.execute("SELECT endpoint, COUNT(*) FROM event_deliveries "
                                             "WHERE parked_at IS NOT NULL GROUP BY endpoint"):
                state(name)["parked"] = parked
            for name, oldest in conn.execute(
                    "SELECT d.endpoint, MIN(e.created_at) FROM event_deliveries d JOIN events e ON e.id = d.event "
                    "WHERE d.parked_at IS NULL GROUP BY d.endpoint"):
                state(name)["oldest_pending"] = oldest
            for name, success, failure, error, delivered in conn.execute(
                    "SELECT name, last_success, last_failure, last_error, delivered FROM event_endpoints"):
                state(name).update(last_success=success, last_failure=failure, last_error=error, delivered=delivered)
        return states

    def parked(self, endpoint: str, limit: int, after: int) -> list[dict]:
        with self.md._read() as conn:
            rows = conn.execute(
                "SELECT e.id, e.uid, e.repository, e.action, e.payload, e.created_at, d.parked_at, d.attempts, "
                "d.last_error FROM event_deliveries d JOIN events e ON e.id = d.event WHERE d.endpoint = ? "
                "AND d.parked_at IS NOT NULL AND d.event > ? ORDER BY d.event LIMIT ?",
                (endpoint, after, limit)).fetchall()
        return [{"number": number, "uid": uid, "repository": repository, "action": action,
                 "payload": json.loads(payload), "created_at": created, "parked_at": parked_at,
                 "attempts": attempts, "last_error": error}
                for number, uid, repository, action, payload, created, parked_at, attempts, error in rows]

    def replay(self, endpoint: str, uids: Sequence[str] | None, now: float) -> int:
        with self.md._write() as conn:
            if uids is None:
                rows = conn.execute("SELECT event, repository, seq, 1 FROM event_deliveries WHERE endpoint = ? "
                                    "AND parked_at IS NOT NULL", (endpoint,)).fetchall()
            else:
                uids = list(dict.fromkeys(uids))
                found = {uid: (number, repository, seq) for uid, number, repository, seq in conn.execute(
                    f"SELECT uid, id, repository, COALESCE(seq, id) FROM events WHERE uid IN ({_marks(uids)})",
                    uids)}
                unknown = [uid for uid in uids if uid not in found]
                if unknown:
                    raise NotFound({"unknown": unknown[:20]}, message="no such event in the outbox (pruned, or "
                                                                      "never written)")
                rows = []
                for uid in uids:
                    number, repository, seq = found[uid]
                    row = conn.execute("SELECT parked_at IS NOT NULL FROM event_deliveries WHERE endpoint = ? "
                                       "AND event = ?", (endpoint, number)).fetchone()
                    if row is None:  # delivered already: send it again
                        conn.execute("INSERT INTO event_deliveries (endpoint, event, repository, seq) "
                                     "VALUES (?, ?, ?, ?)", (endpoint, number, repository, seq))
                        rows.append((number, repository, seq, 0))
                    elif row[0]:
                        rows.append((number, repository, seq, 1))
            parked = [number for number, _, _, was_parked in rows if was_parked]
            for start in range(0, len(parked), 500):
                chunk = parked[start:start + 500]
                conn.execute(f"UPDATE event_deliveries SET parked_at = NULL, attempts = 0, last_error = NULL "
                             f"WHERE endpoint = ? AND event IN ({_marks(chunk)})", (endpoint, *chunk))
            counts: dict[str, int] = {}
            for _, repository, _, _ in rows:
                counts[repository] = counts.get(repository, 0) + 1
            for repository, count in counts.items():
                conn.execute(QUEUE_ADD, (endpoint, repository, count, now))
                conn.execute("UPDATE event_queues SET due = MIN(due, ?) WHERE endpoint = ? AND repository = ?",
                             (now, endpoint, repository))
        return len(rows)

    def prune(self, before: float, limit: int) -> int:
        with self.md._write() as conn:
            return conn.execute(
                "DELETE FROM events WHERE id IN (SELECT e.id FROM events e WHERE e.created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM event_deliveries d WHERE d.event = e.id) ORDER BY e.id LIMIT ?)",
                (before, limit)).rowcount
