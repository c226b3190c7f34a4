"""Issue 3: challenges, the token endpoint, external issuers, the admin guard, catalog paging, htpasswd reloads."""

from __future__ import annotations

import json
import os
import time

import jwt
import pytest
import webtest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from authcases import PASSWORDS, auth_options, basic, make_config, plain_client, seed
from dockyard.middleware import htpasswd as htpasswd_module
from dockyard.middleware.htpasswd import Htpasswd, hash_password, read_users, write_users
from dockyard.server.app import create_app
from helpers import signing_key
from dockyard.server.config import ConfigError


def auth_app(tmp_path, **options) -> webtest.TestApp:
    token = options.pop("token", False)
    opts = auth_options(tmp_path, token=token, **options)
    return webtest.TestApp(create_app(make_config(tmp_path, {"name": "auth", "options": opts})))


def token_for(app, user=None, *scopes, status=200):
    query = "&".join(["service=dockyard-test", *(f"scope={s}" for s in scopes)])
    headers = basic(user, PASSWORDS[user]) if user else {}
    return app.get(f"/auth/token?{query}", headers=headers, status=status)


# -- challenges ---------------------------------------------------------------------------------------------------

def test_api_root_needs_authentication_basic(tmp_path):
    app = auth_app(tmp_path)
    r = app.get("/v2/", status=401)
    assert r.headers["WWW-Authenticate"] == 'Basic realm="Dockyard"'
    assert r.json["errors"][0]["code"] == "UNAUTHORIZED"
    assert app.get("/v2/", headers=basic("bob", PASSWORDS["bob"])).status_int == 200
    assert app.get("/v2/", headers=basic("bob", "nope"), status=401).json["errors"][0]["code"] == "UNAUTHORIZED"
    assert app.get("/v2/", headers={"Authorization": "Basic !!!"}, status=401)


def test_empty_basic_credentials_are_anonymous(tmp_path):
    """skopeo and podman answer a Basic challenge with `Basic Og==` (no user, no password) when they have none."""
    seed(plain_client(tmp_path), "public/lib")
    seed(plain_client(tmp_path), "team/app")
    app = auth_app(tmp_path)
    empty = {"Authorization": "Basic Og=="}
    assert app.get("/v2/public/lib/tags/list", headers=empty).json["tags"] == ["v1"]
    assert app.get("/v2/team/app/tags/list", headers=empty, status=401)


@pytest.mark.parametrize("method, path, scope", [
    ("GET", "/v2/", None),
    ("GET", "/v2/team/app/manifests/v1", "repository:team/app:pull"),
    ("HEAD", "/v2/team/app/blobs/sha256:" + "0" * 64, "repository:team/app:pull"),
    ("POST", "/v2/team/app/blobs/uploads/", "repository:team/app:pull,push"),
    ("PUT", "/v2/a/b/c/manifests/1", "repository:a/b/c:pull,push"),
    ("DELETE", "/v2/team/app/manifests/sha256:" + "0" * 64, "repository:team/app:delete"),
    ("GET", "/v2/_catalog", None),  # anonymous may list (anonymous pull is on): no challenge
])
def test_bearer_challenge_names_the_exact_scope(tmp_path, method, path, scope):
    app = auth_app(tmp_path, token=True)
    r = app.request(path, method=method, status="*")
    if method == "GET" and path == "/v2/_catalog":
        assert r.status_int == 200
        return
    assert r.status_int == 401
    expected = 'Bearer realm="http://localhost/auth/token",service="dockyard-test"'
    if scope:
        expected += f',scope="{scope}"'
    assert r.headers["WWW-Authenticate"] == expected


def test_forbidden_is_403_with_valid_credentials(tmp_path):
    app = auth_app(tmp_path)
    r = app.get("/v2/secret/vault/tags/list", headers=basic("alice", PASSWORDS["alice"]), status=403)
    assert r.json["errors"][0]["code"] == "DENIED"


def test_admin_prefix_needs_the_admin_role(tmp_path):
    app = auth_app(tmp_path)
    assert app.get("/v2/_dockyard/storage", status=401).json["errors"][0]["code"] == "UNAUTHORIZED"
    assert app.get("/v2/_dockyard/storage", headers=basic("alice", PASSWORDS["alice"]), status=403)
    r = app.get("/v2/_dockyard/storage", headers=basic("admin", PASSWORDS["admin"]), status="*")
    assert r.status_int not in (401, 403)


