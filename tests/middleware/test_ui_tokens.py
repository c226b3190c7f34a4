"""Issue 15: the token endpoint in htpasswd mode too, and refresh tokens, so the web UI signs in without keeping the
password and without browser-managed Basic credentials."""

from __future__ import annotations

import jwt
import pytest
import webtest

from authcases import PASSWORDS, auth_options, basic, make_config, plain_client, seed
from dockyard.middleware.htpasswd import add_user
from dockyard.server.app import create_app
from helpers import signing_key


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


def app_for(tmp_path, *, token=False, clock=None, **options) -> webtest.TestApp:
    config = make_config(tmp_path, {"name": "auth", "options": auth_options(tmp_path, token=token, **options)})
    return webtest.TestApp(create_app(config, clock=clock))


def sign_in(app, user, *scopes, offline=True, status=200):
    form = {"grant_type": "password", "username": user, "password": PASSWORDS[user], "client_id": "dockyard-ui",
            "scope": " ".join(scopes)}
    if offline:
        form["access_type"] = "offline"
    return app.post("/auth/token", form, status=status)


def refresh(app, refresh_token, *scopes, status=200):
    return app.post("/auth/token", {"grant_type": "refresh_token", "refresh_token": refresh_token,
                                    "scope": " ".join(scopes)}, status=status)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def access_of(token: str) -> list:
    return jwt.decode(token, options={"verify_signature": False})["access"]


def assert_error_shape(resp, code):
    (error,) = resp.json["errors"]
    assert error["code"] == code and set(error) == {"code", "message", "detail"}


@pytest.fixture
def seeded(tmp_path):
    plain = plain_client(tmp_path)
    for repository in ("team/app", "public/lib", "secret/vault"):
        seed(plain, repository)
    return tmp_path


def test_htpasswd_mode_serves_the_token_endpoint_and_accepts_its_tokens(seeded):
    app = app_for(seeded)
    assert app.get("/v2/", status=401).headers["WWW-Authenticate"] == 'Basic realm="Dockyard"'  # clients: Basic
    assert signing_key(app, seeded / "data") is None  # no key before the first token
    body = sign_in(app, "alice", "repository:team/app:pull,delete").json
    assert signing_key(app, seeded / "data") is not None
    assert access_of(body["token"]) == [{"type": "repository", "name": "team/app", "actions": ["pull", "delete"]}]
    assert app.get("/v2/team/app/tags/list", headers=bearer(body["token"])).json["tags"] == ["v1"]
    # The token grants only its scope, in htpasswd mode as in token mode; the error names the scope to ask for.
    resp = app.get("/v2/secret/vault/tags/list", headers=bearer(body["token"]), status=403)
    assert_error_shape(resp, "DENIED")
    resp = app.get("/v2/scratch/x/tags/list", headers=bearer(body["token"]), status=401)
    assert resp.json["errors"][0]["detail"]["scope"] == "repository:scratch/x:pull"
    assert PASSWORDS["alice"] not in str(body)


def test_issue_tokens_false_leaves_htpasswd_mode_without_the_endpoint(seeded):
    app = app_for(seeded, issue_tokens=False)
    resp = app.post("/auth/token", {"grant_type": "password", "username": "alice", "password": "x"}, status=404)
    assert_error_shape(resp, "NOT_FOUND")
    token = jwt.encode({"sub": "admin"}, "k" * 32, algorithm="HS256")
    assert_error_shape(app.get("/v2/team/app/tags/list", headers=bearer(token), status=401), "UNAUTHORIZED")


@pytest.mark.parametrize("token_mode", [False, True], ids=["htpasswd", "token"])
def test_a_refresh_token_gets_tokens_for_other_scopes_without_the_password(seeded, token_mode):
    app = app_for(seeded, token=token_mode)
    first = sign_in(app, "admin", "registry:catalog:*").json
    assert "refresh_token" in first
    second = refresh(app, first["refresh_token"], "repository:secret/vault:pull", "registry:admin:*").json
    assert access_of(second["token"]) == [
        {"type": "repository", "name": "secret/vault", "actions": ["pull"]},
        {"type": "registry", "name": "admin", "actions": ["*"]}]
    assert "refresh_token" not in second
    app.get("/v2/_dockyard/storage", headers=bearer(second["token"]))
    # A non-admin asking for the admin scope gets a token without it, and the admin API refuses it.
    bob = refresh(app, sign_in(app, "bob").json["refresh_token"], "registry:admin:*").json
    assert access_of(bob["token"]) == [{"type": "registry", "name": "admin", "actions": []}]
    app.get("/v2/_dockyard/storage", headers=bearer(bob["token"]), status=403)


def test_without_offline_access_no_refresh_token(seeded):
    assert "refresh_token" not in sign_in(app_for(seeded), "alice", offline=False).json


@pytest.mark.parametrize("token_mode", [False, True], ids=["htpasswd", "token"])
def test_refresh_and_access_tokens_are_not_interchangeable(seeded, token_mode):
    app = app_for(seeded, token=token_mode)
    body = sign_in(app, "admin", "repository:team/app:pull").json
    resp = app.get("/v2/team/app/tags/list", headers=bearer(body["refresh_token"]), status=401)
    assert_error_shape(resp, "UNAUTHORIZED")
    assert_error_shape(refresh(app, body["token"], status=401), "UNAUTHORIZED")


