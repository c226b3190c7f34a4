"""`/v2/<name>/blobs/<digest>`: fetch (with Range), check and delete blobs.

With `accel_redirect` set (Dockyard behind nginx), a GET is answered with `X-Accel-Redirect: <prefix>/<algorithm>/
<2 hex>/<hex>`, the blob's path under the store's `blobs/` directory (see the storage layout), and no body: nginx
serves the file from its `internal` location aliased to that directory, Range requests included, so no blob byte
passes through Python. Access is checked here first, as for every GET.
"""

from __future__ import annotations

import re

import falcon

from ..errors import SizeInvalid
from .base import Resource

RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeReader:
    """A file limited to `length` bytes from its current position, for 206 responses."""

    def __init__(self, fh, length: int):
        self._fh = fh
        self._remaining = length

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        if size < 0 or size > self._remaining:
            size = self._remaining
        data = self._fh.read(size)
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._fh.close()


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single byte range; None to serve the whole blob (unparsable or multi-range).

    An unsatisfiable range raises a 416 carrying `Content-Range: bytes */size` (RFC 9110 14.4).
    """
    match = RANGE_RE.fullmatch(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        length = int(last)
        if length == 0:
            raise _unsatisfiable(header, size)
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise _unsatisfiable(header, size)
    return start, end


def _unsatisfiable(header: str, size: int) -> SizeInvalid:
    return SizeInvalid({"Range": header, "size": size}, status=416, message="requested range not satisfiable",
                       headers={"Content-Range": f"bytes */{size}"})


class BlobResource(Resource):
    def on_head(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        parsed, size = self.registry.blob(name, digest)
        resp.content_type = "application/octet-stream"
        resp.content_length = size
        resp.set_header("Docker-Content-Digest", str(parsed))
        resp.set_header("Accept-Ranges", "bytes")
        resp.etag = f'"{parsed}"'

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        parsed, size = self.registry.blob(name, digest)
        accel = self.registry.config.accel_redirect
        if accel:
            store = self.registry.store
            target = store.blob_path(parsed).relative_to(store.root / "blobs").as_posix()
            resp.set_header("X-Accel-Redirect", f"{accel.rstrip('/')}/{target}")
            # nginx keeps only some upstream headers on an internal redirect; its location re-adds these from
            # $upstream_http_docker_content_digest and $upstream_http_etag (deploy/nginx/dockyard.conf).
            resp.content_type = "application/octet-stream"
            resp.set_header("Docker-Content-Digest", str(parsed))
            resp.etag = f'"{parsed}"'
            resp.cache_control = ["max-age=31536000"]
            resp.content_length = 0
            return
        byte_range = parse_range(req.get_header("Range"), size) if req.get_header("Range") else None
        fh = self.registry.open_blob(parsed)
        resp.content_type = "application/octet-stream"
        resp.set_header("Docker-Content-Digest", str(parsed))
        resp.set_header("Accept-Ranges", "bytes")
        resp.etag = f'"{parsed}"'
        resp.cache_control = ["max-age=31536000"]
        if byte_range is None:
            resp.set_stream(fh, size)
            return
        start, end = byte_range
        fh.seek(start)
        resp.status = falcon.HTTP_206
        resp.set_header("Content-Range", f"bytes {start}-{end}/{size}")
        resp.set_stream(RangeReader(fh, end - start + 1), end - start + 1)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        self.registry.delete_blob(name, digest)
        resp.status = falcon.HTTP_202
        resp.content_length = 0
