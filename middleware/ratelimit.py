"""Rate limiting (`ratelimit` middleware): token buckets per client and class of request, shared by all workers.

The client is the user when authenticated, else the address (`X-Forwarded-For` believed only from trusted
proxies). Buckets are `buckets.BucketStore`s. Failed logins are the `auth` middleware's own policy (`logins.py`).
"""

from __future__ import annotations

import ipaddress
import sqlite3

import falcon

from dockyard.server.proxies import TrustedProxies

from . import MiddlewareContext, Options, client_address
from .access import required_access
from .buckets import BucketStore, Limit, too_many

DEFAULT_LIMITS = {
    "manifest_read": Limit(20, 200),
    "blob_read": Limit(50, 500),
    "write": Limit(50, 1000),
    "token": Limit(2, 30),
    "other": Limit(20, 200),
}


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
            if name == "failed_login":
                raise options.error("limits.failed_login", "failed logins are the auth middleware's now: "
                                    "see its failed_logins option")
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
        path = options.get("database", str, "")
        try:
            store = BucketStore(path, clock=context.now) if path else context.buckets()
        except sqlite3.Error as exc:  # name the file that failed, the default one too (not an empty option)
            where = path or str(context.data_path / "ratelimit.db")
            raise options.error("database", f"cannot open {where!r}: {exc}") from None
        return cls(store, limits, exempt=TrustedProxies(tuple(networks)), exempt_users=frozenset(users),
                   trusted_proxies=trusted)

    def address(self, req: falcon.Request) -> str:
        return client_address(req, self.trusted_proxies)

    def exempted(self, req: falcon.Request) -> bool:
        user = req.context.get("user")
        return (user is not None and user in self.exempt_users) or self.exempt.trusts(self.address(req))

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params: dict) -> None:
        if self.exempted(req):
            return
        klass = request_class(req, resource, params)
        user = req.context.get("user")
        who = f"user:{user}" if user else f"addr:{self.address(req)}"
        wait = self.store.take(f"{klass}:{who}", self.limits[klass])
        if wait:
            raise too_many(wait, {"class": klass})
