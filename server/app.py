"""The WSGI application: `create_app` wires configuration, blob store, metadata and the request path into Falcon.

`get_app()` is what gunicorn runs; it is the only place that reads the environment. What varies comes in through
`create_app`'s arguments (the blob store, the metadata, the clock, the id generator), so tests pass their own.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import falcon

from . import routes
from .background import BackgroundJobs
from .cache import BoundedCache
from .config import Config, load_config
from .errors import RegistryError, Unavailable, Unknown, error_body, error_for_status
from .metadata import Metadata, open_metadata
from .observability import InstrumentedApp
from .observability import install as install_observability
from .pipeline import build_request_path
from .registry import Registry, new_session_id
from .resources import admin
from .resources.base import BaseResource
from .resources.blobs import BlobResource
from .resources.catalog import CatalogResource
from .resources.manifests import ManifestResource
from .resources.referrers import ReferrersResource
from .resources.tags import TagsResource
from .resources.uploads import UploadResource, UploadsResource
from .routing import RegistryRouter
from .serving import metrics_directory
from .storage import BlobStore, open_store
from .web import WebUI

log = logging.getLogger("dockyard")
LISTING_CACHE_BYTES = 8 * 1024 * 1024  # tags/list and _catalog pages, per worker (see registry.MANIFEST_CACHE_BYTES)


def _registry_error(req: falcon.Request, resp: falcon.Response, ex: RegistryError, params) -> None:
    resp.status = ex.status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = error_body(ex)
    for header, value in ex.headers.items():
        resp.set_header(header, value)
    req.context.error = ex


def _http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params) -> None:
    error = error_for_status(ex.status_code, detail={"path": req.path[:300]} if ex.status_code == 404
                             else ex.description, message=ex.title)
    _registry_error(req, resp, error, params)
    for header, value in (ex.headers or {}).items():
        resp.set_header(header, value)


def _unexpected_error(req: falcon.Request, resp: falcon.Response, ex: Exception, params) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    _registry_error(req, resp, Unknown(message="internal server error"), params)


def build_registry(config: Config, *, store: BlobStore | None = None, metadata: Metadata | None = None,
                   clock: Callable[[], float] | None = None, new_id: Callable[[], str] = new_session_id,
                   recover: bool = True) -> Registry:
    """The registry on its configured store and metadata, made consistent after a crash (unless `recover` is
    false: `dockyard fsck` wants to see what a crash left)."""
    config.data_path.mkdir(parents=True, exist_ok=True)
    clock = clock or time.time
    registry = Registry(config, store or open_store(config), metadata or open_metadata(config, clock=clock),
                        clock=clock, new_id=new_id)
    if recover:
        try:
            recovered = registry.recover()
        except Unavailable as exc:  # a remote blob store that is down must not stop the registry from starting
            log.warning("recovery after an unclean stop postponed to the next purge: %s", exc)
            return registry
        if any(recovered.values()):
            log.warning("recovered after an unclean stop: %s", recovered)
    return registry


class DockyardApp(InstrumentedApp):
    """The Falcon app, with the registry it serves and the background jobs its workers run."""

    __slots__ = ("registry", "jobs")

    def start_background(self) -> None:
        """Called in each worker once it is ready (gunicorn's post_worker_init, see `serving`)."""
        self.jobs.start()


def create_app(config: Config, *, store: BlobStore | None = None, metadata: Metadata | None = None,
               clock: Callable[[], float] | None = None, new_id: Callable[[], str] = new_session_id) -> DockyardApp:
    """`clock` (time.time by default) and `new_id` reach the registry, its metadata and the middleware."""
    registry = build_registry(config, store=store, metadata=metadata, clock=clock, new_id=new_id)
    path = build_request_path(config, registry, clock=clock)

    # Falcon streams files through wsgi.file_wrapper in blocks of _STREAM_BLOCK_SIZE (8 KiB: far too small).
    app_class = type("DockyardApp", (DockyardApp,), {"_STREAM_BLOCK_SIZE": config.io_block_size, "__slots__": ()})
    app = app_class(router=RegistryRouter(), middleware=path.components)
    app.req_options.auto_parse_qs_csv = False
    app.resp_options.secure_cookies_by_default = False
    app.registry = registry
    app.jobs = BackgroundJobs(registry)

    # The admin API first: its templates hold {name} too, and must win over the generic V2 routes.
    app.add_route(routes.ADMIN_REPOSITORIES, admin.RepositoriesResource(registry))
    # .../{name}/tags before .../{name}: a name spans slashes, so the shorter template would swallow "/tags".
    app.add_route(routes.ADMIN_REPOSITORY_TAGS, admin.RepositoryTagsResource(registry))
    app.add_route(routes.ADMIN_REPOSITORY, admin.RepositoryResource(registry))
    app.add_route(routes.ADMIN_GC, admin.GcResource(registry))
    app.add_route(routes.ADMIN_STORAGE, admin.StorageResource(registry))
    app.add_route(routes.ADMIN_READ_ONLY, admin.ReadOnlyResource(registry))
    app.add_route(routes.ADMIN_EVENTS, admin.EventsResource(registry))
    app.add_route(routes.ADMIN_EVENTS_PARKED, admin.ParkedEventsResource(registry))
    app.add_route(routes.ADMIN_EVENTS_REPLAY, admin.ReplayEventsResource(registry))

    app.add_route(routes.API_ROOT, BaseResource())
    listings = BoundedCache(max_bytes=LISTING_CACHE_BYTES)
    app.add_route(routes.CATALOG, CatalogResource(registry, listings))
    app.add_route(routes.TAGS, TagsResource(registry, listings))
    app.add_route(routes.MANIFEST, ManifestResource(registry))
    app.add_route(routes.UPLOADS, UploadsResource(registry))
    app.add_route(routes.UPLOAD, UploadResource(registry))
    app.add_route(routes.BLOB, BlobResource(registry))
    app.add_route(routes.REFERRERS, ReferrersResource(registry))
    for template, resource in path.routes():  # e.g. the auth middleware's token endpoint
        app.add_route(template, resource)
    if config.ui:
        auth = next((component for stage, _, component in path.stages if stage == "auth"), None)
        token_path = getattr(auth, "token_path", None) if getattr(auth, "issuer", None) is not None else None
        for template, resource in WebUI(config.ui_prefix, token_path=token_path, auth=auth is not None).routes():
            app.add_route(template, resource)

    install_observability(app, registry, metrics_directory(config))  # /healthz, /readyz, /metrics

    app.add_error_handler(Exception, _unexpected_error)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(RegistryError, _registry_error)
    return app


def get_app() -> DockyardApp:
    """The app as configured by the environment (DOCKYARD_* variables and DOCKYARD_CONFIG)."""
    return create_app(load_config())
