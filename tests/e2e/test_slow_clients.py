"""Issue 12, finding 3: 200 stalled connections held open while a client pulls and pushes.

`dockyard serve` with its default workers and threads, auth on (anonymous pulls allowed, pushes authenticated), and
short timeouts (header_timeout 4 s, body_timeout 8 s) so the test sees them act. While the stalled connections
(tests/e2e/conftest.py: `stall_scenario`) are held, every pull answers in under a second and pushes go through;
each stalled connection is closed by the server once its timeout has passed. The same through the deploy/ nginx
site is in test_nginx.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time

import pytest
import requests

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT, BODY_TIMEOUT = 4, 8
CONFIG = f"""\
header_timeout = {HEADER_TIMEOUT}
body_timeout = {BODY_TIMEOUT}

[[middleware]]
name = "auth"
[middleware.options]
htpasswd = "{{htpasswd}}"
anonymous_pull = ["*"]
rules = [{{{{ users = ["pusher"], repositories = ["*"], actions = ["pull", "push"] }}}}]
"""
BASIC = "Basic " + base64.b64encode(b"pusher:pusher-pw").decode()
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(http: requests.Session, url: str, repo: str, tag: str) -> str:
    """Push a small image; return its layer's digest."""
    layer, config = f"layer {repo}:{tag} {time.time()}".encode(), b'{"os":"linux"}'
    for blob in (layer, config):
        r = http.post(f"{url}/v2/{repo}/blobs/uploads/", params={"digest": digest(blob)}, data=blob, timeout=10)
        assert r.status_code == 201, r.text
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest(config), "size": len(config)},
                           "layers": [{"mediaType": "application/octet-stream", "digest": digest(layer),
                                       "size": len(layer)}]})
    r = http.put(f"{url}/v2/{repo}/manifests/{tag}", data=manifest, timeout=10, headers={"Content-Type": MANIFEST})
    assert r.status_code == 201, r.text
    return digest(layer)


def pull_twice(http: requests.Session, url: str, repo: str, layer: str) -> list[float]:
    """A manifest and a blob pulled; the time each took."""
    times = []
    for path in (f"/v2/{repo}/manifests/v1", f"/v2/{repo}/blobs/{layer}"):
        started = time.monotonic()
        r = http.get(url + path, timeout=10, headers={"Accept": MANIFEST})
        times.append(time.monotonic() - started)
        assert r.status_code == 200, r.text
    return times


def test_200_stalled_connections_starve_nobody(start_dockyard, stalled_clients, tmp_path):
    from dockyard.middleware.htpasswd import hash_password, write_users
    htpasswd = tmp_path / "htpasswd"
    write_users(htpasswd, {"pusher": hash_password("pusher-pw", rounds=4)})
    server = start_dockyard(config=CONFIG.format(htpasswd=htpasswd), workers=None)  # two workers per core
    pusher, puller = requests.Session(), requests.Session()
    pusher.headers["Authorization"] = BASIC
    layer = push_image(pusher, server.url, "library/app", "v1")
    report = stalled_clients.run(lambda: socket.create_connection(("127.0.0.1", server.port), timeout=10), BASIC,
                             pull=lambda: pull_twice(puller, server.url, "library/app", layer),
                             push=lambda n: push_image(pusher, server.url, "library/app", f"t{n}"),
                             hold=BODY_TIMEOUT + 6)
    stalled_clients.check(report, HEADER_TIMEOUT, BODY_TIMEOUT)
