"""What an operator watches: `/healthz`, `/readyz` and Prometheus metrics at `/metrics`.

- `/healthz` (liveness): 200 while the process answers at all. It touches nothing, so a slow disk never gets a
  healthy worker killed.
- `/readyz` (readiness): 200 when the database answers a query and the data directory takes a write; 503 with the
  failing check otherwise.
- `/metrics`: requests by method, route and status; request durations; bytes received and sent; blob uploads;
  upload requests in progress; storage used (blob count and bytes, open upload sessions) read from the database at
  each scrape. Counts are kept per process in `<data>/metrics/` and added up across gunicorn workers (`.metrics`).

`InstrumentedApp` wraps the WSGI call itself, so a request's duration includes streaming its response body, and a
request that fails before or after Falcon's own handling is still counted. It is also where the rest of the app
learns that a response is complete (`on_response_complete`: the access log writes its line then) and how many body
bytes a request delivered (`counted`, `bytes_received`), without wrapping the response body: a file body keeps
going out through the server's `wsgi.file_wrapper`, and so through sendfile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import falcon

from .errors import RegistryError
from .metrics import CONTENT_TYPE, DURATION_BUCKETS, Family, Metrics
from .mirror import FAMILIES as CACHE_FAMILIES
from .routes import HEALTH, METRICS, READY

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
    on_complete: list = field(default_factory=list)  # callables of (bytes sent), run when the response is done


def on_response_complete(environ: dict, callback: Callable[[int], None]) -> bool:
    """Call `callback(bytes_sent)` once the server is done with this request's response body; False when the app is
    not wrapped by `InstrumentedApp` (the caller then does it at once)."""
    stats = environ.get(STATS_KEY)
    if stats is None:
        return False
    stats.on_complete.append(callback)
    return True


def bytes_received(environ: dict) -> int:
    """Request body bytes read through `counted` sources so far (chunked bodies included)."""
    stats = environ.get(STATS_KEY)
    return stats.bytes_in if stats is not None else 0


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


def registry_metrics(registry: "Registry", directory) -> Metrics:
    """The metrics of one registry: files under `directory`, storage gauges from its metadata at each scrape."""

    def storage() -> list:
        try:
            usage = registry.usage()
        except (RegistryError, OSError, ValueError):
            return []
        except Exception:  # a database driver's own error: a scrape shows no gauges rather than failing
            return []
        return [(STORED_BLOBS, (), usage.blobs), (STORED_BYTES, (), usage.blob_bytes),
                (UPLOAD_SESSIONS, (), usage.upload_sessions)]

    return Metrics(directory, FAMILIES + CACHE_FAMILIES, collectors=[storage])


class _ClosingIterable:
    """A response body that counts what the server takes from it and reports when the server is done with it
    (WSGI calls close() last)."""

    def __init__(self, iterable, on_close: Callable[[int], None]):
        self._iterable = iterable
        self._on_close = on_close
        self._sent = 0

    def __iter__(self):
        for chunk in self._iterable:
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close(self._sent)


class InstrumentedApp(falcon.App):
    """falcon.App whose WSGI call is measured into `self.metrics` (None: not measured), and which tells the app
    when each response is complete (`on_response_complete`)."""

    __slots__ = ("metrics",)

    def __call__(self, env: dict, start_response):
        metrics: Metrics | None = getattr(self, "metrics", None)
        started = time.perf_counter()
        stats = RequestStats()
        env[STATS_KEY] = stats
        method = env.get("REQUEST_METHOD", "GET")
        upload = False
        if metrics is not None:
            env[STATS_KEY + ".metrics"] = metrics
            upload = method in ("POST", "PATCH", "PUT") and "/blobs/uploads/" in env.get("PATH_INFO", "")
            if upload:
                metrics.inc(UPLOADS_IN_PROGRESS)
        response: dict = {}

        def capture(status, headers, exc_info=None):
            response["status"], response["headers"] = status, headers
            if status[:1] in ("4", "5") and _has_body(env):
                close_after_response(start_response)
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        finished = []

        def finish(sent: int | None = None) -> None:
            if finished:  # close() may come twice (a server's own call after ours)
                return
            finished.append(True)
            if sent is None:
                sent = 0 if method == "HEAD" else _int(_header(response.get("headers", ()), "content-length"))
            try:
                for callback in stats.on_complete:
                    callback(sent)
            finally:
                if metrics is not None:
                    self._measure(metrics, stats, method, upload, response, sent, time.perf_counter() - started,
                                  env)

        try:
            result = super().__call__(env, capture)
        except BaseException:
            finish(0)
            raise
        if isinstance(result, list):  # a body already in memory (Falcon's resp.data/media): nothing left to time
            finish(0 if method == "HEAD" else sum(len(chunk) for chunk in result))
            return result
        wrapper = env.get("wsgi.file_wrapper")
        if wrapper is not None and isinstance(result, wrapper):
            # Keep the server's file wrapper (and so its sendfile path): hook its close instead of wrapping it.
            # Bytes sent are then the Content-Length: sendfile's progress is the server's, not ours to count.
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

    @staticmethod
    def _measure(metrics: Metrics, stats: RequestStats, method: str, upload: bool, response: dict, sent: int,
                 duration: float, env: dict) -> None:
        route = stats.route or "unmatched"
        method_label = method if method in METHODS else "other"
        status = response.get("status", "500").split(" ", 1)[0]
        additions = [(metrics.key(REQUESTS, (("method", method_label), ("route", route), ("status", status))), 1)]
        additions += metrics.observation(DURATION, (("method", method_label), ("route", route)), duration)
        if upload:
            additions.append((metrics.key(UPLOADS_IN_PROGRESS), -1))
        received = stats.bytes_in or _int(env.get("CONTENT_LENGTH"))
        if received:
            additions.append((metrics.key(BYTES_IN, (("route", route),)), received))
        if sent:
            additions.append((metrics.key(BYTES_OUT, (("route", route),)), sent))
        metrics.add(additions)


def _has_body(env: dict) -> bool:
    return _int(env.get("CONTENT_LENGTH")) > 0 or "chunked" in env.get("HTTP_TRANSFER_ENCODING", "").lower()


def close_after_response(start_response) -> None:
    """An error answered before its request's body was read (a refusal, a full disk, a body too large): the
    response says `Connection: close`, and the server (server.worker) reads and throws away what is left of the
    body, up to a bound, so the client can read the answer, then closes. Under gunicorn, `start_response` is a
    method of its Response, which is how the app reaches it; any other server is left alone."""
    response = getattr(start_response, "__self__", None)
    force_close = getattr(response, "force_close", None)
    if callable(force_close):
        force_close()


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
    """`/readyz`: the database answers and the blob store takes a write."""

    def __init__(self, registry: "Registry"):
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks = self.registry.readiness()
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


def install(app: InstrumentedApp, registry: "Registry", metrics_directory) -> None:
    """Add the health, readiness and metrics endpoints to `app` and start measuring its requests."""
    app.metrics = registry_metrics(registry, metrics_directory)
    if getattr(registry, "mirror", None) is not None:
        registry.mirror.metrics = app.metrics  # the pull-through cache's counters
    app.add_route(HEALTH, HealthResource())
    app.add_route(READY, ReadyResource(registry))
    app.add_route(METRICS, MetricsResource(app.metrics))
