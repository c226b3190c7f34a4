"""Upstream registries for the pull-through cache's WSGI-level tests (issue 16): any WSGI app (another Dockyard, or
a few lines of a test's own) served over real HTTP (or HTTPS, given an `ssl.SSLContext`) on 127.0.0.1 from a thread,
with every request it answered recorded, so a test counts what reached the upstream."""

from __future__ import annotations

import ssl
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None

    def get_request(self):
        sock, address = super().get_request()
        if self.tls is not None:  # the handshake on the request's own thread, at its first read
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request, client_address) -> None:
        if self.tls is None:  # over TLS, a client refusing the certificate is what some tests want
            super().handle_error(request, client_address)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


class ServedApp:
    """`app` at `self.url` until `stop()`; `requests` lists (method, path, headers) of every request. With `tls`
    (a server-side context holding the certificate), `self.url` is https://."""

    def __init__(self, app, tls: ssl.SSLContext | None = None):
        self.app = app
        self.requests: list[tuple[str, str, dict]] = []
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self._record, server_class=_Server, handler_class=_Quiet)
        self._server.tls = tls
        self.port = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def _record(self, environ, start_response):
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        with self._lock:
            self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), headers))
        return self.app(environ, start_response)

    def count(self, method: str, fragment: str = "") -> int:
        with self._lock:
            return sum(1 for m, path, _ in self.requests if m == method and fragment in path)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
