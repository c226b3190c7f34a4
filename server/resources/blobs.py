"""`/v2/<name>/blobs/<digest>`: fetch (with Range), check and delete blobs.

When the blob store is set up for it (`accel_redirect` with nginx in front), a GET is answered with the store's
redirect and no body: `X-Accel-Redirect` to an internal nginx location that serves the bytes itself, Range requests
included, so no blob byte passes through Python; or a 307 to a URL the client fetches. Access is checked here
first, as for every GET.
"""

from __future__ import annotations

import re

import falcon

from ..errors import RangeInvalid
from ..model import BlobRecord
from .base import Resource

RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


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


def _unsatisfiable(header: str, size: int) -> RangeInvalid:
    return RangeInvalid({"Range": header[:100], "size": size}, message="requested range not satisfiable",
                        headers={"Content-Range": f"bytes */{size}"})


def blob_headers(resp: falcon.Response, blob: BlobRecord) -> None:
    resp.content_type = "application/octet-stream"
    resp.set_header("Docker-Content-Digest", blob.digest)
    resp.etag = f'"{blob.digest}"'



class BlobResource(Resource):
    def on_head(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        blob = self.registry.blob(name, digest)
        blob_headers(resp, blob)
        resp.content_length = blob.size
        resp.set_header("Accept-Ranges", "bytes")

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        blob = self.registry.blob(name, digest)
        blob_headers(resp, blob)
        resp.cache_control = ["max-age=31536000"]
        redirect = self.registry.blob_redirect(blob)
        if redirect is not None and redirect.kind == "accel":
            # nginx keeps only some upstream headers on an internal redirect; its location re-adds these from
            # $upstream_http_docker_content_digest and $upstream_http_etag (deploy/nginx/dockyard.conf).
            resp.set_header("X-Accel-Redirect", redirect.location)
            resp.content_length = 0
            return
        if redirect is not None:
            resp.status = falcon.HTTP_307
            resp.location = redirect.location
            resp.content_length = 0
            return
        resp.set_header("Accept-Ranges", "bytes")
        header = req.get_header("Range")
        byte_range = parse_range(header, blob.size) if header else None
        if byte_range is None:
            resp.set_stream(self.registry.read_blob(blob), blob.size)
            return
        start, end = byte_range
        resp.status = falcon.HTTP_206
        resp.set_header("Content-Range", f"bytes {start}-{end}/{blob.size}")
        resp.set_stream(self.registry.read_blob(blob, start, end - start + 1), end - start + 1)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        self.registry.delete_blob(name, digest)
        resp.status = falcon.HTTP_202
        resp.content_length = 0
