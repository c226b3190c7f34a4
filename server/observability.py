"""What an operator watches: `/healthz`, `/readyz` and Prometheus metrics at `/metrics`.

- `/healthz` (liveness): 200 while the process answers at all. It touches nothing, so a slow disk never gets a
  healthy worker killed.
- `/readyz` (readiness): 200 when the database answers a query and the data directory takes a write; 503 with the
  failing check otherwise.
- `/metrics`: requests by method, route and status; request durations; bytes received and sent; blob uploads;
  upload requests in progress; storage used (blob count and bytes, open upload sessions) read from the database at
  each scrape. Counts are kept per process in `<data>/metrics/` and added up across gunicorn workers (`.metrics`).

`InstrumentedApp` wraps the WSGI call itself, so a request's duration includes streaming its response body, and a
request that fails before or after Falcon's own handling is still counted.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import falcon

from .metadata import probes
from .metrics import CONTENT_TYPE, DURATION_BUCKETS, Family, Metrics

if TYPE_CHECKING:
    from .bodies import Source
    from .registry import Registry

STATS_KEY = "dockyard.request_stats"
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))

REQUESTS = "dockyard_http_requests_total"
DURATION = "dockyard_http_request_duration_seconds"
BYTES_IN = "dockyard_http_request_bytes_total"
BYTES_OUT = "dockyard_http_response_bytes_total"
UPLOADS_IN_PROGRESS = "dockyard_uploads_in_progress"
BLOB_UPLOADS = "dockyard_blob_uploads_total"
BLOB_UPLOAD_BYTES = "dockyard_blob_upload_bytes_total"
STORED_BLOBS = "dockyard_storage_blobs"
STORED_BYTES = "dockyard_storage_blob_bytes"
UPLOAD_SESSIONS = "dockyard_upload_sessions"

FAMILIES = (
    Family(REQUESTS, "counter", "HTTP requests answered, by method, route template and status code."),
    Family(DURATION, "histogram", "Time from receiving a request to the end of its response body, by method and "
                                  "route template.", DURATION_BUCKETS),
    Family(BYTES_IN, "counter", "Request body bytes received, by route template."),
    Family(BYTES_OUT, "counter", "Response body bytes sent by Dockyard, by route template (with X-Accel-Redirect, "
                                 "blob bytes are sent by nginx and not counted here)."),
    Family(UPLOADS_IN_PROGRESS, "gauge", "Blob upload requests (POST, PATCH, PUT) being received right now."),
    Family(BLOB_UPLOADS, "counter", "Blobs committed by an upload (monolithic POST or closing PUT); mounts excluded."),
    Family(BLOB_UPLOAD_BYTES, "counter", "Bytes of the blobs counted in dockyard_blob_uploads_total."),
    Family(STORED_BLOBS, "gauge", "Blobs stored (each once, however many repositories link it), from the database."),
    Family(STORED_BYTES, "gauge", "Bytes of the stored blobs, from the database."),
    Family(UPLOAD_SESSIONS, "gauge", "Upload sessions open, from the database."),
)


@dataclass(slots=True)
class RequestStats:
    """What the WSGI wrapper learns about a request from inside the app (through the WSGI environ)."""
    route: str | None = None
    bytes_in: int = 0


class CountingSource:
    """A request body source that counts what it delivers into the request's stats."""

    __slots__ = ("_source", "_stats")

    def __init__(self, source: "Source", stats: RequestStats):
        self._source = source
        self._stats = stats

    def readinto(self, buf: memoryview) -> int:
        n = self._source.readinto(buf)
        self._stats.bytes_in += n
        return n


def counted(environ: dict, source: "Source") -> "Source":
    stats = environ.get(STATS_KEY)
    return CountingSource(source, stats) if stats is not None else source


def note_blob_upload(req: falcon.Request, size: int) -> None:
    """Called by the upload resources when a blob is committed from uploaded bytes."""
    metrics = req.env.get(STATS_KEY + ".metrics")
    if metrics is not None:
        metrics.inc(BLOB_UPLOADS)
        metrics.inc(BLOB_UPLOAD_BYTES, amount=size)


def registry_metrics(registry: "Registry") -> Metrics:
    """The metrics of one registry: files under `<data>/metrics`, storage gauges from its database."""
    db_path = registry.metadata.path

    def storage() -> list:
        try:
            usage = probes.storage_usage(db_path)
        except sqlite3.Error:
            return []
        return [(STORED_BLOBS, (), usage.blobs), (STORED_BYTES, (), usage.blob_bytes),
                (UPLOAD_SESSIONS, (), usage.upload_sessions)]

    return Metrics(registry.config.data_path / "metrics", FAMILIES, collectors=[storage])


