"""Delivery of events to the notification endpoints: the sender of each node, and the batch of pulls.

The outbox (`metadata.Outbox`) holds every event of a committed change until each of its endpoints has it. Every
worker runs a sender thread (started by `background`); one per node delivers at a time (a file lock in the data
directory; the others stand by and take over when it dies), woken at once by a commit in its own worker and else
looking every `POLL` seconds. It claims due queues (an endpoint's events of one repository; a lease in the
metadata makes it the only sender working on them, whatever the number of nodes), sends their events oldest
first, one request at a time per queue (up to `batch` events per request), and records the outcome:

- a 2xx answer: the events are delivered and leave the queue (3xx counts as a failure: a redirect is a wrong URL);
- anything else (an error status, a refused connection, the timeout): the queue's next try waits `backoff`,
  doubling with each failure up to `max_backoff`; after `max_attempts` failures in a row the events tried are
  parked, kept aside for `dockyard events replay`, and the queue goes on with the next ones.

So delivery is at least once (a sender that dies after the receiver answered and before recording it leaves the
lease to run out, and the next sender sends the same events again, with the same ids), and in commit order per
repository and endpoint, parked events excepted (replayed, they come after the ones sent meanwhile). Delivered
events are pruned once `events_retention` has passed.

Pulls are the high-volume events: they never touch the outbox. A pull wanted by some endpoint is kept in the
worker's memory (up to `PULL_BUFFER`, then counted and dropped) and sent in one request per endpoint every
`PULL_FLUSH` seconds, once: best effort, lost with the worker.
"""

from __future__ import annotations

import base64
import fcntl
import http.client
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence
from urllib.parse import unquote, urlsplit

from .config import Config
from .errors import NotFound, RegistryError, Unavailable
from .events import Endpoint, Events, redact_url, render, request_headers, source_address
from .metadata import Metadata
from .metadata.postgres_schema import SchemaError
from .model import Caller, Claim, NewEvent

log = logging.getLogger("dockyard")

POLL = 0.25  # seconds between looks at the outbox (a cheap read) when nothing woke the sender
STANDBY = 2.0  # seconds between a standby worker's tries to become its node's sender
LINGER = 0.25  # seconds a woken sender waits for more events (the rest of a push's), so one request carries them
LEASE_MIN = 60.0  # seconds a claimed queue stays with its sender (at least 3 timeouts of its endpoint)
CLAIMS = 8  # queues claimed at a time
THREADS = 4  # queues of one claim sent in parallel
PRUNE_INTERVAL = 60.0
PRUNE_BATCH = 1000
PULL_FLUSH = 1.0
PULL_BUFFER = 10000
PULL_REQUEST = 100  # pull events per request

Post = Callable[[Endpoint, str, bytes], "str | None"]  # (endpoint, content type, body) -> None or the failure


class HttpPoster:
    """POSTs to the endpoints on keep-alive connections, one per thread and endpoint (a receiver is spared a
    connection, and often a thread, per event). Returns None when the endpoint answered 2xx, else what went wrong
    (for the endpoint's state and the log)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()  # every connection a thread holds, for `close`
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for connection in self._open:
                connection.close()
            self._open.clear()

    def _drop(self, connections: dict, key) -> None:
        connection = connections.pop(key, None)
        if connection is not None:
            connection.close()
            with self._lock:
                self._open.discard(connection)

    def __call__(self, endpoint: Endpoint, content_type: str, body: bytes) -> str | None:
        parts = urlsplit(endpoint.url)
        headers = request_headers(endpoint, content_type, body)
        if parts.username is not None and not any(name.lower() == "authorization" for name in headers):
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connections = self._local.__dict__.setdefault("connections", {})
        key = (endpoint.url, endpoint.timeout)
        for attempt in (1, 2):
            connection = connections.get(key)
            reused = connection is not None
            if connection is None:
                connection_class = http.client.HTTPSConnection if parts.scheme == "https" \
                    else http.client.HTTPConnection
                connection = connections[key] = connection_class(parts.hostname, parts.port,
                                                                 timeout=endpoint.timeout)
                with self._lock:
                    self._open.add(connection)
            try:
                connection.request("POST", target, body=body, headers=headers)
                response = connection.getresponse()
                response.read(64 * 1024)
                if response.will_close or not response.isclosed():
                    self._drop(connections, key)
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status} {response.reason}"[:200]
            except (OSError, http.client.HTTPException) as exc:
                self._drop(connections, key)
                stale = isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))
                if reused and stale and attempt == 1:
                    continue  # the receiver closed an idle keep-alive connection: once more on a new one
                return f"{type(exc).__name__}: {exc}"[:200]
        raise AssertionError("unreachable")


class PullBatch:
    """Pull events waiting in this worker's memory for the next flush (bounded; the overflow is counted)."""

    def __init__(self, limit: int = PULL_BUFFER):
        self.limit = limit
        self.dropped = 0
        self._events: deque[NewEvent] = deque()
        self._lock = threading.Lock()

    def add(self, event: NewEvent) -> None:
        with self._lock:
            if len(self._events) >= self.limit:
                self.dropped += 1
            else:
                self._events.append(event)

    def take(self) -> list[NewEvent]:
        with self._lock:
            events, self._events = list(self._events), deque()
        return events


