"""Byte quotas per repository or repository prefix: what they are, whom they cover, and the error when exceeded.

How much a quota's scope holds is the metadata's to count, inside the transaction that links a blob (see
`Metadata.record_blob`), so two pushes racing for the last bytes cannot both get in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import Denied

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

    @property
    def is_prefix(self) -> bool:
        return self.pattern.endswith("/")

    def applies_to(self, repository: str) -> bool:
        return repository.startswith(self.pattern) if self.is_prefix else repository == self.pattern

    def name_range(self) -> tuple[str, str]:
        """[low, high) of the repository names in scope, for a range scan of a name index: every name that starts
        with the prefix sorts between the prefix and the prefix with its "/" replaced by the next character."""
        if self.is_prefix:
            return self.pattern, self.pattern[:-1] + "0"
        return self.pattern, self.pattern + "\0"

    def exceeded(self, used: int, requested: int) -> Denied:
        return Denied({"quota": self.pattern, "limit": self.limit, "used": used, "requested": requested},
                      message=f"quota exceeded: {self.pattern} may hold {self.limit} bytes, holds {used}, "
                              f"this push needs {requested} more")
