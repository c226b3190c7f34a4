"""htpasswd files with bcrypt hashes: the format `htpasswd -B` writes and the reference registry reads.

`Htpasswd` verifies passwords and re-reads its file when the file changes (checked on every verification: one
stat). bcrypt is slow on purpose (tens of milliseconds a check), and a push sends hundreds of requests with the same
basic credentials, so a *successful* check is remembered for `cache_seconds`, keyed by an HMAC of the user and
password under a per-process random key (the password itself is never kept). The entry is only used while the
user's hash in the file is still the one it was verified against: a changed password or a removed user takes
effect at once. Failures are never cached. `write_users` rewrites a file atomically for `dockyard user`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import bcrypt

log = logging.getLogger("dockyard.auth")

BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
CACHE_LIMIT = 10000


BCRYPT_MAX = 72  # bcrypt uses the first 72 bytes of a password; htpasswd -B (and Apache) truncate there too


@functools.cache
def _dummy_hash(cost: int) -> bytes:
    """Checked against when the user is unknown, at the cost the file's own hashes use, so a wrong user name costs
    exactly as much as a wrong password and the time of an answer never tells whether a user exists."""
    return bcrypt.hashpw(b"dockyard", bcrypt.gensalt(rounds=cost))


def _secret(password: str) -> bytes:
    """What bcrypt sees of a password: its first 72 bytes of UTF-8, as htpasswd -B hashed it."""
    return password.encode("utf-8", "surrogatepass")[:BCRYPT_MAX]


def _cost(hashed: bytes) -> int | None:
    try:
        cost = int(hashed[4:6])
    except ValueError:
        return None
    return cost if 4 <= cost <= 31 else None


def parse(text: str, source: str = "htpasswd") -> dict[str, bytes]:
    """user -> bcrypt hash. Lines that are blank, comments or not bcrypt are skipped with a warning."""
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed.startswith(BCRYPT_PREFIXES):
            log.warning("%s line %d: not a user:bcrypt-hash entry, ignored (only bcrypt, htpasswd -B, is "
                        "accepted)", source, number)
            continue
        users[user] = hashed.encode()
    return users


def hash_password(password: str, rounds: int = 10) -> str:
    # htpasswd -B writes $2y$; bcrypt writes $2b$ (the same algorithm): keep the htpasswd spelling.
    hashed = bcrypt.hashpw(_secret(password), bcrypt.gensalt(rounds=rounds)).decode()
    return "$2y$" + hashed[4:]


def read_users(path: str | os.PathLike) -> dict[str, str]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    return {user: hashed.decode() for user, hashed in parse(text, str(path)).items()}


def write_users(path: str | os.PathLike, users: dict[str, str]) -> None:
    """Replace the file atomically (temp file in the same directory, fsync, rename), mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write("".join(f"{user}:{hashed}\n" for user, hashed in sorted(users.items())))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


USER_RE_FORBIDDEN = (":", "\n", "\r", " ", "\t")


def check_user_name(user: str) -> None:
    if not user or any(c in user for c in USER_RE_FORBIDDEN) or len(user) > 255:
        raise ValueError(f"invalid user name {user!r}: no ':' or whitespace, 1 to 255 characters")


@contextlib.contextmanager
def locked(path: str | os.PathLike):
    """An exclusive lock beside the file, so two `dockyard user` runs never lose each other's change."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def add_user(path: str | os.PathLike, user: str, password: str, *, rounds: int = 10) -> bool:
    """Add or replace a user; True if the user is new."""
    check_user_name(user)
    if not password:
        raise ValueError("empty password")
    hashed = hash_password(password, rounds)
    with locked(path):
        users = read_users(path)
        new = user not in users
        users[user] = hashed
        write_users(path, users)
    return new


def remove_user(path: str | os.PathLike, user: str) -> bool:
    """Remove a user; False if there was none of that name."""
    with locked(path):
        users = read_users(path)
        if users.pop(user, None) is None:
            return False
        write_users(path, users)
    return True


class Htpasswd:
    def __init__(self, path: str | os.PathLike, *, cache_seconds: float = 60,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._users: dict[str, bytes] = {}
        self._dummy_cost = 10
        self._cache: dict[bytes, tuple[bytes, float]] = {}
        self._key = secrets.token_bytes(32)
        self._refresh()

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            if stamp is None:
                log.warning("htpasswd file %s does not exist: no user can log in", self.path)
                users = {}
            else:
                users = parse(self.path.read_text(), str(self.path))
            costs = [cost for cost in map(_cost, users.values()) if cost is not None]
            # The cost most of the file's users have: with one cost for everyone (what `dockyard user add` and
            # htpasswd -B -C N write) no answer's timing tells a known user from an unknown one.
            self._dummy_cost = max(set(costs), key=costs.count) if costs else 10
            self._users, self._stamp = users, stamp
            self._cache.clear()

    def users(self) -> list[str]:
        self._refresh()
        return sorted(self._users)

    def verify(self, user: str, password: str) -> bool:
        self._refresh()
        hashed = self._users.get(user)
        secret = _secret(password)
        key = hmac.new(self._key, user.encode("utf-8", "surrogatepass") + b"\0" + secret, hashlib.sha256).digest()
        now = self._clock()
        cached = self._cache.get(key)
        if hashed is not None and cached is not None and cached[1] > now and hmac.compare_digest(cached[0], hashed):
            return True
        try:
            ok = bcrypt.checkpw(secret, hashed if hashed is not None else _dummy_hash(self._dummy_cost))
        except ValueError:  # a malformed hash in the file
            ok = False
        if ok and hashed is not None:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = (hashed, now + self.cache_seconds)
            return True
        return False
