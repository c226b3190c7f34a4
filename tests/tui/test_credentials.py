"""Issue 15: docker's credential helpers, read as docker reads them. `credHelpers.<host>`, else `credsStore`, names a
`docker-credential-<name>` program on PATH; it is run with `get` and the server on stdin and answers JSON with
`Username` and `Secret` (`<token>` as the Username: the Secret is an identity token, which docker exchanges at the
token service with `grant_type=refresh_token`). Each helper here is a real executable script on a temporary PATH
that answers as docker-credential-helpers' programs do, errors on stdout included."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from conftest import (USERS, auth_middleware, credential_helper, docker_environment, run_app, screen_text,
                      table_keys)
from dockyard.tui import app as app_module
from dockyard.tui.app import RegistryApp
from dockyard.tui.client import AuthFailed, Credentials, RegistryAuth, RegistryClient
from dockyard.tui.connect import SettingsError, resolve
from seed import seed

HOST = "127.0.0.1:5000"


def answer(user: str, secret: str, server: str = HOST) -> dict:
    return {"ServerURL": server, "Username": user, "Secret": secret}


def test_creds_store_runs_the_helper_with_get_and_the_server_on_stdin(tmp_path):
    log = credential_helper(tmp_path / "bin", "vault", {HOST: answer("alice", "s3cret")})
    env = docker_environment(tmp_path, {"auths": {HOST: {}}, "credsStore": "vault"})  # as docker login leaves it
    connection = resolve(f"http://{HOST}", env=env)
    assert connection.credentials == Credentials("alice", "s3cret")
    assert connection.source == "docker-credential-vault"
    assert log.read_text() == f"get {HOST}\n"  # the host exactly, as docker passes it: no scheme, no newline


def test_a_per_registry_helper_wins_over_creds_store(tmp_path):
    everything = credential_helper(tmp_path / "bin", "everything",
                                   {HOST: answer("alice", "a"), "reg.example": answer("eve", "e")})
    special = credential_helper(tmp_path / "bin", "special", {HOST: answer("bob", "b")})
    env = docker_environment(tmp_path, {"credsStore": "everything", "credHelpers": {HOST: "special"}})
    assert resolve(f"http://{HOST}", env=env).credentials == Credentials("bob", "b")
    assert resolve("https://reg.example", env=env).credentials == Credentials("eve", "e")
    assert special.read_text() == f"get {HOST}\n"
    assert everything.read_text() == "get reg.example\n"
    # an empty entry for a host opts it out of credsStore: docker reads the file for it
    auth = base64.b64encode(b"carol:c").decode()
    env = docker_environment(tmp_path, {"credsStore": "everything", "credHelpers": {HOST: ""},
                                        "auths": {HOST: {"auth": auth}}})
    connection = resolve(f"http://{HOST}", env=env)
    assert (connection.credentials, connection.source) == (Credentials("carol", "c"), "docker config.json")
    assert everything.read_text() == "get reg.example\n"


def test_not_found_in_the_helper_is_no_credentials_and_the_file_is_not_read(tmp_path):
    credential_helper(tmp_path / "bin", "vault", {})
    stale = base64.b64encode(b"alice:old").decode()
    env = docker_environment(tmp_path, {"credsStore": "vault", "auths": {HOST: {"auth": stale}}})
    connection = resolve(f"http://{HOST}", env=env)
    assert connection.source == "anonymous" and not connection.credentials


@pytest.mark.parametrize("case, expected", [
    ("missing", "docker-credential-vault is not on PATH (credsStore in {config} names it): install it, or pass "
                "--username"),
    ("fails", "docker-credential-vault get 127.0.0.1:5000 failed (exit 1): exit status 2: gpg: decryption failed: "
              "No secret key"),
    ("garbage", "docker-credential-vault get 127.0.0.1:5000: the answer is not the JSON docker expects"),
])
def test_a_helper_that_is_missing_or_fails_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys, case,
                                                                      expected):
    if case == "fails":
        credential_helper(tmp_path / "bin", "vault", {}, fail="exit status 2: gpg: decryption failed: No secret key")
    elif case == "garbage":
        credential_helper(tmp_path / "bin", "vault", {HOST: answer("alice", "x")})
        script = tmp_path / "bin" / "docker-credential-vault"
        script.write_text(script.read_text().replace("'{\"ServerURL\"", "'not json {\"ServerURL\""))
    env = docker_environment(tmp_path, {"credsStore": "vault"})
    expected = expected.format(config=tmp_path / "docker" / "config.json")
    with pytest.raises(SettingsError) as raised:
        resolve(f"http://{HOST}", env=env)
    assert str(raised.value) == expected

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in ("REGISTRY_TUI_URL", "REGISTRY_TUI_USERNAME", "REGISTRY_TUI_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert app_module.main([HOST]) == 2
    out = capsys.readouterr()
    assert out.err == f"registry-tui: {expected}\n" and out.out == ""


def test_flags_win_and_the_helper_is_not_run(tmp_path):
    log = credential_helper(tmp_path / "bin", "vault", {HOST: answer("alice", "a")})
    env = docker_environment(tmp_path, {"credsStore": "vault"})
    assert resolve(f"http://{HOST}", username="carol", password="c", env=env).source == "flags"
    assert not log.exists()


# -- identity tokens ---------------------------------------------------------------------------------------------


def identity_token(registry, user: str = "alice") -> str:
    """What `docker login` keeps for a token service that gives one: a refresh token from the password grant with
    `access_type=offline`."""
    with httpx.Client(transport=registry.transport, base_url=registry.url) as http:
        r = http.post("/auth/token", data={"grant_type": "password", "username": user, "password": USERS[user],
                                           "service": "dockyard-test", "client_id": "docker",
                                           "access_type": "offline"})
    assert r.status_code == 200, r.text
    return r.json()["refresh_token"]


def test_the_token_username_means_an_identity_token_exchanged_as_docker_does(make_registry, tmp_path):
    # The wall clock: the app checks a token's expiry against it, not against the clock create_app is given.
    registry = make_registry(middleware=auth_middleware(tmp_path), clock=time.time)
    with httpx.Client(transport=registry.transport) as token_http:
        seed(registry.url, transport=registry.transport,
             auth=RegistryAuth(Credentials("alice", USERS["alice"]), token_http))
    host = "registry.test"
    credential_helper(tmp_path / "bin", "vault", {host: answer("<token>", identity_token(registry), host)})
    connection = resolve(registry.url, env=docker_environment(tmp_path, {"credsStore": "vault"}))
    assert connection.credentials.identity_token and connection.credentials.username is None
    registry.transport.clear()

    async def scenario(pilot):
        assert "admin API" in screen_text(pilot.app)  # alice's identity token stands for alice: admin
        assert table_keys(pilot.app) == ["apps/api", "apps/web", "tools/cli"]

    run_app(RegistryApp(registry.client(connection.credentials)), scenario)
    grants = registry.transport.sent("POST", "/auth/token", 200)
    assert grants and all(b"grant_type=refresh_token" in r.content and b"client_id=registry-tui" in r.content
                          for r in grants)
    assert registry.transport.count("GET", "/auth/token") == 0
    assert not any(r.headers.get("Authorization", "").startswith("Basic") for r, _ in registry.transport.log)

    async def refused(pilot):
        assert "the token service refused the identity token (401)" in screen_text(pilot.app)
        assert "Traceback" not in screen_text(pilot.app)

    run_app(RegistryApp(registry.client(Credentials(identity_token="not-a-refresh-token"))), refused)


def test_an_identitytoken_in_config_json_takes_the_same_route(make_registry, tmp_path):
    registry = make_registry(middleware=auth_middleware(tmp_path), clock=time.time)
    token = identity_token(registry, "bob")
    env = docker_environment(tmp_path, {"auths": {"registry.test": {"identitytoken": token}}})
    connection = resolve(registry.url, env=env)
    assert connection.credentials == Credentials(identity_token=token)
    assert connection.source == "docker config.json"
    client = registry.client(connection.credentials)
    assert [n for page in client.catalog() for n in page] == []
    assert registry.transport.count("POST", "/auth/token", 200) >= 1


def test_an_identity_token_against_basic_auth_says_what_is_wrong(make_registry, tmp_path):
    registry = make_registry(middleware=auth_middleware(tmp_path, tokens=False))
    with pytest.raises(AuthFailed, match="an identity token needs a token service"):
        RegistryClient(registry.url, Credentials(identity_token="x"), transport=registry.transport).ping()
