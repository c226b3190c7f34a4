"""`/v2/_catalog`: repository names in lexical order, a page at a time, answered from an index.

Pages are cached per worker under the catalog version (see `..cache`), except when an access-control middleware
restricts what this caller may see.
"""

from __future__ import annotations

import json

import falcon

from ..cache import BoundedCache
from ..registry import Registry
from ..routes import CATALOG
from .base import Resource, pagination, set_next_link


class CatalogResource(Resource):
    def __init__(self, registry: Registry, cache: BoundedCache):
        super().__init__(registry)
        self.cache = cache

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        maximum = self.registry.config.page_size_max
        n, last = pagination(req, default=maximum, maximum=maximum)
        # An access-control middleware may restrict what this caller sees (req.context.visible_repository).
        visible = req.context.get("visible_repository")
        key = ("catalog", n, last, self.registry.catalog_version()) if visible is None else None
        cached = self.cache.get(key) if key else None
        if cached is None:
            names, more = self.registry.catalog(n, last, visible)
            cached = (json.dumps({"repositories": names}).encode(), names[-1] if more and names else None)
            if key:
                self.cache.put(key, *cached)
        body, next_last = cached
        if next_last is not None:
            set_next_link(resp, CATALOG, n, next_last)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = body
