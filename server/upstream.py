"""Upstream registries a pull-through cache serves from: their settings (`[[upstreams]]`) and an HTTP client.

`Upstream` is one `[[upstreams]]` table, checked when the configuration loads: which local repository names it
serves (a `prefix`, e.g. `dockerhub/`, or a set of `namespaces` served under their own names, which is what dockerd's
`registry-mirrors` needs) and how its repository names map upstream (`library`: Docker Hub's `library/` for
single-segment names, as docker does), where it is (`url`), how to log in (`username`, `password` or
`password_file`), TLS (`tls_verify`, `ca_bundle`), how long a tag is trusted (`freshness`), how much the cache
may hold (`max_size`) and how long to wait for it (`timeout`).

`UpstreamClient` speaks the registry API to one upstream: manifests fetched with the full `Accept` list (an index is
never swapped for one platform's manifest), manifests revalidated with HEAD (Docker Hub does not count HEADs against
its pull limit), blobs streamed in blocks with a bound, tag lists and referrers. Authentication follows the
upstream's challenge: Basic with the configured credentials, or the bearer-token flow (a token per scope, cached
until it expires). Every failure becomes a registry error that names the upstream: its 404s the spec's *_UNKNOWN
codes, its 429 TOOMANYREQUESTS, everything else (unreachable, timed out, refused our credentials, a 5xx, a malformed
answer) UPSTREAM_ERROR (502). A client is made lazily in each process (connections never cross a fork).
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import quote, urlsplit

from .errors import (BlobUnknown, ManifestUnknown, NameUnknown, RegistryError, TooManyRequests, UpstreamError)
from .manifests import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from .names import NAME_RE

# Index types first: a registry that can answer an index must not pick one platform's manifest for us.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
DOCKER_HUB_HOSTS = frozenset(("docker.io", "registry-1.docker.io", "index.docker.io", "registry.hub.docker.com"))
UPSTREAM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
KEYS = frozenset(("name", "url", "prefix", "namespaces", "library", "username", "password", "password_file",
                  "tls_verify", "ca_bundle", "freshness", "max_size", "timeout"))
TOKEN_RESPONSE_MAX = 1024 * 1024
TAGS_MAX_BYTES = 16 * 1024 * 1024
TAGS_MAX_PAGES = 100
REFERRERS_MAX_BYTES = 4 * 1024 * 1024
ERROR_BODY_MAX = 64 * 1024
CHALLENGE_MAX = 4096
TOKEN_CACHE_ENTRIES = 1000


@dataclass(frozen=True)
class Upstream:
    """One `[[upstreams]]` table. The password never appears in a repr (check-config prints settings)."""
    name: str
    url: str
    prefix: str = ""
    namespaces: tuple[str, ...] = ()
    library: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    tls_verify: bool = True
    ca_bundle: str = ""
    freshness: int = 300
    max_size: int = 0
    timeout: int = 30

    @property
    def scopes(self) -> tuple[str, ...]:
        """The prefixes of the local names this upstream serves, each ending in "/"."""
        return (self.prefix,) if self.prefix else tuple(f"{ns}/" for ns in self.namespaces)

    def serves(self, name: str) -> bool:
        return any(name.startswith(scope) and len(name) > len(scope) for scope in self.scopes)

    def remote_name(self, name: str) -> str:
        """The upstream's name for a local repository this upstream serves."""
        if not self.prefix:
            return name
        remote = name[len(self.prefix):]
        if self.library and "/" not in remote:
            remote = f"library/{remote}"
        return remote

    def describe(self) -> dict:
        """What the admin API tells about it (never the credentials)."""
        return {"name": self.name, "url": self.url}


def _string(table: dict, key: str, default: str = "", *, limit: int = 4096) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {value!r}"[:300])
    if len(value) > limit or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{key}: at most {limit} characters, no control characters")
    return value


def _integer(table: dict, key: str, default: int, low: int, high: int) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{key}: expected a whole number from {low} to {high}, got {value!r}"[:300])
    return value


