"""Deterministic images pushed over the V2 API: known names, sizes, shared layers, several tags per digest,
a two-platform index and a referrer. `expected_*` helpers compute the numbers tests compare the screen with."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SBOM_TYPE = "application/vnd.example.sbom.v1+json"
SIGNATURE_TYPE = "application/vnd.example.signature.v1+json"

# name -> size: BASE is shared by every image of apps/web but arm64, and by apps/api.
LAYERS = {"base": 4096, "a1": 1024, "b1": 2048, "c1": 3072, "x1": 512, "y1": 768, "d1": 1536, "e1": 256,
          "sbom": 300}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_bytes(name: str) -> bytes:
    return random.Random(f"dockyard-tui-{name}").randbytes(LAYERS[name])


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Pushed:
    repository: str
    digest: str
    manifest_bytes: int
    blobs: dict[str, int]  # digest -> size (config and layers; an index: its children's)
    tags: list[str] = field(default_factory=list)
    children: list["Pushed"] = field(default_factory=list)

    @property
    def total_size(self) -> int:
        blobs = dict(self.blobs)
        manifests = self.manifest_bytes
        for child in self.children:
            blobs.update(child.blobs)
            manifests += child.manifest_bytes
        return manifests + sum(blobs.values())


class Seeder:
    def __init__(self, url: str, transport: httpx.BaseTransport | None = None, auth: httpx.Auth | None = None):
        self.http = httpx.Client(base_url=url, timeout=30, auth=auth,
                                 **({"transport": transport} if transport else {}))

    def close(self):
        self.http.close()

    def blob(self, repository: str, data: bytes) -> str:
        digest = digest_of(data)
        r = self.http.post(f"/v2/{repository}/blobs/uploads/")
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        r = self.http.put(location, content=data, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, f"blob upload: {r.status_code} {r.text}"
        return digest

    def manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        r = self.http.put(f"/v2/{repository}/manifests/{reference}", content=body,
                          headers={"Content-Type": media_type})
        assert r.status_code == 201, f"PUT manifest {repository}:{reference}: {r.status_code} {r.text}"
        return digest_of(body)

    def image(self, repository: str, layers: list[str], created: str, tags: list[str], *,
              arch: str = "amd64") -> Pushed:
        descs = []
        for name in layers:
            data = layer_bytes(name)
            descs.append({"mediaType": OCI_LAYER, "digest": self.blob(repository, data), "size": len(data)})
        config = canonical({
            "created": created, "architecture": arch, "os": "linux",
            "config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/bin"],
                       "Labels": {"org.opencontainers.image.title": repository}},
            "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]},
            "history": [{"created": created, "created_by": f"COPY {name} /"} for name in layers],
        })
        config_desc = {"mediaType": OCI_CONFIG, "digest": self.blob(repository, config), "size": len(config)}
        body = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": descs})
        digest = digest_of(body)
        for tag in tags or [digest]:
            self.manifest(repository, tag, body, OCI_MANIFEST)
        blobs = {config_desc["digest"]: config_desc["size"], **{d["digest"]: d["size"] for d in descs}}
        return Pushed(repository, digest, len(body), blobs, list(tags))

    def index(self, repository: str, children: list[tuple[Pushed, str]], tags: list[str]) -> Pushed:
        manifests = [{"mediaType": OCI_MANIFEST, "digest": child.digest, "size": child.manifest_bytes,
                      "platform": {"os": "linux", "architecture": arch}} for child, arch in children]
        body = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        digest = digest_of(body)
        for tag in tags:
            self.manifest(repository, tag, body, OCI_INDEX)
        return Pushed(repository, digest, len(body), {}, list(tags), [c for c, _ in children])

    def referrer(self, repository: str, subject: Pushed) -> Pushed:
        empty = self.blob(repository, b"{}")
        sbom = self.blob(repository, layer_bytes("sbom"))
        body = canonical({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SBOM_TYPE,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/spdx+json", "digest": sbom, "size": LAYERS["sbom"]}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.manifest_bytes},
        })
        digest = self.manifest(repository, digest_of(body), body, OCI_MANIFEST)
        return Pushed(repository, digest, len(body), {empty: 2, sbom: LAYERS["sbom"]})

    def signature(self, repository: str, subject: Pushed, payload: str) -> Pushed:
        """A signature artifact (as notation or cosign 2 push one): the empty config, one small layer, a subject."""
        empty = self.blob(repository, b"{}")
        data = f"signature of {subject.digest}: {payload}".encode()
        layer = self.blob(repository, data)
        body = canonical({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SIGNATURE_TYPE,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/jose+json", "digest": layer, "size": len(data)}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.manifest_bytes},
        })
        digest = self.manifest(repository, digest_of(body), body, OCI_MANIFEST)
        return Pushed(repository, digest, len(body), {empty: 2, layer: len(data)})


@dataclass
class Seed:
    a: Pushed
    b: Pushed
    c: Pushed
    amd64: Pushed
    arm64: Pushed
    multi: Pushed
    sbom: Pushed
    api: Pushed
    cli: Pushed

    @property
    def web(self) -> list[Pushed]:
        return [self.a, self.b, self.c, self.multi]


def seed(url: str, *, referrer: bool = True, transport: httpx.BaseTransport | None = None,
         auth: httpx.Auth | None = None) -> Seed:
    s = Seeder(url, transport, auth)
    try:
        web = "apps/web"
        a = s.image(web, ["base", "a1"], "2024-01-01T00:00:00Z", ["1.0"])
        b = s.image(web, ["base", "b1"], "2024-02-01T00:00:00Z", ["1.1", "stable"])
        c = s.image(web, ["base", "c1"], "2024-03-01T00:00:00Z", ["2.0", "latest"])
        amd64 = s.image(web, ["base", "x1"], "2024-04-01T00:00:00Z", [])
        arm64 = s.image(web, ["y1"], "2024-04-02T00:00:00Z", [], arch="arm64")
        multi = s.index(web, [(amd64, "amd64"), (arm64, "arm64")], ["multi"])
        sbom = s.referrer(web, c) if referrer else None
        api = s.image("apps/api", ["base", "d1"], "2024-01-15T00:00:00Z", ["1"])
        cli = s.image("tools/cli", ["e1"], "2023-12-01T00:00:00Z", ["0.1"])
        return Seed(a, b, c, amd64, arm64, multi, sbom, api, cli)
    finally:
        s.close()


def repositories(url: str, names: list[str], *, transport: httpx.BaseTransport | None = None,
                 auth: httpx.Auth | None = None) -> None:
    """The smallest image, tagged `latest`, in each of `names`: its config blob pushed once, monolithically (one
    POST), then mounted from there into each other repository (one POST, no data, no file written), and the
    manifest (one PUT). Pushing the blob into every repository instead writes and fsyncs a file each time: about
    three times slower, 15 s for 10,000 repositories in-process."""
    s = Seeder(url, transport, auth)
    try:
        config = canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
        digest = digest_of(config)
        body = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                          "config": {"mediaType": OCI_CONFIG, "digest": digest, "size": len(config)}})
        for i, name in enumerate(names):
            if i == 0:
                r = s.http.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=config,
                                headers={"Content-Type": "application/octet-stream"})
            else:
                r = s.http.post(f"/v2/{name}/blobs/uploads/", params={"mount": digest, "from": names[0]})
            assert r.status_code == 201, f"blob into {name}: {r.status_code} {r.text}"
            s.manifest(name, "latest", body, OCI_MANIFEST)
    finally:
        s.close()
