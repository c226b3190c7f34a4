"""Shared set-up for the auth tests: an htpasswd file, seeded repositories, and clients with credentials.

Imported by the test modules of this folder (pytest puts this folder on sys.path in its default import mode).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import webtest

from dockyard.middleware.htpasswd import hash_password, write_users
from dockyard.server.app import create_app
from dockyard.server.config import Config

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PASSWORDS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
REPOSITORIES = ("team/app", "public/lib", "secret/vault")


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def auth_options(tmp_path: Path, *, token: bool = False, **extra) -> dict:
    htpasswd = tmp_path / "htpasswd"
    if not htpasswd.exists():
        write_users(htpasswd, {user: hash_password(pw, rounds=4) for user, pw in PASSWORDS.items()})
    options = {
        "htpasswd": str(htpasswd),
        "admins": ["admin"],
        "groups": {"readers": ["bob"]},
        "anonymous_pull": ["public/*"],
        "rules": [
            {"users": ["alice"], "repositories": ["team/*"], "actions": ["pull", "push", "delete"]},
            {"groups": ["readers"], "repositories": ["team/*"], "actions": ["pull"]},
            {"users": ["*"], "repositories": ["scratch/*"], "actions": ["pull", "push"]},
        ],
    }
    if token:
        options["token"] = {"service": "dockyard-test", "issuer": "dockyard-test"}
    options.update(extra)
    return options


def make_config(tmp_path: Path, *middleware: dict) -> Config:
    return Config(data=str(tmp_path / "data"), middleware=tuple(middleware))


def plain_client(tmp_path: Path) -> webtest.TestApp:
    """A client of the same data directory with no middleware: to seed and to inspect."""
    return webtest.TestApp(create_app(make_config(tmp_path)))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def seed(client: webtest.TestApp, repository: str) -> dict:
    """Push one image (config + one layer of content of its own) tagged v1; returns its parts."""
    blobs = [json.dumps({"os": "linux", "repository": repository}).encode(), f"layer of {repository}".encode()]
    for blob in blobs:
        client.post(f"/v2/{repository}/blobs/uploads/?digest={digest_of(blob)}", blob,
                    headers={"Content-Type": "application/octet-stream"}, status=201)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(blobs[0]),
                   "size": len(blobs[0])},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest_of(blobs[1]),
                    "size": len(blobs[1])}],
    }).encode()
    client.put(f"/v2/{repository}/manifests/v1", manifest, headers={"Content-Type": OCI_MANIFEST}, status=201)
    return {"manifest": manifest, "digest": digest_of(manifest), "config": digest_of(blobs[0]),
            "layer": digest_of(blobs[1])}


def snapshot(client: webtest.TestApp, repositories, digests) -> dict:
    """Everything a request could have changed: tags, and which manifests and blobs each repository holds."""
    state = {}
    for repository in repositories:
        tags = client.get(f"/v2/{repository}/tags/list", status="*")
        state[repository] = {
            # An upload session (the fallback of a refused mount) may create an empty repository: no tags either way.
            "tags": (tags.json.get("tags") or []) if tags.status_int == 200 else [],
            "manifests": [client.head(f"/v2/{repository}/manifests/{d}", status="*",
                                      headers={"Accept": OCI_MANIFEST}).status_int for d in digests],
            "blobs": [client.head(f"/v2/{repository}/blobs/{d}", status="*").status_int for d in digests],
        }
    state["catalog"] = client.get("/v2/_catalog").json["repositories"]
    return state
