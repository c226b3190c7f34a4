"""podman (root, vfs storage of its own) pulls an image, pushes it under a new name and pulls that back."""

import gzip
import hashlib
import json

import pytest

pytestmark = pytest.mark.e2e


def uncompressed_digest(blob: bytes, media_type: str) -> str:
    data = gzip.decompress(blob) if media_type.endswith("gzip") else blob
    assert media_type.endswith(("gzip", ".tar")), f"unexpected layer media type {media_type}"
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_podman_pull_push_pull(registry, podman, skopeo_image, repo, workdir):
    source, image = skopeo_image, skopeo_image.image
    source_name = f"{registry.host}/{source.repo}:{source.tag}"
    target_name = f"{registry.host}/{repo}:1"

    podman("pull", "--tls-verify=false", source_name)
    pulled = json.loads(podman("image", "inspect", source_name).out)[0]
    assert "sha256:" + pulled["Id"] == image.config_digest
    assert pulled["Digest"] == image.digest

    podman("tag", source_name, target_name)
    digest_file = workdir / "digest"
    podman("push", "--tls-verify=false", "--digestfile", digest_file, target_name)
    pushed_digest = digest_file.read_text().strip()

    head = registry.get_manifest(repo, "1", method="HEAD")
    assert head.status_code == 200
    assert head.headers.get("Docker-Content-Digest") == pushed_digest
    manifest_bytes = registry.manifest_bytes(repo, "1")
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == pushed_digest
    manifest = json.loads(manifest_bytes)
    assert manifest["config"]["digest"] == image.config_digest
    assert registry.blob(repo, image.config_digest) == source.layout.blob(image.config_digest)
    assert [uncompressed_digest(registry.blob(repo, layer["digest"]), layer["mediaType"])
            for layer in manifest["layers"]] == image.diff_ids

    podman("rmi", source_name, target_name)
    assert podman("image", "exists", target_name, check=False).returncode == 1

    podman("pull", "--tls-verify=false", target_name)
    again = json.loads(podman("image", "inspect", target_name).out)[0]
    assert "sha256:" + again["Id"] == image.config_digest
    assert again["Digest"] == pushed_digest

    by_digest = f"{registry.host}/{repo}@{pushed_digest}"
    podman("rmi", target_name)
    podman("pull", "--tls-verify=false", by_digest)
    assert "sha256:" + json.loads(podman("image", "inspect", by_digest).out)[0]["Id"] == image.config_digest
    podman("rmi", by_digest)
