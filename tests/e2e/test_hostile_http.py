"""Issue 11 through a real gunicorn, whose own parsing of the request line and the body is what the attack met:
path spellings no client library would send, and a chunked body that breaks half-way."""

from __future__ import annotations

import json
import socket

import pytest

pytestmark = pytest.mark.e2e

AUTH = """\
[[middleware]]
name = "auth"
[middleware.options]
htpasswd = "{htpasswd}"
admins = ["admin"]
"""


def raw_request(port: int, request: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send bytes as they are; read one response (status, headers, body). No client library normalises anything."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body[:length]


@pytest.fixture(scope="module")
def guarded(start_dockyard_module, tmp_path_factory):
    from dockyard.middleware.htpasswd import hash_password, write_users
    htpasswd = tmp_path_factory.mktemp("auth") / "htpasswd"
    write_users(htpasswd, {"admin": hash_password("admin-pw", rounds=4)})
    return start_dockyard_module(config=AUTH.format(htpasswd=htpasswd))


@pytest.mark.parametrize("path", ["//v2/_catalog", "///v2/_catalog", "//v2/_dockyard/storage",
                                  "//v2/_dockyard/read-only", "/v2/./_catalog", "/v2/x/../_dockyard/storage",
                                  "/v2/%5Fcatalog", "/v2/%2e/_catalog", "/v2%2F_catalog", "/%76%32/_catalog"])
def test_no_spelling_reaches_a_guarded_endpoint_anonymously(guarded, path):
    status, headers, body = raw_request(guarded.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status in (400, 401, 404), (path, status, body[:200])
    assert json.loads(body)["errors"][0]["code"] in ("BAD_REQUEST", "UNAUTHORIZED", "NAME_INVALID", "NOT_FOUND")


def test_a_chunked_body_that_breaks_is_a_4xx_not_a_500(guarded):
    auth = "Authorization: Basic YWRtaW46YWRtaW4tcHc=\r\n"  # admin:admin-pw
    status, headers, _ = raw_request(guarded.port, f"POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n{auth}"
                                                   f"Content-Length: 0\r\n\r\n".encode())
    assert status == 202
    location = headers["location"].split("127.0.0.1", 1)[-1].split(":", 1)[-1]
    location = location[location.index("/"):]
    request = (f"PATCH {location} HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
               "5\r\nhello\r\nzz\r\nnot a chunk\r\n").encode()
    status, _, body = raw_request(guarded.port, request)
    assert status == 400, body[:300]
    assert json.loads(body)["errors"][0]["code"] == "BAD_REQUEST"
