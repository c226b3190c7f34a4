"""oras (the OCI artifact client) pushes artifacts whose `subject` is an image, pulls them back, and the
referrers API lists them with their artifact type and annotations."""

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
SBOM_TYPE = "application/vnd.dockyard.e2e.sbom.v1+json"
SIGNATURE_CONFIG_TYPE = "application/vnd.dockyard.e2e.signature.config.v1+json"


@dataclass
class Artifact:
    tag: str
    manifest: bytes
    digest: str
    artifact_type: str  # what the referrers API must report for it
    annotations: dict
    files: dict  # file name -> content
    put_headers: Mapping[str, str]  # headers of the manifest PUT response (case-insensitive)


@pytest.fixture(scope="module")
def artifacts(registry, oras_registry, skopeo_image):
    """Two artifacts referring to the session's skopeo image: an SBOM with an explicit artifactType (uploaded
    in chunks), and a signature whose artifact type is only its config's media type."""
    import oras.oci

    image = skopeo_image.image
    subject = oras.oci.Subject(mediaType=OCI_MANIFEST, digest=image.digest, size=len(image.manifest))

    class ArtifactClient(oras_registry):
        """oras-py has no artifactType option: add it to the manifest it is about to upload."""

        artifact_type = None

        def upload_manifest(self, manifest, container):
            if self.artifact_type:
                manifest["artifactType"] = self.artifact_type
            return super().upload_manifest(manifest, container)

    workdir = Path(tempfile.mkdtemp(prefix="dy-e2e-oras-"))

    def push(tag, files, *, config, artifact_type=None, annotations, chunked=False) -> Artifact:
        paths = []
        for name, (data, media_type) in files.items():
            (workdir / name).write_bytes(data)
            paths.append(f"{workdir / name}:{media_type}")
        client = ArtifactClient(hostname=registry.host, insecure=True)
        client.artifact_type = artifact_type
        try:
            response = client.push(
                target=f"{registry.host}/{skopeo_image.repo}:{tag}", files=paths, disable_path_validation=True,
                manifest_config=config, manifest_annotations=annotations, subject=subject,
                do_chunked=chunked, chunk_size=16 * 1024, quiet=True,
            )
        finally:
            client.session.close()
        assert response.status_code == 201, f"manifest PUT: {response.status_code} {response.text}"
        manifest = registry.manifest_bytes(skopeo_image.repo, tag)
        return Artifact(tag, manifest, "sha256:" + hashlib.sha256(manifest).hexdigest(),
                        artifact_type or json.loads(manifest)["config"]["mediaType"], annotations,
                        {name: data for name, (data, _) in files.items()}, response.headers)

    try:
        (workdir / "empty.json").write_text("{}")
        (workdir / "signature-config.json").write_text(json.dumps({"keyid": uuid.uuid4().hex}))
        sbom_document = json.dumps({"spdxVersion": "SPDX-2.3", "nonce": os.urandom(20000).hex()}).encode()
        sbom = push(
            "sbom", {"sbom.spdx.json": (sbom_document, "application/spdx+json")},
            config=f"{workdir / 'empty.json'}:{EMPTY_CONFIG}", artifact_type=SBOM_TYPE, chunked=True,
            annotations={"org.opencontainers.image.created": "2024-01-01T14:42:55Z", "org.example.sbom.format": "json"},
        )
        signature = push(
            "signature", {"signature.bin": (os.urandom(512), "application/vnd.dockyard.e2e.signature")},
            config=f"{workdir / 'signature-config.json'}:{SIGNATURE_CONFIG_TYPE}",
            annotations={"org.opencontainers.image.created": "2024-01-02T07:21:33Z",
                         "org.example.signature.fingerprint": uuid.uuid4().hex},
        )
        yield {"subject": image, "repo": skopeo_image.repo, "sbom": sbom, "signature": signature}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_oras_artifacts_with_subject_round_trip(registry, oras_registry, artifacts, workdir):
    image = artifacts["subject"]
    for artifact in (artifacts["sbom"], artifacts["signature"]):
        manifest = json.loads(artifact.manifest)
        assert manifest["subject"] == {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest)}
        assert manifest["annotations"] == artifact.annotations
        assert registry.manifest_bytes(artifacts["repo"], artifact.digest) == artifact.manifest

        client = oras_registry(hostname=registry.host, insecure=True)
        try:
            pulled = client.pull(target=f"{registry.host}/{artifacts['repo']}:{artifact.tag}",
                                 outdir=str(workdir / artifact.tag))
        finally:
            client.session.close()
        assert {Path(p).name: Path(p).read_bytes() for p in pulled} == artifact.files

    assert json.loads(artifacts["sbom"].manifest)["artifactType"] == SBOM_TYPE
    assert "artifactType" not in json.loads(artifacts["signature"].manifest)


def referrer_descriptor(artifact: Artifact) -> dict:
    return {"mediaType": OCI_MANIFEST, "digest": artifact.digest, "size": len(artifact.manifest),
            "artifactType": artifact.artifact_type, "annotations": artifact.annotations}


@pytest.mark.reference_lacks("Distribution 2.8.2 has no referrers API")
def test_referrers_lists_artifacts_of_a_subject(registry, artifacts):
    repo, subject = artifacts["repo"], artifacts["subject"].digest
    sbom, signature = artifacts["sbom"], artifacts["signature"]

    for artifact in (sbom, signature):
        assert artifact.put_headers.get("OCI-Subject") == subject, \
            f"manifest PUT of {artifact.tag} answered without OCI-Subject: {artifact.put_headers}"

    r = registry.request("GET", f"/v2/{repo}/referrers/{subject}")
    assert r.status_code == 200, f"GET /v2/{repo}/referrers/{subject}: {r.status_code} {r.text}"
    assert r.headers.get("Content-Type", "").split(";")[0] == OCI_INDEX
    index = r.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert set(by_digest) == {sbom.digest, signature.digest}
    for artifact in (sbom, signature):
        assert by_digest[artifact.digest] == referrer_descriptor(artifact)

    r = registry.request("GET", f"/v2/{repo}/referrers/{subject}", params={"artifactType": SBOM_TYPE})
    assert r.status_code == 200
    assert r.headers.get("OCI-Filters-Applied") == "artifactType"
    assert r.json()["manifests"] == [referrer_descriptor(sbom)]

    r = registry.request("GET", f"/v2/{repo}/referrers/{subject}",
                         params={"artifactType": "application/vnd.dockyard.e2e.nothing"})
    assert r.status_code == 200
    assert r.json()["manifests"] == []

    # A digest nothing refers to: an empty index, never a 404.
    r = registry.request("GET", f"/v2/{repo}/referrers/{sbom.digest}")
    assert r.status_code == 200, f"GET /v2/{repo}/referrers/{sbom.digest}: {r.status_code} {r.text}"
    assert r.json()["manifests"] == []
