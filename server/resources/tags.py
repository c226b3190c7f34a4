"""`/v2/<name>/tags/list`: the tags of a repository, in lexical order, paginated with `n` and `last`."""

from __future__ import annotations

import falcon

from .base import Resource, pagination, set_next_link, validate_last_tag


class TagsResource(Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        n, last = pagination(req, default=None, maximum=self.registry.config.page_size_max)
        validate_last_tag(last)
        tags, more = self.registry.tags(name, n, last)
        if more and tags:
            set_next_link(resp, f"/v2/{name}/tags/list", n, tags[-1])
        resp.media = {"name": name, "tags": tags}
