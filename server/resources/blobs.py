"""`/v2/<name>/blobs/<digest>`: fetch (with Range), check and delete blobs.

When the blob store is set up for it (`accel_redirect` with nginx in front), a GET is answered with the store's
redirect and no body: `X-Accel-Redirect` to an internal nginx location that serves the bytes itself, Range requests
included, so no blob byte passes through Python; or a 307 to a URL the client fetches. Access is checked here
first, as for every GET.
"""

from __future__ import annotations

import falcon

from ..mirror import CACHE_HEADER
from ..model import BlobRecord
from ..parsing import byte_range
from .base import Resource

def blob_headers(resp: falcon.Response, blob: BlobRecord) -> None:
    resp.content_type = "application/octet-stream"
    resp.set_header("Docker-Content-Digest", blob.digest)
    resp.etag = f'"{blob.digest}"'
    if getattr(blob, "cache", None):  # a pull-through cached repository: hit, miss
        resp.set_header(CACHE_HEADER, blob.cache)



class BlobResource(Resource):
    def on_head(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        blob = self.registry.blob(name, digest)
        blob_headers(resp, blob)
        resp.content_length = blob.size
        resp.set_header("Accept-Ranges", "bytes")

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        blob = self.registry.blob(name, digest, pull=True)
        blob_headers(resp, blob)
        resp.cache_control = ["max-age=31536000"]
        if self.registry.pulls_wanted:
            self.registry.note_pull(name, blob, None, self.caller(req))
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
        wanted = byte_range(header, blob.size) if header else None
        if wanted is None:
            resp.set_stream(self.registry.read_blob(blob), blob.size)
            return
        start, end = wanted
        resp.status = falcon.HTTP_206
        resp.set_header("Content-Range", f"bytes {start}-{end}/{blob.size}")
        resp.set_stream(self.registry.read_blob(blob, start, end - start + 1), end - start + 1)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        self.registry.delete_blob(name, digest, self.caller(req))
        resp.status = falcon.HTTP_202
        resp.content_length = 0