def test_admin_in_token_mode(tmp_path):
    app = auth_app(tmp_path, token=True)
    granted = token_for(app, "admin", "registry:admin:*").json
    claims = jwt.decode(granted["token"], options={"verify_signature": False})
    assert claims["access"] == [{"type": "registry", "name": "admin", "actions": ["*"]}]
    r = app.get("/v2/_dockyard/storage", headers={"Authorization": f"Bearer {granted['token']}"}, status="*")
    assert r.status_int not in (401, 403)
    alice = token_for(app, "alice", "registry:admin:*").json["token"]
    assert app.get("/v2/_dockyard/storage", headers={"Authorization": f"Bearer {alice}"}, status=403)


# -- catalog ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_catalog_pages_only_visible_repositories(tmp_path, n):
    plain = plain_client(tmp_path)
    names = sorted([f"team/r{i:02d}" for i in range(8)] + [f"secret/s{i:02d}" for i in range(9)] + ["public/p"])
    for name in names:
        seed(plain, name)
    app = auth_app(tmp_path)
    headers = basic("bob", PASSWORDS["bob"])
    seen, url, pages = [], f"/v2/_catalog?n={n}", 0
    while url:
        r = app.get(url, headers=headers)
        page = r.json["repositories"]
        assert 0 < len(page) <= n
        seen += page
        link = r.headers.get("Link")
        url = link[1:link.index(">")] if link else None
        pages += 1
        assert pages < 50
    visible = [name for name in names if name.startswith(("team/", "public/"))]
    assert seen == visible
    assert pages == -(-len(visible) // n)


# -- the token endpoint -------------------------------------------------------------------------------------------

def test_token_endpoint_get_like_docker(tmp_path):
    app = auth_app(tmp_path, token=True)
    r = app.get("/auth/token?account=alice&service=dockyard-test&scope=repository:team/app:pull,push"
                "&scope=repository:secret/vault:pull", headers=basic("alice", PASSWORDS["alice"]))
    body = r.json
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert time.strptime(body["issued_at"], "%Y-%m-%dT%H:%M:%SZ")
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["aud"] == "dockyard-test" and claims["iss"] == "dockyard-test"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
                                {"type": "repository", "name": "secret/vault", "actions": []}]
    assert jwt.get_unverified_header(body["token"])["alg"] == "ES256"
    assert PASSWORDS["alice"] not in r.text


def test_token_endpoint_post_form(tmp_path):
    app = auth_app(tmp_path, token=True)
    form = {"grant_type": "password", "username": "bob", "password": PASSWORDS["bob"], "service": "dockyard-test",
            "scope": "repository:team/app:pull,push", "client_id": "podman"}
    body = app.post("/auth/token", form).json
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
    assert app.post("/auth/token", {**form, "password": "nope"}, status=401)
    assert app.post("/auth/token", {**form, "grant_type": "refresh_token"}, status=400)


def test_token_endpoint_refuses_wrong_password_and_other_services(tmp_path):
    app = auth_app(tmp_path, token=True)
    r = app.get("/auth/token?service=dockyard-test", headers=basic("alice", "wrong"), status=401)
    assert "token" not in r.json
    app.get("/auth/token?service=elsewhere", headers=basic("alice", PASSWORDS["alice"]), status=400)


