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


# --- issue 18: the median-of-rounds rule, the machine's limits, the concurrency benchmark ------------------------


def test_a_rate_goal_holds_when_the_median_meets_it_and_the_worst_round_is_within_ten_percent_of_it():
    goal, check = run.at_least(4)
    steady = run.Rounds((400.0, 420.0, 410.0, 405.0, 415.0), (100.0,) * 5)
    row = run.Row("x", "req/s", 410.0, 100.0, goal, check, steady, stable=True)
    assert row.ratio == 4.1 and row.met == "yes"
    shaky = run.Rounds((400.0, 420.0, 410.0, 340.0, 415.0), (100.0,) * 5)  # 3.4 is 15% below the goal 4
    assert run.Row("x", "req/s", 410.0, 100.0, goal, check, shaky, stable=True).met == "NO (unstable)"
    assert run.Row("x", "req/s", 410.0, 100.0, goal, check, shaky).met == "yes"  # blob rows: the median alone
    low = run.Rounds((390.0,) * 5, (100.0,) * 5)
    assert run.Row("x", "req/s", 390.0, 100.0, goal, check, low, stable=True).met == "NO"
    spread = run.Rounds((800.0, 820.0, 810.0, 370.0, 815.0), (100.0,) * 5)  # far from its median, not from the goal
    assert run.Row("x", "req/s", 810.0, 100.0, goal, check, spread, stable=True).met == "yes"


def test_an_at_most_goal_judges_the_worst_round_as_the_highest():
    goal, check = run.at_most(0.25)
    p99 = run.Rounds((20.0, 21.0, 20.0, 28.0, 20.0), (100.0,) * 5)  # median 0.20, worst 0.28 is 12% over 0.25
    assert run.Row("x", "ms", 20.0, 100.0, goal, check, p99, stable=True).met == "NO (unstable)"
    p99 = run.Rounds((20.0, 21.0, 20.0, 21.5, 20.0), (100.0,) * 5)
    assert run.Row("x", "ms", 20.0, 100.0, goal, check, p99, stable=True).met == "yes"


def test_the_ratio_is_the_median_of_per_round_ratios_and_the_table_shows_min_max():
    rounds = run.Rounds((100.0, 300.0, 200.0), (100.0, 100.0, 50.0))
    assert rounds.ratios == (1.0, 3.0, 4.0)
    row = run.Row("x", "req/s", 200.0, 100.0, *run.at_least(1), rounds, stable=True)
    assert row.ratio == 3.0
    table = run.format_table([row])
    assert "100-300" in table and "50-100" in table and "1.00-4.00" in table


def test_a_fraction_of_the_limit_is_judged_on_dockyards_own_value():
    goal, check = run.value_at_least(60, "%")
    assert goal == ">= 60%"
    assert run.Row("x", "%", 61.0, 20.0, goal, check, show_ratio=False).met == "yes"
    assert run.Row("x", "%", 59.0, 20.0, goal, check, show_ratio=False).met == "NO"
    assert run.Row("x", "%", 61.0, 20.0, goal, check, show_ratio=False).ratio is None


def test_the_lowest_limit_takes_the_faster_way_of_each_and_the_slowest_of_the_three():
    import limits

    measured = limits.Limits(sha256_hashlib=1200.0, sha256_resumable=1300.0, write_page_cache=350.0,
                             write_direct=1500.0, loopback=3000.0)
    assert measured.sha256 == 1300.0 and measured.write == 1500.0
    assert measured.lowest == ("sha256", 1300.0)
    assert limits.fraction(650.0, measured) == 0.5
    no_direct = limits.Limits(1200.0, None, 350.0, None, 3000.0)
    assert no_direct.lowest == ("fsync'd write", 350.0)
    middle = limits.median_limits([measured, no_direct, limits.Limits(1000.0, 1100.0, 400.0, 1700.0, 2000.0)])
    assert middle.sha256_hashlib == 1200.0 and middle.write_direct == 1600.0 and middle.loopback == 3000.0
    assert limits.median_limits([]) is None


