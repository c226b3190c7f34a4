"""The request path: every component a request passes through, built-in and configured, in one ordered list.

`build_request_path` is the only place the order is decided; the README's "The request path" section reproduces
STAGES (tests/test_docs.py holds them together). Falcon calls every `process_request` in this order, routes, calls
every `process_resource` in this order, runs the responder, then every `process_response` in reverse order, also
for requests a component refused (the app runs middleware independently). So:

1. `logging` (configured): the request id and the access-log line. First, so every request is identified and
   logged, refused ones included (a read-only refusal, a bad path, a 401, a 429).
2. `urls` (built-in): the external base URL that Location, Link and the token realm are built from.
3. `headers` (built-in): the API version header on every response, and the path checks: a request whose path is
   not in canonical form is refused here, before anything decides on the path; after routing, access is judged on
   the route template the router matched (`dockyard.middleware.access.required_access`).
4. `cors` (configured): answers a CORS preflight from an allowed origin (204) and ends it there, before any
   credentials are asked for (a preflight never carries them); names the origin on every response to it, errors
   and 401 challenges included.
5. `throttle` (from `auth`): failed logins per client address. Before `auth` reads credentials, so a flood of wrong
   passwords from one address never costs a bcrypt check each.
6. `auth` (configured): who is asking (in process_request) and whether they may (in process_resource).
7. `read-only` (built-in): maintenance mode refuses writes with 503 UNAVAILABLE, after authorization: an anonymous
   caller is asked to authenticate first, like for any write.
8. `ratelimit` (configured): token buckets per user (or address) and class of request, after authentication.
9. `custom`: middleware named by dotted path, in the order the config file lists them; they see identities
   (`req.context.user`) and the routed request.
10. `metrics` (built-in): the route template as the request's metric label.

The configured built-ins (`logging`, `cors`, `auth`, `ratelimit`) take their place above whatever their order in
the config file; leaving one out leaves its stage empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import falcon

from dockyard.middleware import MiddlewareContext, build_chain, stage_of

from .config import Config, ConfigError
from .errors import Unavailable
from .observability import RouteLabel
from .parsing import check_path
from .registry import Registry
from .routes import API_ROOT, is_admin_path
from .urls import ExternalURLs

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
WRITES = frozenset(("POST", "PUT", "PATCH", "DELETE"))

STAGES = ("logging", "urls", "headers", "cors", "throttle", "auth", "read-only", "ratelimit", "custom",
          "metrics")


class RegistryHeaders:
    """Adds the API version header to every response, errors included, and refuses any path not in canonical form
    (`parsing.check_path`), so that every later decision judges the one spelling the router routes."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        check_path(req.path, req.env.get("RAW_URI") or req.env.get("REQUEST_URI"))

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        resp.set_header(*API_VERSION_HEADER)


class ReadOnlyMode:
    """In read-only mode, writes to the V2 API are refused with 503 UNAVAILABLE; reads and the admin API go on."""

    def __init__(self, read_only: Callable[[], bool]):
        self.read_only = read_only

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params: dict) -> None:
        template = req.uri_template or ""
        if (req.method in WRITES and template.startswith(API_ROOT) and not is_admin_path(template)
                and self.read_only()):
            raise Unavailable({"read_only": True}, headers={"Retry-After": "60"},
                              message="the registry is in read-only maintenance mode")


@dataclass
class RequestPath:
    """The components in order, with the stage each stands in (for `dockyard check-config` and tests)."""
    stages: list[tuple[str, str, object]]  # (stage, name, component)

    @property
    def components(self) -> list:
        return [component for _, _, component in self.stages]

    def routes(self):
        """Routes a component serves itself (the auth middleware's token endpoint)."""
        for _, _, component in self.stages:
            yield from getattr(component, "routes", tuple)()


def build_request_path(config: Config, registry: Registry | None, *, clock=None) -> RequestPath:
    """Every component of the request path, in STAGES order. `registry` may be None to check a configuration
    without opening the data directory (the read-only stage is then left out)."""
    shared = registry.shared_state() if registry is not None else None
    configured = build_chain(config.middleware, MiddlewareContext(config, clock=clock, shared=shared))
    placed: dict[str, list[tuple[str, object]]] = {stage: [] for stage in STAGES}
    for entry, component in configured:
        parts = component.parts() if hasattr(component, "parts") else {stage_of(entry["name"]): component}
        for stage, part in parts.items():
            if stage != "custom" and placed[stage]:
                raise ConfigError(f"middleware {entry['name']!r}: configured more than once")
            placed[stage].append((entry["name"], part))
    placed["urls"].append(("urls", ExternalURLs.from_config(config)))
    placed["headers"].append(("headers", RegistryHeaders()))
    if registry is not None:
        placed["read-only"].append(("read-only", ReadOnlyMode(registry.read_only)))
    placed["metrics"].append(("metrics", RouteLabel()))
    return RequestPath([(stage, name, component) for stage in STAGES for name, component in placed[stage]])
