"""The WSGI application: `create_app` wires configuration, storage and metadata into Falcon.

`get_app()` is what gunicorn runs; it is the only place that reads the environment.
"""

from __future__ import annotations

import logging

import falcon

from .config import Config, load_config
from .errors import RegistryError, error_body, error_for_status
from .metadata import Metadata
from .observability import InstrumentedApp
from .observability import install as install_observability
from .registry import Registry
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
            from .errors import NameInvalid
            raise NameInvalid({"path": raw[:300]}, message="encoded slashes are not allowed in the path")

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        resp.set_header(*API_VERSION_HEADER)


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


def create_app(config: Config, *, store: BlobStore | None = None, metadata: Metadata | None = None) -> falcon.App:
    data = config.data_path
    data.mkdir(parents=True, exist_ok=True)
    store = store or BlobStore(data, block_size=config.io_block_size)
    metadata = metadata or Metadata(data / "registry.db")
    registry = Registry(config, store, metadata)

    # Falcon streams files through wsgi.file_wrapper in blocks of _STREAM_BLOCK_SIZE (8 KiB: far too small).
    app_class = type("DockyardApp", (InstrumentedApp,), {"_STREAM_BLOCK_SIZE": config.io_block_size,
                                                     "__slots__": ("registry",)})
    app = app_class(router=RegistryRouter(), middleware=[ExternalURLs.from_config(config), RegistryHeaders()])
    app.req_options.auto_parse_qs_csv = False
    app.resp_options.secure_cookies_by_default = False
    app.registry = registry

    app.add_route("/v2/", BaseResource())
    app.add_route("/v2/_catalog", CatalogResource(registry))
    app.add_route("/v2/{name}/tags/list", TagsResource(registry))
    app.add_route("/v2/{name}/manifests/{reference}", ManifestResource(registry))
    app.add_route("/v2/{name}/blobs/uploads/", UploadsResource(registry))
    app.add_route("/v2/{name}/blobs/uploads/{upload_id}", UploadResource(registry))
    app.add_route("/v2/{name}/blobs/{digest}", BlobResource(registry))
    app.add_route("/v2/{name}/referrers/{digest}", ReferrersResource(registry))

    install_observability(app, registry)  # /healthz, /readyz, /metrics, and request metrics

    app.add_error_handler(Exception, _unexpected_error)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(RegistryError, _registry_error)
    return app


def get_app() -> falcon.App:
    """The app as configured by the environment (DOCKYARD_* variables and DOCKYARD_CONFIG)."""
    return create_app(load_config())
