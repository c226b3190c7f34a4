"""docker (a real dockerd of the session's own) pushes images it built and pulls them back unchanged; a manifest list."""

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import uuid

import pytest

pytestmark = pytest.mark.e2e

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def read_file_from_container(docker, container: str, path: str) -> bytes:
    stream = docker("cp", f"{container}:{path}", "-").stdout  # a tar stream of that one file
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        member = tar.next()
        return tar.extractfile(member).read()


def build_image(docker, context, name: str, layers: dict) -> tuple[str, list]:
    """Build FROM scratch with one COPY (one layer) per file of fresh content; returns (image ID, diff IDs)."""
    context.mkdir()
    lines = ["FROM scratch"]
    for path, data in layers.items():
        (context / path.replace("/", "_")).write_bytes(data)
        lines.append(f"COPY {path.replace('/', '_')} {path}")
    lines.append(f"LABEL dockyard.e2e.nonce={uuid.uuid4().hex}")
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    docker("build", "-q", "-t", name, context)
    built = json.loads(docker("image", "inspect", name).out)[0]
    assert len(built["RootFS"]["Layers"]) == len(layers)
    return built["Id"], built["RootFS"]["Layers"]


def push(docker, name: str) -> tuple[str, int]:
    """docker push; returns the manifest digest and size it reports."""
    out = docker("push", name).out
    match = re.search(r": digest: (sha256:[0-9a-f]{64}) size: (\d+)", out)
    assert match, f"no digest in docker push output:\n{out}"
    return match.group(1), int(match.group(2))


def test_docker_push_then_pull_is_identical(registry, docker, repo, workdir):
    files = {  # one layer each, fresh content so every layer is really uploaded
        "/data/a.bin": os.urandom(128 * 1024),
        "/data/b.bin": os.urandom(64 * 1024),
        "/etc/e2e.txt": f"dockyard e2e {uuid.uuid4()}\n".encode(),
    }
    name = f"{registry.host}/{repo}:1"
    image_id, diff_ids = build_image(docker, workdir / "context", name, files)
    pushed_digest, pushed_size = push(docker, name)

    # What the registry holds: docker's schema 2 manifest, the image's config, and layers whose uncompressed
    # content is exactly the image's layers.
    head = registry.get_manifest(repo, "1", method="HEAD")
    assert head.status_code == 200
    assert head.headers.get("Docker-Content-Digest") == pushed_digest
    manifest_bytes = registry.manifest_bytes(repo, "1")
    assert len(manifest_bytes) == pushed_size
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == pushed_digest
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["digest"] == image_id
    assert [
        "sha256:" + hashlib.sha256(gzip.decompress(registry.blob(repo, layer["digest"]))).hexdigest()
        for layer in manifest["layers"]
    ] == diff_ids

    docker("rmi", name)
    assert docker("image", "inspect", name, check=False).returncode != 0, "the image is still there after rmi"

    pull = docker("pull", name)
    assert pushed_digest in pull.out
    pulled = json.loads(docker("image", "inspect", name).out)[0]
    assert pulled["Id"] == image_id
    assert f"{registry.host}/{repo}@{pushed_digest}" in pulled["RepoDigests"]

    container = docker("create", name, "/e2e-never-started").out.strip()
    try:
        for path, data in files.items():
            assert read_file_from_container(docker, container, path) == data, f"{path} differs"
    finally:
        docker("rm", container)

    # The same image by digest.
    docker("rmi", name)
    docker("pull", f"{registry.host}/{repo}@{pushed_digest}")
    assert json.loads(docker("image", "inspect", f"{registry.host}/{repo}@{pushed_digest}").out)[0]["Id"] == image_id


def test_docker_manifest_list(registry, docker, repo, workdir):
    """`docker manifest push` of a list whose images live in other repositories: it mounts their blobs and
    pushes their manifests by digest into the list's repository."""
    images = {}
    for arch in ("amd64", "arm64"):
        name = f"{registry.host}/{repo}/{arch}:1"
        image_id, _ = build_image(docker, workdir / arch, name, {f"/{arch}.bin": os.urandom(32 * 1024)})
        digest, size = push(docker, name)
        images[arch] = {"name": name, "id": image_id, "digest": digest, "size": size,
                        "manifest": registry.manifest_bytes(f"{repo}/{arch}", digest)}

    list_name = f"{registry.host}/{repo}:multi"
    docker("manifest", "create", "--insecure", list_name, images["amd64"]["name"], images["arm64"]["name"])
    docker("manifest", "annotate", "--os", "linux", "--arch", "arm64", list_name, images["arm64"]["name"])
    out = docker("manifest", "push", "--insecure", "--purge", list_name).out
    match = re.fullmatch(r"sha256:[0-9a-f]{64}", out.strip().splitlines()[-1])  # the list's digest comes last
    assert match, f"no digest in docker manifest push output:\n{out}"
    list_digest = match.group(0)

    r = registry.get_manifest(repo, "multi")
    assert r.status_code == 200
    assert r.headers.get("Docker-Content-Digest") == list_digest
    assert "sha256:" + hashlib.sha256(r.content).hexdigest() == list_digest
    listed = json.loads(r.content)
    assert listed["mediaType"] == DOCKER_MANIFEST_LIST
    assert [(m["digest"], m["size"], m["platform"]["architecture"]) for m in listed["manifests"]] == [
        (images[arch]["digest"], images[arch]["size"], arch) for arch in ("amd64", "arm64")]
    for arch, image in images.items():
        assert registry.manifest_bytes(repo, image["digest"]) == image["manifest"]
        manifest = json.loads(image["manifest"])
        for descriptor in (manifest["config"], *manifest["layers"]):
            assert registry.blob(repo, descriptor["digest"]) == registry.blob(f"{repo}/{arch}", descriptor["digest"])

    for image in images.values():
        docker("rmi", image["name"])
    docker("pull", list_name)
    assert json.loads(docker("image", "inspect", list_name).out)[0]["Id"] == images["amd64"]["id"]
