"""Location and Link headers carry the external URL; forwarded headers count only from trusted proxies (issue 6)."""

import pytest
import webtest

from dockyard.server.app import create_app
from dockyard.server.config import Config, ConfigError
from dockyard.server.proxies import TrustedProxies
from dockyard.server.urls import ExternalURLs

from helpers import push_blob

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "registry.example.com:8443",
             "X-Forwarded-For": "203.0.113.9"}


def client_for(tmp_path, **settings) -> webtest.TestApp:
    return webtest.TestApp(create_app(Config(data=str(tmp_path / "data"), **settings)))


def post_upload(client, peer: str, headers=None):
    return client.post("/v2/repo/blobs/uploads/", headers=headers or {}, extra_environ={"REMOTE_ADDR": peer},
                       status=202)


def test_without_proxy_location_is_what_the_client_asked_for(tmp_path):
    client = client_for(tmp_path)
    resp = post_upload(client, "198.51.100.7", {"Host": "reg.internal:5000"})
    assert resp.headers["Location"].startswith("http://reg.internal:5000/v2/repo/blobs/uploads/")


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(tmp_path):
    client = client_for(tmp_path, trusted_proxies="127.0.0.1")
    resp = post_upload(client, "198.51.100.7", {"Host": "reg.internal:5000", **FORWARDED})
    assert resp.headers["Location"].startswith("http://reg.internal:5000/v2/repo/blobs/uploads/")


@pytest.mark.parametrize("trusted,peer", [("127.0.0.1", "127.0.0.1"), ("10.0.0.0/8, ::1", "10.1.2.3"),
                                          ("10.0.0.0/8, ::1", "::1"), ("*", "192.0.2.1")])
def test_forwarded_headers_from_a_trusted_proxy_make_the_location(tmp_path, trusted, peer):
    client = client_for(tmp_path, trusted_proxies=trusted)
    resp = post_upload(client, peer, {"Host": "127.0.0.1:5000", **FORWARDED})
    location = resp.headers["Location"]
    assert location.startswith("https://registry.example.com:8443/v2/repo/blobs/uploads/")
    # Following it works: the path is the registry's own.
    client.get(location.replace("https://registry.example.com:8443", ""), status=204)


def test_trusted_proxy_without_forwarded_host_keeps_the_host_header(tmp_path):
    client = client_for(tmp_path, trusted_proxies="127.0.0.1")
    resp = post_upload(client, "127.0.0.1", {"Host": "registry.example.com", "X-Forwarded-Proto": "https"})
    assert resp.headers["Location"].startswith("https://registry.example.com/v2/")


def test_base_url_wins_over_everything(tmp_path):
    client = client_for(tmp_path, base_url="https://registry.example.com/", trusted_proxies="*")
    resp = post_upload(client, "127.0.0.1", {"Host": "127.0.0.1:5000", **FORWARDED})
    assert resp.headers["Location"].startswith("https://registry.example.com/v2/repo/blobs/uploads/")


def test_every_location_and_link_uses_the_external_url(tmp_path):
    """Upload session, committed blob, manifest, and pagination Links all go through the one helper."""
    client = client_for(tmp_path, trusted_proxies="127.0.0.1")
    env = {"REMOTE_ADDR": "127.0.0.1"}
    headers = {"Host": "127.0.0.1:5000", **FORWARDED}
    base = "https://registry.example.com:8443"
    session = client.post("/v2/repo/blobs/uploads/", headers=headers, extra_environ=env, status=202)
    path = session.headers["Location"].removeprefix(base)
    assert path.startswith("/v2/repo/blobs/uploads/")
    blob = b"some layer bytes"
    digest = push_blob(client, "repo", blob)
    done = client.put(f"{path}?digest={digest}", blob, headers=headers, extra_environ=env, status=201)
    assert done.headers["Location"] == f"{base}/v2/repo/blobs/{digest}"
    for name in ("repo", "repo2"):
        config = push_blob(client, name, b"{}")
        manifest = (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":'
                    b'{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"' + config.encode()
                    + b'","size":2},"layers":[]}')
        for tag in ("a", "b"):
            put = client.put(f"/v2/{name}/manifests/{tag}", manifest, headers={
                **headers, "Content-Type": "application/vnd.oci.image.manifest.v1+json"}, extra_environ=env,
                status=201)
            assert put.headers["Location"].startswith(f"{base}/v2/{name}/manifests/sha256:")
    tags = client.get("/v2/repo/tags/list?n=1", headers=headers, extra_environ=env)
    assert tags.headers["Link"] == f'<{base}/v2/repo/tags/list?n=1&last=a>; rel="next"'
    catalog = client.get("/v2/_catalog?n=1", headers=headers, extra_environ=env)
    assert catalog.headers["Link"] == f'<{base}/v2/_catalog?n=1&last=repo>; rel="next"'


@pytest.mark.parametrize("host,scheme,expected", [
    ("registry.example.com:443", "https", "https://registry.example.com"),
    ("registry.example.com:80", "http", "http://registry.example.com"),
    ("registry.example.com:443", "http", "http://registry.example.com:443"),
    ("[::1]:5000", "http", "http://[::1]:5000"),
])
def test_default_ports_are_left_out(host, scheme, expected):
    assert ExternalURLs().base({"HTTP_HOST": host, "wsgi.url_scheme": scheme}) == expected


def test_missing_or_malformed_host_falls_back_to_the_server_address():
    env = {"wsgi.url_scheme": "http", "SERVER_NAME": "10.0.0.5", "SERVER_PORT": "5000"}
    assert ExternalURLs().base(env) == "http://10.0.0.5:5000"
    assert ExternalURLs().base({**env, "HTTP_HOST": "evil.example/path"}) == "http://10.0.0.5:5000"


def test_a_chain_of_proxies_uses_the_client_most_values():
    urls = ExternalURLs(trusted=TrustedProxies.parse("127.0.0.1"))
    env = {"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "inner:5000", "wsgi.url_scheme": "http",
           "HTTP_X_FORWARDED_PROTO": "https, http", "HTTP_X_FORWARDED_HOST": "outer.example, inner"}
    assert urls.base(env) == "https://outer.example"


@pytest.mark.parametrize("settings,name", [
    ({"trusted_proxies": "10.0.0.0/33"}, "trusted_proxies"),
    ({"trusted_proxies": "nginx"}, "trusted_proxies"),
    ({"base_url": "registry.example.com"}, "base_url"),
    ({"base_url": "https://registry.example.com/prefix"}, "base_url"),
])
def test_bad_settings_name_themselves(tmp_path, settings, name):
    with pytest.raises(ConfigError, match=name):
        create_app(Config(data=str(tmp_path / "data"), **settings))
