"""The registry client on its own (no Textual): paging, the token flow, errors in words, what the server cannot
tell, and where the connection settings come from. Against the in-memory FakeRegistry."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from dockyard.tui.client import (AuthFailed, Credentials, NotFound, RegistryClient, Unreachable, Unsupported,
                                 parse_challenge)
from dockyard.tui.connect import SettingsError, resolve
from dockyard.tui.images import Inventory, load_footprint, load_tags
from fakeregistry import FakeRegistry
from seed import seed

URL = "http://registry.test"


def client_for(fake: FakeRegistry, credentials: Credentials | None = None) -> RegistryClient:
    return RegistryClient(URL, credentials, transport=fake.transport())


def test_catalog_follows_link_headers_page_by_page():
    fake = FakeRegistry()
    names = [f"team{i // 100:03d}/app{i:05d}" for i in range(2500)]
    for name in names:
        fake.repos.setdefault(name, __import__("fakeregistry").Repo())
    client = client_for(fake)
    pages = list(client.catalog(page_size=1000))
    assert [len(p) for p in pages] == [1000, 1000, 500]
    assert [n for p in pages for n in p] == sorted(names)
    admin_pages = list(client.repositories(page_size=1000))
    assert [len(p) for p in admin_pages] == [1000, 1000, 500]


def test_tags_follow_link_and_admin_tags_carry_digest_size_and_push_time():
    fake = FakeRegistry()
    s = seed(URL, transport=fake.transport())
    client = client_for(fake)
    assert [t for page in client.tags("apps/web", page_size=2) for t in page] == \
        ["1.0", "1.1", "2.0", "latest", "multi", "stable"]
    stats = {t.tag: t for page in client.tag_stats("apps/web", page_size=4) for t in page}
    assert stats["stable"].digest == s.b.digest
    assert stats["multi"].size == s.multi.total_size
    assert stats["1.0"].updated_at == "2024-05-01T00:00:00Z"


def test_bearer_token_flow_fetches_one_token_per_scope_with_basic_credentials():
    fake = FakeRegistry(auth="bearer")
    fake.auth = None
    s = seed(URL, transport=fake.transport())
    fake.auth = "bearer"
    fake.requests.clear()
    client = client_for(fake, Credentials("admin", "secret"))
    client.ping()
    assert client.manifest("apps/web", "1.0").digest == s.a.digest
    assert client.manifest("apps/web", "1.1").digest == s.b.digest  # same scope: the cached token, no new fetch
    assert client.blob_exists("apps/web", s.a.digest) is False
    scopes = [q.get("scope") for q in fake.token_requests]
    assert scopes == [None, "repository:apps/web:pull"]
    assert all(q["service"] == "fake" for q in fake.token_requests)
    # the second manifest went out with the token at once: one 401 for that repository, not two
    gets = [p for m, p in fake.requests if p.startswith("/v2/apps/web/manifests/")]
    assert len(gets) == 3


def test_wrong_password_is_said_plainly():
    fake = FakeRegistry(auth="bearer")
    with pytest.raises(AuthFailed, match="token service refused user 'admin'"):
        client_for(fake, Credentials("admin", "wrong")).ping()
    with pytest.raises(AuthFailed, match="needs credentials"):
        client_for(FakeRegistry(auth="basic")).ping()


def test_basic_auth_is_sent_after_the_challenge_and_then_up_front():
    fake = FakeRegistry(auth="basic")
    client = client_for(fake, Credentials("admin", "secret"))
    client.ping()
    client.ping()
    assert [p for _, p in fake.requests].count("/v2/") == 3  # 401, retry, then basic up front


def test_unreachable_server_is_a_sentence_not_a_traceback():
    client = RegistryClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(Unreachable, match=r"cannot reach http://127.0.0.1:9: connection refused"):
        client.ping()


def test_without_admin_api_the_unknowns_are_none_not_errors():
    fake = FakeRegistry(admin=False, tag_delete=False)
    s = seed(URL, transport=fake.transport())
    client = client_for(fake)
    assert client.has_admin_api() is False
    with pytest.raises(Unsupported, match="cannot delete a tag"):
        client.delete_tag("apps/web", "1.0")
    assert client.tag_delete_supported is False
    client.delete_manifest("apps/web", s.a.digest)
    with pytest.raises(NotFound):
        client.manifest("apps/web", "1.0")


def test_referrers_absent_api_is_none():
    transport = httpx.MockTransport(lambda r: httpx.Response(404, text="404 page not found"))
    assert RegistryClient(URL, transport=transport).referrers("a", "sha256:" + "0" * 64) is None


def test_footprint_of_an_index_counts_children_and_shared_blobs_once():
    fake = FakeRegistry()
    s = seed(URL, transport=fake.transport())
    client = client_for(fake)
    fp = load_footprint(client, "apps/web", "multi", {})
    assert fp.platforms == ["linux/amd64", "linux/arm64"]
    assert fp.total_size == s.multi.total_size
    assert fp.all_blobs() == {**s.amd64.blobs, **s.arm64.blobs}
    assert fp.manifests() == {s.multi.digest: s.multi.manifest_bytes, s.amd64.digest: s.amd64.manifest_bytes,
                              s.arm64.digest: s.arm64.manifest_bytes}


@pytest.mark.parametrize("admin", [True, False])
def test_load_tags_fills_digest_size_platforms_for_every_tag(admin):
    fake = FakeRegistry(admin=admin)
    s = seed(URL, transport=fake.transport())
    inventory = Inventory("apps/web")
    batches = []
    load_tags(client_for(fake), inventory, admin=admin, on_rows=batches.append)
    assert inventory.complete and len(batches) >= 2  # the bare listing first, then the details
    rows = inventory.tags
    assert rows["stable"].digest == rows["1.1"].digest == s.b.digest
    assert rows["multi"].size == s.multi.total_size and rows["1.0"].size == s.a.total_size
    assert rows["multi"].platforms == ["linux/amd64", "linux/arm64"]
    assert (rows["1.0"].pushed is not None) is admin
    assert rows["1.0"].created.year == 2024


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
