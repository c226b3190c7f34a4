"""Small per-worker LRU caches bounded in bytes, for content that cannot go stale under its key.

Listings (tags/list, _catalog) are cached under a key that includes a version counter the database keeps with
triggers, so an entry is never served after the data behind it changed: a changed list has a new key, and the old
entry just ages out. Manifest bytes are cached by digest: a digest names its content forever.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable


class ResponseCache:
    def __init__(self, max_bytes: int = 16 * 1024 * 1024, max_entry: int = 4 * 1024 * 1024):
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self._entries: OrderedDict[Hashable, tuple[bytes, object]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[bytes, object] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, body: bytes, extra: object = None) -> None:
        if len(body) > self.max_entry:
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= len(previous[0])
            self._entries[key] = (body, extra)
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _, (old, _) = self._entries.popitem(last=False)
                self._bytes -= len(old)

