"""Issue 15: the `cors` middleware. Preflights are answered before `auth` and never challenged; every response to an
allowed origin names it, errors and 401 challenges included; other origins get nothing; bad configs stop start-up."""

from __future__ import annotations

import json

import pytest
import webtest

from authcases import PASSWORDS, auth_options, basic, make_config, plain_client, seed
from dockyard.server.app import create_app
from dockyard.server.config import ConfigError

UI = "https://ui.example.com"
OTHER = "https://evil.example.net"
LONG_ACCEPT = ", ".join(["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                         "application/vnd.docker.distribution.manifest.v2+json",
                         "application/vnd.docker.distribution.manifest.list.v2+json"])


def cors_entry(**options) -> dict:
    return {"name": "cors", "options": {"origins": [UI], **options}}


def client_for(tmp_path, *middleware) -> webtest.TestApp:
    return webtest.TestApp(create_app(make_config(tmp_path, *middleware)))


def preflight(client, path, origin=UI, method="GET", headers="authorization, accept", status=204):
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": headers}, status=status)


def assert_error_shape(resp, code):
    assert resp.content_type == "application/json"
    (error,) = resp.json["errors"]
    assert error["code"] == code and set(error) == {"code", "message", "detail"}


@pytest.fixture(params=["htpasswd", "token"])
def guarded(request, tmp_path):
    """A registry with `cors` and `auth` (in both modes), one repository seeded."""
    seed(plain_client(tmp_path), "team/app")
    return client_for(tmp_path, cors_entry(credentials=True),
                      {"name": "auth", "options": auth_options(tmp_path, token=request.param == "token")})


@pytest.mark.parametrize("path, method", [
    ("/v2/", "GET"), ("/v2/_catalog", "GET"), ("/v2/team/app/tags/list", "GET"),
    ("/v2/team/app/manifests/v1", "GET"), ("/v2/team/app/manifests/v1", "DELETE"),
    ("/v2/team/app/blobs/uploads/", "POST"), ("/v2/_dockyard/storage", "GET"), ("/auth/token", "POST"),
])
def test_a_preflight_is_answered_without_credentials_before_auth(guarded, path, method):
    resp = preflight(guarded, path, method=method)
    assert resp.headers["Access-Control-Allow-Origin"] == UI
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert method in resp.headers["Access-Control-Allow-Methods"].split(", ")
    allowed = {h.lower() for h in resp.headers["Access-Control-Allow-Headers"].split(", ")}
    assert {"authorization", "accept", "content-type", "cache-control", "range"} <= allowed
    assert resp.headers["Access-Control-Max-Age"] == "600"
    assert "WWW-Authenticate" not in resp.headers and resp.body == b""
    assert "Origin" in resp.headers["Vary"]


def test_a_401_challenge_to_an_allowed_origin_is_readable(guarded):
    resp = guarded.get("/v2/_dockyard/storage", headers={"Origin": UI}, status=401)
    assert resp.headers["Access-Control-Allow-Origin"] == UI
    exposed = resp.headers["Access-Control-Expose-Headers"].split(", ")
    assert "WWW-Authenticate" in exposed and "WWW-Authenticate" in resp.headers
    assert_error_shape(resp, "UNAUTHORIZED")


def test_errors_and_successes_to_an_allowed_origin_carry_cors_headers(guarded):
    auth = basic("admin", PASSWORDS["admin"])
    ok = guarded.get("/v2/team/app/manifests/v1", headers={"Origin": UI, "Accept": LONG_ACCEPT, **auth})
    assert ok.headers["Access-Control-Allow-Origin"] == UI and ok.headers["Access-Control-Allow-Credentials"] == "true"
    exposed = set(ok.headers["Access-Control-Expose-Headers"].split(", "))
    assert {"Docker-Content-Digest", "Link", "Content-Range", "Docker-Upload-UUID", "Location", "OCI-Subject",
            "WWW-Authenticate", "Docker-Distribution-API-Version"} <= exposed
    missing = guarded.get("/v2/team/app/manifests/nope", headers={"Origin": UI, **auth}, status=404)
    assert missing.headers["Access-Control-Allow-Origin"] == UI
    assert_error_shape(missing, "MANIFEST_UNKNOWN")
    denied = guarded.delete("/v2/team/app/manifests/v1", headers={"Origin": UI, **basic("bob", PASSWORDS["bob"])},
                            status=403)
    assert denied.headers["Access-Control-Allow-Origin"] == UI


def test_a_cross_origin_delete_with_credentials_goes_through(guarded, tmp_path):
    auth = basic("admin", PASSWORDS["admin"])
    digest = guarded.head("/v2/team/app/manifests/v1", headers={"Accept": LONG_ACCEPT, **auth}).headers[
        "Docker-Content-Digest"]
    preflight(guarded, f"/v2/team/app/manifests/{digest}", method="DELETE")
    resp = guarded.delete(f"/v2/team/app/manifests/{digest}", headers={"Origin": UI, **auth}, status=202)
    assert resp.headers["Access-Control-Allow-Origin"] == UI
    assert plain_client(tmp_path).get("/v2/team/app/tags/list").json["tags"] in (None, [])


