"""Issue 16: registry-tui shows which repositories are pull-through cached, and from where (the admin API's
`upstream` field), against the real app in this process caching a real upstream served over HTTP."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import webtest

from dockyard.server.app import create_app
from dockyard.server.config import Config
from dockyard.server.upstream import Upstream
from dockyard.tui.client import RegistryClient
from dockyard.tui.screens.repositories import RepositoriesScreen
from helpers import image_manifest, put_manifest
from upstreams import ServedApp


def test_cached_repositories_say_where_they_come_from(tmp_path):
    upstream_app = create_app(Config(data=str(tmp_path / "up"), database=f"sqlite:///{tmp_path / 'up.db'}"))
    served = ServedApp(upstream_app)
    cache_app = create_app(Config(data=str(tmp_path / "cache"), database=f"sqlite:///{tmp_path / 'cache.db'}",
                                  upstreams=(Upstream("hub", served.url, prefix="hub/", library=True),)))
    client = RegistryClient("http://cache.test", transport=httpx.WSGITransport(app=cache_app))
    try:
        put_manifest(webtest.TestApp(upstream_app), "library/alpine", "3",
                     image_manifest(webtest.TestApp(upstream_app), "library/alpine"))
        cache = webtest.TestApp(cache_app)
        cache.get("/v2/hub/alpine/manifests/3")  # pulled through: the cache now holds it
        own = image_manifest(cache, "team/app")
        put_manifest(cache, "team/app", "1", own)
        stats = {r.name: r for page in client.repositories() for r in page}
        assert stats["hub/alpine"].upstream == served.url and stats["team/app"].upstream == ""
        screen = SimpleNamespace(stats=stats)
        assert RepositoriesScreen.cells(screen, "hub/alpine")[0] == f"hub/alpine  ← {served.url}"
        assert RepositoriesScreen.cells(screen, "team/app")[0] == "team/app"
    finally:
        client.close()
        served.stop()
        cache_app.registry.close()
        upstream_app.registry.close()
