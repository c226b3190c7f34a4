"""A Falcon router for the V2 API, whose repository names contain slashes.

Falcon's compiled router cannot put a multi-segment field in the middle of a path (`/v2/{name}/manifests/...`),
so templates holding `{name}` are compiled here to anchored regular expressions; `{name}` spans segments and must
then match the spec's name grammar (NAME_INVALID otherwise, before any resource runs). Every other route goes to
Falcon's own router. Method maps and 405 responders are Falcon's, so per-method dispatch behaves as usual.
"""

from __future__ import annotations

import re
from typing import Any

from falcon.routing import CompiledRouter, map_http_methods, set_default_responders

from .names import validate_name

FIELD_RE = re.compile(r"{(\w+)}")


def _compile(template: str) -> re.Pattern:
    pattern, pos = "", 0
    for match in FIELD_RE.finditer(template):
        pattern += re.escape(template[pos:match.start()])
        field = match.group(1)
        pattern += f"(?P<{field}>.+?)" if field == "name" else f"(?P<{field}>[^/]+)"
        pos = match.end()
    return re.compile(pattern + re.escape(template[pos:]))


class RegistryRouter:
    def __init__(self) -> None:
        self._fallback = CompiledRouter()
        # Templates under /v2/_ (the admin API) are tried only for paths there, and the V2 routes only for the
        # rest: a repository name never starts with "_", so each path meets only the patterns that can match it.
        self._routes: list[tuple[re.Pattern, object, dict, str]] = []
        self._underscore_routes: list[tuple[re.Pattern, object, dict, str]] = []

    def add_route(self, uri_template: str, resource: object, **kwargs: Any) -> None:
        if "{name}" not in uri_template:
            self._fallback.add_route(uri_template, resource, **kwargs)
            return
        method_map = map_http_methods(resource, suffix=kwargs.get("suffix"))
        set_default_responders(method_map)
        routes = self._underscore_routes if uri_template.startswith("/v2/_") else self._routes
        routes.append((_compile(uri_template), resource, method_map, uri_template))

    def find(self, uri: str, req: Any = None):
        if uri.startswith("/v2/"):
            for pattern, resource, method_map, template in (
                    self._underscore_routes if uri.startswith("/v2/_") else self._routes):
                match = pattern.fullmatch(uri)
                if match:
                    params = match.groupdict()
                    validate_name(params["name"])
                    return resource, method_map, params, template
        return self._fallback.find(uri, req)
