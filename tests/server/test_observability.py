"""Health, readiness, Prometheus metrics and X-Accel-Redirect blob downloads, at the WSGI level (issue 6)."""

import math
import multiprocessing
import os
import re
import shutil

import pytest
import webtest

from dockyard.server.app import create_app
from dockyard.server.config import Config
from dockyard.server.metrics import Family, Metrics

from helpers import digest_of, image_manifest, push_blob, put_manifest

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> tuple[dict, dict]:
    """A strict reader of the Prometheus text format: ({family: type}, {(name, labels): value})."""
    types, samples, helped = {}, {}, set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in types
            types[name] = kind
        else:
            match = SAMPLE_RE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, _, labels, value = match.groups()
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
            assert family in types, f"sample {name} of no declared family"
            parsed = tuple(LABEL_RE.findall(labels or ""))
            assert ",".join(f'{k}="{v}"' for k, v in parsed) == (labels or "")
            key = (name, parsed)
            assert key not in samples, f"duplicate sample {line}"
            samples[key] = float(value)
    assert helped == set(types)
    return types, samples


def total(samples: dict, name: str, **labels) -> float:
    return sum(value for (sample, pairs), value in samples.items()
               if sample == name and all(dict(pairs).get(k) == v for k, v in labels.items()))


def scrape(client) -> dict:
    resp = client.get("/metrics")
    assert resp.content_type == "text/plain"
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_exposition(resp.text)[1]


def test_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}
    client.head("/healthz", status=200)


def test_readyz_checks_the_database_and_the_data_directory(request, client, config):
    assert client.get("/readyz").json == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}
    assert not list(config.data_path.glob(".readyz-*"))  # the write probe cleans up after itself
    if config.database.startswith("postgresql://"):  # the --metadata=postgresql pass
        database = config.database.split("?")[0].rsplit("/", 1)[1]
        request.getfixturevalue("postgresql").execute(f"DROP DATABASE {database} WITH (FORCE)")
    else:
        os.unlink(config.data_path / "registry.db")
    resp = client.get("/readyz", status=503)
    assert resp.json["status"] == "not ready" and resp.json["checks"]["database"].startswith("failed")
    assert resp.json["checks"]["storage"] == "ok"
    shutil.rmtree(config.data_path)
    checks = client.get("/readyz", status=503).json["checks"]
    assert checks["storage"].startswith("failed") and checks["database"].startswith("failed")


def test_metrics_count_what_happened(client):
    before = scrape(client)
    layers = [os.urandom(1000), os.urandom(2000), os.urandom(3000)]
    put_manifest(client, "team/app", "v1", image_manifest(client, "team/app", layers=layers))
    client.post("/v2/team/app/blobs/uploads/?mount=" + digest_of(layers[0]) + "&from=team/app", status=201)
    session = client.post("/v2/team/app/blobs/uploads/", status=202).headers["Location"]
    chunked = os.urandom(5000)
    client.patch(session, chunked, status=202)
    client.put(f"{session}?digest={digest_of(chunked)}", status=201)
    client.get("/v2/nope/manifests/latest", status=404)
    after = scrape(client)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    # Four blobs by monolithic POST (config + three layers), one by POST/PATCH/PUT; the mount is not an upload.
    assert delta("dockyard_blob_uploads_total") == 5
    sizes = len(b'{"os":"linux"}') + sum(map(len, layers)) + len(chunked)
    assert delta("dockyard_blob_upload_bytes_total") == sizes
    assert delta("dockyard_http_request_bytes_total") >= sizes
    assert delta("dockyard_http_requests_total", method="PUT", route="/v2/{name}/manifests/{reference}",
                 status="201") == 1
    assert delta("dockyard_http_requests_total", method="POST", route="/v2/{name}/blobs/uploads/",
                 status="201") == 5
    assert delta("dockyard_http_requests_total", method="GET", route="/v2/{name}/manifests/{reference}",
                 status="404") == 1
    assert delta("dockyard_http_requests_total", route="/metrics") == 1  # the first scrape
    assert total(after, "dockyard_storage_blobs") == 5
    assert total(after, "dockyard_storage_blob_bytes") == sizes
    assert total(after, "dockyard_uploads_in_progress") == 0
    assert total(after, "dockyard_upload_sessions") == 0


def test_histogram_is_cumulative_and_consistent(client):
    for _ in range(3):
        client.get("/v2/")
    _, samples = parse_exposition(client.get("/metrics").text)
    labels = (("method", "GET"), ("route", "/v2/"))
    buckets = sorted(((float(dict(pairs)["le"]), value) for (name, pairs), value in samples.items()
                      if name == "dockyard_http_request_duration_seconds_bucket"
                      and tuple(p for p in pairs if p[0] != "le") == labels))
    assert buckets[-1][0] == math.inf and buckets[-1][1] == 3
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert samples[("dockyard_http_request_duration_seconds_count", labels)] == 3
    assert 0 < samples[("dockyard_http_request_duration_seconds_sum", labels)] < 3 * 10