def test_anonymous_token_grants_anonymous_pull_only(tmp_path):
    plain = plain_client(tmp_path)
    seed(plain, "public/lib")
    seed(plain, "team/app")
    app = auth_app(tmp_path, token=True)
    token = token_for(app, None, "repository:public/lib:pull", "repository:team/app:pull").json["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert app.get("/v2/public/lib/tags/list", headers=headers).json["tags"] == ["v1"]
    assert app.get("/v2/team/app/tags/list", headers=headers, status=401)


def test_token_without_the_scope_asks_for_one(tmp_path):
    """alice may push team/app, but this token only grants pull: 401 insufficient_scope, not 403."""
    app = auth_app(tmp_path, token=True)
    token = token_for(app, "alice", "repository:team/app:pull").json["token"]
    r = app.post("/v2/team/app/blobs/uploads/", headers={"Authorization": f"Bearer {token}"}, status=401)
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    assert 'scope="repository:team/app:pull,push"' in r.headers["WWW-Authenticate"]


def test_tampered_expired_and_foreign_tokens_are_refused(tmp_path):
    app = auth_app(tmp_path, token=True)
    token = token_for(app, "admin", "repository:team/app:pull").json["token"]
    head, payload, signature = token.split(".")
    forged_claims = json.loads(jwt.utils.base64url_decode(payload))
    forged_claims["access"][0]["name"] = "secret/vault"
    forged = ".".join([head, jwt.utils.base64url_encode(json.dumps(forged_claims).encode()).decode(), signature])
    r = app.get("/v2/secret/vault/tags/list", headers={"Authorization": f"Bearer {forged}"}, status=401)
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    key = serialization.load_pem_private_key(signing_key(app, tmp_path / "data"), None)
    now = int(time.time())
    expired = jwt.encode({"iss": "dockyard-test", "aud": "dockyard-test", "sub": "admin", "exp": now - 600,
                          "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}]},
                         key, algorithm="ES256")
    app.get("/v2/team/app/tags/list", headers={"Authorization": f"Bearer {expired}"}, status=401)
    stranger = ec.generate_private_key(ec.SECP256R1())
    foreign = jwt.encode({"iss": "dockyard-test", "aud": "dockyard-test", "sub": "admin", "exp": now + 600,
                          "access": []}, stranger, algorithm="ES256")
    app.get("/v2/", headers={"Authorization": f"Bearer {foreign}"}, status=401)


def test_one_key_for_every_start(tmp_path):
    key = signing_key(auth_app(tmp_path, token=True), tmp_path / "data")
    app = auth_app(tmp_path, token=True)
    assert signing_key(app, tmp_path / "data") == key
    token = token_for(app, "alice").json["token"]
    jwt.decode(token, serialization.load_pem_private_key(key, None).public_key(), algorithms=["ES256"],
               audience="dockyard-test")


def test_workers_starting_together_agree_on_one_key(tmp_path):
    import multiprocessing
    from dockyard.middleware.tokens import load_or_create_key

    path = tmp_path / "auth" / "token-key.pem"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        keys = pool.starmap(_public_pem, [(path,)] * 8)
    assert len(set(keys)) == 1
    assert keys[0] == _public_pem(path)
    assert [p.name for p in path.parent.iterdir()] == ["token-key.pem"]  # no temp file left behind
    assert load_or_create_key(path, "ES256")


def _public_pem(path):
    from dockyard.middleware.tokens import load_or_create_key
    key = load_or_create_key(path, "ES256")
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("form", ["public_key", "jwks"])
def test_external_issuer(tmp_path, form):
    """Dockyard behind an existing token server: its tokens are accepted, their grants are what counts."""
    external = ec.generate_private_key(ec.SECP256R1())
    if form == "public_key":
        path = tmp_path / "issuer.pem"
        path.write_bytes(external.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    else:
        path = tmp_path / "jwks.json"
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(external.public_key()))
        path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "ES256"}]}))
    opts = auth_options(tmp_path, token=True)
    opts["token"] = {"service": "dockyard-test", "issue": False,
                     "trusted_issuers": [{"issuer": "corp-auth", "audience": "registry.corp", form: str(path)}]}
    plain = plain_client(tmp_path)
    seed(plain, "secret/vault")
    app = webtest.TestApp(create_app(make_config(tmp_path, {"name": "auth", "options": opts})))
    now = int(time.time())
    claims = {"iss": "corp-auth", "aud": "registry.corp", "sub": "someone", "exp": now + 60,
              "access": [{"type": "repository", "name": "secret/vault", "actions": ["pull"]}]}
    token = jwt.encode(claims, external, algorithm="ES256", headers={"kid": "k1"})
    headers = {"Authorization": f"Bearer {token}"}
    assert app.get("/v2/secret/vault/tags/list", headers=headers).json["tags"] == ["v1"]
    r = app.delete("/v2/secret/vault/manifests/v1", headers=headers, status=401)
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    wrong_audience = jwt.encode({**claims, "aud": "other"}, external, algorithm="ES256", headers={"kid": "k1"})
    app.get("/v2/secret/vault/tags/list", headers={"Authorization": f"Bearer {wrong_audience}"}, status=401)
    app.get("/auth/token", status=404)  # issue = false: no token endpoint


# -- htpasswd -----------------------------------------------------------------------------------------------------

