"""The seed's walkthrough with real curl: _catalog, tags/list and manifests of a repository with the tags
0.0.3, 0.0.4 and latest; then tag and catalog pagination."""

import json
import re
import urllib.parse

import pytest

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def parse_headers(raw: str) -> tuple[int, dict]:
    """Status and headers of the last response in a `curl -D` dump (lower-case names)."""
    block = raw.replace("\r\n", "\n").strip().split("\n\n")[-1]
    status_line, *lines = block.split("\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def next_link(headers: dict) -> str | None:
    match = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', headers.get("link", ""))
    return match.group(1) if match else None


@pytest.fixture
def seeded(registry, skopeo, repo, new_layout):
    """A repository like the seed's php72-base: tags 0.0.3, 0.0.4, and latest on the same image as 0.0.4."""
    name = f"{repo}/php72-base"
    layout = new_layout("src")
    images = {"0.0.3": layout.add_image(tag="0.0.3", layer_sizes=(24 * 1024,)),
              "0.0.4": layout.add_image(tag="0.0.4", layer_sizes=(24 * 1024,))}
    layout.tag("latest", images["0.0.4"].descriptor)
    images["latest"] = images["0.0.4"]
    for tag in images:
        skopeo.copy(layout.ref(tag), skopeo.docker_ref(name, tag), "--preserve-digests")
    return name, images, layout


def test_curl_walkthrough(registry, curl, seeded, workdir):
    name, images, layout = seeded
    base = registry.url

    catalog = json.loads(curl("-s", f"{base}/v2/_catalog").stdout)
    assert name in catalog["repositories"]
    assert catalog["repositories"] == sorted(catalog["repositories"])

    tags = json.loads(curl("-s", f"{base}/v2/{name}/tags/list").stdout)
    assert tags["name"] == name
    assert sorted(tags["tags"]) == ["0.0.3", "0.0.4", "latest"]

    header_file = workdir / "headers"
    for reference, image in [*images.items(), (images["0.0.3"].digest, images["0.0.3"])]:
        url = f"{base}/v2/{name}/manifests/{reference}"
        body = curl("-s", "-D", header_file, "-H", f"Accept: {OCI_MANIFEST}", url).stdout
        status, headers = parse_headers(header_file.read_text())
        assert status == 200, f"GET {url}: {status} {body[:300]!r}"
        assert body == image.manifest
        assert headers.get("docker-content-digest") == image.digest
        assert headers.get("content-type", "").split(";")[0] == OCI_MANIFEST
        manifest = json.loads(body)
        assert manifest["schemaVersion"] == 2
        assert manifest["config"]["digest"] == image.config_digest
        assert [layer["digest"] for layer in manifest["layers"]] == image.layer_digests

        head = curl("-s", "-I", "-H", f"Accept: {OCI_MANIFEST}", url).out
        status, headers = parse_headers(head)
        assert status == 200
        assert headers.get("docker-content-digest") == image.digest
        assert int(headers.get("content-length", -1)) == len(image.manifest)

    image = images["0.0.3"]
    config = curl("-s", "-L", f"{base}/v2/{name}/blobs/{image.config_digest}").stdout
    assert config == layout.blob(image.config_digest)

    missing = curl("-s", "-w", "\n%{http_code}", "-H", f"Accept: {OCI_MANIFEST}",
                   f"{base}/v2/{name}/manifests/0.0.5").out
    body, _, code = missing.rpartition("\n")
    assert code == "404"
    assert "MANIFEST_UNKNOWN" in [e["code"] for e in json.loads(body)["errors"]]

    # The catalog, one repository per page, following the Link header, is the whole catalog in order.
    pages, url = [], f"{base}/v2/_catalog?n=1"
    while url and len(pages) < 500:
        body = curl("-s", "-D", header_file, url).stdout
        status, headers = parse_headers(header_file.read_text())
        assert status == 200
        page = json.loads(body)["repositories"]
        assert len(page) <= 1
        pages += page
        link = next_link(headers)
        url = urllib.parse.urljoin(base, link) if link else None
    assert pages == catalog["repositories"]


@pytest.mark.reference_lacks("Distribution 2.8.2 ignores `n` on tags/list and does not sort tags")
def test_tag_pagination(registry, skopeo, repo, new_layout):
    layout = new_layout("src")
    image = layout.add_image(tag="seed", layer_sizes=(8 * 1024,))
    skopeo.copy(layout.ref("seed"), skopeo.docker_ref(repo, "seed"), "--preserve-digests")
    tags = ["v10", "A1", "v2", "b0", "v1", "0.9"]
    for tag in tags:
        r = registry.request("PUT", f"/v2/{repo}/manifests/{tag}", data=image.manifest,
                             headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201, f"PUT /v2/{repo}/manifests/{tag}: {r.status_code} {r.text}"
    expected = sorted([*tags, "seed"])

    assert registry.tags(repo) == expected

    collected, url = [], f"/v2/{repo}/tags/list?n=2"
    while url:
        r = registry.request("GET", url)
        assert r.status_code == 200, f"GET {url}: {r.status_code} {r.text}"
        page = r.json()["tags"]
        collected += page
        link = next_link({"link": r.headers.get("Link", "")})
        if link:
            assert len(page) == 2, f"GET {url}: a page before the last must hold n=2 tags, got {page}"
        url = urllib.parse.urlsplit(link)._replace(scheme="", netloc="").geturl() if link else None
        assert len(collected) <= len(expected), f"pagination does not end: {collected}"
    assert collected == expected

    r = registry.request("GET", f"/v2/{repo}/tags/list", params={"n": 3, "last": expected[1]})
    assert r.json()["tags"] == expected[2:5]
    r = registry.request("GET", f"/v2/{repo}/tags/list", params={"n": 0})
    assert r.status_code == 200
    assert r.json()["tags"] == []
    assert "Link" not in r.headers
