"""The registry client on its own (no Textual): paging, the token flow, errors in words, what the server cannot
tell, and where the connection settings come from. Against the real Dockyard app in this process (conftest's
`registry`): as configured, with its auth middleware, or answering as the reference registry would."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from conftest import USERS, auth_middleware
from dockyard.tui.client import (AuthFailed, Credentials, NotFound, RegistryAuth, RegistryClient, Unreachable,
                                 Unsupported, parse_challenge)
from dockyard.tui.connect import SettingsError, resolve
from dockyard.tui.images import Inventory, load_footprint, load_tags
from seed import SBOM_TYPE, repositories, seed

ALICE = Credentials("alice", USERS["alice"])


def test_catalog_follows_link_headers_page_by_page(registry):
    names = sorted(f"team{i // 10}/app{i:02d}" for i in range(25))
    repositories(registry.url, names, transport=registry.transport)
    client = registry.client()
    pages = list(client.catalog(page_size=10))
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [n for p in pages for n in p] == names
    assert registry.transport.count("GET", "/v2/_catalog") == 3
    admin_pages = list(client.repositories(page_size=10))
    assert [len(p) for p in admin_pages] == [10, 10, 5]
    assert [r.name for p in admin_pages for r in p] == names
    assert {r.tags for p in admin_pages for r in p} == {1}


def test_tags_follow_link_and_admin_tags_carry_digest_size_and_push_time(registry):
    s = seed(registry.url, transport=registry.transport)
    client = registry.client()
    assert [t for page in client.tags("apps/web", page_size=2) for t in page] == \
        ["1.0", "1.1", "2.0", "latest", "multi", "stable"]
    assert registry.transport.count("GET", "/v2/apps/web/tags/list") == 3
    stats = {t.tag: t for page in client.tag_stats("apps/web", page_size=4) for t in page}
    assert stats["stable"].digest == s.b.digest
    assert stats["multi"].size == s.multi.total_size
    assert stats["1.0"].updated_at == "2024-05-01T00:00:00Z"  # conftest's PUSHED_AT: the registry's clock


def test_bearer_token_flow_fetches_one_token_per_scope_with_basic_credentials(make_registry, tmp_path):
    # The wall clock: the app checks a token's expiry against it, not against the clock create_app is given.
    registry = make_registry(middleware=auth_middleware(tmp_path), clock=time.time)
    with httpx.Client(transport=registry.transport) as token_http:
        s = seed(registry.url, transport=registry.transport, auth=RegistryAuth(ALICE, token_http))
    registry.transport.clear()
    client = registry.client(ALICE)
    client.ping()
    assert client.manifest("apps/web", "1.0").digest == s.a.digest
    assert client.manifest("apps/web", "1.1").digest == s.b.digest  # same scope: the cached token, no new fetch
    layer = next(iter(s.a.blobs))
    assert client.blob_exists("apps/web", layer) is True
    assert client.blob_exists("apps/web", "sha256:" + "0" * 64) is False
    tokens = registry.transport.sent("GET", "/auth/token", 200)
    assert [r.url.params.get("scope") for r in tokens] == [None, "repository:apps/web:pull"]
    assert all(r.url.params["service"] == "dockyard-test" for r in tokens)
    # the second manifest went out with the token at once: one 401 for that repository, not two
    assert registry.transport.count("GET", "/v2/apps/web/manifests/*") == 3
    assert registry.transport.count("GET", "/v2/apps/web/manifests/*", 401) == 1


def test_wrong_password_is_said_plainly(make_registry, tmp_path):
    with_tokens = make_registry(middleware=auth_middleware(tmp_path))
    with pytest.raises(AuthFailed, match="token service refused user 'alice'"):
        with_tokens.client(Credentials("alice", "wrong")).ping()
    basic = make_registry(middleware=auth_middleware(tmp_path, tokens=False))
    with pytest.raises(AuthFailed, match="needs credentials"):
        basic.client().ping()


def test_basic_auth_is_sent_after_the_challenge_and_then_up_front(make_registry, tmp_path):
    registry = make_registry(middleware=auth_middleware(tmp_path, tokens=False))
    client = registry.client(ALICE)
    client.ping()
    client.ping()
    assert [status for _, status in registry.transport.log] == [401, 200, 200]  # 401, retry, then basic up front


def test_unreachable_server_is_a_sentence_not_a_traceback():
    client = RegistryClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(Unreachable, match=r"cannot reach http://127.0.0.1:9: connection refused"):
        client.ping()


def test_without_admin_api_the_unknowns_are_none_not_errors(make_registry):
    registry = make_registry(like_distribution=True)
    s = seed(registry.url, transport=registry.transport)
    client = registry.client()
    assert client.has_admin_api() is False
    with pytest.raises(Unsupported, match="cannot delete a tag"):
        client.delete_tag("apps/web", "1.0")
    assert client.tag_delete_supported is False
    client.delete_manifest("apps/web", s.a.digest)
    with pytest.raises(NotFound):
        client.manifest("apps/web", "1.0")


def test_referrers_of_a_manifest_and_none_without_the_referrers_api(make_registry):
    registry = make_registry()
    s = seed(registry.url, transport=registry.transport)
    referrers = registry.client().referrers("apps/web", s.c.digest)
    assert [(r["digest"], r["artifactType"]) for r in referrers] == [(s.sbom.digest, SBOM_TYPE)]
    assert registry.client().referrers("apps/web", s.a.digest) == []
    distribution = make_registry(like_distribution=True)
    seed(distribution.url, transport=distribution.transport, referrer=False)
    assert distribution.client().referrers("apps/web", s.c.digest) is None


def test_footprint_of_an_index_counts_children_and_shared_blobs_once(registry):
    s = seed(registry.url, transport=registry.transport)
    client = registry.client()
    fp = load_footprint(client, "apps/web", "multi", {})
    assert fp.platforms == ["linux/amd64", "linux/arm64"]
    assert fp.total_size == s.multi.total_size
    assert fp.all_blobs() == {**s.amd64.blobs, **s.arm64.blobs}
    assert fp.manifests() == {s.multi.digest: s.multi.manifest_bytes, s.amd64.digest: s.amd64.manifest_bytes,
                              s.arm64.digest: s.arm64.manifest_bytes}


@pytest.mark.parametrize("admin", [True, False])
def test_load_tags_fills_digest_size_platforms_for_every_tag(make_registry, admin):
    registry = make_registry(like_distribution=not admin)
    s = seed(registry.url, transport=registry.transport)
    inventory = Inventory("apps/web")
    batches = []
    load_tags(registry.client(), inventory, admin=admin, on_rows=batches.append)
    assert inventory.complete and len(batches) >= 2  # the bare listing first, then the details
    rows = inventory.tags
    assert rows["stable"].digest == rows["1.1"].digest == s.b.digest
    assert rows["multi"].size == s.multi.total_size and rows["1.0"].size == s.a.total_size
    assert rows["multi"].platforms == ["linux/amd64", "linux/arm64"]
    assert (rows["1.0"].pushed is not None) is admin
    assert rows["1.0"].created.year == 2024
    assert registry.transport.count("GET", "/v2/_dockyard/repositories/apps/web/tags", 200) == int(admin)


def test_parse_challenge():
    scheme, params = parse_challenge('Bearer realm="https://a/token",service="reg",scope="repository:x/y:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://a/token", "service": "reg", "scope": "repository:x/y:pull,push"}


# -- connection settings ----------------------------------------------------------------------------------------


def docker_config(tmp_path, auths: dict):
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": auths}))
    return str(tmp_path / "docker")


def test_url_comes_from_argument_then_environment_then_config_file(tmp_path):
    home = tmp_path / "home"
    (home / ".config" / "registry-tui").mkdir(parents=True)
    (home / ".config" / "registry-tui" / "config.toml").write_text('url = "127.0.0.1:7000"\n')
    env = {"HOME": str(home)}
    assert resolve(None, env=env).url == "http://127.0.0.1:7000"
    assert resolve(None, env={**env, "REGISTRY_TUI_URL": "https://reg.example"}).url == "https://reg.example"
    assert resolve("http://127.0.0.1:1/", env={**env, "REGISTRY_TUI_URL": "x"}).url == "http://127.0.0.1:1"


def test_credentials_from_flags_environment_and_docker_config(tmp_path):
    auth = base64.b64encode(b"alice:s3cret:with:colons").decode()
    env = {"HOME": str(tmp_path), "DOCKER_CONFIG": docker_config(tmp_path, {"127.0.0.1:5000": {"auth": auth}})}
    conn = resolve("http://127.0.0.1:5000", env=env)
    assert (conn.credentials.username, conn.credentials.password, conn.source) == \
        ("alice", "s3cret:with:colons", "docker config.json")
    assert resolve("http://127.0.0.1:5001", env=env).source == "anonymous"
    env["REGISTRY_TUI_USERNAME"], env["REGISTRY_TUI_PASSWORD"] = "bob", "pw"
    assert resolve("http://127.0.0.1:5000", env=env).credentials == Credentials("bob", "pw")
    assert resolve("http://127.0.0.1:5000", username="carol", password="x", env=env).source == "flags"


def test_a_broken_docker_config_is_a_settings_error(tmp_path):
    env = {"HOME": str(tmp_path), "DOCKER_CONFIG": docker_config(tmp_path, {"127.0.0.1:5000": {"auth": "%%%"}})}
    with pytest.raises(SettingsError, match="not base64"):
        resolve("http://127.0.0.1:5000", env=env)