class _ClosingIterable:
    """A response body that reports when the server is done with it (WSGI calls close() last)."""

    def __init__(self, iterable, on_close: Callable[[], None]):
        self._iterable = iterable
        self._on_close = on_close

    def __iter__(self):
        return iter(self._iterable)

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


class InstrumentedApp(falcon.App):
    """falcon.App whose WSGI call is measured into `self.metrics` (None: not measured)."""

    __slots__ = ("metrics",)

    def __call__(self, env: dict, start_response):
        metrics: Metrics | None = getattr(self, "metrics", None)
        if metrics is None:
            return super().__call__(env, start_response)
        started = time.perf_counter()
        stats = RequestStats()
        env[STATS_KEY] = stats
        env[STATS_KEY + ".metrics"] = metrics
        method = env.get("REQUEST_METHOD", "GET")
        upload = method in ("POST", "PATCH", "PUT") and "/blobs/uploads/" in env.get("PATH_INFO", "")
        if upload:
            metrics.inc(UPLOADS_IN_PROGRESS)
        response: dict = {}

        def capture(status, headers, exc_info=None):
            response["status"], response["headers"] = status, headers
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        finished = []

        def finish() -> None:
            if finished:  # close() may come twice (a server's own call after ours)
                return
            finished.append(True)
            route = stats.route or "unmatched"
            method_label = method if method in METHODS else "other"
            status = response.get("status", "500").split(" ", 1)[0]
            additions = [(metrics.key(REQUESTS, (("method", method_label), ("route", route), ("status", status))), 1)]
            additions += metrics.observation(DURATION, (("method", method_label), ("route", route)),
                                             time.perf_counter() - started)
            if upload:
                additions.append((metrics.key(UPLOADS_IN_PROGRESS), -1))
            received = stats.bytes_in or _int(env.get("CONTENT_LENGTH"))
            if received:
                additions.append((metrics.key(BYTES_IN, (("route", route),)), received))
            sent = 0 if method == "HEAD" else _int(_header(response.get("headers", ()), "content-length"))
            if sent:
                additions.append((metrics.key(BYTES_OUT, (("route", route),)), sent))
            metrics.add(additions)

        try:
            result = super().__call__(env, capture)
        except BaseException:
            finish()
            raise
        if isinstance(result, list):  # a body already in memory (Falcon's resp.data/media): nothing left to time
            finish()
            return result
        wrapper = env.get("wsgi.file_wrapper")
        if wrapper is not None and isinstance(result, wrapper):
            # Keep the server's file wrapper (and so its sendfile path): hook its close instead of wrapping it.
            original = getattr(result, "close", None)

            def close() -> None:
                try:
                    if original is not None:
                        original()
                finally:
                    finish()

            try:
                result.close = close
                return result
            except AttributeError:
                pass
        return _ClosingIterable(result, finish)


def _int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _header(headers, name: str):
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class RouteLabel:
    """Falcon component: hands the matched route template to the WSGI wrapper (the metric label)."""

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        stats = req.env.get(STATS_KEY)
        if stats is not None:
            stats.route = req.uri_template


class HealthResource:
    """`/healthz`: the process is up and answering."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}

    on_head = on_get


class ReadyResource:
    """`/readyz`: the database answers and the data directory takes a write."""

    def __init__(self, registry: "Registry"):
        self.registry = registry

    def checks(self) -> dict[str, str]:
        results = {}
        try:
            probes.ping(self.registry.metadata.path)
            results["database"] = "ok"
        except sqlite3.Error as exc:
            results["database"] = f"failed: {exc}"
        probe = self.registry.config.data_path / f".readyz-{os.getpid()}-{threading.get_ident()}"
        try:
            fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ready\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
            results["storage"] = "ok"
        except OSError as exc:
            results["storage"] = f"failed: {exc.strerror or exc}"
        return results

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks = self.checks()
        ready = all(value == "ok" for value in checks.values())
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ready" if ready else "not ready", "checks": checks}

    on_head = on_get


class MetricsResource:
    """`/metrics`: the Prometheus text format, summed over all workers."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE
        resp.data = self.metrics.render()


def install(app: InstrumentedApp, registry: "Registry") -> None:
    """Add the health, readiness and metrics endpoints to `app` and start measuring its requests."""
    app.metrics = registry_metrics(registry)
    app.add_middleware(RouteLabel())
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(registry))
    app.add_route("/metrics", MetricsResource(app.metrics))
