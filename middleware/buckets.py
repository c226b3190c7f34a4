"""Token buckets shared by every worker of a host, or every node of a cluster: the rate limiter's and the failed-login
policy's.

On one host the buckets live in a small SQLite database in the data directory (WAL, `synchronous=OFF`: a lost
bucket after a power cut only forgives a few requests), one short `BEGIN IMMEDIATE` transaction per take, so the
workers of a host draw from one bucket per key instead of allowing N times the rate. With the metadata on
PostgreSQL they live there (`SharedBucketStore`), so the nodes of a cluster draw from one bucket per key too.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dockyard.server.errors import TooManyRequests

RETRY_AFTER_MAX = 3600


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens per second
    burst: float  # bucket size


class BucketStore:
    """Token buckets in SQLite: `take` refills by elapsed time, then takes one token if there is one."""

    def __init__(self, path: str | os.PathLike, *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._takes = 0
        with self._lock:
            self._connection().execute(
                "CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, "
                "updated REAL NOT NULL) WITHOUT ROWID")
            self._conn.close()  # gunicorn forks after this (preload_app): each worker opens its own
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @staticmethod
    def _level(row, limit: Limit, now: float) -> float:
        if row is None:
            return limit.burst
        tokens, updated = row
        return min(limit.burst, tokens + max(0.0, now - updated) * limit.rate)

    def take(self, key: str, limit: Limit) -> float:
        """0 when a token was taken; otherwise the seconds until one will be there."""
        with self._lock:
            conn = self._connection()
            now = self._clock()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT tokens, updated FROM buckets WHERE key = ?", (key,)).fetchone()
                tokens = self._level(row, limit, now)
                allowed = tokens >= 1
                if allowed:
                    tokens -= 1
                conn.execute("INSERT OR REPLACE INTO buckets (key, tokens, updated) VALUES (?, ?, ?)",
                             (key, tokens, now))
                self._takes += 1
                if self._takes % 10000 == 0:  # forget clients idle for a day (their buckets are full again)
                    conn.execute("DELETE FROM buckets WHERE updated < ?", (now - 86400,))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return 0.0 if allowed else wait_for(tokens, limit)

    def empty(self, key: str, limit: Limit) -> float:
        """Like `take` without taking: 0 when a token is there, else the seconds until one will be."""
        with self._lock:
            row = self._connection().execute("SELECT tokens, updated FROM buckets WHERE key = ?",
                                             (key,)).fetchone()
        return wait_for(self._level(row, limit, self._clock()), limit)


class SharedBucketStore:
    """Token buckets on the database every node shares (the app's `SharedState`): one statement per take, under
    the bucket's row lock, so N nodes allow exactly the configured rate, not N times it. Same interface as
    `BucketStore`. The refill uses each node's clock: keep nodes in time (NTP); a node whose clock is behind
    cannot refill a bucket twice (the stored time never goes backwards)."""

    def __init__(self, shared):
        self.shared = shared

    def take(self, key: str, limit: Limit) -> float:
        allowed, tokens = self.shared.take_token(key, limit.rate, limit.burst)
        return 0.0 if allowed else wait_for(tokens, limit)

    def empty(self, key: str, limit: Limit) -> float:
        return wait_for(self.shared.peek_tokens(key, limit.rate, limit.burst), limit)


def wait_for(tokens: float, limit: Limit) -> float:
    """0 when a bucket holding `tokens` has one to give, else the seconds until it will."""
    if tokens >= 1:
        return 0.0
    return (1 - tokens) / limit.rate if limit.rate > 0 else float(RETRY_AFTER_MAX)




def too_many(wait: float, detail: dict) -> TooManyRequests:
    """429 with `Retry-After` (whole seconds, at least 1, at most an hour)."""
    seconds = max(1, min(RETRY_AFTER_MAX, math.ceil(wait)))
    return TooManyRequests({**detail, "retry_after": seconds}, headers={"Retry-After": str(seconds)})
