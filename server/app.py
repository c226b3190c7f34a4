"""The WSGI application: `create_app` wires configuration, storage and metadata into Falcon.

`get_app()` is what gunicorn runs; it is the only place that reads the environment.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

import falcon

from dockyard.middleware import MiddlewareContext, build_chain

from .cache import ResponseCache
from .config import Config, load_config
from .errors import NameInvalid, RegistryError, Unsupported, error_body, error_for_status
from .metadata import Metadata
from .observability import InstrumentedApp
from .observability import install as install_observability
from .registry import Registry
from .resources import admin
from .resources.admin import PREFIX as ADMIN_PREFIX
from .resources.base import API_VERSION_HEADER, BaseResource
from .resources.blobs import BlobResource
from .resources.catalog import CatalogResource
from .resources.manifests import ManifestResource
from .resources.referrers import ReferrersResource
from .resources.tags import TagsResource
from .resources.uploads import UploadResource, UploadsResource
from .routing import RegistryRouter
from .storage import BlobStore
from .urls import ExternalURLs

log = logging.getLogger("dockyard")


class RegistryHeaders:
    """Adds the API version header to every response, errors included, and refuses encoded slashes in paths."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = req.env.get("RAW_URI") or req.env.get("REQUEST_URI") or ""
        if "%2f" in raw.split("?", 1)[0].lower():
            raise NameInvalid({"path": raw[:300]}, message="encoded slashes are not allowed in the path")

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        resp.set_header(*API_VERSION_HEADER)


class MaintenanceMode:
    """In read-only mode, writes to the V2 API are refused with 503 UNSUPPORTED; reads and the admin API go on."""

    WRITES = frozenset(("POST", "PUT", "PATCH", "DELETE"))

    def __init__(self, registry: Registry):
        self.registry = registry

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if (req.method in self.WRITES and req.path.startswith("/v2/") and not req.path.startswith(ADMIN_PREFIX)
                and self.registry.read_only()):
            raise Unsupported({"read_only": True}, status=503, headers={"Retry-After": "60"},
                              message="the registry is in read-only maintenance mode")


class GcSchedule:
    """Runs garbage collection every `gc_interval` seconds from a thread in each worker; a file lock and a stamp
    in the database make one of them do it per interval."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._pid = 0

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._pid != os.getpid():  # first request in this worker (threads do not survive fork)
            self._pid = os.getpid()
            threading.Thread(target=self._loop, name="gc-schedule", daemon=True).start()

    def _loop(self) -> None:
        config = self.registry.config
        while True:
            time.sleep(config.gc_interval * random.uniform(0.5, 1.0))
            try:
                report = self.registry.gc.run_if_due(config.gc_interval, grace=config.gc_grace,
                                                     delete_untagged=config.gc_delete_untagged)
                if report is not None:
                    log.info("scheduled gc: %d blobs, %d manifests, %d bytes freed", report.blobs_removed,
                             report.manifests_removed, report.bytes_freed)
            except Exception:
                log.exception("scheduled garbage collection failed")


def _registry_error(req: falcon.Request, resp: falcon.Response, ex: RegistryError, params) -> None:
    resp.status = ex.status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = error_body(ex)
    for header, value in ex.headers.items():
        resp.set_header(header, value)
    req.context.error = ex


def _http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params) -> None:
    error = error_for_status(ex.status_code, detail={"path": req.path} if ex.status_code == 404 else ex.description,
                             message=ex.title)
    _registry_error(req, resp, error, params)
    for header, value in (ex.headers or {}).items():
        resp.set_header(header, value)


def _unexpected_error(req: falcon.Request, resp: falcon.Response, ex: Exception, params) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.content_type = falcon.MEDIA_JSON
    resp.data = b'{"errors":[{"code":"UNKNOWN","message":"internal server error","detail":{}}]}'


def build_registry(config: Config, *, store: BlobStore | None = None, metadata: Metadata | None = None,
                   clock=None) -> Registry:
    """The registry's storage and metadata on the configured data directory, made consistent after a crash."""
    data = config.data_path
    data.mkdir(parents=True, exist_ok=True)
    clock = clock or time.time
    store = store or BlobStore(data, block_size=config.io_block_size)
    metadata = metadata or Metadata(data / "registry.db", clock=clock)
    registry = Registry(config, store, metadata, clock=clock)
    recovered = registry.gc.recover()
    if any(recovered.values()):
        log.warning("recovered after an unclean stop: %s", recovered)
    return registry


def create_app(config: Config, *, store: BlobStore | None = None, metadata: Metadata | None = None,
               clock=None) -> falcon.App:
    """`clock` (time.time by default) is the registry's and the middleware's, so tests can move time."""
    registry = build_registry(config, store=store, metadata=metadata, clock=clock)

    # Falcon streams files through wsgi.file_wrapper in blocks of _STREAM_BLOCK_SIZE (8 KiB: far too small).
    app_class = type("DockyardApp", (InstrumentedApp,), {"_STREAM_BLOCK_SIZE": config.io_block_size,
                                                     "__slots__": ("registry",)})
    # The configured chain runs after RegistryHeaders, in the configured order (README: Middleware).
    chain = build_chain(config.middleware, MiddlewareContext(config, registry, clock=clock))
    builtin = [ExternalURLs.from_config(config), RegistryHeaders(), MaintenanceMode(registry)]
    if config.gc_interval:
        builtin.append(GcSchedule(registry))
    app = app_class(router=RegistryRouter(), middleware=[*builtin, *chain])
    app.req_options.auto_parse_qs_csv = False
    app.resp_options.secure_cookies_by_default = False
    app.registry = registry

    # The admin API first: its templates hold {name} too, and must win over the generic V2 routes.
    app.add_route(f"{ADMIN_PREFIX}/repositories", admin.RepositoriesResource(registry))
    # .../{name}/tags before .../{name}: a name spans slashes, so the shorter template would swallow "/tags".
    app.add_route(f"{ADMIN_PREFIX}/repositories/{{name}}/tags", admin.RepositoryTagsResource(registry))
    app.add_route(f"{ADMIN_PREFIX}/repositories/{{name}}", admin.RepositoryResource(registry))
    app.add_route(f"{ADMIN_PREFIX}/gc", admin.GcResource(registry))
    app.add_route(f"{ADMIN_PREFIX}/storage", admin.StorageResource(registry))
    app.add_route(f"{ADMIN_PREFIX}/read-only", admin.ReadOnlyResource(registry))

    app.add_route("/v2/", BaseResource())
    listings = ResponseCache()
    app.add_route("/v2/_catalog", CatalogResource(registry, listings))
    app.add_route("/v2/{name}/tags/list", TagsResource(registry, listings))
    app.add_route("/v2/{name}/manifests/{reference}", ManifestResource(registry))
    app.add_route("/v2/{name}/blobs/uploads/", UploadsResource(registry))
    app.add_route("/v2/{name}/blobs/uploads/{upload_id}", UploadResource(registry))
    app.add_route("/v2/{name}/blobs/{digest}", BlobResource(registry))
    app.add_route("/v2/{name}/referrers/{digest}", ReferrersResource(registry))
    for component in chain:  # e.g. the auth middleware's token endpoint
        for template, resource in getattr(component, "routes", tuple)():
            app.add_route(template, resource)

    install_observability(app, registry)  # /healthz, /readyz, /metrics, and request metrics

    app.add_error_handler(Exception, _unexpected_error)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(RegistryError, _registry_error)
    return app


def get_app() -> falcon.App:
    """The app as configured by the environment (DOCKYARD_* variables and DOCKYARD_CONFIG)."""
    return create_app(load_config())
