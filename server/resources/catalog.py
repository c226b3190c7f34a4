"""`/v2/_catalog`: repository names in lexical order, a page at a time, answered from an index."""

from __future__ import annotations

import falcon

from .base import Resource, pagination, set_next_link


class CatalogResource(Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        maximum = self.registry.config.page_size_max
        n, last = pagination(req, default=maximum, maximum=maximum)
        names, more = self.registry.catalog(n, last)
        if more and names:
            set_next_link(resp, "/v2/_catalog", n, names[-1])
        resp.media = {"repositories": names}
