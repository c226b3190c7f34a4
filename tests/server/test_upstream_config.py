"""`[[upstreams]]` settings (issue 16): what each means, and every malformed or hostile table refused with a
ConfigError that names the upstream and the key."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.server.config import ConfigError, load_config
from dockyard.server.quotas import parse_size
from dockyard.server.upstream import (Upstream, UpstreamClient, check_upstreams, parse_challenge,
                                      upstream_from_table)


def load(tmp_path, text: str):
    path = tmp_path / "dockyard.toml"
    path.write_text(text)
    return load_config(path, environ={})


def test_a_prefix_upstream_and_a_namespace_upstream(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    config = load(tmp_path, f"""
[[upstreams]]
url = "https://registry-1.docker.io/"
prefix = "dockerhub/"
username = "me"
password_file = "{tmp_path / 'pw'}"
freshness = 60
max_size = "10GiB"

[[upstreams]]
name = "local-mirror"
url = "http://127.0.0.1:5001"
namespaces = ["library", "bitnami"]
tls_verify = false
timeout = 5
""")
    hub, mirror = config.upstreams
    assert (hub.name, hub.url, hub.prefix, hub.library, hub.password, hub.freshness, hub.max_size) == (
        "dockerhub", "https://registry-1.docker.io", "dockerhub/", True, "s3cret", 60, 10 * 2**30)
    assert "s3cret" not in repr(config)  # check-config prints settings: never the password
    assert hub.serves("dockerhub/alpine") and not hub.serves("dockerhub/") and not hub.serves("dockerhubx/a")
    assert hub.remote_name("dockerhub/alpine") == "library/alpine"
    assert hub.remote_name("dockerhub/bitnami/redis") == "bitnami/redis"
    assert (mirror.name, mirror.library, mirror.tls_verify, mirror.timeout, mirror.freshness) == (
        "local-mirror", False, False, 5, 300)
    assert mirror.serves("library/alpine") and mirror.serves("bitnami/a/b") and not mirror.serves("team/app")
    assert mirror.remote_name("library/alpine") == "library/alpine"
    assert mirror.scopes == ("library/", "bitnami/")


def test_library_is_docker_hub_s_habit_only():
    assert Upstream("ghcr", "https://ghcr.io", prefix="ghcr/").remote_name("ghcr/app") == "app"


BAD = [
    ('upstreams = "x"', "upstreams"),
    ("upstreams = [1]", "upstreams[0]': expected a table"),
    ('[[upstreams]]\nprefix = "a/"', "url: is required"),
    ('[[upstreams]]\nurl = "ftp://h"\nprefix = "a/"', "url: expected http"),
    ('[[upstreams]]\nurl = "https://"\nprefix = "a/"', "url: expected http"),
    ('[[upstreams]]\nurl = "https://u:p@h"\nprefix = "a/"', "credentials do not belong in the URL"),
    ('[[upstreams]]\nurl = "https://h/v2/"\nprefix = "a/"', "served at its root"),
    ('[[upstreams]]\nurl = "https://h?x=1"\nprefix = "a/"', "served at its root"),
    ('[[upstreams]]\nurl = "https://h:99999"\nprefix = "a/"', "url: not a URL"),
    ('[[upstreams]]\nurl = "https://h\\r\\nX: y"\nprefix = "a/"', "no control characters"),
    ('[[upstreams]]\nurl = 5\nprefix = "a/"', "url: expected a string"),
    ('[[upstreams]]\nurl = "https://h"', "exactly one of prefix"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nnamespaces = ["b"]', "exactly one of prefix"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a"', "prefix: expected"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "../"', "prefix: expected"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "A/"', "prefix: expected"),
    ('[[upstreams]]\nurl = "https://h"\nnamespaces = []', "namespaces: expected a list"),
    ('[[upstreams]]\nurl = "https://h"\nnamespaces = "library"', "namespaces: expected a list"),
    ('[[upstreams]]\nurl = "https://h"\nnamespaces = ["Library"]', "not a repository namespace"),
    ('[[upstreams]]\nurl = "https://h"\nnamespaces = [3]', "not a repository namespace"),
    ('[[upstreams]]\nurl = "https://h"\nnamespaces = ["a", "a"]', "listed twice"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\ncolour = 1', "unknown key(s) colour"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nname = "Not OK"', "name: expected"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nusername = "u"', "go together"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\npassword = "p"', "go together"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nusername = "a:b"\npassword = "p"', "may not contain ':'"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nusername = "u"\npassword = "p"\npassword_file = "/x"',
     "not both"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nusername = "u"\npassword_file = "/nonexistent/pw"',
     "password_file: cannot read"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\ntls_verify = "no"', "tls_verify: expected true or false"),
    ('[[upstreams]]\nurl = "http://h"\nprefix = "a/"\nca_bundle = "/etc/hostname"', "only meaningful for an https"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nca_bundle = "/nonexistent.pem"', "ca_bundle: cannot load"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\ntls_verify = false\nca_bundle = "/x"', "would not use it"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nfreshness = -1', "freshness: expected a whole number"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nfreshness = 1.5', "freshness: expected a whole number"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nfreshness = true', "freshness: expected a whole number"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\ntimeout = 0', "timeout: expected a whole number"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nmax_size = "lots"', "max_size: not a size"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nmax_size = -5', "max_size: not a size"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\n[[upstreams]]\nurl = "https://g"\nprefix = "a/b/"',
     "would have two upstreams"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "library/"\n[[upstreams]]\nurl = "https://g"\n'
     'namespaces = ["library"]', "would have two upstreams"),
    ('[[upstreams]]\nurl = "https://h"\nprefix = "a/"\nname = "x"\n[[upstreams]]\nurl = "https://g"\n'
     'prefix = "b/"\nname = "x"', "two upstreams are named 'x'"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_malformed_upstreams_are_refused_by_name(tmp_path, text, message):
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, text)
    assert message in str(refused.value) and "upstreams" in str(refused.value)


def test_upstreams_come_from_the_file_only():
    with pytest.raises(ConfigError, match="DOCKYARD_UPSTREAMS"):
        load_config(environ={"DOCKYARD_UPSTREAMS": "x"})


@pytest.mark.parametrize("header,expected", [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull"',
     ("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                 "scope": "repository:a/b:pull"})),
    ('Basic realm="Registry Realm"', ("basic", {"realm": "Registry Realm"})),
    ('bearer realm=x, service="a \\"quoted\\" b"', ("bearer", {"realm": "x", "service": 'a "quoted" b'})),
    ("", ("", {})),
    (None, ("", {})),
    ("Bearer " + "x" * 5000, ("", {})),
    ('Bearer ,,,=="', ("bearer", {})),
])
def test_challenges_are_read_and_garbage_is_nothing(header, expected):
    assert parse_challenge(header) == expected


def test_check_config_shows_the_upstreams_and_never_a_password(tmp_path, capsys):
    from dockyard.server import cli

    path = tmp_path / "dockyard.toml"
    path.write_text('[[upstreams]]\nurl = "https://registry-1.docker.io"\nprefix = "dockerhub/"\n'
                    'username = "me"\npassword = "hunter2-secret"\n')
    assert cli.main(["check-config", "--config", str(path), "--data", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "upstreams = " in out and "dockerhub/" in out and "registry-1.docker.io" in out
    assert "hunter2-secret" not in out
    path.write_text('[[upstreams]]\nurl = "https://registry-1.docker.io"\n')
    assert cli.main(["check-config", "--config", str(path)]) == 2
    assert "upstreams[0]" in capsys.readouterr().err


# -- every parser of what an upstream or a config file says, fed arbitrary input --------------------------------------

PROPERTY = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40)),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                  max_size=4), max_leaves=10)
KEYS = st.sampled_from(["url", "prefix", "namespaces", "name", "library", "username", "password", "tls_verify",
                        "freshness", "max_size", "timeout", "ca_bundle", "other"])


@PROPERTY
@given(st.one_of(VALUES, st.dictionaries(KEYS, st.one_of(VALUES, st.just("https://h"), st.just("a/"),
                                                          st.just(["library"])), max_size=6)))
def test_any_upstream_table_is_an_upstream_or_a_value_error(table):
    try:
        upstream = upstream_from_table(table, size_of=parse_size)
    except ValueError:
        return
    check_upstreams((upstream,))
    assert upstream.url.startswith(("http://", "https://")) and upstream.scopes


@PROPERTY
@given(st.text(max_size=300))
def test_any_challenge_is_read_or_nothing(header):
    scheme, params = parse_challenge(header)
    assert isinstance(scheme, str) and all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


@PROPERTY
@given(st.one_of(st.none(), st.text(max_size=300), st.builds(lambda path: f'<{path}>; rel="next"', st.text())))
def test_a_next_link_is_followed_only_on_the_upstream(header):
    client = UpstreamClient(Upstream("up", "http://127.0.0.1:5000", prefix="a/"))
    following = client._next_link(header)
    assert following is None or following.startswith("/v2/")
