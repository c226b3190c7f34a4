"""Tests of the benchmark's own arithmetic and parsing (no servers): python -m pytest bench/test_bench.py"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import nginx_front
import rates
import run
from harness import BenchError, alternate, parse_size

WRK_404 = """\
Running 1s test @ http://127.0.0.1:18777/nonexistent
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.79ms    7.17ms  48.28ms   88.65%
    Req/Sec   492.15    199.26   770.00     55.00%
  Latency Distribution
     50%    2.80ms
     75%    6.26ms
     90%   14.14ms
     99%   36.01ms
  984 requests in 1.05s, 499.69KB read
  Non-2xx or 3xx responses: 984
Requests/sec:    936.20
Transfer/sec:    475.41KB
"""

WRK_SLOW = """\
Running 10s test @ http://127.0.0.1:5000/v2/_catalog?n=100
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   250.10ms  100.00ms   1.20s    70.00%
    Req/Sec    60.00     20.00   100.00     60.00%
  Latency Distribution
     50%  850.00us
     75%  200.00ms
     90%  600.00ms
     99%    1.20s
  1010 requests in 10.01s, 5.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
Requests/sec:    100.90
Transfer/sec:    511.00KB
"""


def test_parse_wrk_reads_rate_latencies_and_non_2xx():
    result = rates.parse_wrk(WRK_404)
    assert result.requests_per_s == 936.20
    assert result.requests == 984
    assert result.p50_ms == 2.80 and result.p99_ms == 36.01
    assert result.non_2xx == 984 and result.errors == 984


def test_parse_wrk_converts_units_and_counts_socket_errors():
    result = rates.parse_wrk(WRK_SLOW)
    assert result.p50_ms == pytest.approx(0.85)
    assert result.p99_ms == pytest.approx(1200.0)
    assert result.socket_errors == {"connect": 0, "read": 3, "write": 0, "timeout": 2}
    assert result.errors == 5 and result.non_2xx == 0


def test_parse_wrk_refuses_a_report_without_latency_distribution():
    with pytest.raises(BenchError):
        rates.parse_wrk(WRK_404.replace("Latency Distribution", "Something else"))


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert rates.percentile(values, 99) == 99.0
    assert rates.percentile(values, 50) == 50.0
    assert rates.percentile([5.0], 99) == 5.0


def test_alternate_flips_the_order_every_round():
    assert alternate(["a", "b"], 0) == ["a", "b"]
    assert alternate(["a", "b"], 1) == ["b", "a"]


def test_parse_size():
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("16KiB") == 16 << 10


def test_goals_are_judged_on_the_ratio_or_the_absolute_value():
    goal, check = run.at_least(4)
    assert run.Row("x", "req/s", 400.0, 100.0, goal, check).met == "yes"
    assert run.Row("x", "req/s", 399.0, 100.0, goal, check).met == "NO"
    goal, check = run.at_most(0.25)
    assert run.Row("x", "ms", 20.0, 100.0, goal, check).met == "yes"
    assert run.Row("x", "ms", 30.0, 100.0, goal, check).met == "NO"
    assert run.Row("x", "MiB", 81.0, 30.0, "<= 80 MiB", lambda value, r: value <= 80).met == "NO"
    assert run.Row("x", "MiB", None, 30.0, "<= 80 MiB", lambda value, r: value <= 80).met == "-"


def test_only_selects_figures_and_brings_blob_rounds_with_nginx_and_memory():
    args = run.parse_args(["--only", "pull_nginx,catalog"])
    assert run.selected(args) == ["push_monolithic", "push_chunked", "pull", "pull_nginx", "catalog"]
    with pytest.raises(BenchError):
        run.selected(run.parse_args(["--only", "nonsense"]))


def test_deploy_site_becomes_plain_http_on_our_addresses(tmp_path, monkeypatch):
    site = tmp_path / "dockyard.conf"
    site.write_text("""\
# a comment with braces {}
upstream dockyard {
    server 127.0.0.1:5000;
    keepalive 32;
}
server {
    listen 80;
    return 301 https://$host$request_uri;
}
server {
    listen 443 ssl;
    listen [::]:443 ssl;
    ssl_certificate /etc/ssl/x.pem;
    location / { proxy_pass http://dockyard; }
    location /_blobs/ {
        internal;
        alias /var/lib/dockyard/blobs/;
    }
}
""")
    monkeypatch.setattr(nginx_front, "DEPLOY_SITE", site)
    text = nginx_front.deploy_site("127.0.0.1:1111", "127.0.0.1:2222", Path("/data/blobs"))
    assert "return 301" not in text and "ssl" not in text and "443" not in text
    assert text.count("listen 127.0.0.1:2222;") == 1
    assert "server 127.0.0.1:1111;" in text
    assert "alias /data/blobs/;" in text
    assert nginx_front.accel_prefix() == "/_blobs"


def test_the_reference_on_s3_gets_an_s3_storage_block_in_place_of_the_filesystem():
    import s3
    from harness import reference_config

    class Store:
        access_key, secret_key, region, endpoint = "test:tester", 'se"cret', "us-east-1", "http://127.0.0.1:9"

    text = reference_config(Path("/tmp/ref data"), "127.0.0.1:5000", s3.reference_storage(Store(), "bucket-1"))
    assert "filesystem:" not in text and "rootdirectory: /\n" in text
    assert '    secretkey: "se\\"cret"\n' in text and '    bucket: "bucket-1"\n' in text
    assert "  redirect:\n    disable: true\n" in text and "chunksize: 8388608" in text
    assert "  cache:\n    blobdescriptor: inmemory\n" in text and "  delete:\n    enabled: true\n" in text
