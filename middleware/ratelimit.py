"""Rate limiting (`ratelimit` middleware): token buckets per client and class of request, shared by all workers.

The buckets live in a small SQLite database in the data directory (WAL, `synchronous=OFF`: a lost bucket after a
power cut only forgives a few requests), one short `BEGIN IMMEDIATE` transaction per request, so the 4 workers of a
host draw from one bucket per client instead of allowing 4x the rate. The client is the user when authenticated,
else the address (`X-Forwarded-For` believed only from trusted proxies). A failed login (the auth middleware's
`req.context.auth_failed`; without it, a 401 to a request that carried credentials) takes a token from the
`failed_login` bucket of the address; while it is empty, requests with credentials from there get 429 before any
password is checked.

It acts at two stages of the request path (`parts()`): the failed-login throttle before `auth`, the buckets per
class after it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import falcon

from dockyard.server.errors import TooManyRequests
from dockyard.server.proxies import TrustedProxies

from . import MiddlewareContext, Options
from .access import required_access

RETRY_AFTER_MAX = 3600


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens per second
    burst: float  # bucket size


DEFAULT_LIMITS = {
    "manifest_read": Limit(20, 200),
    "blob_read": Limit(50, 500),
    "write": Limit(50, 1000),
    "token": Limit(2, 30),
    "other": Limit(20, 200),
    "failed_login": Limit(0.1, 10),
}


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
        if allowed:
            return 0.0
        return (1 - tokens) / limit.rate if limit.rate > 0 else float(RETRY_AFTER_MAX)

    def empty(self, key: str, limit: Limit) -> float:
        """Like `take` without taking: 0 when a token is there, else the seconds until one will be."""
        with self._lock:
            row = self._connection().execute("SELECT tokens, updated FROM buckets WHERE key = ?",
                                             (key,)).fetchone()
        tokens = self._level(row, limit, self._clock())
        if tokens >= 1:
            return 0.0
        return (1 - tokens) / limit.rate if limit.rate > 0 else float(RETRY_AFTER_MAX)


def request_class(req: falcon.Request, resource, params: dict) -> str:
    if getattr(resource, "rate_class", None):
        return resource.rate_class  # e.g. the token endpoint: "token"
    access = required_access(req.method, req.path, req.uri_template, params)
    if access.kind != "repository":
        return "other"
    if req.method not in ("GET", "HEAD"):
        return "write"
    template = req.uri_template or ""
    return "blob_read" if "/blobs/" in template else "manifest_read"


class RateLimit:
    def __init__(self, store: BucketStore, limits: dict[str, Limit], *, exempt: TrustedProxies | None = None,
                 exempt_users: frozenset = frozenset(), trusted_proxies: TrustedProxies | None = None):
        self.store = store
        self.limits = limits
        self.exempt = exempt or TrustedProxies()
        self.exempt_users = exempt_users
        self.trusted_proxies = trusted_proxies or TrustedProxies()

    @classmethod
    def from_config(cls, options: Options, context: MiddlewareContext) -> "RateLimit":
        limits = dict(DEFAULT_LIMITS)
        for name, raw in options.get("limits", dict, {}).items():
            if name not in DEFAULT_LIMITS:
                raise options.error(f"limits.{name}", f"unknown class (one of {', '.join(DEFAULT_LIMITS)})")
            if not isinstance(raw, dict):
                raise options.error(f"limits.{name}", "expected a table { rate = ..., burst = ... }")
            sub = Options(options.entry, raw, prefix=f"limits.{name}.")
            limits[name] = Limit(sub.number("rate", DEFAULT_LIMITS[name].rate),
                                 sub.number("burst", DEFAULT_LIMITS[name].burst, minimum=1))
            sub.finish()
        networks, users = [], []
        for item in options.strings("exempt"):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                users.append(item)  # not an address: a user name
        trusted = options.proxies("trusted_proxies", context.config.proxies)
        path = options.get("database", str, "") or str(context.data_path / "ratelimit.db")
        try:
            store = BucketStore(path, clock=context.now)
        except sqlite3.Error as exc:
            raise options.error("database", f"cannot open {path!r}: {exc}") from None
        return cls(store, limits, exempt=TrustedProxies(tuple(networks)), exempt_users=frozenset(users),
                   trusted_proxies=trusted)

    def parts(self) -> dict:
        """The stages of the request path this middleware acts at (see dockyard.server.pipeline)."""
        return {"throttle": LoginThrottle(self), "ratelimit": self}

    def address(self, req: falcon.Request) -> str:
        address = req.context.get("client_address")
        if address is None:
            address = req.context.client_address = self.trusted_proxies.client_address(
                req.remote_addr, req.get_header("X-Forwarded-For"))
        return address

    def exempted(self, req: falcon.Request) -> bool:
        user = req.context.get("user")
        return (user is not None and user in self.exempt_users) or self.exempt.trusts(self.address(req))

    @staticmethod
    def refuse(wait: float, klass: str) -> TooManyRequests:
        seconds = max(1, min(RETRY_AFTER_MAX, math.ceil(wait)))
        return TooManyRequests({"class": klass, "retry_after": seconds}, headers={"Retry-After": str(seconds)})

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params: dict) -> None:
        if self.exempted(req):
            return
        klass = request_class(req, resource, params)
        user = req.context.get("user")
        who = f"user:{user}" if user else f"addr:{self.address(req)}"
        wait = self.store.take(f"{klass}:{who}", self.limits[klass])
        if wait:
            raise self.refuse(wait, klass)


class LoginThrottle:
    """The rate limiter's first part, before `auth`: while an address's failed-login bucket is empty, requests
    with credentials from there get 429 before any password is checked; every failed login takes a token."""

    def __init__(self, limiter: RateLimit):
        self.limiter = limiter

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        limiter = self.limiter
        if req.get_header("Authorization") and not limiter.exempted(req):
            wait = limiter.store.empty(f"failed_login:{limiter.address(req)}", limiter.limits["failed_login"])
            if wait:
                raise limiter.refuse(wait, "failed_login")

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        failed = req.context.get("auth_failed")  # set by the auth middleware; else any 401 to credentials
        if failed is None:
            failed = resp.status_code == 401 and bool(req.get_header("Authorization"))
        limiter = self.limiter
        if failed and not limiter.exempted(req):
            limiter.store.take(f"failed_login:{limiter.address(req)}", limiter.limits["failed_login"])
