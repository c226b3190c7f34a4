"""`/v2/<name>/blobs/uploads/`: upload sessions (POST, PATCH, PUT, GET, DELETE), monolithic uploads and mounts."""

from __future__ import annotations

import falcon

from ..model import StoredBlob, UploadSession
from ..observability import note_blob_upload
from .base import Resource, request_body, set_location


def session_headers(resp: falcon.Response, name: str, session: UploadSession, node: str = "") -> None:
    # `node` (the `node` setting) is a routing hint for the cluster's nginx: this node answered last, so it is the
    # one most likely to hold the session's state in memory. Clients send the Location back as they got it (adding
    # their own query parameters such as digest): any node continues any session, the hint only saves work.
    set_location(resp, f"/v2/{name}/blobs/uploads/{session.id}" + (f"?node={node}" if node else ""))
    resp.set_header("Docker-Upload-UUID", session.id)
    # Range is inclusive; an empty session reports 0-0, as the reference registry and its clients expect.
    resp.set_header("Range", f"0-{max(session.length - 1, 0)}")
    resp.content_length = 0


def created_headers(resp: falcon.Response, name: str, digest: str) -> None:
    resp.status = falcon.HTTP_201
    set_location(resp, f"/v2/{name}/blobs/{digest}")
    resp.set_header("Docker-Content-Digest", digest)
    resp.content_length = 0


class SessionResource(Resource):
    @property
    def node(self) -> str:
        return self.registry.config.node


class UploadsResource(SessionResource):
    """POST: open a session (202), upload monolithically (?digest=, 201) or mount (?mount=&from=, 201)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        mount, source = req.get_param("mount"), req.get_param("from")
        if mount and source:
            mounted = self.registry.mount(name, source, mount, self.caller(req))
            if mounted is not None:
                created_headers(resp, name, mounted.digest)
                return
        digest = req.get_param("digest")
        if digest is not None:
            blob: StoredBlob = self.registry.monolithic_upload(name, digest, request_body(req),
                                                               req.context.get("user"), self.caller(req))
            note_blob_upload(req, blob.size)
            created_headers(resp, name, blob.digest)
            return
        resp.status = falcon.HTTP_202
        session_headers(resp, name, self.registry.start_upload(name, req.context.get("user")), self.node)


class UploadResource(SessionResource):
    """One upload session: its status, its chunks, its close and its cancellation."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, upload_id: str) -> None:
        resp.status = falcon.HTTP_204
        session_headers(resp, name, self.registry.upload_status(name, upload_id), self.node)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, name: str, upload_id: str) -> None:
        session = self.registry.append_upload(name, upload_id, request_body(req))
        resp.status = falcon.HTTP_202
        session_headers(resp, name, session, self.node)

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str, upload_id: str) -> None:
        blob = self.registry.finish_upload(name, upload_id, req.get_param("digest"), request_body(req),
                                           self.caller(req))
        note_blob_upload(req, blob.size)
        created_headers(resp, name, blob.digest)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str, upload_id: str) -> None:
        self.registry.cancel_upload(name, upload_id)
        resp.status = falcon.HTTP_204
