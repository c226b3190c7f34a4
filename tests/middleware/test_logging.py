"""Issue 3: the structured access log: one JSON line per request, request ids, real client addresses, no secrets."""

from __future__ import annotations

import json

import pytest
import webtest

from authcases import PASSWORDS, auth_options, basic, digest_of, make_config, plain_client, seed
from dockyard.server.app import create_app
from dockyard.server.config import ConfigError


def logged_app(tmp_path, *, auth=False, token=False, log_options=None):
    log_file = tmp_path / "access.log"
    chain = [{"name": "logging", "options": {"file": str(log_file), **(log_options or {})}}]
    if auth:
        chain.append({"name": "auth", "options": auth_options(tmp_path, token=token)})
    return webtest.TestApp(create_app(make_config(tmp_path, *chain))), log_file


def lines(log_file) -> list[dict]:
    return [json.loads(line) for line in log_file.read_text().splitlines()]


def test_one_json_line_per_request_with_its_fields(tmp_path):
    seed(plain_client(tmp_path), "team/app")
    app, log_file = logged_app(tmp_path, auth=True)
    layer = digest_of(b"layer of team/app")
    r = app.get(f"/v2/team/app/blobs/{layer}", headers={**basic("alice", PASSWORDS["alice"]),
                                                         "X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    app.get("/v2/secret/vault/tags/list", headers=basic("bob", PASSWORDS["bob"]), status=403)
    generated = app.get("/v2/", status=401).headers["X-Request-ID"]
    first, second, third = lines(log_file)
    assert first["request_id"] == "abc-123"
    assert {k: first[k] for k in ("client", "user", "method", "path", "repository", "action", "status",
                                  "bytes_in", "bytes_out")} == {
        "client": "127.0.0.1", "user": "alice", "method": "GET", "path": f"/v2/team/app/blobs/{layer}",
        "repository": "team/app", "action": "pull", "status": 200, "bytes_in": 0,
        "bytes_out": len(b"layer of team/app")}
    assert first["duration_ms"] >= 0 and first["time"].endswith("Z") and "error" not in first
    assert second["status"] == 403 and second["user"] == "bob"
    assert second["error"] == {"code": "DENIED", "detail": {"scope": "repository:secret/vault:pull"}}
    assert third["request_id"] == generated and len(generated) == 32
    assert third["error"]["code"] == "UNAUTHORIZED" and third["user"] is None


def test_bytes_in_counts_chunked_bodies(tmp_path):
    app, log_file = logged_app(tmp_path)
    location = app.post("/v2/a/b/blobs/uploads/", status=202).headers["Location"]
    path = location.split("localhost", 1)[-1] if "://" in location else location
    body = b"x" * 70000

    def chunked(environ, start_response):
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ.pop("CONTENT_LENGTH", None)
        return app.app(environ, start_response)

    webtest.TestApp(chunked).patch(path, body, headers={"Content-Type": "application/octet-stream"}, status=202)
    entry = lines(log_file)[-1]
    assert entry["method"] == "PATCH" and entry["bytes_in"] == 70000 and entry["action"] == "push"


@pytest.mark.parametrize("trusted, forwarded, expected", [
    ([], "203.0.113.9", "127.0.0.1"),                        # no trusted proxy: the header is ignored
    (["127.0.0.1"], "203.0.113.9", "203.0.113.9"),
    (["127.0.0.0/8", "10.0.0.0/8"], "198.51.100.1, 203.0.113.9, 10.1.1.1", "203.0.113.9"),
    (["10.0.0.0/8"], "203.0.113.9", "127.0.0.1"),             # the peer is not one of them
])
def test_client_address_behind_trusted_proxies(tmp_path, trusted, forwarded, expected):
    app, log_file = logged_app(tmp_path, log_options={"trusted_proxies": trusted})
    app.get("/v2/", headers={"X-Forwarded-For": forwarded})
    assert lines(log_file)[-1]["client"] == expected


def test_no_secret_in_any_line(tmp_path):
    """Passwords and tokens in headers, query strings and forms never reach the log."""
    seed(plain_client(tmp_path), "team/app")
    app, log_file = logged_app(tmp_path, auth=True, token=True)
    secrets = [PASSWORDS["alice"], "not-the-password"]
    token = app.get("/auth/token?service=dockyard-test&scope=repository:team/app:pull",
                    headers=basic("alice", PASSWORDS["alice"])).json["token"]
    secrets.append(token)
    app.get("/v2/team/app/tags/list", headers={"Authorization": f"Bearer {token}"})
    app.get(f"/v2/team/app/tags/list?token={token}&password={PASSWORDS['alice']}",
            headers={"Authorization": f"Bearer {token}"})
    app.get("/v2/", headers=basic("alice", "not-the-password"), status=401)
    app.post("/auth/token", {"grant_type": "password", "username": "alice", "password": PASSWORDS["alice"],
                             "service": "dockyard-test"})
    text = log_file.read_text()
    assert len(text.splitlines()) == 5
    for secret in secrets:
        assert secret not in text
    assert "token=***&password=***" in text
    assert [entry["user"] for entry in lines(log_file)] == ["alice", "alice", "alice", None, "alice"]


def test_bad_log_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="option 'file'"):
        create_app(make_config(tmp_path, {"name": "logging", "options": {"file": str(tmp_path / "no" / "x")}}))
    with pytest.raises(ConfigError, match="option 'trusted_proxies'"):
        create_app(make_config(tmp_path, {"name": "logging", "options": {"trusted_proxies": ["nope"]}}))
