"""`/v2/<name>/referrers/<digest>`: the manifests whose `subject` is a digest, as an OCI image index (OCI 1.1)."""

from __future__ import annotations

import json

import falcon

from ..manifests import OCI_INDEX
from .base import Resource


class ReferrersResource(Resource):
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, digest: str) -> None:
        artifact_type = req.get_param("artifactType") or None
        descriptors = self.registry.referrers(name, digest, artifact_type)
        if artifact_type is not None:
            resp.set_header("OCI-Filters-Applied", "artifactType")
        resp.content_type = OCI_INDEX
        resp.data = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors},
                               separators=(",", ":")).encode()