class Notifications:
    """The domain's side of events: building them (`events`), and delivering, inspecting and replaying them."""

    def __init__(self, config: Config, metadata: Metadata, *, clock: Callable[[], float] = time.time,
                 post: Post | None = None, threads: int = THREADS):
        self.events = Events(config.notifications, clock=clock, source_addr=source_address(config.bind))
        self.endpoints = {e.name: e for e in config.notifications}
        self.metadata = metadata
        self.clock = clock
        self.post = post or HttpPoster()
        self.retention = float(config.events_retention)
        self.lock_path = config.data_path / "events.lock"
        self.lease = max([LEASE_MIN] + [3 * e.timeout for e in config.notifications])
        self.pulls = PullBatch()
        self.threads = threads
        self._wake = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._owner = ""
        if self.endpoints:
            metadata.outbox()  # a PostgreSQL schema without event delivery stops start-up: `dockyard migrate`

    @property
    def owner(self) -> str:
        """This process's name on the leases it takes (a forked worker gets its own)."""
        if self._pid != os.getpid():
            self._pid, self._pool = os.getpid(), None
            self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return self._owner

    # -- delivering ----------------------------------------------------------------------------------------------

    def wake(self, events: Sequence[NewEvent]) -> None:
        """A commit in this worker wrote `events`: look at once (after `LINGER`, for the rest of a push's)."""
        if events and self.endpoints:
            self._wake.set()

    def deliver(self) -> int:
        """One round: claim the due queues and send their events; how many were delivered."""
        if not self.endpoints:
            return 0
        outbox = self.metadata.outbox()
        names = sorted(self.endpoints)
        now = self.clock()
        if not outbox.due(names, now):
            return 0
        claims = outbox.claim(names, self.owner, now, now + self.lease, CLAIMS)
        if len(claims) <= 1 or self.threads <= 1:
            return sum(self._drain(outbox, claim) for claim in claims)
        owner = self.owner
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="events")
        return sum(self._pool.map(lambda claim: self._drain(outbox, claim, owner), claims))

    def _drain(self, outbox, claim: Claim, owner: str | None = None) -> int:
        """Send the queue's events in order until it is empty, a try fails, or a third of the lease has passed."""
        owner = owner or self.owner
        endpoint = self.endpoints.get(claim.endpoint)
        started = time.monotonic()
        delivered = 0
        attempts = claim.attempts
        first = True
        try:
            while True:
                events = outbox.pending(claim.endpoint, claim.repository, endpoint.batch)
                if not events:
                    outbox.release(claim, owner, resync=first)
                    return delivered
                first = False
                content_type, body = render(endpoint, [(e.action, e.payload) for e in events])
                error = self.post(endpoint, content_type, body)
                now = self.clock()
                numbers = [e.number for e in events]
                if error is None:
                    # A short batch emptied the queue: its lease ends with this record (events committed meanwhile
                    # leave the queue due, for the next round).
                    more = len(events) == endpoint.batch and time.monotonic() - started < self.lease / 3
                    outbox.delivered(claim, numbers, owner, now, now + self.lease if more else 0)
                    delivered += len(events)
                    attempts = 0
                    if not more:
                        return delivered
                    continue
                attempts += 1
                park = attempts >= endpoint.max_attempts
                outbox.failed(claim, numbers, owner, now, error, attempts, now + endpoint.retry_delay(attempts), park)
                log.warning("events: %s %s to %s, attempt %d: %s%s", claim.repository,
                            ", ".join(e.uid for e in events)[:200], claim.endpoint, attempts, error,
                            " (parked)" if park else "")
                return delivered
        except Exception:
            log.exception("events: delivery to %s of %s failed", claim.endpoint, claim.repository)
            return delivered  # the lease runs out and the queue is taken up again

    def flush_pulls(self) -> int:
        """Send the pulls gathered since the last flush, once each (best effort); how many were sent."""
        events = self.pulls.take()
        sent = 0
        for endpoint in self.endpoints.values():
            mine = [(e.action, e.payload) for e in events if endpoint.name in e.endpoints]
            for start in range(0, len(mine), PULL_REQUEST):
                chunk = mine[start:start + PULL_REQUEST]
                content_type, body = render(endpoint, chunk)
                error = self.post(endpoint, content_type, body)
                if error is None:
                    sent += len(chunk)
                else:
                    self.pulls.dropped += len(chunk)
                    log.warning("events: %d pull events to %s dropped: %s", len(chunk), endpoint.name, error)
        return sent

    def prune(self) -> int:
        """Delete delivered events older than the retention period (one process at a time)."""
        pruned = 0
        with self.metadata.lock("events-prune", blocking=False) as held:
            if held:
                outbox = self.metadata.outbox()
                while True:
                    removed = outbox.prune(self.clock() - self.retention, PRUNE_BATCH)
                    pruned += removed
                    if removed < PRUNE_BATCH:
                        break
        return pruned

    def run(self, stop: threading.Event | None = None) -> None:
        """The background thread of each worker. One worker per node delivers (the holder of `<data>/events.lock`;
        another takes over within `STANDBY` seconds when it dies): the others would only compete for the same
        queues, in smaller batches. Nodes share the work through the metadata's leases. Every worker sends the
        pulls it gathered itself."""
        stop = stop or threading.Event()
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self._standby(stop)
                    continue
                self._serve(stop)
            finally:
                os.close(fd)  # releases the lock

    def _standby(self, stop: threading.Event) -> None:
        until = time.monotonic() + STANDBY
        while not stop.is_set() and time.monotonic() < until:
            try:
                self.flush_pulls()
            except Exception as exc:  # pragma: no cover - flush_pulls reports failures itself
                log.warning("events: pulls: %s", exc)
            stop.wait(PULL_FLUSH)

    def _serve(self, stop: threading.Event) -> None:
        """The delivering worker's loop: a round, then wait to be woken (this worker's commits) or `POLL`."""
        next_prune = time.monotonic() + PRUNE_INTERVAL * random.uniform(0.1, 1.0)
        next_pulls = time.monotonic() + PULL_FLUSH
        while not stop.is_set():
            delivered = 0
            try:
                delivered = self.deliver()
                if time.monotonic() >= next_pulls:
                    next_pulls = time.monotonic() + PULL_FLUSH
                    self.flush_pulls()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_INTERVAL
                    self.prune()
            except Exception as exc:  # the database away: try again later
                log.warning("events: sender: %s", exc)
                stop.wait(POLL * 5)
            if not delivered:
                self._wake.wait(POLL)
                self._wake.clear()
            stop.wait(LINGER)

    def close(self) -> None:
        """Close the delivery threads and the keep-alive connections to the endpoints (the registry closes)."""
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=True)
        self._pool = None
        close = getattr(self.post, "close", None)
        if close is not None:
            close()

    def note_pull(self, repository: str, *, digest: str, media_type: str, size: int, tag: str | None,
                  manifest: bool, caller: Caller | None) -> None:
        event = self.events.pulled(repository, digest=digest, media_type=media_type, size=size, tag=tag,
                                   manifest=manifest, caller=caller)
        if event is not None:
            self.pulls.add(event)

    # -- inspecting and replaying --------------------------------------------------------------------------------

    def _outbox(self):
        try:
            return self.metadata.outbox()
        except SchemaError as exc:
            raise Unavailable({"reason": str(exc)}, message=str(exc)) from None

    def status(self) -> list[dict]:
        """Every configured endpoint, and any other the outbox still holds state for (removed from the config)."""
        states = self._outbox().endpoint_states() if self.endpoints else self._states_or_none()
        rows = []
        for name in list(self.endpoints) + sorted(set(states) - set(self.endpoints)):
            endpoint = self.endpoints.get(name)
            row = {"name": name, "configured": endpoint is not None,
                   "url": redact_url(endpoint.url) if endpoint else None,
                   "format": endpoint.format if endpoint else None,
                   "backlog": 0, "parked": 0, "retrying": 0, "oldest_pending": None, "last_success": None,
                   "last_failure": None, "last_error": None, "delivered": 0}
            row.update(states.get(name, {}))
            rows.append(row)
        return rows

    def _states_or_none(self) -> dict:
        try:
            return self.metadata.outbox().endpoint_states()
        except (SchemaError, RegistryError):
            return {}

    def _known(self, endpoint: str) -> None:
        if endpoint not in self.endpoints and endpoint not in self._outbox().endpoint_states():
            raise NotFound({"endpoint": endpoint[:100]}, message="no such notification endpoint")

    def parked(self, endpoint: str, n: int, after: int) -> tuple[list[dict], bool]:
        self._known(endpoint)
        rows = self._outbox().parked(endpoint, n + 1, after)
        return rows[:n], len(rows) > n

    def replay(self, endpoint: str, uids: Sequence[str] | None) -> int:
        self._known(endpoint)
        count = self._outbox().replay(endpoint, uids, self.clock())
        self._wake.set()
        return count
