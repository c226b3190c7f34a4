"""The API root, the version header, and what the router does with paths it does not know."""

import pytest


def test_api_root_answers_200_with_version_header(client):
    resp = client.get("/v2/")
    assert resp.status_int == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize("path", ["/v2/foo/tags/list", "/nowhere", "/v2/foo/blobs/sha256:zz"])
def test_version_header_is_on_errors_too(client, path):
    resp = client.get(path, expect_errors=True)
    assert resp.status_int >= 400
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_unknown_route_is_404_with_error_body(client):
    resp = client.get("/v3/whatever", status=404)
    assert resp.json["errors"][0]["code"] == "NOT_FOUND"


def test_unsupported_method_is_405_with_allow(client):
    resp = client.put("/v2/", b"", status=405)
    assert resp.json["errors"][0]["code"] == "UNSUPPORTED"
    assert "GET" in resp.headers["Allow"]


def test_method_not_allowed_on_v2_route(client):
    resp = client.post("/v2/foo/tags/list", b"", status=405)
    assert resp.json["errors"][0]["code"] == "UNSUPPORTED"


def test_unexpected_exception_is_a_json_500_without_traceback(app, client, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.registry, "catalog", boom)
    resp = client.get("/v2/_catalog", status=500)
    assert resp.json["errors"][0]["code"] == "UNKNOWN"
    assert b"secret internals" not in resp.body and b"Traceback" not in resp.body