@pytest.mark.parametrize("origin", [
    OTHER, "null", UI + "/", UI.upper(), "http://ui.example.com", UI + ":443", "https://ui.example.com.evil.net",
    "x" * 5000, UI + "\u00e9", "",
])
def test_a_preflight_from_an_origin_not_allowed_is_refused_without_cors_headers(guarded, origin):
    resp = guarded.options("/v2/_catalog", headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
                           status="*")
    assert not any(h.lower().startswith("access-control-") for h in resp.headers)
    if origin:
        assert resp.status_int == 403
        assert_error_shape(resp, "DENIED")
        assert len(json.dumps(resp.json)) < 1000  # a huge origin is not echoed back whole
    else:
        assert resp.status_int < 500  # no Origin: not a preflight, an ordinary OPTIONS (Falcon's `Allow` answer)


def test_a_response_to_an_origin_not_allowed_has_no_cors_headers(guarded):
    resp = guarded.get("/v2/team/app/tags/list", headers={"Origin": OTHER}, status=401)
    assert not any(h.lower().startswith("access-control-") for h in resp.headers)
    assert "Origin" in resp.headers["Vary"]
    resp = guarded.get("/v2/_catalog", headers=basic("admin", PASSWORDS["admin"]))  # no Origin: a plain client
    assert "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize("headers", [
    {"Access-Control-Request-Method": "BREW"},
    {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-" * 4000},
    {"Access-Control-Request-Method": "\u00ff\u00fe", "Access-Control-Request-Headers": "\u0000"},
])
def test_hostile_preflight_headers_get_the_fixed_lists_never_an_echo(guarded, headers):
    resp = guarded.options("/v2/_catalog", headers={"Origin": UI, **headers}, status=204)
    assert resp.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST, PUT, PATCH, DELETE"
    assert "x-x-" not in resp.headers["Access-Control-Allow-Headers"]


def test_an_options_request_that_is_not_a_preflight_is_not_answered_by_cors(guarded):
    resp = guarded.options("/v2/team/app/tags/list", headers={"Origin": UI}, status=401)  # not a preflight
    assert resp.headers["Access-Control-Allow-Origin"] == UI  # ... but its answer is readable by the UI


def test_without_the_cors_middleware_a_preflight_is_challenged(tmp_path):
    seed(plain_client(tmp_path), "team/app")
    client = client_for(tmp_path, {"name": "auth", "options": auth_options(tmp_path)})
    resp = preflight(client, "/v2/team/app/tags/list", status=401)
    assert "Access-Control-Allow-Origin" not in resp.headers and "WWW-Authenticate" in resp.headers


def test_any_origin_without_credentials(tmp_path):
    seed(plain_client(tmp_path), "team/app")
    client = client_for(tmp_path, {"name": "cors", "options": {"origins": ["*"]}})
    resp = client.get("/v2/_catalog", headers={"Origin": OTHER})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert preflight(client, "/v2/_catalog", origin=OTHER).headers["Access-Control-Allow-Origin"] == "*"


def test_options_are_configurable(tmp_path):
    client = client_for(tmp_path, cors_entry(methods=["GET"], allow_headers=["Authorization"],
                                             expose_headers=["Link"], max_age=5))
    resp = preflight(client, "/v2/")
    assert (resp.headers["Access-Control-Allow-Methods"], resp.headers["Access-Control-Allow-Headers"],
            resp.headers["Access-Control-Max-Age"]) == ("GET", "Authorization", "5")
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert client.get("/v2/", headers={"Origin": UI}).headers["Access-Control-Expose-Headers"] == "Link"


@pytest.mark.parametrize("options, message", [
    ({"origins": ["*"], "credentials": True}, "cannot be combined with credentials"),
    ({}, "'origins': is required"),
    ({"origins": []}, "'origins': is required"),
    ({"origins": ["null"]}, "sandboxed"),
    ({"origins": ["https://ui.example.com/"]}, "no path or trailing slash"),
    ({"origins": ["https://ui.example.com/app"]}, "no path"),
    ({"origins": ["ui.example.com"]}, "scheme://host"),
    ({"origins": ["ftp://ui.example.com"]}, "scheme://host"),
    ({"origins": ["https://ui.example.com:99999"]}, "bad port"),
    ({"origins": "https://ui.example.com"}, "expected a list"),
    ({"origins": [UI], "credentials": "yes"}, "'credentials': expected true or false"),
    ({"origins": [UI], "max_age": -1}, "'max_age': must be at least 0"),
    ({"origins": [UI], "allow_headers": ["Authorization, Evil"]}, "'allow_headers'"),
    ({"origins": [UI], "expose_header": ["Link"]}, "'expose_header': unknown option"),
])
def test_a_bad_cors_config_stops_start_up_with_a_clear_message(tmp_path, options, message):
    with pytest.raises(ConfigError, match="middleware 'cors'") as info:
        create_app(make_config(tmp_path, {"name": "cors", "options": options}))
    assert message in str(info.value)


def test_configured_origins_are_matched_as_browsers_send_them(tmp_path):
    client = client_for(tmp_path, {"name": "cors", "options": {"origins": ["HTTPS://UI.Example.com:8443"]}})
    assert preflight(client, "/v2/", origin="https://ui.example.com:8443").headers[
        "Access-Control-Allow-Origin"] == "https://ui.example.com:8443"
    preflight(client, "/v2/", origin="https://ui.example.com", status=403)
