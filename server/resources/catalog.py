"""`/v2/_catalog`: repository names in lexical order, a page at a time, answered from an index."""

from __future__ import annotations

import falcon

from .base import Resource, pagination, set_next_link


class CatalogResource(Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        maximum = self.registry.config.page_size_max
        n, last = pagination(req, default=maximum, maximum=maximum)
        # An access-control middleware may restrict what this caller sees (req.context.visible_repository).
        names, more = self.registry.catalog(n, last, req.context.get("visible_repository"))
        if more and names:
            set_next_link(resp, "/v2/_catalog", n, names[-1])
        resp.media = {"repositories": names}
