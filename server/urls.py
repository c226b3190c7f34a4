"""The registry's external URL: what every `Location` and `Link` header starts with.

Behind a reverse proxy the request gunicorn sees is not the one the client sent (http, not https; the upstream's
host and port). A Location built from it sends the client to an address it cannot reach, which is where the
reference registry's "blob upload unknown" behind load balancers comes from. So URLs are made absolute here, from,
in order of preference:

1. `base_url`, when configured: the operator says what the registry is called;
2. `X-Forwarded-Proto` and `X-Forwarded-Host`, only when the peer (REMOTE_ADDR) is one of `trusted_proxies`;
3. the request itself: its scheme and its `Host` header (what the client used to reach us).

`ExternalURLs` is a Falcon middleware component that puts the base (`scheme://host[:port]`, no trailing slash) on
`req.context.external_base` and `resp.context.external_base`; `absolute_url(req_or_resp, path)` is the one helper
that builds URLs from it (resources call it through `set_location` and `set_next_link`).
"""

from __future__ import annotations

from typing import Mapping
from urllib.parse import urlsplit

import falcon

from .config import Config, ConfigError
from .proxies import TrustedProxies


def parse_base_url(value: str) -> str:
    if not value:
        return ""
    parts = urlsplit(value)
    # Registry clients always ask for /v2/ at the root of the host: a path prefix cannot work.
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query \
            or parts.fragment:
        raise ConfigError(f"setting 'base_url': expected http(s)://host[:port], got {value!r}")
    return value.rstrip("/")


def _first(value: str | None) -> str:
    """The client-most entry of a header a chain of proxies may have appended to."""
    return (value or "").split(",", 1)[0].strip()


class ExternalURLs:
    def __init__(self, base_url: str = "", trusted: TrustedProxies | None = None):
        self.base_url = parse_base_url(base_url)
        self.trusted = trusted or TrustedProxies()

    @classmethod
    def from_config(cls, config: Config) -> "ExternalURLs":
        return cls(config.base_url, config.proxies)

    def base(self, environ: Mapping) -> str:
        """`scheme://host[:port]` as the client sees this registry, for one request's WSGI environ."""
        if self.base_url:
            return self.base_url
        scheme = environ.get("wsgi.url_scheme", "http")
        host = environ.get("HTTP_HOST") or ""
        if self.trusted.trusts(environ.get("REMOTE_ADDR")):
            forwarded_scheme = _first(environ.get("HTTP_X_FORWARDED_PROTO")).lower()
            if forwarded_scheme in ("http", "https"):
                scheme = forwarded_scheme
            host = _first(environ.get("HTTP_X_FORWARDED_HOST")) or host
        if not host or any(c in host for c in " /\\@?#"):
            # No usable Host header (HTTP/1.0) or a malformed one: the address we listen on.
            host = environ.get("SERVER_NAME", "localhost")
            port = str(environ.get("SERVER_PORT", ""))
            host = f"{host}:{port}" if port else host
        default_port = ":443" if scheme == "https" else ":80"
        if host.endswith(default_port):  # one spelling per URL: https://host, not https://host:443
            host = host[:-len(default_port)]
        return f"{scheme}://{host}"

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.external_base = resp.context.external_base = self.base(req.env)


def absolute_url(holder: falcon.Request | falcon.Response, path: str) -> str:
    """`path` (starting with `/`) as an absolute URL that reaches this registry from the client's side.

    `holder` is the request or the response of a request `ExternalURLs` has seen (see `pipeline`)."""
    return holder.context.external_base + path
