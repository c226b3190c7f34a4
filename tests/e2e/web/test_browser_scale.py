"""Issue 15: 10,000 repositories. The repositories page shows its first screen without fetching all of them (the
test counts the requests the server answered), pages on with `last`, and a search reads the list a large page at a
time only until a screen of matches is found."""

from __future__ import annotations

import hashlib
import io
import json
from urllib.parse import parse_qs, urlsplit

import pytest

pytestmark = pytest.mark.e2e

COUNT = 10_000
PAGE = 50


def seed(data):
    """10,000 repositories of one small image each, written through the registry's own domain layer before the
    server starts (pushing them over HTTP would only make the test slow; what is measured is the UI)."""
    from dockyard.server.app import build_registry
    from dockyard.server.bodies import StreamSource
    from dockyard.server.config import Config
    from dockyard.server.registry import Body

    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest,
                                      "size": len(config)}, "layers": []}).encode()
    registry = build_registry(Config(data=str(data)))
    try:
        registry.monolithic_upload("scale/base", digest, Body(StreamSource(io.BytesIO(config), len(config)),
                                                                 len(config)))
        for i in range(COUNT):  # scale/base holds only the blob: it is no repository of the catalog
            name = f"scale/repo-{i:05d}"
            assert registry.mount(name, "scale/base", digest)
            registry.put_manifest(name, "1", manifest, "application/vnd.oci.image.manifest.v1+json")
    finally:
        registry.close()


@pytest.fixture(scope="module")
def server(make_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("scale") / "data"
    seed(data)
    return make_server("htpasswd", data=data)


@pytest.fixture(autouse=True)
def nothing_went_wrong(browser, server):
    yield
    browser.assert_clean_console()
    assert not server.errors_5xx(), server.errors_5xx()


def listings(entries) -> list[dict]:
    """The listing requests among `entries`, with their query parameters."""
    found = []
    for entry in entries:
        url = urlsplit(entry["path"])
        if url.path in ("/v2/_catalog", "/v2/_dockyard/repositories"):
            found.append({"path": url.path, **{k: v[0] for k, v in parse_qs(url.query).items()}})
    return found


def sign_in_and_count(browser, server, user: str, web) -> list[dict]:
    """Load the UI, sign in, and return what the server answered from the sign-in to the first full screen."""
    browser.load(server.ui, "repositories")
    browser.visit("#/sign-in", "sign-in")
    browser.wait("#username").send_keys(user)
    browser.find("#password").send_keys(web.PASSWORDS[user])
    mark = server.mark()
    browser.click("#sign-in-submit")
    browser.wait("#signed-in-as", text=user)
    browser.view("repositories")
    browser.until(lambda: len(browser.finds("#repositories tbody tr")) == PAGE
                  and "…" not in browser.text("#repositories"), "the first screen did not fill")
    return server.since(mark)


def test_the_first_screen_of_10000_repositories_as_an_admin(browser, server, web):
    seen = sign_in_and_count(browser, server, "admin", web)
    browser.shot("admin-first-screen")
    assert listings(seen) == [{"path": "/v2/_dockyard/repositories", "n": str(PAGE)}], listings(seen)
    assert len(seen) <= 10, [e["path"] for e in seen]  # the token, the page: nothing per repository
    names = browser.texts("#repositories td.name")
    assert names[0] == "scale/repo-00000" and names[-1] == "scale/repo-00049" and len(names) == PAGE

    mark = server.mark()
    browser.click("#next-page")
    browser.view("repositories")
    browser.wait("#repositories td.name", text="scale/repo-00050")
    assert listings(server.since(mark)) == [{"path": "/v2/_dockyard/repositories", "n": str(PAGE),
                                             "last": "scale/repo-00049"}]
    browser.shot("admin-second-screen")


def test_the_first_screen_of_10000_repositories_as_a_reader(browser, server, web):
    seen = sign_in_and_count(browser, server, "bob", web)
    browser.shot("reader-first-screen")
    assert listings(seen) == [{"path": "/v2/_catalog", "n": str(PAGE)}], listings(seen)
    tag_lists = [e for e in seen if e["path"].endswith("/tags/list")]
    assert len(tag_lists) == PAGE  # a tag count for each repository on screen, and for no other
    tokens = [e for e in seen if e["path"].startswith("/auth/token")]
    assert len(tokens) <= 3  # one token for every repository on screen, not one each
    assert len(seen) <= PAGE + 10 and len(seen) < COUNT / 100
    assert browser.texts("#repositories tbody tr td.num")[:2] == ["1", "1"]


def test_a_search_reads_only_until_a_screen_of_matches(browser, server, web):
    sign_in_and_count(browser, server, "bob", web)
    mark = server.mark()
    browser.find("#search").send_keys("repo-0999")
    browser.wait("#scanned")
    browser.wait("#repositories td.name", text="scale/repo-09999")
    assert browser.texts("#repositories td.name") == [f"scale/repo-0999{i}" for i in range(10)]
    read = listings(server.since(mark))
    assert read and all(entry["n"] == "1000" for entry in read) and len(read) <= COUNT // 1000 + 1
    browser.shot("reader-search")
    # A frequent match fills a screen early: the list is read no further.
    mark = server.mark()
    browser.find("#search").clear()
    browser.find("#search").send_keys("repo-0")
    browser.wait("#scanned", text="Searched 1,000 repositories")
    assert len(browser.finds("#repositories tbody tr")) == PAGE and browser.finds("#next-page")
    assert len(listings(server.since(mark))) == 1