def test_htpasswd_change_is_picked_up_without_restart(tmp_path):
    app = auth_app(tmp_path)
    assert app.get("/v2/", headers=basic("alice", PASSWORDS["alice"])).status_int == 200
    users = read_users(tmp_path / "htpasswd")
    users["alice"] = hash_password("new-password", rounds=4)
    users["dave"] = hash_password("dave-pw", rounds=4)
    write_users(tmp_path / "htpasswd", users)
    app.get("/v2/", headers=basic("alice", PASSWORDS["alice"]), status=401)
    assert app.get("/v2/", headers=basic("alice", "new-password")).status_int == 200
    assert app.get("/v2/", headers=basic("dave", "dave-pw")).status_int == 200


def test_htpasswd_written_by_apache_htpasswd(tmp_path):
    import shutil
    import subprocess
    if not shutil.which("htpasswd"):
        message = "apache2-utils (htpasswd) is not installed: apt-get install apache2-utils"
        # In CI a missing tool fails the run; elsewhere the test is skipped with the reason.
        pytest.fail(message) if os.environ.get("CI", "").lower() == "true" else pytest.skip(message)
    path = tmp_path / "ht"
    subprocess.run(["htpasswd", "-Bbc", str(path), "erin", "erin-pw"], check=True, capture_output=True, timeout=30)
    assert Htpasswd(path).verify("erin", "erin-pw")
    assert not Htpasswd(path).verify("erin", "erin-pwx")


def test_htpasswd_caches_successes_only(tmp_path, monkeypatch):
    path = tmp_path / "ht"
    write_users(path, {"u": hash_password("pw", rounds=4)})
    calls = []
    real = htpasswd_module.bcrypt.checkpw
    monkeypatch.setattr(htpasswd_module.bcrypt, "checkpw", lambda *a: calls.append(1) or real(*a))
    now = [1000.0]
    store = Htpasswd(path, cache_seconds=30, clock=lambda: now[0])
    assert [store.verify("u", "pw") for _ in range(50)] == [True] * 50
    assert len(calls) == 1
    assert not store.verify("u", "wrong") and not store.verify("u", "wrong")
    assert len(calls) == 3  # failures always pay bcrypt: never cached
    assert not store.verify("nobody", "pw")
    now[0] += 31
    assert store.verify("u", "pw") and len(calls) == 5  # expired: checked again
    write_users(path, {"u": hash_password("other", rounds=4)})
    assert not store.verify("u", "pw")  # the file changed: the cached success no longer counts


# -- configuration ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"htpasswd": "/nonexistent/htpasswd"}, "'htpasswd'"),
    ({"colour": "blue"}, "'colour'"),
    ({"rules": [{"users": ["a"], "repositories": ["x/*"], "actions": ["fly"]}]}, "'rules[0].actions'"),
    ({"rules": [{"groups": ["nope"], "repositories": ["x/*"], "actions": ["pull"]}]}, "'rules[0].groups'"),
    ({"token": {"algorithm": "HS256"}}, "'token.algorithm'"),
    ({"token": {"path": "/v2/token"}}, "'token.path'"),
    ({"anonymous_pull": "yes"}, "'anonymous_pull'"),
])
def test_bad_options_stop_start_up(tmp_path, options, message):
    opts = {**auth_options(tmp_path), **options}
    with pytest.raises(ConfigError, match="middleware 'auth'") as info:
        create_app(make_config(tmp_path, {"name": "auth", "options": opts}))
    assert message in str(info.value)


def test_unknown_middleware_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="'nonesuch'"):
        create_app(make_config(tmp_path, {"name": "nonesuch", "options": {}}))
    with pytest.raises(ConfigError, match="cannot import"):
        create_app(make_config(tmp_path, {"name": "no_such_pkg.Thing", "options": {}}))



def test_token_realm_uses_the_external_url(tmp_path):
    """Behind a proxy the realm must be what the client can reach, like every Location header (base_url)."""
    import webtest

    from dockyard.server.app import create_app
    from dockyard.server.config import Config

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("")
    config = Config(data=str(tmp_path / "data"), base_url="https://registry.example.test",
                    middleware=({"name": "auth", "options": {"htpasswd": str(htpasswd), "token": {}}},))
    resp = webtest.TestApp(create_app(config)).get("/v2/", status=401)
    assert 'realm="https://registry.example.test/auth/token"' in resp.headers["WWW-Authenticate"]
