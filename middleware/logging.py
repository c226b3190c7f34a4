"""The structured access log (`logging` middleware): one JSON line per request, with a request id.

The line is written when the response is complete: at once for ordinary bodies, and for streamed bodies (blob
downloads) when the WSGI server closes the stream, so `bytes_out` and `duration_ms` are what was really sent.
Each line goes out with one `write(2)` on an `O_APPEND` descriptor, so the lines of several gunicorn workers never
interleave. Nothing secret is written: no headers are logged at all, and `token`/`password` query parameters are
masked.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import time
import uuid
from typing import Any, BinaryIO

import falcon

from . import MiddlewareContext, Options
from .access import required_access
from .clients import client_address, default_trusted

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
SECRET_PARAMS_RE = re.compile(r"(?i)(^|&)((?:access_|refresh_|id_)?token|password|passwd|secret)=[^&]*")


def scrub_query(query: str) -> str:
    return SECRET_PARAMS_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", query)


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


class CountingInput:
    """Wraps a chunked request body (length unknown up front) to count what the app reads."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self._stream.readline(size)
        self.count += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class CountingOutput:
    """Wraps a response stream; logs the request when the server closes it, with the bytes really sent."""

    def __init__(self, stream: BinaryIO, done):
        self._stream = stream
        self._done = done
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        return data

    def close(self) -> None:
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done(self.count)


class AccessLog:
    def __init__(self, logger: logging.Logger, *, trusted_proxies: tuple = (), clock=time.time,
                 timer=time.perf_counter):
        self.logger = logger
        self.trusted_proxies = trusted_proxies
        self._clock = clock
        self._timer = timer

    @classmethod
    def from_config(cls, options: Options, context: MiddlewareContext) -> "AccessLog":
        path = options.get("file", str, "")
        trusted = options.networks("trusted_proxies") if options.has("trusted_proxies") \
            else default_trusted(context.config)
        logger = logging.Logger("dockyard.access")  # its own logger: no propagation, no duplicate lines
        try:
            handler = AppendHandler(path)
        except OSError as exc:
            raise options.error("file", f"cannot open {path!r}: {exc}") from None
        logger.addHandler(handler)
        return cls(logger, trusted_proxies=trusted)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = req.context
        ctx.log_started = self._timer()
        incoming = req.get_header("X-Request-ID")
        ctx.request_id = incoming if incoming and REQUEST_ID_RE.fullmatch(incoming) else uuid.uuid4().hex
        ctx.client_address = client_address(req, self.trusted_proxies)
        if req.content_length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
            ctx.log_input = CountingInput(req.stream)
            req.stream = ctx.log_input

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params: dict) -> None:
        req.context.log_access = required_access(req.method, req.path, req.uri_template, params)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        ctx = req.context
        if "log_started" not in ctx:
            return
        resp.set_header("X-Request-ID", ctx.request_id)
        if resp.stream is not None and req.method != "HEAD":
            resp.stream = CountingOutput(resp.stream, lambda sent: self.write(req, resp, sent))
            return
        sent = 0
        if req.method != "HEAD":
            body = resp.render_body()
            sent = len(body) if body else 0
        self.write(req, resp, sent)

    def write(self, req: falcon.Request, resp: falcon.Response, bytes_out: int) -> None:
        ctx = req.context
        access = ctx.get("log_access") or required_access(req.method, req.path, None, {})
        counted = ctx.get("log_input")
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
            "bytes_in": counted.count if counted is not None else (req.content_length or 0),
            "bytes_out": bytes_out,
            "duration_ms": round((self._timer() - ctx.log_started) * 1000, 3),
        }
        error = ctx.get("error")
        if error is not None and resp.status_code >= 400:
            entry["error"] = {"code": error.code, "detail": error.detail}
        self.logger.info(json.dumps(entry, separators=(",", ":"), default=str))
