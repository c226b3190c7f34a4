"""skopeo against a running registry: an OCI layout pushed and pulled back byte for byte, a multi-arch index,
a copy between repositories by cross-repository mount, and deletes."""

import json
import re

import pytest

pytestmark = pytest.mark.e2e

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def assert_layout_holds(layout, image, source):
    """Every blob of `image` in `layout` is byte-identical to the one in `source`."""
    assert layout.blob(image.digest) == image.manifest
    for digest in image.blob_digests:
        assert layout.blob(digest) == source.blob(digest), f"blob {digest} differs after the round trip"


def test_skopeo_push_then_pull_is_byte_identical(registry, skopeo, skopeo_image, new_layout):
    pushed, image = skopeo_image, skopeo_image.image

    head = registry.get_manifest(pushed.repo, pushed.tag, method="HEAD")
    assert head.status_code == 200
    assert head.headers.get("Docker-Content-Digest") == image.digest
    assert registry.manifest_bytes(pushed.repo, pushed.tag) == image.manifest
    assert registry.manifest_bytes(pushed.repo, image.digest) == image.manifest
    for digest in image.blob_digests:
        assert registry.blob(pushed.repo, digest) == pushed.layout.blob(digest)
    assert pushed.tag in registry.tags(pushed.repo)

    out = new_layout("pulled")
    skopeo.copy(skopeo.docker_ref(pushed.repo, pushed.tag), out.ref("1"), "--preserve-digests")
    assert out.resolve("1")["digest"] == image.digest
    assert_layout_holds(out, image, pushed.layout)
    assert out.blob_names() == {image.digest, *image.blob_digests}

    raw_config = skopeo("inspect", "--tls-verify=false", "--config", "--raw",
                        skopeo.docker_ref(pushed.repo, pushed.tag)).stdout
    assert raw_config == pushed.layout.blob(image.config_digest)


def test_multi_arch_index_round_trip(registry, skopeo, repo, new_layout):
    src = new_layout("src")
    amd64 = src.add_image(arch="amd64", layer_sizes=(64 * 1024, 16 * 1024))
    arm64 = src.add_image(arch="arm64", layer_sizes=(48 * 1024, 8 * 1024))
    index, index_digest = src.add_index([amd64, arm64], tag="1")

    skopeo.copy(src.ref("1"), skopeo.docker_ref(repo, "1"), "--all", "--preserve-digests")

    raw = skopeo("inspect", "--tls-verify=false", "--raw", skopeo.docker_ref(repo, "1")).stdout
    assert raw == index
    r = registry.get_manifest(repo, "1")
    assert r.status_code == 200
    assert r.headers.get("Docker-Content-Digest") == index_digest
    assert r.headers.get("Content-Type", "").split(";")[0] == OCI_INDEX

    for arch, image in (("amd64", amd64), ("arm64", arm64)):
        # The client picks the platform's manifest from the index the registry served.
        info = json.loads(skopeo("--override-arch", arch, "--override-os", "linux", "inspect", "--tls-verify=false",
                                 skopeo.docker_ref(repo, "1")).out)
        assert info["Digest"] == index_digest
        assert info["Architecture"] == arch
        assert info["Layers"] == image.layer_digests

        out = new_layout(f"pulled-{arch}")
        skopeo.copy(skopeo.docker_ref(repo, image.digest), out.ref(arch), "--preserve-digests")
        assert out.resolve(arch)["digest"] == image.digest
        assert_layout_holds(out, image, src)

    whole = new_layout("pulled-all")
    skopeo.copy(skopeo.docker_ref(repo, "1"), whole.ref("1"), "--all", "--preserve-digests")
    assert whole.resolve("1")["digest"] == index_digest
    assert whole.blob(index_digest) == index
    for image in (amd64, arm64):
        assert_layout_holds(whole, image, src)


