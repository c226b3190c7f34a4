"""Issue 10: the request path is built in one place, in one documented order (dockyard.server.pipeline).

One test per defect the old order had: refusals that left no log line and no request id, a read-only 503 where an
anonymous caller should have been asked to authenticate, and a logged download that never reached sendfile.
"""

from __future__ import annotations

import io
import json
import re
import threading
import wsgiref.util
from pathlib import Path

import webtest

from authcases import PASSWORDS, auth_options, basic, digest_of, make_config, plain_client, seed
from dockyard.server.app import create_app
from dockyard.server.config import Config
from dockyard.server.pipeline import STAGES, build_request_path
from dockyard.server.serving import gunicorn_settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def logging_entry(tmp_path) -> dict:
    return {"name": "logging", "options": {"file": str(tmp_path / "access.log")}}


def log_lines(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]


def test_a_write_refused_by_read_only_mode_is_logged_and_identified(tmp_path):
    config = Config(data=str(tmp_path / "data"), read_only=True, middleware=(logging_entry(tmp_path),))
    resp = webtest.TestApp(create_app(config)).post("/v2/repo/blobs/uploads/", status=503)
    assert resp.json["errors"][0]["code"] == "UNAVAILABLE"
    (line,) = log_lines(tmp_path)
    assert resp.headers["X-Request-ID"] == line["request_id"]
    assert (line["status"], line["error"]["code"], line["action"]) == (503, "UNAVAILABLE", "push")


def test_a_request_refused_for_an_encoded_slash_is_logged_and_identified(tmp_path):
    client = webtest.TestApp(create_app(make_config(tmp_path, logging_entry(tmp_path))))
    resp = client.get("/v2/a/b/tags/list", extra_environ={"RAW_URI": "/v2/a%2Fb/tags/list"}, status=400)
    assert resp.json["errors"][0]["code"] == "NAME_INVALID"
    (line,) = log_lines(tmp_path)
    assert resp.headers["X-Request-ID"] == line["request_id"] and line["status"] == 400


def test_an_anonymous_write_in_read_only_mode_is_asked_to_authenticate(tmp_path):
    seed(plain_client(tmp_path), "team/app")
    config = Config(data=str(tmp_path / "data"), read_only=True,
                    middleware=({"name": "auth", "options": auth_options(tmp_path)},))
    client = webtest.TestApp(create_app(config))
    resp = client.delete("/v2/team/app/manifests/v1", status=401)
    assert resp.json["errors"][0]["code"] == "UNAUTHORIZED" and "WWW-Authenticate" in resp.headers
    # With credentials that may delete, read-only mode answers.
    resp = client.delete("/v2/team/app/manifests/v1", headers=basic("admin", PASSWORDS["admin"]), status=503)
    assert resp.json["errors"][0]["code"] == "UNAVAILABLE"


class FileWrapper:
    """What gunicorn hands the app as wsgi.file_wrapper: it sends the file with sendfile(2) when it has fileno()."""

    def __init__(self, filelike, block_size=8192):
        self.filelike = filelike
        self.closed = False

    def __iter__(self):
        while chunk := self.filelike.read(65536):
            yield chunk

    def close(self):
        self.closed = True
        self.filelike.close()


def test_a_logged_blob_download_still_leaves_through_the_file_wrapper(tmp_path):
    seed(plain_client(tmp_path), "team/app")
    app = create_app(Config(data=str(tmp_path / "data"), sendfile=True, middleware=(logging_entry(tmp_path),)))
    layer = b"layer of team/app"
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/v2/team/app/blobs/{digest_of(layer)}",
               "wsgi.file_wrapper": FileWrapper, "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    statuses = []
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert statuses == ["200 OK"]
    assert isinstance(body, FileWrapper) and body.filelike.fileno() >= 0  # sendfile-able: a real file
    assert b"".join(body) == layer
    assert not (tmp_path / "access.log").read_text()  # the line waits for the end of the transfer
    body.close()
    (line,) = log_lines(tmp_path)
    assert line["status"] == 200 and line["bytes_out"] == len(layer)


class Noop:
    """A third-party middleware that does nothing."""

    def process_request(self, req, resp):
        pass


def test_the_request_path_is_the_documented_list(tmp_path):
    """Built-ins stand at their stage whatever their order in the config file; the README shows STAGES."""
    config = make_config(tmp_path, {"name": f"{__name__}.Noop"}, {"name": "auth", "options": auth_options(tmp_path)},
                         {"name": "ratelimit", "options": {}}, logging_entry(tmp_path),
                         {"name": "cors", "options": {"origins": ["https://ui.example.com"]}})
    path = build_request_path(config, create_app(config).registry)
    assert [stage for stage, _, _ in path.stages] == list(STAGES)
    section = README[README.index("### The request path"):]
    documented = re.findall(r"^\d+\. `([\w-]+)`", section, re.M)
    assert documented == list(STAGES)


def test_background_jobs_start_from_the_worker_hook_never_from_a_request(tmp_path):
    app = create_app(Config(data=str(tmp_path / "data"), gc_interval=3600))
    before = {t.name for t in threading.enumerate()}
    client = webtest.TestApp(app)
    for _ in range(3):
        client.get("/v2/")
    assert {t.name for t in threading.enumerate()} == before

    class Worker:
        wsgi = app

    gunicorn_settings(app.registry.config)["post_worker_init"](Worker())
    assert {"gc-schedule", "upload-purge"} <= {t.name for t in threading.enumerate()}
