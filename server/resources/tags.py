"""`/v2/<name>/tags/list`: the tags of a repository, in lexical order, paginated with `n` and `last`.

Pages are cached per worker under the repository's tag-list version (see `..cache`), so a 10,000-tag list costs
one indexed lookup while it does not change.
"""

from __future__ import annotations

import json

import falcon

from ..cache import BoundedCache
from ..registry import Registry
from .base import Resource, pagination, set_next_link, validate_last_tag


class TagsResource(Resource):
    def __init__(self, registry: Registry, cache: BoundedCache):
        super().__init__(registry)
        self.cache = cache

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        n, last = pagination(req, default=None, maximum=self.registry.config.page_size_max)
        validate_last_tag(last)
        key = ("tags", name, n, last, self.registry.tags_version(name))
        cached = self.cache.get(key)
        if cached is None:
            tags, more = self.registry.tags(name, n, last)
            cached = (json.dumps({"name": name, "tags": tags}).encode(), tags[-1] if more and tags else None)
            self.cache.put(key, *cached)
        body, next_last = cached
        if next_last is not None:
            set_next_link(resp, f"/v2/{name}/tags/list", n, next_last)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = body