def test_copy_between_repositories_uses_cross_repository_mount(registry, skopeo, skopeo_image, repo):
    source, image = skopeo_image, skopeo_image.image
    result = skopeo.copy(skopeo.docker_ref(source.repo, source.tag), skopeo.docker_ref(repo, "1"),
                         "--preserve-digests", debug=True)
    log = result.err

    # skopeo knows from its blob-info cache that the layers are in the source repository, so it asks the
    # registry to mount them; "... mount OK" is what it logs on a 201 reply.
    for layer in image.layer_digests:
        mount = rf'POST http://{re.escape(registry.host)}/v2/{re.escape(repo)}/blobs/uploads/\?[^"\s]*mount=sha256%3A{layer[7:]}'
        assert re.search(mount, log), f"skopeo did not ask to mount {layer}:\n{log[-5000:]}"
    mounted = log.count("... mount OK")
    assert mounted == len(image.layer_digests), \
        f"{mounted} mounts answered 201, expected {len(image.layer_digests)}:\n{log[-5000:]}"
    uploaded = re.findall(r"PUT http://\S+/blobs/uploads/\S*digest=(sha256%3A[0-9a-f]{64})", log)
    assert set(uploaded) <= {image.config_digest.replace(":", "%3A")}, f"layers were uploaded, not mounted: {uploaded}"

    assert registry.manifest_bytes(repo, "1") == image.manifest
    for digest in image.blob_digests:
        assert registry.blob(repo, digest) == source.layout.blob(digest)


def test_delete_manifest_by_digest(registry, skopeo, repo, new_layout):
    src = new_layout("src")
    keep = src.add_image(tag="keep", layer_sizes=(32 * 1024,))
    gone = src.add_image(tag="gone", layer_sizes=(32 * 1024,))
    for tag in ("keep", "gone"):
        skopeo.copy(src.ref(tag), skopeo.docker_ref(repo, tag), "--preserve-digests")
    assert registry.manifest_bytes(repo, gone.digest) == gone.manifest

    skopeo("delete", "--tls-verify=false", skopeo.docker_ref(repo, gone.digest))

    for reference in (gone.digest, "gone"):
        r = registry.get_manifest(repo, reference)
        assert r.status_code == 404, f"GET /v2/{repo}/manifests/{reference} after delete: {r.status_code}"
        assert "MANIFEST_UNKNOWN" in [e.get("code") for e in r.json().get("errors", [])], r.text
    assert "gone" not in registry.tags(repo)
    assert registry.manifest_bytes(repo, "keep") == keep.manifest

    # Deleting it again is a 404, not a success.
    again = registry.request("DELETE", f"/v2/{repo}/manifests/{gone.digest}")
    assert again.status_code == 404

    # A blob of the deleted image can be deleted from the repository too.
    layer = gone.layer_digests[0]
    r = registry.request("DELETE", f"/v2/{repo}/blobs/{layer}")
    assert r.status_code == 202, r.text
    assert registry.request("HEAD", f"/v2/{repo}/blobs/{layer}").status_code == 404


@pytest.mark.reference_lacks("Distribution 2.8.2 cannot delete tags: DELETE /v2/<name>/manifests/<tag> is a 400")
def test_delete_tag_keeps_manifest_and_other_tags(registry, skopeo, repo, new_layout):
    src = new_layout("src")
    image = src.add_image(tag="a1", layer_sizes=(32 * 1024,))
    skopeo.copy(src.ref("a1"), skopeo.docker_ref(repo, "a1"), "--preserve-digests")
    skopeo.copy(skopeo.docker_ref(repo, "a1"), skopeo.docker_ref(repo, "a2"), "--preserve-digests")
    assert sorted(registry.tags(repo)) == ["a1", "a2"]

    r = registry.request("DELETE", f"/v2/{repo}/manifests/a1")
    assert r.status_code == 202, f"DELETE /v2/{repo}/manifests/a1: {r.status_code} {r.text}"

    assert registry.tags(repo) == ["a2"]
    assert registry.get_manifest(repo, "a1").status_code == 404
    assert registry.manifest_bytes(repo, "a2") == image.manifest
    assert registry.manifest_bytes(repo, image.digest) == image.manifest
    assert registry.get_manifest(repo, "a2", method="HEAD").headers.get("Docker-Content-Digest") == image.digest
