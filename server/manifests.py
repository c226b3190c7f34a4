"""Parsing and validation of pushed manifests: OCI image manifest and index, Docker schema 2 manifest and list.

`parse_manifest` turns the pushed bytes into a `NewManifest`: the media type, the blobs and child manifests it
references (which must exist before it is stored), its subject (OCI 1.1 referrers) and its artifact type. The
bytes themselves are kept exactly as pushed.
"""

from __future__ import annotations

from typing import Any

from .errors import DigestInvalid, ManifestInvalid
from .model import NewManifest
from .names import Digest, parse_digest
from .parsing import manifest_document

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

IMAGE_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES


def media_type_of(content_type: str | None) -> str:
    """The bare media type of a Content-Type header (parameters ignored, as the spec asks)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _invalid(reason: str, **detail: Any) -> ManifestInvalid:
    return ManifestInvalid({"reason": reason, **detail})


def _descriptor(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _invalid(f"{where} is not a descriptor object")
    if not isinstance(value.get("mediaType"), str) or not value["mediaType"]:
        raise _invalid(f"{where} has no mediaType")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where} has no valid size")
    try:
        parse_digest(value.get("digest"))
    except DigestInvalid:
        raise _invalid(f"{where} has an invalid digest", digest=value.get("digest")) from None
    return value


def _descriptors(value: Any, where: str) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(f"{where} is not a list")
    return [_descriptor(item, f"{where}[{i}]") for i, item in enumerate(value)]


def parse_manifest(data: bytes, content_type: str | None, digest: Digest) -> NewManifest:
    """Validate a pushed manifest. `digest` is its already verified digest."""
    document = manifest_document(data)
    if not isinstance(document, dict):
        raise _invalid("manifest is not a JSON object")
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2", schemaVersion=document.get("schemaVersion"))

    declared = media_type_of(content_type)
    in_body = document.get("mediaType")
    if in_body is not None and not isinstance(in_body, str):
        raise _invalid("mediaType is not a string")
    if in_body and declared in MANIFEST_TYPES and in_body != declared:
        raise _invalid("mediaType does not match Content-Type", mediaType=in_body, contentType=declared)
    if declared in MANIFEST_TYPES:
        media_type = declared
    elif in_body in MANIFEST_TYPES:
        media_type = in_body
    elif in_body is None and declared in ("", "application/json", "application/octet-stream"):
        media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    else:
        raise _invalid("unsupported manifest media type", mediaType=in_body or declared)

    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType is not a string")
    blobs: list[str] = []
    children: list[str] = []
    if media_type in IMAGE_TYPES:
        config = _descriptor(document.get("config"), "config")
        layers = _descriptors(document.get("layers"), "layers")
        blobs.append(config["digest"])
        # Foreign layers (with `urls`) live elsewhere by design: their bytes are not expected here.
        blobs.extend(layer["digest"] for layer in layers if not layer.get("urls"))
        artifact_type = artifact_type or config["mediaType"]
    else:
        if "manifests" not in document:
            raise _invalid("an index needs a manifests list")
        children.extend(d["digest"] for d in _descriptors(document.get("manifests"), "manifests"))

    subject = None
    if document.get("subject") is not None:
        subject = _descriptor(document["subject"], "subject")["digest"]
    annotations = document.get("annotations")
    if annotations is not None and not (isinstance(annotations, dict)
                                        and all(isinstance(v, str) for v in annotations.values())):
        raise _invalid("annotations must map strings to strings")

    return NewManifest(digest=str(digest), media_type=media_type, data=data, blobs=blobs, manifests=children,
                       subject=subject, artifact_type=artifact_type or None, annotations=annotations or None)
