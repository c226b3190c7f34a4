"""Helpers for building registry content in WSGI-level tests."""

from __future__ import annotations

import hashlib
import json

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(client, name: str, data: bytes) -> str:
    digest = digest_of(data)
    resp = client.post(f"/v2/{name}/blobs/uploads/?digest={digest}", data,
                       headers={"Content-Type": "application/octet-stream"})
    assert resp.status_int == 201
    return digest


def image_manifest(client, name: str, *, layers: list[bytes] = (b"layer-1",), config: bytes = b'{"os":"linux"}',
                   **extra) -> bytes:
    """Push the config and layers, return the bytes of an OCI image manifest naming them."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": push_blob(client, name, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": push_blob(client, name, layer), "size": len(layer)} for layer in layers],
        **extra,
    }
    return json.dumps(document).encode()


def put_manifest(client, name: str, reference: str, data: bytes,
                 media_type: str = OCI_MANIFEST, status: int = 201):
    return client.put(f"/v2/{name}/manifests/{reference}", data, headers={"Content-Type": media_type},
                      status=status)


def signing_key(client, data, algorithm: str = "ES256") -> bytes | None:
    """The PEM key `client`'s app signs its tokens with (None before there is one): in the data directory `data`
    on one host, on the database every node shares with PostgreSQL metadata (`--metadata=postgresql`)."""
    path = data / "auth" / "token-key.pem"
    shared = client.app.registry.shared_state()
    if shared is None:
        return path.read_bytes() if path.exists() else None
    assert not path.exists(), "with shared metadata the key must not be made per node"
    stored = client.app.registry._metadata.get_state(f"secret:token-key-{algorithm}")
    return None if stored is None else stored.encode()
