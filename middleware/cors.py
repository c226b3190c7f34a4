"""Cross-origin resource sharing: the `cors` middleware, so a registry UI on another origin can use the API.

A browser lets a page of another origin read a response only when the response names that origin
(`Access-Control-Allow-Origin`), and lets it send anything beyond a "simple" request (an `Authorization` header,
an `Accept` header longer than 128 bytes, a DELETE) only after a preflight: an OPTIONS request with `Origin` and
`Access-Control-Request-Method`, which never carries credentials. So this middleware stands before `throttle` and
`auth` (its stage is `cors`, see `dockyard.server.pipeline`):

* a preflight from an allowed origin is answered here, 204 with the allowed methods and headers and `Max-Age`,
  before anything asks for credentials; from any other origin it is refused (403 DENIED) with no CORS header;
* every other response to an allowed origin, errors and 401 challenges included (Falcon runs `process_response`
  for refused requests too), names the origin and exposes the headers a registry client reads
  (`Docker-Content-Digest`, `Link`, `WWW-Authenticate`, ...), so the page can follow pages and challenges;
* every response carries `Vary: Origin`, since what it says depends on the request's origin.

Origins are an exact list (`scheme://host[:port]`, as browsers send them). `*` allows any origin but cannot be
combined with credentials: that would hand every site on the web the user's access, so it stops start-up.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import falcon

from dockyard.server.errors import Denied

from . import MiddlewareContext, Options

DEFAULT_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_ALLOW_HEADERS = ("Authorization", "Accept", "Content-Type", "Cache-Control", "Range", "Content-Range",
                         "If-None-Match", "X-Request-ID")
DEFAULT_EXPOSE_HEADERS = ("Docker-Content-Digest", "Docker-Distribution-API-Version", "Docker-Upload-UUID", "Link",
                          "Location", "Content-Range", "Range", "OCI-Subject", "OCI-Filters-Applied",
                          "WWW-Authenticate", "Retry-After", "X-Request-ID", "ETag", "Content-Length")
DEFAULT_MAX_AGE = 600
MAX_ORIGIN = 300  # longer Origin headers are never allowed, and never echoed in an error detail beyond this


def parse_origin(value: str) -> str:
    """An origin as browsers serialize it (`scheme://host[:port]`, lower case), or ValueError."""
    if value == "*":
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment \
            or parts.username or parts.password or value != value.strip():
        raise ValueError(f"expected scheme://host[:port] with no path or trailing slash, got {value!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"bad port in {value!r}") from None
    return value.lower()


class Cors:
    def __init__(self, origins: tuple[str, ...], *, credentials: bool = False,
                 methods: tuple[str, ...] = DEFAULT_METHODS, allow_headers: tuple[str, ...] = DEFAULT_ALLOW_HEADERS,
                 expose_headers: tuple[str, ...] = DEFAULT_EXPOSE_HEADERS, max_age: int = DEFAULT_MAX_AGE):
        if "*" in origins and credentials:
            raise ValueError("origins = [\"*\"] cannot be combined with credentials = true: it would let every site "
                             "act with the user's credentials; list the UI's origins instead")
        self.any_origin = "*" in origins
        self.origins = frozenset(o for o in origins if o != "*")
        self.credentials = credentials
        self.methods = ", ".join(methods)
        self.allow_headers = ", ".join(allow_headers)
        self.expose_headers = ", ".join(expose_headers)
        self.max_age = str(max_age)

    @classmethod
    def from_config(cls, options: Options, context: MiddlewareContext) -> "Cors":
        origins = []
        for origin in options.strings("origins"):
            if origin == "null":
                raise options.error("origins", "\"null\" is the origin of sandboxed frames and local files, "
                                    "which any site can make: it cannot be allowed")
            try:
                origins.append(parse_origin(origin))
            except ValueError as exc:
                raise options.error("origins", str(exc)) from None
        if not origins:
            raise options.error("origins", "is required: the exact origins allowed, e.g. [\"https://ui.example.com\"]")
        credentials = options.get("credentials", bool, False)
        methods = tuple(m.upper() for m in options.strings("methods", DEFAULT_METHODS))
        allow_headers = options.strings("allow_headers", DEFAULT_ALLOW_HEADERS)
        expose_headers = options.strings("expose_headers", DEFAULT_EXPOSE_HEADERS)
        for option, values in (("methods", methods), ("allow_headers", allow_headers),
                               ("expose_headers", expose_headers)):
            if any(not v or not v.replace("-", "").isalnum() for v in values):
                raise options.error(option, f"expected header or method names, got {list(values)!r}")
        max_age = int(options.number("max_age", DEFAULT_MAX_AGE))
        try:
            return cls(tuple(origins), credentials=credentials, methods=methods, allow_headers=allow_headers,
                       expose_headers=expose_headers, max_age=max_age)
        except ValueError as exc:
            raise options.error("origins", str(exc)) from None

    def allowed(self, origin: str | None) -> bool:
        if not origin or len(origin) > MAX_ORIGIN or origin == "null":
            return False
        return self.any_origin or origin in self.origins

    def _allow_origin(self, resp: falcon.Response, origin: str) -> None:
        resp.set_header("Access-Control-Allow-Origin", "*" if self.any_origin and not self.credentials else origin)
        if self.credentials:
            resp.set_header("Access-Control-Allow-Credentials", "true")

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        origin = req.get_header("Origin")
        if req.method != "OPTIONS" or not origin or not req.get_header("Access-Control-Request-Method"):
            return
        # A preflight: answered here, before throttle and auth; it never carries credentials.
        if not self.allowed(origin):
            raise Denied({"origin": origin[:MAX_ORIGIN], "reason": "origin not allowed by the cors middleware"},
                         message="cross-origin request from an origin not allowed")
        self._allow_origin(resp, origin)
        resp.set_header("Access-Control-Allow-Methods", self.methods)
        resp.set_header("Access-Control-Allow-Headers", self.allow_headers)
        resp.set_header("Access-Control-Max-Age", self.max_age)
        resp.status = falcon.HTTP_204
        resp.complete = True  # no routing, no authentication: Falcon still runs every process_response
        req.context.cors_preflight = True

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        resp.append_header("Vary", "Origin")
        origin = req.get_header("Origin")
        if req.context.get("cors_preflight") or not self.allowed(origin):
            return
        self._allow_origin(resp, origin)
        if self.expose_headers:
            resp.set_header("Access-Control-Expose-Headers", self.expose_headers)
