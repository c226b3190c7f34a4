"""Issue 16: the web UI's repository list says which repositories are pull-through cached, and from where, in
real headless Chromium against a `dockyard serve` caching another one."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def test_the_repository_list_says_which_repositories_are_cached_and_from_where(browser, e2e, start_dockyard,
                                                                               workdir):
    upstream = start_dockyard()
    cache = start_dockyard(config=f'[[upstreams]]\nname = "hub"\nurl = {json.dumps(upstream.url)}\n'
                                  'prefix = "hub/"\n')
    skopeo = e2e.Skopeo(workdir / "skopeo", cache)
    layout = e2e.OCILayout(workdir / "src")
    layout.add_image(tag="1")
    skopeo.copy(layout.ref("1"), f"docker://{upstream.host}/e2e/app:1")
    skopeo.copy(f"docker://{cache.host}/hub/e2e/app:1", f"oci:{workdir / 'pulled'}:1")  # through the cache
    skopeo.copy(layout.ref("1"), f"docker://{cache.host}/team/own:1")  # the cache's own push

    browser.load(f"{cache.url}/ui/", "repositories")
    browser.wait("#repositories td.name", text="cached from")
    names = browser.texts("#repositories tbody td.name")
    assert names == [f"hub/e2e/app cached from {upstream.url}", "team/own"]
    assert browser.find("#repositories .upstream").get_attribute("title") == f"a read-only cache of {upstream.url}"
    browser.shot("cached repositories")
    browser.assert_clean_console()
