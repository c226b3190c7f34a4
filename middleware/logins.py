"""The failed-login policy of the `auth` middleware: slow down guessing one account, lock nobody else out.

Every door that checks a password (basic credentials on /v2/, GET and POST on the token endpoint, and so the web
UI's sign-in) asks `LoginGuard` first and tells it of each failure. Two buckets per failure:

- **per account and address** (`user@address`, default: 5 failures, then one more try a minute): guessing one
  account from one place is slowed to a crawl. Other accounts from the same address, and the same account from
  another address (its owner, behind another NAT), are untouched: ten wrong passwords never lock out everyone
  behind one address, which would turn the limit into a denial-of-service tool.
- **per address** (default: 100 failures, then one a second): what one address may cost in bcrypt checks across
  all accounts, so a flood of wrong passwords for ever-new user names cannot burn the CPU. Its limit is high
  enough that the users of a NAT making typos never reach it.

A refused attempt is answered 429 TOOMANYREQUESTS with Retry-After before any password is checked, whatever the
door, and costs no bcrypt. `LoginThrottle` applies the per-address bucket in the request path's `throttle` stage,
before `auth` reads the credentials at all.
"""

from __future__ import annotations

import hashlib

import falcon

from .buckets import BucketStore, Limit, too_many

DEFAULT_PER_ACCOUNT = Limit(rate=1 / 60, burst=5)
DEFAULT_PER_ADDRESS = Limit(rate=1.0, burst=100)


class LoginGuard:
    def __init__(self, store: BucketStore, *, per_account: Limit = DEFAULT_PER_ACCOUNT,
                 per_address: Limit = DEFAULT_PER_ADDRESS):
        self.store = store
        self.per_account = per_account
        self.per_address = per_address

    @staticmethod
    def _account_key(user: str, address: str) -> str:
        # User names are the client's input: a digest bounds the key, whatever was sent.
        return "login:account:" + hashlib.sha256(f"{user}\0{address}".encode("utf-8", "replace")).hexdigest()

    @staticmethod
    def _address_key(address: str) -> str:
        return f"login:address:{address}"

    def check_address(self, address: str) -> None:
        wait = self.store.empty(self._address_key(address), self.per_address)
        if wait:
            raise too_many(wait, {"reason": "too many failed logins from this address"})

    def check(self, user: str, address: str) -> None:
        """TOOMANYREQUESTS if this account may not be tried from this address now; before any password check."""
        self.check_address(address)
        wait = self.store.empty(self._account_key(user, address), self.per_account)
        if wait:
            raise too_many(wait, {"reason": "too many failed logins for this account from this address"})

    def failed(self, user: str, address: str) -> None:
        self.store.take(self._account_key(user, address), self.per_account)
        self.store.take(self._address_key(address), self.per_address)


class LoginThrottle:
    """The `throttle` stage of the request path: a request that brings credentials (an Authorization header, or a
    POST to the token endpoint) from an address over its failed-login budget is refused before `auth` reads them."""

    def __init__(self, guard: LoginGuard, address, token_path: str):
        self.guard = guard
        self.address = address  # req -> the client's address, forwarded headers believed from trusted proxies
        self.token_path = token_path

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.get_header("Authorization") or (req.method == "POST" and req.path == self.token_path):
            self.guard.check_address(self.address(req))
