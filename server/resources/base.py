"""What every resource shares: the API root, request-body and pagination parsing, response headers."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

import falcon

from ..bodies import body_source
from ..errors import TagInvalid
from ..model import Caller
from ..names import TAG_RE
from ..observability import counted
from ..parsing import page_size
from ..registry import Body, Registry
from ..urls import absolute_url


def request_body(req: falcon.Request) -> Body:
    """The body to stream: Content-Length bytes, or until EOF for `Transfer-Encoding: chunked` (docker, podman)."""
    length = req.content_length
    if length is None and "chunked" not in (req.get_header("Transfer-Encoding") or "").lower():
        length = 0
    return Body(counted(req.env, body_source(req.env, req.stream, length)), length, req.get_header("Content-Range"))


def pagination(req: falcon.Request, *, default: int | None, maximum: int) -> tuple[int | None, str | None]:
    """`n` and `last` query parameters; `n` is capped at `maximum` (the Link header then leads on)."""
    return page_size(req.get_param("n"), default=default, maximum=maximum), req.get_param("last") or None


def set_next_link(resp: falcon.Response, path: str, n: int, last: str) -> None:
    url = absolute_url(resp, f'{path}?{urlencode({"n": n, "last": last})}')
    resp.set_header("Link", f'<{url}>; rel="next"')


def set_location(resp: falcon.Response, path: str) -> None:
    """Every Location header goes through here: absolute, with the registry's external scheme, host and port."""
    resp.location = absolute_url(resp, path)


class BaseResource:
    """`GET /v2/`: the API root; a 200 tells clients this registry speaks the V2 API."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {}


class Resource:
    """A resource of the V2 API, working through the `Registry` it is given."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._proxies = registry.config.proxies

    def caller(self, req: falcon.Request) -> Caller:
        """Who is asking, through which request: handed to the domain for the events a change writes."""
        peer = req.remote_addr or ""
        addr = req.context.get("client_address") or self._proxies.client_address(peer,
                                                                                 req.get_header("X-Forwarded-For"))
        port = req.env.get("REMOTE_PORT")
        if addr == peer and port:
            addr = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        # The access log's request id when the `logging` middleware runs, so an event and its log line match.
        return Caller(user=req.context.get("user"), addr=addr, host=req.get_header("Host") or "",
                      method=req.method, user_agent=req.user_agent or "",
                      request_id=req.context.get("request_id") or str(uuid.uuid4()),
                      base_url=req.context.get("external_base") or "")


def validate_last_tag(last: str | None) -> None:
    if last is not None and not TAG_RE.fullmatch(last):
        raise TagInvalid({"last": last[:300]}, message="last must be a tag")