def test_a_changed_password_or_a_removed_user_ends_refresh(seeded):
    app = app_for(seeded)
    refresh_token = sign_in(app, "alice").json["refresh_token"]
    refresh(app, refresh_token, "repository:team/app:pull")
    add_user(seeded / "htpasswd", "alice", "a-new-password", rounds=4)
    resp = refresh(app, refresh_token, "repository:team/app:pull", status=401)
    assert "sign in again" in resp.json["errors"][0]["detail"]["reason"]


def test_a_refresh_token_expires(seeded):
    clock = Clock()
    app = app_for(seeded, clock=clock)
    refresh_token = sign_in(app, "alice").json["refresh_token"]
    clock.now += 8 * 3600 - 1
    refresh(app, refresh_token)
    clock.now += 2
    assert_error_shape(refresh(app, refresh_token, status=401), "UNAUTHORIZED")


def test_refresh_lifetime_is_configurable_in_token_mode(seeded):
    clock = Clock()
    options = auth_options(seeded, token=True)
    options["token"]["refresh_expires_in"] = 60
    app = webtest.TestApp(create_app(make_config(seeded, {"name": "auth", "options": options}), clock=clock))
    refresh_token = sign_in(app, "alice").json["refresh_token"]
    clock.now += 61
    refresh(app, refresh_token, status=401)


@pytest.mark.parametrize("value", [
    "", "garbage", "a.b.c", "x" * 60000, jwt.encode({"sub": "admin", "aud": "dockyard#refresh", "iss": "dockyard",
                                                      "exp": 4_000_000_000, "pwd": "0" * 16}, "k" * 32,
                                                     algorithm="HS256"),
    jwt.encode({"sub": "admin", "aud": "dockyard#refresh", "iss": "dockyard", "exp": 4_000_000_000, "pwd": "0"},
               "", algorithm="none"),
])
def test_hostile_refresh_tokens_are_refused_in_the_error_shape(seeded, value):
    app = app_for(seeded)
    resp = app.post("/auth/token", {"grant_type": "refresh_token", "refresh_token": value}, status="*")
    assert resp.status_int in (400, 401)
    assert_error_shape(resp, "BAD_REQUEST" if not value else "UNAUTHORIZED")


@pytest.mark.parametrize("form", [
    {"grant_type": "client_credentials"}, {"grant_type": "password", "username": "alice", "password": "x",
                                           "access_type": "offline"},
    {"grant_type": "password", "username": "alice", "password": PASSWORDS["alice"], "access_type": "\u0000" * 50},
])
def test_hostile_sign_in_forms_get_a_4xx_or_no_refresh_token(seeded, form):
    resp = app_for(seeded).post("/auth/token", form, status="*")
    assert resp.status_int < 500
    if resp.status_int >= 400:
        assert resp.json["errors"][0]["code"] in ("BAD_REQUEST", "UNAUTHORIZED")
    else:
        assert "refresh_token" not in resp.json


# -- the tag details of a repository need only pull on it (the web UI shows sizes and push times to readers) -----

@pytest.mark.parametrize("token_mode", [False, True], ids=["htpasswd", "token"])
def test_tag_details_need_pull_on_the_repository_only(seeded, token_mode):
    app = app_for(seeded, token=token_mode)
    details = "/v2/_dockyard/repositories/{}/tags"
    bob = basic("bob", PASSWORDS["bob"])  # a reader of team/*
    assert [t["tag"] for t in app.get(details.format("team/app"), headers=bob).json["tags"]] == ["v1"]
    assert_error_shape(app.get(details.format("secret/vault"), headers=bob, status=403), "DENIED")
    assert app.get(details.format("public/lib")).json["tags"][0]["tag"] == "v1"  # anonymous_pull
    resp = app.get(details.format("team/app"), status=401)
    assert resp.json["errors"][0]["detail"]["scope"] == "repository:team/app:pull"
    # Everything else under the admin prefix still needs the admin role.
    assert_error_shape(app.delete("/v2/_dockyard/repositories/team/app", headers=bob, status=403), "DENIED")
    app.get("/v2/_dockyard/repositories", headers=bob, status=403)
    app.get("/v2/_dockyard/storage", headers=bob, status=403)
    token = refresh(app, sign_in(app, "bob").json["refresh_token"], "repository:team/app:pull").json["token"]
    app.get(details.format("team/app"), headers=bearer(token))
    app.get(details.format("secret/vault"), headers=bearer(token), status=403)


@pytest.mark.parametrize("path", [
    "/v2/_dockyard/repositories//tags", "/v2/_dockyard/repositories/tags", "/v2/_dockyard/repositories/a/../b/tags",
    "/v2/_dockyard/repositories/UPPER/tags", "/v2/_dockyard/repositories/" + "a/" * 200 + "tags",
    "/v2/_dockyard/repositories/_dockyard/tags", "/v2/_dockyard/repositories/team/app/tags/x",
])
def test_hostile_tag_detail_paths_never_leak_and_never_fail(seeded, path):
    resp = app_for(seeded).get(path, headers=basic("bob", PASSWORDS["bob"]), status="*")
    assert 400 <= resp.status_int < 500
    assert resp.json["errors"][0]["code"] in ("NAME_INVALID", "NOT_FOUND", "NAME_UNKNOWN", "DENIED", "BAD_REQUEST")
