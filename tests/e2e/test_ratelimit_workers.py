"""Issue 3: the rate limit holds across the 4 workers of `dockyard serve --workers 4`.

Timing cannot make this flaky: the bucket refills at 0.001 tokens a second, so the number of requests let through
is the burst (20), whatever the machine's speed; per-worker buckets would let up to 4 x 20 through (73 did, when
tried). Each request goes on a fresh connection, so gunicorn spreads them over its workers.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import pytest
import requests

pytestmark = pytest.mark.e2e

BURST = 20
CONFIG = """\
[[middleware]]
name = "logging"
[middleware.options]
file = "{log}"

[[middleware]]
name = "ratelimit"
[middleware.options]
limits = {{ manifest_read = {{ rate = 0.001, burst = {burst} }} }}
"""


def worker_pids(pid: int) -> set[int]:
    children = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            children.update(int(p) for p in fh.read().split())
    return children


def test_limit_is_shared_by_four_workers(start_dockyard, tmp_path):
    """Also: the access log holds exactly one JSON line per request, written by 4 workers into one file."""
    access_log = tmp_path / "access.log"
    server = start_dockyard(config=CONFIG.format(log=access_log, burst=BURST), workers=4)
    deadline = time.monotonic() + 60  # the first worker answers before the others have booted
    while len(worker_pids(server.proc.pid)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(worker_pids(server.proc.pid)) == 4
    time.sleep(1)  # let the last one reach accept()
    url = f"{server.url}/v2/e2e/rate/tags/list"

    def one(_):
        r = requests.get(url, timeout=30, headers={"Connection": "close"})
        return r.status_code, r.headers.get("Retry-After"), r.json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(4 * BURST)))
    allowed = [r for r in results if r[0] == 404]  # let through: the repository does not exist
    refused = [r for r in results if r[0] == 429]
    assert len(allowed) + len(refused) == len(results), {r[0] for r in results}
    assert abs(len(allowed) - BURST) <= BURST // 10, f"{len(allowed)} requests let through, burst is {BURST}"
    for status, retry_after, body in refused:
        assert body["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert retry_after is not None and int(retry_after) >= 1
    # Another class has a bucket of its own: the API root still answers.
    assert requests.get(f"{server.url}/v2/", timeout=30).status_code == 200

    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    mine = [e for e in entries if e["path"] == "/v2/e2e/rate/tags/list"]
    assert len(mine) == len(results)
    assert sorted(e["status"] for e in mine) == sorted(r[0] for r in results)
    assert all(e["error"]["code"] == "TOOMANYREQUESTS" for e in mine if e["status"] == 429)
    assert len({e["request_id"] for e in entries}) == len(entries)
    assert '"request_id"' not in server.log_path.read_text(errors="replace")  # no copy in gunicorn's log
