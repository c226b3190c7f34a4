"""Every error path answers the spec's body shape with a code from the one table and its status."""

import json

import pytest

from dockyard.server.errors import ERROR_TABLE, RegistryError, error_body
from helpers import digest_of

D = digest_of(b"nothing")
REQUESTS = [
    ("get", "/v2/nowhere/tags/list", 404, "NAME_UNKNOWN"),
    ("get", "/v2/Bad/tags/list", 400, "NAME_INVALID"),
    ("get", f"/v2/repo/blobs/{D}", 404, "BLOB_UNKNOWN"),
    ("delete", f"/v2/repo/blobs/{D}", 404, "BLOB_UNKNOWN"),
    ("get", "/v2/repo/blobs/sha256:1", 400, "DIGEST_INVALID"),
    ("get", "/v2/repo/blobs/uploads/00000000-0000-4000-8000-000000000000", 404, "BLOB_UPLOAD_UNKNOWN"),
    ("get", "/v2/nowhere/manifests/latest", 404, "NAME_UNKNOWN"),
    ("put", "/v2/repo/manifests/latest", 400, "MANIFEST_INVALID"),
    ("put", "/v2/repo/manifests/.bad", 400, "TAG_INVALID"),
    ("get", "/v2/repo/referrers/sha256:nope", 400, "DIGEST_INVALID"),
    ("get", "/v2/repo/tags/list?n=x", 400, "PAGINATION_NUMBER_INVALID"),
    ("delete", "/v2/", 405, "UNSUPPORTED"),
    ("get", "/elsewhere", 404, "NOT_FOUND"),
]


@pytest.mark.parametrize("method,path,status,code", REQUESTS)
def test_error_body_shape(client, method, path, status, code):
    resp = getattr(client, method)(path, status=status)
    assert resp.headers["Content-Type"] == "application/json"
    body = json.loads(resp.body)
    assert list(body) == ["errors"] and len(body["errors"]) == 1
    error = body["errors"][0]
    assert set(error) == {"code", "message", "detail"}
    assert error["code"] == code and isinstance(error["message"], str) and error["message"]


def test_every_code_in_the_table_serialises():
    for cls in RegistryError.__subclasses__():
        error = cls({"x": 1})
        assert error.status == ERROR_TABLE[cls.code][0]
        assert json.loads(error_body(error)) == {"errors": [{"code": cls.code, "message": ERROR_TABLE[cls.code][1],
                                                             "detail": {"x": 1}}]}


def test_codes_are_uppercase_and_underscores():
    assert all(code.replace("_", "").isalpha() and code.isupper() for code in ERROR_TABLE)


# -- every status the server sends, each from the table -----------------------------------------------------------

def _app(tmp_path, **settings):
    import webtest

    from dockyard.server.app import create_app
    from dockyard.server.config import Config
    return webtest.TestApp(create_app(Config(data=str(tmp_path / "data"), **settings)))


def _with_auth(tmp_path, **extra):
    from dockyard.middleware.htpasswd import hash_password, write_users
    htpasswd = tmp_path / "htpasswd"
    write_users(htpasswd, {"bob": hash_password("bob-secret", rounds=4)})
    return _app(tmp_path, middleware=({"name": "auth", "options": {"htpasswd": str(htpasswd)}}, *extra))


class FailingStore:
    """A blob store whose reads fail in a way nobody planned for: the server must answer 500 UNKNOWN."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def read(self, key, start=0, length=None):
        raise RuntimeError("the disk controller caught fire")


def _failing_read(tmp_path):
    import webtest

    from dockyard.server.app import create_app
    from dockyard.server.config import Config
    from dockyard.server.storage import open_store
    from helpers import push_blob
    config = Config(data=str(tmp_path / "data"))
    client = webtest.TestApp(create_app(config, store=FailingStore(open_store(config))))
    return client, "get", f"/v2/repo/blobs/{push_blob(client, 'repo', b'x')}"


def _status_cases():
    basic_bob = {"Authorization": "Basic Ym9iOmJvYi1zZWNyZXQ="}  # bob:bob-secret
    yield 400, "BAD_REQUEST", lambda t: (_app(t), "post_json", "/v2/_dockyard/gc", {"dry_run": "maybe"}, {})
    yield 401, "UNAUTHORIZED", lambda t: (_with_auth(t), "get", "/v2/repo/tags/list", None, {})
    yield 403, "DENIED", lambda t: (_with_auth(t), "get", "/v2/repo/tags/list", None, basic_bob)
    yield 404, "NOT_FOUND", lambda t: (_app(t), "get", "/nowhere", None, {})
    yield 405, "UNSUPPORTED", lambda t: (_app(t), "delete", "/v2/", None, {})
    yield 413, "TOO_LARGE", lambda t: (_app(t, max_manifest_size=1024), "put", "/v2/repo/manifests/v1",
                                       b"{" + b" " * 2000 + b"}", {"Content-Type": "application/json"})
    yield 416, "RANGE_INVALID", lambda t: (_app(t), "patch", "/v2/repo/blobs/uploads/x", b"abc",
                                           {"Content-Range": "5-7"})
    yield 429, "TOOMANYREQUESTS", lambda t: (_app(t, middleware=({"name": "ratelimit", "options": {
        "limits": {"other": {"rate": 0, "burst": 1}}}},)), "get", "/v2/_catalog", None, {})
    yield 500, "UNKNOWN", lambda t: (*_failing_read(t), None, {})
    yield 503, "UNAVAILABLE", lambda t: (_app(t, read_only=True), "post", "/v2/repo/blobs/uploads/", None, {})


@pytest.mark.parametrize("status,code,make", list(_status_cases()), ids=[str(c[0]) for c in _status_cases()])
def test_every_status_answers_the_spec_shape_from_the_table(tmp_path, status, code, make):
    client, method, path, body, headers = make(tmp_path)
    if status == 416:  # a chunk out of order: it needs a session to be out of order in
        path = client.post("/v2/repo/blobs/uploads/").headers["Location"]
    if status == 429:
        client.get(path)  # the one request the bucket allows
    call = getattr(client, method)
    args = (path, body) if body is not None else (path,)
    resp = call(*args, headers=headers, status=status, expect_errors=True)
    assert resp.status_int == status == ERROR_TABLE[code][0]
    assert resp.headers["Content-Type"] == "application/json"
    (error,) = json.loads(resp.body)["errors"]
    assert set(error) == {"code", "message", "detail"} and error["code"] == code
