"""Upload sessions: open, chunk (with and without Content-Range), status, close, cancel; monolithic and mount."""

import io
import os
from urllib.parse import urlsplit

import pytest

from helpers import digest_of, push_blob

BLOB = os.urandom(3000)
DIGEST = digest_of(BLOB)


def start(client, name="repo"):
    resp = client.post(f"/v2/{name}/blobs/uploads/", status=202)
    return resp


def test_post_opens_a_session(client):
    resp = start(client)
    uuid = resp.headers["Docker-Upload-UUID"]
    assert resp.headers["Location"] == f"http://localhost/v2/repo/blobs/uploads/{uuid}"
    assert resp.headers["Range"] == "0-0"
    assert resp.headers["Content-Length"] == "0"


def test_monolithic_post_with_digest(client):
    resp = client.post(f"/v2/repo/blobs/uploads/?digest={DIGEST}", BLOB, status=201)
    assert resp.headers["Location"] == f"http://localhost/v2/repo/blobs/{DIGEST}"
    assert resp.headers["Docker-Content-Digest"] == DIGEST
    assert client.get(f"/v2/repo/blobs/{DIGEST}").body == BLOB


def test_monolithic_post_with_wrong_digest_stores_nothing(client, config):
    resp = client.post(f"/v2/repo/blobs/uploads/?digest={digest_of(b'other')}", BLOB, status=400)
    assert resp.json["errors"][0]["code"] == "DIGEST_INVALID"
    client.get(f"/v2/repo/blobs/{digest_of(b'other')}", status=404)
    assert not [p for p in (config.data_path / "blobs").rglob("*") if p.is_file()]
    assert not list((config.data_path / "uploads").iterdir())


def test_post_then_put_with_whole_body(client):
    location = start(client).headers["Location"]
    resp = client.put(f"{location}?digest={DIGEST}", BLOB, status=201)
    assert resp.headers["Location"] == f"http://localhost/v2/repo/blobs/{DIGEST}"
    assert client.get(f"/v2/repo/blobs/{DIGEST}").body == BLOB


def test_chunked_upload_with_content_range(client):
    location = start(client).headers["Location"]
    resp = client.patch(location, BLOB[:1000], headers={"Content-Range": "0-999"}, status=202)
    assert resp.headers["Range"] == "0-999"
    resp = client.patch(resp.headers["Location"], BLOB[1000:2000], headers={"Content-Range": "1000-1999"},
                        status=202)
    assert resp.headers["Range"] == "0-1999"
    status = client.get(location, status=204)
    assert status.headers["Range"] == "0-1999" and status.headers["Location"] == location
    resp = client.put(f"{location}?digest={DIGEST}", BLOB[2000:], headers={"Content-Range": "2000-2999"},
                      status=201)
    assert client.get(f"/v2/repo/blobs/{DIGEST}").body == BLOB
    client.get(location, status=404)


def test_streamed_patches_without_content_range(client):
    location = start(client).headers["Location"]
    for i in range(3):
        client.patch(location, BLOB[i * 1000:(i + 1) * 1000], status=202)
    client.put(f"{location}?digest={DIGEST}", b"", status=201)
    assert client.get(f"/v2/repo/blobs/{DIGEST}").body == BLOB


def test_out_of_order_chunk_is_416_and_session_survives(client):
    location = start(client).headers["Location"]
    resp = client.patch(location, BLOB[1000:2000], headers={"Content-Range": "1000-1999"}, status=416)
    assert resp.json["errors"][0]["code"] == "RANGE_INVALID"
    client.patch(location, BLOB[:1000], headers={"Content-Range": "0-999"}, status=202)
    # a retry of the chunk just sent is out of order too, and changes nothing
    client.patch(location, BLOB[:1000], headers={"Content-Range": "0-999"}, status=416)
    assert client.get(location, status=204).headers["Range"] == "0-999"
    client.patch(location, BLOB[1000:], headers={"Content-Range": "1000-2999"}, status=202)
    client.put(f"{location}?digest={DIGEST}", status=201)
    assert client.get(f"/v2/repo/blobs/{DIGEST}").body == BLOB


@pytest.mark.parametrize("content_range", ["abc", "0-", "5-2", "0-99"])
def test_bad_content_range_is_416(client, content_range):
    location = start(client).headers["Location"]
    client.patch(location, BLOB[:10], headers={"Content-Range": content_range}, status=416)
    assert client.get(location, status=204).headers["Range"] == "0-0"


def test_put_with_wrong_digest_fails_and_removes_the_session(client, config):
    location = start(client).headers["Location"]
    client.patch(location, BLOB, status=202)
    resp = client.put(f"{location}?digest={digest_of(b'nope')}", status=400)
    assert resp.json["errors"][0]["code"] == "DIGEST_INVALID"
    client.get(location, status=404)
    assert not list((config.data_path / "uploads").iterdir())


@pytest.mark.parametrize("query,code", [("", "DIGEST_INVALID"), ("?digest=sha256:bad", "DIGEST_INVALID"),
                                        ("?digest=crc32:00000000", "DIGEST_INVALID")])
def test_put_without_valid_digest(client, query, code):
    location = start(client).headers["Location"]
    resp = client.put(location + query, BLOB, status=400)
    assert resp.json["errors"][0]["code"] == code