def test_concurrency_levels_parse_and_refuse_nonsense():
    import argparse

    import concurrency

    assert concurrency.parse_levels("10,50,50/50,200,200") == ((10, 50, 50), (50, 200, 200))
    with pytest.raises(argparse.ArgumentTypeError):
        concurrency.parse_levels("10,50")
    assert concurrency.rotate(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert concurrency.rotate(["a", "b", "c"], 3) == ["a", "b", "c"]


def _sample(target, pull_mb, manifest_p99, errors=0):
    import concurrency

    classes = {c: {"operations": 1, "per_s": 1.0, "mb_per_s": 1.0, "errors": 0, "messages": [], "p50_ms": 1.0,
                   "p99_ms": 2.0} for c in ("pushers", "pullers", "readers")}
    classes["pullers"] = classes["pullers"] | {"mb_per_s": pull_mb}
    classes["readers"] = classes["readers"] | {"p99_ms": manifest_p99, "errors": errors}
    return concurrency.Sample(target, 10.0, classes, 0.5, 0.9, 1.0, 0.2, 50.0, 200.0, 40, 30, 8)


def test_concurrency_goals_are_pull_throughput_manifest_p99_and_no_errors():
    import concurrency

    by_target = {"dockyard": [_sample("dockyard", 500.0, 10.0), _sample("dockyard", 700.0, 30.0)],
                 "reference": [_sample("reference", 400.0, 20.0), _sample("reference", 400.0, 25.0)],
                 "ceiling": [_sample("ceiling", 900.0, 5.0)]}
    lines = {line.label: line for line in concurrency.level_lines(by_target)}
    assert lines["pullers: throughput"].values["dockyard"] == 600.0
    assert lines["pullers: throughput"].met == "yes" and lines["pullers: throughput"].ratio == 1.5
    assert lines["  manifest p99"].met == "yes"  # median 20 ms against the reference's 22.5
    assert lines["errors, all classes, all rounds"].met == "yes"
    by_target["dockyard"][1] = _sample("dockyard", 700.0, 30.0, errors=3)
    by_target["dockyard"][0] = _sample("dockyard", 100.0, 40.0)
    lines = {line.label: line for line in concurrency.level_lines(by_target)}
    assert lines["errors, all classes, all rounds"].values["dockyard"] == 3
    assert lines["errors, all classes, all rounds"].met == "NO"
    assert lines["pullers: throughput"].met == "yes"  # median (100, 700) = 400 = the reference's
    assert lines["  manifest p99"].met == "NO"
    assert "ceiling" in concurrency.format_level((1, 2, 3), list(lines.values()))


def test_load_generator_shares_clients_and_follows_only_the_path_of_a_location():
    import loadgen

    work = loadgen.Workload(1, "r", "t", "d", (), "p", pushers=5, pullers=0, readers=3, push_size=1 << 20,
                            push_rate=1 << 20, seconds=1.0)
    assert loadgen.shares(work, 2) == [{"pushers": 3, "pullers": 0, "readers": 2},
                                       {"pushers": 2, "pullers": 0, "readers": 1}]
    assert loadgen._path("http://example.com:5000/v2/r/blobs/uploads/u?_state=x") == "/v2/r/blobs/uploads/u?_state=x"
    assert loadgen._path("/v2/r/blobs/uploads/u") == "/v2/r/blobs/uploads/u"
    merged = loadgen.ClassResult(2, [1.0, 2.0], 10, 1, ["a"])
    merged.merge(loadgen.ClassResult(1, [3.0], 5, 0, []))
    assert (merged.operations, merged.latencies_ms, merged.bytes, merged.errors) == (3, [1.0, 2.0, 3.0], 15, 1)


def test_the_nginx_set_up_is_sized_for_many_clients_and_serves_the_ceiling():
    config = nginx_front.MAIN_CONFIG.format(prefix="/p", sites="", connections=nginx_front.WORKER_CONNECTIONS,
                                            open_files=nginx_front.OPEN_FILES)
    assert "worker_connections 16384;" in config and "worker_rlimit_nofile 65536;" in config
    site = nginx_front.CEILING_SITE.format(listen="127.0.0.1:1", root="/static")
    assert "root /static;" in site and "return 201;" in site and "return 202;" in site


def test_a_rate_round_measures_each_registry_twice_in_mirrored_order():
    a, b = object(), object()
    assert run.mirrored([a, b], 1) == [(b, 0), (a, 0), (a, 1), (b, 1)]
    assert run.mirrored([a, b], 2) == [(a, 0), (b, 0), (b, 1), (a, 1)]


def test_two_halves_of_a_round_combine_into_one_result():
    first = rates.parse_wrk(WRK_404)  # 984 requests at 936.2/s, p99 36.01 ms
    second = rates.parse_wrk(WRK_SLOW)  # 1010 requests at 100.9/s, p99 1200 ms, 5 socket errors
    combined = run.combine("manifest_tag", [first, second])
    seconds = 984 / 936.2 + 1010 / 100.9
    assert combined["per_s"] == pytest.approx(1994 / seconds)
    assert combined["p99_ms"] == pytest.approx((36.01 + 1200.0) / 2)
    assert combined["errors"] == 984 + 5
    puts = run.combine("tag_put", [rates.SequenceResult(2, 1.0, [1.0, 2.0]), rates.SequenceResult(2, 3.0, [3.0, 9.0])])
    assert puts["per_s"] == 1.0 and puts["p99_ms"] == 9.0
    uploads = run.combine("small_uploads", [rates.UploadsResult(10, 1.0, 0, None),
                                            rates.UploadsResult(10, 1.0, 2, "boom")])
    assert uploads["per_s"] == 9.0 and uploads["errors"] == 2 and uploads["first_error"] == "boom"