def test_unrouted_paths_share_one_label(client):
    client.get("/not/a/route/1", status=404)
    client.get("/not/a/route/2", status=404)
    samples = scrape(client)
    assert total(samples, "dockyard_http_requests_total", route="unmatched", status="404") == 2


# -- the shared store across processes -------------------------------------------------------------------------

FAMILIES = (Family("t_total", "counter", "a counter"), Family("t_busy", "gauge", "a gauge"),
            Family("t_seconds", "histogram", "a histogram", (0.1, 1.0)))


def _worker(directory, n):
    metrics = Metrics(directory, FAMILIES)
    for i in range(n):
        metrics.inc("t_total", (("route", "/a"),))
        metrics.observe("t_seconds", (), 0.5)
    metrics.inc("t_busy")  # left "in progress" when the process exits


def test_samples_add_up_across_processes_and_dead_gauges_drop(tmp_path):
    directory = tmp_path / "metrics"
    Metrics.reset(directory)
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_worker, args=(directory, 1000 + i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    here = Metrics(directory, FAMILIES)
    here.inc("t_busy")
    types, samples = parse_exposition(here.render().decode())
    assert types == {"t_total": "counter", "t_busy": "gauge", "t_seconds": "histogram"}
    assert samples[("t_total", (("route", "/a"),))] == 3003  # exited workers' requests still happened
    assert samples[("t_busy", ())] == 1  # only this live process's gauge
    assert samples[("t_seconds_bucket", (("le", "0.1"),))] == 0
    assert samples[("t_seconds_bucket", (("le", "1"),))] == 3003
    assert samples[("t_seconds_bucket", (("le", "+Inf"),))] == 3003
    assert samples[("t_seconds_count", ())] == 3003
    Metrics.reset(directory)
    assert Metrics(directory, FAMILIES).samples() == {}


def test_many_series_grow_the_file(tmp_path):
    metrics = Metrics(tmp_path, (Family("t_total", "counter", "c"),))
    for i in range(5000):
        metrics.inc("t_total", (("route", f"/r/{i}" + "x" * 40),), i)
    samples = metrics.samples()
    assert len(samples) == 5000 and sum(samples.values()) == sum(range(5000))


def test_label_values_are_escaped(tmp_path):
    metrics = Metrics(tmp_path, (Family("t_total", "counter", "c"),))
    metrics.inc("t_total", (("route", 'a"b\\c\nd'),))
    _, samples = parse_exposition(metrics.render().decode())
    assert list(samples) == [("t_total", (("route", 'a\\"b\\\\c\\nd'),))]


# -- X-Accel-Redirect ------------------------------------------------------------------------------------------

@pytest.fixture
def accel_client(tmp_path):
    return webtest.TestApp(create_app(Config(data=str(tmp_path / "data"), accel_redirect="/_dockyard_blobs/")))


def test_blob_get_hands_the_file_to_nginx(accel_client, tmp_path):
    blob = os.urandom(4096)
    digest = push_blob(accel_client, "repo", blob)
    for headers in ({}, {"Range": "bytes=10-19"}):
        resp = accel_client.get(f"/v2/repo/blobs/{digest}", headers=headers, status=200)
        hexpart = digest.split(":")[1]
        # The blob's storage key: its digest's path, suffixed with the upload session that stored it.
        assert resp.headers["X-Accel-Redirect"].startswith(f"/_dockyard_blobs/sha256/{hexpart[:2]}/{hexpart}.")
        assert resp.body == b"" and resp.headers["Docker-Content-Digest"] == digest
        assert resp.headers["Content-Type"] == "application/octet-stream"
    # The redirect names the very file nginx's alias (<data>/blobs/) will serve.
    target = resp.headers["X-Accel-Redirect"].removeprefix("/_dockyard_blobs/")
    assert (tmp_path / "data" / "blobs" / target).read_bytes() == blob
    head = accel_client.head(f"/v2/repo/blobs/{digest}")
    assert "X-Accel-Redirect" not in head.headers and head.headers["Content-Length"] == str(len(blob))


def test_access_is_checked_before_any_redirect(accel_client):
    digest = push_blob(accel_client, "owner", b"private bytes")
    resp = accel_client.get(f"/v2/intruder/blobs/{digest}", status=404)
    assert "X-Accel-Redirect" not in resp.headers and resp.json["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_without_accel_redirect_python_streams_the_blob(client):
    digest = push_blob(client, "repo", b"streamed")
    resp = client.get(f"/v2/repo/blobs/{digest}")
    assert resp.body == b"streamed" and "X-Accel-Redirect" not in resp.headers


def test_health_and_metrics_need_no_credentials_under_auth(tmp_path):
    """The README promises it: probes and scrapers carry no credentials; /v2/ still asks for them."""
    import bcrypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}\n")
    config = Config(data=str(tmp_path / "data"), middleware=(
        {"name": "auth", "options": {"htpasswd": str(htpasswd)}},))
    client = webtest.TestApp(create_app(config))
    for path in ("/healthz", "/readyz", "/metrics"):
        client.get(path, status=200)
    client.get("/v2/", status=401)
