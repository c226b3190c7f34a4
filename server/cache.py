"""Small per-worker LRU caches, bounded in bytes (content and per-entry overhead) and in entries, for content that
cannot go stale under its key.

Listings (tags/list, _catalog) are cached under a key that includes a version counter the metadata keeps, so an
entry is never served after the data behind it changed: a changed list has a new key, and the old entry ages out.
Manifest bytes are cached by digest: a digest names its content forever.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Hashable

# What an entry costs beyond its body: the OrderedDict slot and link, the key tuple and its strings, the value tuple.
ENTRY_OVERHEAD = 240


def _key_size(key: Hashable) -> int:
    if isinstance(key, tuple):
        return sum(_key_size(part) for part in key) + 8 * len(key)
    if isinstance(key, (str, bytes)):
        return sys.getsizeof(key)
    return 32


class BoundedCache:
    def __init__(self, max_bytes: int = 16 * 1024 * 1024, max_entry: int = 4 * 1024 * 1024,
                 max_entries: int = 20_000):
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[bytes, object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes accounted for, overhead included."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> tuple[bytes, object] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0], entry[1]

    def put(self, key: Hashable, body: bytes, extra: object = None) -> None:
        if len(body) > self.max_entry:
            return
        cost = len(body) + _key_size(key) + ENTRY_OVERHEAD + (_key_size(extra) if extra is not None else 0)
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous[2]
            self._entries[key] = (body, extra, cost)
            self._bytes += cost
            while self._bytes > self.max_bytes or len(self._entries) > self.max_entries:
                _, (_, _, old_cost) = self._entries.popitem(last=False)
                self._bytes -= old_cost
