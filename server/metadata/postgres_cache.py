"""Reads by digest without a round trip: a per-process cache of "repository R holds digest D" records, kept correct
by PostgreSQL notifications (LISTEN/NOTIFY) from every transaction that takes such a record away.

What is cached: the answer to "is blob D readable in R" (a `BlobRecord`) and "is manifest D in R" (a
`ManifestRecord`), positive answers only. Both are immutable while they exist: a digest names its content, so a
record can only go away, never change. Reads by tag are not cached (a tag moves): they stay one round trip.

What takes a record away, and notifies on the channel `dockyard_gone` inside its own transaction (so the
notification is delivered exactly when, and only if, it commits): a blob unlinked from a repository
(`b<TAB>repository<TAB>digest`), a manifest deleted (`m<TAB>...`), a repository deleted (`r<TAB>repository`), and
any garbage-collection or repair step that removed something (`*`: everything goes, GC is rare). The process that
committed evicts at once too, so it never serves its own delete.

Correctness against a read in flight: every eviction bumps a generation number. A miss notes the generation before
its query and stores the answer only if no eviction happened meanwhile; an eviction after the store removes it. So
a record is only ever served between the moment its removal commits and the moment the notification reaches this
process (the listener thread blocks on the socket: a few milliseconds on a LAN). That window is the price of 0 round
trips, and the same as Distribution's blob descriptor cache behind Redis has; a read by tag, a tag list and the
catalog have no such window.

The cache serves only while a listener connection is up: a thread per process holds a connection of its own in
LISTEN (opened on first use, after gunicorn forks). When it breaks (PostgreSQL restarted, the network cut), the
cache is emptied and bypassed, since notifications may have been missed, until a new LISTEN is in place; every 30 s
without a notification the connection is checked with a query, and libpq's TCP keepalives catch a peer that
vanished. Bounded: at most MAX_ENTRIES records (least recently used go first).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Callable, Hashable

log = logging.getLogger("dockyard")

CHANNEL = "dockyard_gone"
LISTENER_NAME = "dockyard digest cache"  # the listener connection's application_name (pg_stat_activity)
MAX_ENTRIES = 50_000  # ~200 bytes each: about 10 MiB per process at most
CHECK_EVERY = 30.0  # seconds without a notification before the listener checks its connection
WAKE_EVERY = 0.5  # the listener looks at its stop flag this often
RETRY_EVERY = 2.0  # seconds between attempts to listen again after a failure


def gone_blob(repository: str, digest: str) -> str:
    return f"b\t{repository}\t{digest}"


def gone_manifest(repository: str, digest: str) -> str:
    return f"m\t{repository}\t{digest}"


def gone_repository(repository: str) -> str:
    return f"r\t{repository}"


EVERYTHING = "*"


class DigestCache:
    """Records by (kind, repository, digest); `connect()` opens the listener's own autocommit connection."""

    def __init__(self, connect: Callable[[], object], *, max_entries: int = MAX_ENTRIES):
        self._connect = connect
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0
        self._live = False
        self._pid = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading ---------------------------------------------------------------------------------------------------

    def get(self, kind: str, repository: str, digest: str):
        """The cached record, or None (not cached, or the cache is not live: ask the database)."""
        self._ensure_listener()
        with self._lock:
            if not self._live:
                return None
            key = (kind, repository, digest)
            record = self._entries.get(key)
            if record is not None:
                self._entries.move_to_end(key)
            return record

    def generation(self) -> int:
        with self._lock:
            return self._generation

    def put(self, kind: str, repository: str, digest: str, record: object, generation: int) -> None:
        """Keep what a query found, unless anything was evicted since `generation` (taken before the query)."""
        with self._lock:
            if not self._live or generation != self._generation:
                return
            self._entries[(kind, repository, digest)] = record
            self._entries.move_to_end((kind, repository, digest))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    @property
    def live(self) -> bool:
        return self._live

    def __len__(self) -> int:
        return len(self._entries)

    # -- evicting --------------------------------------------------------------------------------------------------

    def gone(self, payload: str) -> None:
        """Apply one notification's payload (also called by this process right after its own commit)."""
        kind, _, rest = payload.partition("\t")
        with self._lock:
            self._generation += 1
            if kind in ("b", "m"):
                repository, _, digest = rest.partition("\t")
                self._entries.pop((kind, repository, digest), None)
            elif kind == "r":
                for key in [k for k in self._entries if k[1] == rest]:
                    del self._entries[key]
            else:  # "*", or anything this release does not know: forget everything
                self._entries.clear()

    def _down(self) -> None:
        with self._lock:
            self._live = False
            self._generation += 1
            self._entries.clear()

    # -- the listener ------------------------------------------------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # A new process (a forked worker): nothing inherited is trusted, the parent's thread is not here.
            self._pid = os.getpid()
            self._entries.clear()
            self._generation += 1
            self._live = False
            self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="dockyard-digest-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the listener and wait for it to close its connection (a process closing its metadata; tests). The
        cache is bypassed from then on, in this process."""
        self._stop.set()
        self._down()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _listen(self) -> None:
        stop = self._stop
        while not stop.is_set():
            conn = None
            try:
                conn = self._connect()
                conn.execute(f"LISTEN {CHANNEL}")
                with self._lock:  # whatever happened before LISTEN took effect is unknown: start empty
                    self._entries.clear()
                    self._generation += 1
                    self._live = not stop.is_set()
                checked = time.monotonic()
                while not stop.is_set():
                    for notify in conn.notifies(timeout=WAKE_EVERY):
                        checked = time.monotonic()
                        self.gone(notify.payload)
                    if time.monotonic() - checked > CHECK_EVERY:
                        conn.execute("SELECT 1")  # raises on a connection that died quietly
                        checked = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - any failure: bypass the cache, then listen again
                if not stop.is_set():
                    log.warning("digest cache off until PostgreSQL notifications are back: %s",
                                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            finally:
                self._down()
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001 - closing a broken connection may fail any way
                        pass
            stop.wait(RETRY_EVERY)


def wait_until_live(cache: DigestCache, timeout: float = 10.0) -> bool:
    """For tests and start-up checks: whether the listener is in place within `timeout` seconds."""
    cache._ensure_listener()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cache.live:
            return True
        time.sleep(0.01)
    return cache.live
