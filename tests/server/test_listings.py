"""tags/list and _catalog: lexical order, pagination with n and last, Link headers."""

import pytest

from helpers import image_manifest, put_manifest


@pytest.fixture
def tagged(client):
    data = image_manifest(client, "repo")
    tags = ["b", "a", "C", "latest", "v1.0", "v1.1", "_z", "0"]
    for tag in tags:
        put_manifest(client, "repo", tag, data)
    return sorted(tags)


def test_tags_are_sorted(client, tagged):
    resp = client.get("/v2/repo/tags/list")
    assert resp.json == {"name": "repo", "tags": tagged}
    assert "Link" not in resp.headers


def test_tags_pagination_walks_every_tag_once(client, tagged):
    seen, url = [], "/v2/repo/tags/list?n=3"
    while url:
        resp = client.get(url)
        assert len(resp.json["tags"]) <= 3
        seen += resp.json["tags"]
        link = resp.headers.get("Link")
        url = link[1:link.index(">")] if link else None
        if link:
            assert link.endswith('rel="next"')
    assert seen == tagged


def test_tags_n_is_exact(client, tagged):
    assert client.get("/v2/repo/tags/list?n=2").json["tags"] == tagged[:2]
    assert client.get(f"/v2/repo/tags/list?n=2&last={tagged[1]}").json["tags"] == tagged[2:4]
    assert client.get(f"/v2/repo/tags/list?last={tagged[-2]}").json["tags"] == tagged[-1:]


def test_tags_n_zero_is_empty_without_link(client, tagged):
    resp = client.get("/v2/repo/tags/list?n=0")
    assert resp.json["tags"] == [] and "Link" not in resp.headers


def test_tags_last_page_has_no_link(client, tagged):
    resp = client.get(f"/v2/repo/tags/list?n={len(tagged)}")
    assert resp.json["tags"] == tagged and "Link" not in resp.headers


@pytest.mark.parametrize("query", ["n=-1", "n=abc", "n=1.5"])
def test_tags_bad_n(client, tagged, query):
    resp = client.get(f"/v2/repo/tags/list?{query}", status=400)
    assert resp.json["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


def test_tags_bad_last(client, tagged):
    resp = client.get("/v2/repo/tags/list?last=.bad", status=400)
    assert resp.json["errors"][0]["code"] == "TAG_INVALID"


def test_tags_of_unknown_repository(client):
    resp = client.get("/v2/nowhere/tags/list", status=404)
    assert resp.json["errors"][0]["code"] == "NAME_UNKNOWN"


def test_tags_n_is_capped_by_page_size_max(tmp_path):
    import webtest

    from dockyard.server.app import create_app
    from dockyard.server.config import Config

    client = webtest.TestApp(create_app(Config(data=str(tmp_path), page_size_max=2)))
    data = image_manifest(client, "repo")
    for tag in "abcde":
        put_manifest(client, "repo", tag, data)
    resp = client.get("/v2/repo/tags/list?n=100")
    assert resp.json["tags"] == ["a", "b"] and 'last=b' in resp.headers["Link"]


def test_catalog_lists_repositories_with_manifests(client):
    for name in ["zeta", "alpha/one", "alpha", "mid/x/y"]:
        put_manifest(client, name, "v1", image_manifest(client, name))
    client.post("/v2/only-uploads/blobs/uploads/", status=202)
    assert client.get("/v2/_catalog").json == {"repositories": ["alpha", "alpha/one", "mid/x/y", "zeta"]}


def test_catalog_pagination(client):
    names = [f"repo{i:02d}" for i in range(7)]
    for name in names:
        put_manifest(client, name, "v1", image_manifest(client, name))
    resp = client.get("/v2/_catalog?n=3")
    assert resp.json["repositories"] == names[:3]
    assert resp.headers["Link"] == '<http://localhost/v2/_catalog?n=3&last=repo02>; rel="next"'
    resp = client.get("/v2/_catalog?n=3&last=repo02")
    assert resp.json["repositories"] == names[3:6]
    resp = client.get("/v2/_catalog?n=3&last=repo05")
    assert resp.json["repositories"] == names[6:] and "Link" not in resp.headers
    assert client.get("/v2/_catalog?n=0").json["repositories"] == []


def test_empty_repository_after_deletes_is_not_in_catalog(client):
    data = image_manifest(client, "gone")
    put_manifest(client, "gone", "v1", data)
    from helpers import digest_of
    client.delete(f"/v2/gone/manifests/{digest_of(data)}", status=202)
    assert client.get("/v2/_catalog").json["repositories"] == []
