"""Issue 11: every parser of request input either returns a value within its bounds or raises a registry error
(a 4xx in the spec's shape): hypothesis feeds each arbitrary input, hostile shapes weighted in."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dockyard.middleware.access import required_access
from dockyard.middleware.auth import _basic_credentials
from dockyard.middleware.htpasswd import parse as parse_htpasswd
from dockyard.middleware.logging import scrub_query
from dockyard.middleware.tokens import granted_actions, parse_scopes
from dockyard.server import parsing
from dockyard.server.errors import ERROR_TABLE, BadRequest, RegistryError, error_body
from dockyard.server.names import parse_digest, parse_reference, validate_name
from dockyard.server.proxies import TrustedProxies

SETTINGS = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))
HOSTILE = st.sampled_from(["", "\u00b2", "\u0663", "9" * 5000, "-1", "1e400", "NaN", "\x00", "%2e%2e", "//", "\\",
                           "bytes=", "bytes=-", "bytes=" + "9" * 30 + "-", " 0-1 "])
texts = st.one_of(st.text(), HOSTILE, st.from_regex(r"(bytes[ =])?[0-9]{0,25}-[0-9]{0,25}", fullmatch=True))


def only_registry_errors(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except RegistryError as exc:
        assert 400 <= exc.status < 500 and exc.code in ERROR_TABLE
        json.loads(error_body(exc))  # and its body is valid JSON
        return None


@SETTINGS
@given(texts, st.integers(0, 10**12))
def test_byte_range(header, size):
    value = only_registry_errors(parsing.byte_range, header, size)
    if value is not None:
        start, end = value
        assert 0 <= start <= end < size


@SETTINGS
@given(texts)
@example("0-" + "9" * 5000)
def test_content_range(header):
    value = only_registry_errors(parsing.content_range, header)
    if value is not None:
        assert 0 <= value[0] <= value[1] < 10 ** parsing.MAX_DIGITS


@SETTINGS
@given(st.one_of(st.none(), texts), st.integers(1, 10000))
def test_page_size(raw, maximum):
    value = only_registry_errors(parsing.page_size, raw, default=None, maximum=maximum)
    assert value is None or 0 <= value <= maximum


@SETTINGS
@given(st.one_of(texts, st.integers(), st.booleans(), st.floats(), st.none(), st.lists(st.integers())))
def test_options(raw):
    assert only_registry_errors(parsing.boolean, raw, "x") in (True, False, None)
    value = only_registry_errors(parsing.count, raw, "x")
    assert value is None or (isinstance(value, int) and value >= 0)


def json_documents():
    values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
                          lambda inner: st.one_of(st.lists(inner), st.dictionaries(st.text(), inner)))
    return st.one_of(
        st.binary(),
        values.map(lambda v: json.dumps(v).encode()),  # NaN and Infinity included: json.dumps writes them
        st.integers(1, 20000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 20000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.integers(1, 10000).map(lambda n: b"1" * n),
        st.text().map(lambda t: json.dumps(t).encode()),
    )


@SETTINGS
@given(json_documents())
@example(b'"\\\\"' + b"[" * 100)
@example(b'{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
def test_json_document(data):
    document = only_registry_errors(parsing.json_document, data)
    if document is not None:
        text = json.dumps(document, allow_nan=False)  # strict: it can be said back
        assert parsing._nesting(text.encode()) <= parsing.JSON_MAX_DEPTH


@SETTINGS
@given(st.text(), st.one_of(st.none(), st.text()))
@example("//v2/_catalog", None)
@example("/v2/_catalog", "/v2/%2e%2e/x")
def test_check_path(path, raw):
    try:
        parsing.check_path(path, raw)
    except RegistryError as exc:
        assert exc.code in ("BAD_REQUEST", "NAME_INVALID")
        return
    assert path.startswith("/") and "//" not in path and "/./" not in path + "/" and "/../" not in path + "/"


@SETTINGS
@given(st.binary(max_size=70000))
def test_form(data):
    form = only_registry_errors(parsing.form, data)
    assert form is None or isinstance(form, dict)


@SETTINGS
@given(st.one_of(texts, st.from_regex(r"(sha256|sha512|md5):[0-9a-fA-F]{0,130}", fullmatch=True)))
def test_digests_and_references(value):
    only_registry_errors(parse_digest, value)
    only_registry_errors(parse_reference, value)
    only_registry_errors(validate_name, value)


@SETTINGS
@given(st.text(), st.one_of(st.none(), st.text()), st.text())
def test_client_addresses(peer, forwarded, networks):
    try:
        proxies = TrustedProxies.parse(networks)
    except ValueError:
        proxies = TrustedProxies.parse("127.0.0.0/8, ::1")
    assert isinstance(proxies.client_address(peer, forwarded), str)


@SETTINGS
@given(st.text())
def test_basic_credentials_scopes_and_queries(text):
    credentials = _basic_credentials(text)
    assert credentials is None or (credentials[0] and isinstance(credentials[1], str))
    for scope in parse_scopes([text]):
        assert scope.type and scope.name
    assert isinstance(scrub_query(text), str)
    assert isinstance(parse_htpasswd(text), dict)


@SETTINGS
@given(st.recursive(st.one_of(st.none(), st.integers(), st.text(), st.floats()),
                    lambda inner: st.one_of(st.lists(inner), st.dictionaries(st.text(), inner))))
def test_token_access_claims_of_any_shape(access):
    grants = granted_actions({"access": access})
    assert all(isinstance(k, tuple) and all(isinstance(a, str) for a in v) for k, v in grants.items())


@SETTINGS
@given(st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"]), st.text(),
       st.one_of(st.none(), st.text()))
def test_required_access(method, path, template):
    access = required_access(method, path, template, {"name": "x"})
    assert access.kind in ("repository", "catalog", "admin", "login", "public")


@SETTINGS
@given(st.recursive(st.one_of(st.none(), st.integers(), st.text(), st.floats(), st.booleans()),
                    lambda inner: st.one_of(st.lists(inner), st.dictionaries(st.text(), inner))))
def test_error_bodies_are_always_valid_json(detail):
    body = error_body(BadRequest(detail))
    assert json.loads(body, parse_constant=lambda name: (_ for _ in ()).throw(AssertionError(name)))