def test_cancel_upload(client, config):
    location = start(client).headers["Location"]
    client.patch(location, BLOB, status=202)
    client.delete(location, status=204)
    resp = client.get(location, status=404)
    assert resp.json["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    client.delete(location, status=404)
    assert not list((config.data_path / "uploads").iterdir())


@pytest.mark.parametrize("method", ["get", "patch", "put", "delete"])
@pytest.mark.parametrize("upload_id", ["3f2a6a3e-0000-4000-8000-000000000000", "not-a-uuid!", "a" * 100])
def test_unknown_sessions_are_404(client, method, upload_id):
    resp = getattr(client, method)(f"/v2/repo/blobs/uploads/{upload_id}", status=404)
    assert resp.json["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


@pytest.mark.parametrize("method", ["get", "patch", "put", "delete"])
def test_a_dot_dot_session_is_refused_as_a_path(client, method):
    resp = getattr(client, method)("/v2/repo/blobs/uploads/..", status=400)
    assert resp.json["errors"][0]["code"] == "BAD_REQUEST"


def test_session_belongs_to_its_repository(client):
    location = start(client, "owner").headers["Location"]
    other = location.replace("/v2/owner/", "/v2/intruder/")
    client.patch(other, BLOB, status=404)
    client.put(f"{other}?digest={DIGEST}", BLOB, status=404)


def test_mount_from_a_repository_that_has_the_blob(client):
    push_blob(client, "source", BLOB)
    resp = client.post(f"/v2/target/blobs/uploads/?mount={DIGEST}&from=source", status=201)
    assert resp.headers["Location"] == f"http://localhost/v2/target/blobs/{DIGEST}"
    assert resp.headers["Docker-Content-Digest"] == DIGEST
    assert client.get(f"/v2/target/blobs/{DIGEST}").body == BLOB


@pytest.mark.parametrize("query", [f"mount={DIGEST}&from=source", f"mount={DIGEST}", "mount=sha256:bad&from=source",
                                   f"mount={DIGEST}&from=Not_A_Name"])
def test_mount_that_cannot_happen_opens_a_session(client, query):
    resp = client.post(f"/v2/target/blobs/uploads/?{query}", status=202)
    assert resp.headers["Location"].startswith("http://localhost/v2/target/blobs/uploads/")
    client.get(f"/v2/target/blobs/{DIGEST}", status=404)


def test_a_session_continues_in_another_process(config, client):
    """A second app on the same data directory stands in for another gunicorn worker."""
    import webtest

    from dockyard.server.app import create_app

    other = webtest.TestApp(create_app(config))
    location = start(client).headers["Location"]
    client.patch(location, BLOB[:1500], status=202)
    other.patch(location, BLOB[1500:], status=202)
    client.put(f"{location}?digest={DIGEST}", status=201)
    assert other.get(f"/v2/repo/blobs/{DIGEST}").body == BLOB


def test_client_that_disconnects_mid_chunk_leaves_session_as_it_was(app, client):
    """A body shorter than its Content-Length (the client went away) must not change the session."""
    location = start(client).headers["Location"]
    client.patch(location, BLOB[:1000], status=202)
    environ = {
        "REQUEST_METHOD": "PATCH", "PATH_INFO": urlsplit(location).path, "QUERY_STRING": "", "SERVER_NAME": "x",
        "SERVER_PORT": "80", "wsgi.url_scheme": "http", "CONTENT_LENGTH": "1000",
        "wsgi.input": io.BytesIO(BLOB[1000:1400]), "wsgi.errors": io.StringIO(),
    }
    statuses = []
    b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert statuses[0].startswith("400")
    assert client.get(location, status=204).headers["Range"] == "0-999"
    client.patch(location, BLOB[1000:], status=202)
    client.put(f"{location}?digest={DIGEST}", status=201)
    assert client.get(f"/v2/repo/blobs/{DIGEST}").body == BLOB


def test_same_blob_uploaded_twice_is_stored_once(client, config):
    for name in ("a", "b", "c"):
        location = start(client, name).headers["Location"]
        client.put(f"{location}?digest={DIGEST}", BLOB, status=201)
    files = [p for p in (config.data_path / "blobs").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].read_bytes() == BLOB


def test_a_node_name_rides_on_every_session_location_and_clients_send_it_back(tmp_path):
    """In a cluster the Location names the node that answered (`?node=`), for nginx to route on; a client sends it
    back with its own parameters (docker adds `digest=` to the query), and a session started on one node continues
    on another, whose name the next Location then carries."""
    import dataclasses

    import webtest

    from dockyard.server.app import create_app
    from dockyard.server.config import Config

    config = Config(data=str(tmp_path / "data"), node="node-1")
    one = webtest.TestApp(create_app(config))
    two = webtest.TestApp(create_app(dataclasses.replace(config, node="node_2")))
    location = one.post("/v2/repo/blobs/uploads/", status=202).headers["Location"]
    assert urlsplit(location).query == "node=node-1"
    location = two.patch(location, BLOB[:1000], status=202).headers["Location"]
    assert urlsplit(location).query == "node=node_2"
    assert two.get(location, status=204).headers["Range"] == "0-999"
    one.put(f"{location}&digest={DIGEST}", BLOB[1000:], status=201)
    assert one.get(f"/v2/repo/blobs/{DIGEST}").body == BLOB
