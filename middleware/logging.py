"""The structured access log (`logging` middleware): one JSON line per request, with a request id.

The line is written when the response is complete: at once for ordinary bodies, and for streamed bodies (blob
downloads) when the WSGI server is done with the body (`dockyard.server.observability.on_response_complete`), so
`duration_ms` covers the transfer. Nothing wraps the body: a blob still leaves through `wsgi.file_wrapper` (and so
sendfile) with logging on. Each line goes out with one `write(2)` on an `O_APPEND` descriptor, so the lines of
several gunicorn workers never interleave. Nothing secret is written: no headers are logged at all, and
`token`/`password` query parameters are masked.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import time
import uuid
from urllib.parse import unquote_plus
import falcon

from dockyard.server.observability import bytes_received, on_response_complete
from dockyard.server.proxies import TrustedProxies

from . import MiddlewareContext, Options, client_address
from .access import required_access

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
SECRET_NAME_RE = re.compile(r"(?i)((?:access_|refresh_|id_)?token|password|passwd|secret)")


def scrub_query(query: str) -> str:
    """The query string with the value of every secret parameter replaced by `***`. Names are judged decoded
    (`%61ccess_token` is `access_token`), as the application reads them; everything else is kept as sent."""
    pieces = []
    for piece in query.split("&"):
        name, sep, _ = piece.partition("=")
        if SECRET_NAME_RE.fullmatch(unquote_plus(name).strip()):
            piece = f"{name}=***"
        pieces.append(piece)
    return "&".join(pieces)


class AppendHandler(logging.Handler):
    """Writes each record as one line with a single write(2): to a file opened O_APPEND, or to stderr."""

    def __init__(self, path: str = ""):
        super().__init__()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640) if path else 2
        self.owns_fd = bool(path)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self.owns_fd:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.owns_fd = False
        super().close()


class AccessLog:
    def __init__(self, logger: logging.Logger, *, trusted_proxies: TrustedProxies | None = None, clock=time.time,
                 timer=time.perf_counter, new_id=lambda: uuid.uuid4().hex):
        self.logger = logger
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self._clock = clock
        self._timer = timer
        self._new_id = new_id

    @classmethod
    def from_config(cls, options: Options, context: MiddlewareContext) -> "AccessLog":
        path = options.get("file", str, "")
        trusted = options.proxies("trusted_proxies", context.config.proxies)
        logger = logging.Logger("dockyard.access")  # its own logger: no propagation, no duplicate lines
        try:
            handler = AppendHandler(path)
        except OSError as exc:
            raise options.error("file", f"cannot open {path!r}: {exc}") from None
        logger.addHandler(handler)
        return cls(logger, trusted_proxies=trusted, clock=context.now)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = req.context
        ctx.log_started = self._timer()
        incoming = req.get_header("X-Request-ID")
        ctx.request_id = incoming if incoming and REQUEST_ID_RE.fullmatch(incoming) else self._new_id()
        client_address(req, self.trusted_proxies)

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params: dict) -> None:
        req.context.log_access = required_access(req.method, req.path, req.uri_template, params)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        ctx = req.context
        if "log_started" not in ctx:
            return
        resp.set_header("X-Request-ID", ctx.request_id)
        if resp.stream is not None and req.method != "HEAD" and \
                on_response_complete(req.env, lambda sent: self.write(req, resp, sent)):
            return
        sent = 0
        if req.method != "HEAD":
            body = resp.render_body()
            sent = len(body) if body else (resp.content_length or 0) if resp.stream is not None else 0
        self.write(req, resp, sent)

    def write(self, req: falcon.Request, resp: falcon.Response, bytes_out: int) -> None:
        ctx = req.context
        access = ctx.get("log_access") or required_access(req.method, req.path, None, {})
        path = req.path + (f"?{scrub_query(req.query_string)}" if req.query_string else "")
        entry = {
            "time": datetime.datetime.fromtimestamp(self._clock(), datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": ctx.request_id,
            "client": ctx.client_address,
            "user": ctx.get("user"),
            "method": req.method,
            "path": path,
            "repository": access.name or None,
            "action": access.label,
            "status": resp.status_code,
            "bytes_in": bytes_received(req.env) or req.content_length or 0,
            "bytes_out": bytes_out,
            "duration_ms": round((self._timer() - ctx.log_started) * 1000, 3),
        }
        error = ctx.get("error")
        if error is not None and resp.status_code >= 400:
            entry["error"] = {"code": error.code, "detail": error.detail}
        self.logger.info(json.dumps(entry, separators=(",", ":"), default=str))
