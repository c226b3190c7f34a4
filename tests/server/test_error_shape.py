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
