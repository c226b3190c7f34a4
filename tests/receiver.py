"""An event receiver for the tests: a small real HTTP server that records every request it gets.

It answers `status` (200 unless a test says otherwise; a 3xx with `location` when set), checks the HMAC signature
of every request when given the shared secret (a mismatch is recorded and answered 401), and can be stopped and
started again on the same port (an endpoint that is down for a while). `events()` flattens what arrived:
Distribution envelopes into their events, CloudEvents (one per request, or a batch) into theirs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes
    signature_ok: bool | None  # None: no secret to check with
    fields: tuple = ()  # (name, value) of every header line as sent, repeated names included

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def document(self):
        return json.loads(self.body)

    def events(self) -> list[dict]:
        document = self.document
        if isinstance(document, dict) and "events" in document:
            return document["events"]
        return document if isinstance(document, list) else [document]


class Receiver:
    def __init__(self, *, secret: str | None = None, signature_header: str = "X-Dockyard-Signature", port: int = 0):
        self.secret = secret
        self.signature_header = signature_header.lower()
        self.status = 200
        self.delay = 0.0
        self.location: str | None = None  # the Location of a 3xx answer
        self.received: list[Received] = []
        self.refused = 0  # requests answered with a failure status
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                ok = None
                if receiver.secret is not None:
                    expected = "sha256=" + hmac.new(receiver.secret.encode(), body, hashlib.sha256).hexdigest()
                    ok = hmac.compare_digest(expected, headers.get(receiver.signature_header, ""))
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = receiver.status if ok is not False else 401
                with receiver._lock:
                    if status < 300:
                        receiver.received.append(Received(self.path, headers, body, ok, tuple(self.headers.items())))
                    else:
                        receiver.refused += 1
                self.send_response(status)
                if receiver.location and 300 <= status < 400:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict]:
        with self._lock:
            return [event for request in self.received for event in request.events()]

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float = 60.0, what=None) -> list[dict]:
        """Wait until `count` events (those `what` accepts) arrived; the events."""
        deadline = time.monotonic() + timeout
        while True:
            events = [e for e in self.events() if what is None or what(e)]
            if len(events) >= count or time.monotonic() > deadline:
                return events
            time.sleep(0.05)