def _boolean(table: dict, key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false, got {value!r}"[:300])
    return value


def _url(value: str) -> tuple[str, str]:
    """The upstream URL as scheme://host[:port], and its host."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"url: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url: expected http(s)://HOST[:PORT], got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url: credentials do not belong in the URL: use username and password (or password_file)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"url: a registry is served at its root: expected http(s)://HOST[:PORT], got {value!r}")
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}{f':{port}' if port is not None else ''}", host


def upstream_from_table(table: object, *, size_of: Callable[[object], int]) -> Upstream:
    """One `[[upstreams]]` table, checked; ValueError naming the key otherwise."""
    if not isinstance(table, dict):
        raise ValueError("expected a table")
    unknown = set(table) - KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(KEYS))})")
    if "url" not in table:
        raise ValueError("url: is required")
    url, host = _url(_string(table, "url", limit=2048))
    has_prefix, has_namespaces = "prefix" in table, "namespaces" in table
    if has_prefix == has_namespaces:
        raise ValueError("give exactly one of prefix (e.g. \"dockerhub/\") or namespaces (e.g. [\"library\"])")
    prefix, namespaces = "", ()
    if has_prefix:
        prefix = _string(table, "prefix", limit=200)
        if not prefix.endswith("/") or not NAME_RE.fullmatch(prefix[:-1]):
            raise ValueError(f"prefix: expected a repository name prefix ending in \"/\", got {prefix!r}")
    else:
        raw = table["namespaces"]
        if not isinstance(raw, list) or not raw or len(raw) > 1000:
            raise ValueError("namespaces: expected a list of 1 to 1000 repository namespaces")
        for item in raw:
            if not isinstance(item, str) or len(item) > 200 or not NAME_RE.fullmatch(item):
                raise ValueError(f"namespaces: {item!r} is not a repository namespace"[:300])
        if len(set(raw)) != len(raw):
            raise ValueError("namespaces: listed twice")
        namespaces = tuple(raw)
    name = _string(table, "name", (prefix[:-1] or host).replace("/", "-")[:63].lower(), limit=63)
    if not UPSTREAM_NAME_RE.fullmatch(name):
        raise ValueError(f"name: expected lowercase letters, digits, '.', '_' or '-' (at most 63), got {name!r}")
    username = _string(table, "username", limit=256)
    if ":" in username:
        raise ValueError("username: may not contain ':'")
    password = _string(table, "password", limit=4096)
    if "password_file" in table:
        if password:
            raise ValueError("give password or password_file, not both")
        path = _string(table, "password_file")
        try:
            with open(path, "rb") as fh:
                raw_password = fh.read(4097)
        except OSError as exc:
            raise ValueError(f"password_file: cannot read {path!r}: {exc.strerror or exc}") from None
        try:
            password = _string({"password_file": raw_password.decode().rstrip("\r\n")}, "password_file")
        except UnicodeDecodeError:
            raise ValueError("password_file: not UTF-8 text") from None
    if bool(username) != bool(password):
        raise ValueError("username and password go together (or neither, for anonymous pulls)")
    tls_verify = _boolean(table, "tls_verify", True)
    ca_bundle = _string(table, "ca_bundle")
    if ca_bundle:
        if not url.startswith("https://"):
            raise ValueError("ca_bundle: only meaningful for an https:// url")
        if not tls_verify:
            raise ValueError("ca_bundle: given, but tls_verify = false would not use it")
        try:
            ssl.create_default_context(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"ca_bundle: cannot load {ca_bundle!r}: {exc}") from None
    try:
        max_size = size_of(table.get("max_size", 0))
    except ValueError as exc:
        raise ValueError(f"max_size: {exc}") from None
    return Upstream(
        name=name, url=url, prefix=prefix, namespaces=namespaces,
        library=_boolean(table, "library", host in DOCKER_HUB_HOSTS), username=username, password=password,
        tls_verify=tls_verify, ca_bundle=ca_bundle, freshness=_integer(table, "freshness", 300, 0, 366 * 86400),
        max_size=max_size, timeout=_integer(table, "timeout", 30, 1, 3600))


def check_upstreams(upstreams: tuple[Upstream, ...]) -> None:
    """No two upstreams with one name, and no local name served by two of them."""
    names = [u.name for u in upstreams]
    if len(set(names)) != len(names):
        raise ValueError(f"two upstreams are named {next(n for n in names if names.count(n) > 1)!r}: "
                         "give each a name of its own")
    scopes = [(scope, u.name) for u in upstreams for scope in u.scopes]
    for i, (scope, owner) in enumerate(scopes):
        for other, other_owner in scopes[i + 1:]:
            if scope.startswith(other) or other.startswith(scope):
                raise ValueError(f"{owner!r} serves {scope}* and {other_owner!r} serves {other}*: a repository "
                                 "would have two upstreams")


# -- challenges ------------------------------------------------------------------------------------------------------

CHALLENGE_PARAM_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')


def parse_challenge(header: str | None) -> tuple[str, dict[str, str]]:
    """(scheme in lowercase, parameters) of a WWW-Authenticate header; ("", {}) when it cannot be read."""
    if not header or len(header) > CHALLENGE_MAX:
        return "", {}
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = CHALLENGE_PARAM_RE.match(rest, position)
        if not match or match.end() == position:
            break
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        position = match.end()
    return scheme.lower(), params


# -- the client ------------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: str | None  # the upstream's Docker-Content-Digest, to check against the bytes


class BlobDownload:
    """An upstream blob response being read: `size` from its Content-Length (None if it sent none)."""

    def __init__(self, response, size: int | None, block_size: int):
        self._response = response
        self.size = size
        self._block_size = block_size

    def chunks(self) -> Iterator[bytes]:
        yield from self._response.iter_bytes(self._block_size)

    def close(self) -> None:
        self._response.close()


class UpstreamClient:
    """The registry API of one upstream, with its authentication. Thread-safe; per process (see the docstring)."""

    def __init__(self, upstream: Upstream, *, transport=None, block_size: int = 1024 * 1024,
                 user_agent: str = "dockyard-pull-through-cache"):
        self.upstream = upstream
        self._transport = transport
        self._block_size = block_size
        self._user_agent = user_agent
        self._client = None
        self._pid = 0
        self._lock = threading.Lock()
        self._scheme = ""  # learned from the first challenge: "basic" or "bearer"
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, monotonic expiry)

    # -- plumbing --------------------------------------------------------------------------------------------------

    def _http(self):
        import httpx

        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    up = self.upstream
                    # Verified against `ca_bundle`, else the machine's CA store as docker does (OpenSSL's default
                    # paths), never the bundle a Python package ships (httpx's own default).
                    verify: bool | ssl.SSLContext = False
                    if up.tls_verify:
                        verify = ssl.create_default_context(cafile=up.ca_bundle or None)
                    self._client = httpx.Client(
                        verify=verify, transport=self._transport, follow_redirects=True, max_redirects=5,
                        timeout=httpx.Timeout(up.timeout, connect=min(up.timeout, 10)),
                        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
                        headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"})
                    self._pid = os.getpid()
                    self._tokens = {}
        return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None

    def failure(self, reason: str, **detail) -> UpstreamError:
        up = self.upstream
        return UpstreamError({"upstream": up.name, "url": up.url, "reason": reason[:500], **detail},
                             message=f"upstream {up.name} ({up.url}): {reason}"[:1000])

    def _send(self, method: str, path: str, *, scope: str, headers: dict | None = None, params: dict | None = None):
        """One request with authentication; a 401 is answered once (credentials, or a token for `scope`). The
        response is streamed: the caller reads what it needs, bounded, and closes it."""
        import httpx

        client = self._http()
        url = self.upstream.url + path
        for attempt in range(2):
            request = client.build_request(method, url, headers={**(headers or {}), **self._authorization(scope)},
                                           params=params)
            try:
                response = client.send(request, stream=True)
            except httpx.TimeoutException:
                raise self.failure(f"no answer within {self.upstream.timeout} s") from None
            except (httpx.HTTPError, OSError, ssl.SSLError, ValueError) as exc:
                raise self.failure(f"unreachable: {type(exc).__name__}: {str(exc)[:200]}") from None
            if response.status_code != 401 or attempt:
                break
            challenge = response.headers.get("WWW-Authenticate")
            response.close()
            self._answer_challenge(challenge, scope)
        return response

    def _authorization(self, scope: str) -> dict:
        up = self.upstream
        if self._scheme == "basic" and up.username:
            token = base64.b64encode(f"{up.username}:{up.password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        if self._scheme == "bearer":
            with self._lock:
                cached = self._tokens.get(scope)
            if cached and cached[1] > time.monotonic():
                return {"Authorization": f"Bearer {cached[0]}"}
        return {}

    def _answer_challenge(self, header: str | None, scope: str) -> None:
        scheme, params = parse_challenge(header)
        if scheme == "basic":
            if not self.upstream.username:
                raise self.failure("asks for credentials and none are configured (username, password)")
            self._scheme = "basic"
            return
        if scheme != "bearer" or not params.get("realm"):
            raise self.failure("answered 401 with no challenge Dockyard can follow",
                               challenge=(header or "")[:200])
        self._scheme = "bearer"
        token, lifetime = self._fetch_token(params["realm"], params.get("service"), scope)
        with self._lock:
            if len(self._tokens) >= TOKEN_CACHE_ENTRIES:
                self._tokens.clear()
            # Renewed a little before it ends, so a request never leaves with a token about to expire.
            self._tokens[scope] = (token, time.monotonic() + max(lifetime - 10, lifetime / 2))

    def _fetch_token(self, realm: str, service: str | None, scope: str) -> tuple[str, float]:
        """A bearer token for `scope` from the realm the upstream named: Docker's token flow (GET, basic
        credentials when configured)."""
        import httpx

        up = self.upstream
        try:
            parts = urlsplit(realm)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.failure("its token realm is not an http(s) URL", realm=realm[:200])
        headers = {}
        # Credentials go to the realm only over TLS, or to the upstream's own host.
        if up.username and (parts.scheme == "https" or parts.hostname == urlsplit(up.url).hostname):
            headers["Authorization"] = "Basic " + base64.b64encode(f"{up.username}:{up.password}".encode()).decode()
        query = {"scope": scope, **({"service": service} if service else {})}
        try:
            with self._http().stream("GET", realm, params=query, headers=headers) as response:
                body = _read_bounded(response, TOKEN_RESPONSE_MAX)
        except httpx.TimeoutException:
            raise self.failure(f"its token service did not answer within {up.timeout} s") from None
        except (httpx.HTTPError, OSError, ssl.SSLError, ValueError) as exc:
            raise self.failure(f"its token service is unreachable: {type(exc).__name__}") from None
        if body is None:
            raise self.failure("its token service answered more than 1 MiB")
        if response.status_code in (401, 403):
            raise self.failure(f"its token service refused Dockyard's credentials ({response.status_code})")
        if response.status_code != 200:
            raise self.failure(f"its token service answered {response.status_code}")
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
            lifetime = document.get("expires_in", 60)
        except (ValueError, AttributeError):
            raise self.failure("its token service answered something other than a JSON token") from None
        if not isinstance(token, str) or not token or len(token) > 65536 or any(c in token for c in "\r\n "):
            raise self.failure("its token service answered no usable token")
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = 60
        return token, float(min(lifetime, 86400))

    def _error(self, response, *, unknown: Callable[[dict], RegistryError]) -> RegistryError:
        """The registry error for an upstream answer that is not a success (the response is closed here)."""
        status = response.status_code
        try:
            body = _read_bounded(response, ERROR_BODY_MAX) or b""
        except Exception:
            body = b""
        finally:
            response.close()
        detail = {"upstream": self.upstream.name, "url": self.upstream.url, "status": status}
        if status == 404:
            try:
                codes = [e.get("code") for e in json.loads(body).get("errors", [])]
            except (ValueError, AttributeError, TypeError):
                codes = []
            if "NAME_UNKNOWN" in codes:
                return NameUnknown(detail, message=f"the upstream {self.upstream.name} has no such repository")
            return unknown(detail)
        if status == 429:
            retry = response.headers.get("Retry-After", "")
            headers = {"Retry-After": retry} if retry.isdigit() and len(retry) < 6 else {"Retry-After": "60"}
            return TooManyRequests(detail, headers=headers,
                                   message=f"the upstream {self.upstream.name} ({self.upstream.url}) limits requests")
        if status in (401, 403) and not self.upstream.username:
            return self.failure(f"asks for credentials and none are configured ({status})", status=status)
        if status in (401, 403):
            return self.failure(f"refused Dockyard's credentials ({status})", status=status)
        return self.failure(f"answered {status}", status=status)

    # -- the registry API ------------------------------------------------------------------------------------------

    @staticmethod
    def _scope(repository: str) -> str:
        return f"repository:{repository}:pull"

    def _path(self, repository: str, kind: str, reference: str) -> str:
        return f"/v2/{repository}/{kind}/{quote(reference, safe=':')}"

    def head_manifest(self, repository: str, reference: str) -> str | None:
        """The digest the upstream names for a reference now (Docker-Content-Digest); None if it names none."""
        response = self._send("HEAD", self._path(repository, "manifests", reference), scope=self._scope(repository),
                              headers={"Accept": MANIFEST_ACCEPT})
        response.close()
        if response.status_code != 200:
            raise self._error(response, unknown=lambda d: ManifestUnknown(
                {**d, "reference": reference}, message=f"the upstream {self.upstream.name} has no such manifest"))
        digest = response.headers.get("Docker-Content-Digest")
        return digest if digest and len(digest) < 200 else None

    def get_manifest(self, repository: str, reference: str, limit: int) -> FetchedManifest:
        response = self._send("GET", self._path(repository, "manifests", reference), scope=self._scope(repository),
                              headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code != 200:
            raise self._error(response, unknown=lambda d: ManifestUnknown(
                {**d, "reference": reference}, message=f"the upstream {self.upstream.name} has no such manifest"))
        try:
            data = _read_bounded(response, limit)
        except Exception as exc:
            raise self.failure(f"the manifest broke off: {type(exc).__name__}") from None
        finally:
            response.close()
        if data is None:
            raise self.failure(f"sent a manifest larger than {limit} bytes")
        digest = response.headers.get("Docker-Content-Digest")
        return FetchedManifest(data, response.headers.get("Content-Type", ""),
                               digest if digest and len(digest) < 200 else None)

    def head_blob(self, repository: str, digest: str) -> int | None:
        response = self._send("HEAD", self._path(repository, "blobs", digest), scope=self._scope(repository))
        response.close()
        if response.status_code != 200:
            raise self._error(response, unknown=lambda d: BlobUnknown({**d, "digest": digest}))
        return _length(response.headers.get("Content-Length"))

    def open_blob(self, repository: str, digest: str) -> BlobDownload:
        response = self._send("GET", self._path(repository, "blobs", digest), scope=self._scope(repository))
        if response.status_code != 200:
            raise self._error(response, unknown=lambda d: BlobUnknown({**d, "digest": digest}))
        encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        size = None if encoded else _length(response.headers.get("Content-Length"))
        return BlobDownload(response, size, self._block_size)

    def tags(self, repository: str) -> list[str]:
        """Every tag, following `Link` pages (bounded: TAGS_MAX_PAGES pages, TAGS_MAX_BYTES bytes in all)."""
        tags: list[str] = []
        path, params, spent = f"/v2/{repository}/tags/list", {"n": "1000"}, 0
        for _ in range(TAGS_MAX_PAGES):
            response = self._send("GET", path, scope=self._scope(repository), params=params)
            if response.status_code != 200:
                raise self._error(response, unknown=lambda d: NameUnknown(d))
            try:
                body = _read_bounded(response, TAGS_MAX_BYTES - spent)
            finally:
                response.close()
            if body is None:
                raise self.failure("sent a tag list over 16 MiB")
            spent += len(body)
            try:
                page = json.loads(body).get("tags") or []
            except (ValueError, AttributeError):
                raise self.failure("sent a tag list that is not JSON") from None
            if not isinstance(page, list):
                raise self.failure("sent a tag list that is not a list")
            tags.extend(t for t in page if isinstance(t, str))
            following = self._next_link(response.headers.get("Link"))
            if following is None:
                break
            path, params = following, None
        return tags

    def _next_link(self, header: str | None) -> str | None:
        """The path of a `Link: <...>; rel="next"` on this upstream (a URL elsewhere is not followed)."""
        if not header or len(header) > 4096:
            return None
        match = re.match(r'\s*<([^>]*)>\s*;\s*rel="?next"?', header)
        if not match:
            return None
        try:
            parts = urlsplit(match.group(1))
        except ValueError:
            return None
        if (parts.netloc and parts.netloc != urlsplit(self.upstream.url).netloc) or not parts.path.startswith("/v2/"):
            return None
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def referrers(self, repository: str, digest: str) -> list[dict]:
        response = self._send("GET", self._path(repository, "referrers", digest), scope=self._scope(repository))
        if response.status_code != 200:
            raise self._error(response, unknown=lambda d: ManifestUnknown({**d, "digest": digest}))
        try:
            body = _read_bounded(response, REFERRERS_MAX_BYTES)
        finally:
            response.close()
        if body is None:
            raise self.failure("sent a referrers index over 4 MiB")
        try:
            manifests = json.loads(body).get("manifests") or []
        except (ValueError, AttributeError):
            raise self.failure("sent a referrers answer that is not JSON") from None
        if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
            raise self.failure("sent a referrers index without a list of descriptors")
        return manifests


def _read_bounded(response, limit: int) -> bytes | None:
    """The body, or None when it is longer than `limit` (reading stops there)."""
    declared = _length(response.headers.get("Content-Length"))
    if declared is not None and declared > limit:
        return None
    parts, total = [], 0
    for chunk in response.iter_bytes(64 * 1024):
        total += len(chunk)
        if total > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _length(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 18:
        return None
    return int(value)




__all__ = ["BlobDownload", "FetchedManifest", "MANIFEST_ACCEPT", "Upstream", "UpstreamClient", "check_upstreams",
           "parse_challenge", "upstream_from_table"]
