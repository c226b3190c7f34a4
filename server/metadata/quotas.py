"""Byte quotas per repository or repository prefix, checked inside the transaction that links a blob."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from ..errors import Denied

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(value: int | str) -> int:
    """Bytes from an integer or a string such as "10GiB", "500 MB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = SIZE_RE.fullmatch(value)
        if match and match.group(2).upper() in UNITS:
            return int(float(match.group(1)) * UNITS[match.group(2).upper()])
    raise ValueError(f"not a size: {value!r} (use bytes, or a number with B, KB, MB, GB, KiB, MiB, GiB...)")


@dataclass(frozen=True, slots=True)
class Quota:
    """`pattern` is a repository name, or a prefix ending in "/" that covers every repository under it."""

    pattern: str
    limit: int

    def applies_to(self, repository: str) -> bool:
        return repository.startswith(self.pattern) if self.pattern.endswith("/") else repository == self.pattern

    def _scope(self) -> tuple[str, tuple]:
        if self.pattern.endswith("/"):
            # A range on the unique name index: every name that starts with the prefix.
            return "r.name >= ? AND r.name < ?", (self.pattern, self.pattern[:-1] + "0")
        return "r.name = ?", (self.pattern,)

    def usage(self, conn: sqlite3.Connection) -> int:
        """Bytes held in scope, each blob counted once however many repositories in scope link it."""
        where, params = self._scope()
        row = conn.execute(
            f"SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN (SELECT l.digest FROM "
            f"repository_blobs l JOIN repositories r ON r.id = l.repository_id WHERE {where})", params).fetchone()
        return row[0]

    def check(self, conn: sqlite3.Connection, repository_id: int, digest: str, size: int) -> None:
        """DENIED when linking `digest` would take the scope past its limit. Pulls and deletes never get here."""
        where, params = self._scope()
        already = conn.execute(
            f"SELECT 1 FROM repository_blobs l JOIN repositories r ON r.id = l.repository_id "
            f"WHERE l.digest = ? AND {where} LIMIT 1", (digest, *params)).fetchone()
        if already:
            return
        used = self.usage(conn)
        if used + size > self.limit:
            raise self.exceeded(used, size)

    def exceeded(self, used: int, requested: int) -> Denied:
        return Denied({"quota": self.pattern, "limit": self.limit, "used": used, "requested": requested},
                      message=f"quota exceeded: {self.pattern} may hold {self.limit} bytes, holds {used}, "
                              f"this push needs {requested} more")
