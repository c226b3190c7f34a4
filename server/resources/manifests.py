"""`/v2/<name>/manifests/<reference>`: fetch, check, push and delete manifests by tag or digest."""

from __future__ import annotations

import falcon

from ..bodies import read_small
from ..errors import ManifestUnknown, SizeInvalid, TooLarge
from ..mirror import CACHE_HEADER
from ..model import ManifestRecord
from .base import Resource, set_location


def accepted_types(req: falcon.Request) -> set[str]:
    """Every media type of every Accept header line (clients send one line per type)."""
    types = set()
    for item in (req.get_header("Accept") or "").split(","):
        media_type = item.split(";", 1)[0].strip().lower()
        if media_type:
            types.add(media_type)
    return types


def negotiate(req: falcon.Request, record: ManifestRecord) -> None:
    """The stored bytes are served as pushed; a client that lists types excluding them gets MANIFEST_UNKNOWN."""
    accepted = accepted_types(req)
    if not accepted or record.media_type in accepted or "*/*" in accepted or "application/*" in accepted:
        return
    raise ManifestUnknown({"mediaType": record.media_type, "accepted": sorted(accepted)},
                          message=f"manifest is {record.media_type}, which the Accept header does not allow")


def manifest_headers(resp: falcon.Response, record: ManifestRecord) -> None:
    resp.content_type = record.media_type
    resp.content_length = record.size
    resp.set_header("Docker-Content-Digest", record.digest)
    resp.etag = f'"{record.digest}"'
    if getattr(record, "cache", None):  # a pull-through cached repository: hit, miss, revalidated, stale
        resp.set_header(CACHE_HEADER, record.cache)


class ManifestResource(Resource):
    def on_head(self, req: falcon.Request, resp: falcon.Response, name: str, reference: str) -> None:
        record = self.registry.manifest(name, reference, with_data=False)
        negotiate(req, record)
        manifest_headers(resp, record)

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, reference: str) -> None:
        record = self.registry.manifest(name, reference)
        negotiate(req, record)
        manifest_headers(resp, record)
        resp.data = record.data
        if self.registry.pulls_wanted:
            self.registry.note_pull(name, record, reference, self.caller(req))

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str, reference: str) -> None:
        limit = self.registry.config.max_manifest_size
        if req.content_length is not None and req.content_length > limit:
            raise TooLarge({"limit": limit, "size": req.content_length}, message=f"manifest larger than {limit} bytes")
        data = read_small(req.bounded_stream if req.content_length is not None else req.stream, limit)
        if len(data) > limit:
            raise TooLarge({"limit": limit}, message=f"manifest larger than {limit} bytes")
        if req.content_length is not None and len(data) != req.content_length:
            raise SizeInvalid({"expected": req.content_length, "received": len(data)})
        stored = self.registry.put_manifest(name, reference, data, req.content_type, self.caller(req))
        resp.status = falcon.HTTP_201
        set_location(resp, f"/v2/{name}/manifests/{stored.digest}")
        resp.set_header("Docker-Content-Digest", stored.digest)
        if stored.subject:
            resp.set_header("OCI-Subject", stored.subject)
        resp.content_length = 0

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str, reference: str) -> None:
        self.registry.delete_manifest(name, reference, self.caller(req))
        resp.status = falcon.HTTP_202
        resp.content_length = 0
