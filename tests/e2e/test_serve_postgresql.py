"""`dockyard serve` on PostgreSQL (issue 14): real gunicorn workers, each with a connection pool of its own opened
after the fork (the master built the app and ran start-up recovery on the database before forking, then closed its
pool), serving pushes and pulls from many threads at once."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

pytestmark = pytest.mark.e2e


def test_gunicorn_workers_each_use_their_own_connections(start_dockyard, postgresql, postgresql_url):
    server = start_dockyard(config=f'database = "{postgresql_url}"\n', workers=2)
    config = b'{"os": "linux"}'
    layer = b"a layer pushed through real workers"
    for data in (config, layer):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert server.request("POST", f"/v2/pg/app/blobs/uploads/?digest={digest}", data=data).status_code == 201
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": len(layer),
                    "digest": "sha256:" + hashlib.sha256(layer).hexdigest()}]}).encode()
    statuses: list[int] = []

    def client(i: int) -> None:
        import requests

        with requests.Session() as http:
            headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
            statuses.append(http.put(f"{server.url}/v2/pg/app/manifests/t{i}", data=manifest, headers=headers,
                                     timeout=60).status_code)
            for _ in range(10):
                statuses.append(http.get(f"{server.url}/v2/pg/app/manifests/t{i}", timeout=60).status_code)
                statuses.append(http.get(f"{server.url}/v2/pg/app/tags/list", timeout=60).status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses.count(201) == 12 and statuses.count(200) == 240, sorted(set(statuses))
    assert server.request("GET", "/v2/pg/app/tags/list").json()["tags"] == sorted(f"t{i}" for i in range(12))
    database = postgresql_url.split("?")[0].rsplit("/", 1)[1]
    # The workers' connections to this database: more than one process holds some (pools opened after the fork).
    clients = postgresql.execute(f"SELECT count(DISTINCT client_port) FROM pg_stat_activity WHERE datname = "
                                 f"'{database}' AND backend_type = 'client backend'")[0][0]
    assert clients >= 2
    log = server.log_since(0, lines=400)
    assert "Traceback" not in log and "database unavailable" not in log, log
