"""A plain HTTP client for a registry: the V2 API, the token flow, and Dockyard's admin API where a server has it.

No Textual here: the TUI calls this from worker threads, and the tests call it directly. Every failure is a
`ClientError` with a message meant for a person (no tracebacks reach the screen).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import quote, urljoin

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
ACCEPT_MANIFESTS = ", ".join(MANIFEST_TYPES)

ADMIN = "/v2/_dockyard"


# -- errors --------------------------------------------------------------------------------------------------------


class ClientError(Exception):
    """A failure to show on screen as it is: `str(error)` is a sentence for the operator."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class Unreachable(ClientError):
    """No HTTP answer at all: refused, timed out, DNS, TLS."""


class AuthFailed(ClientError):
    """401/403: missing or wrong credentials, or not allowed."""


class NotFound(ClientError):
    """404: unknown repository, manifest, blob or endpoint."""


class Unsupported(ClientError):
    """The server does not do this (e.g. Distribution 2.8 cannot delete a tag, only a manifest by digest)."""


# -- data ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    token: str | None = None  # a bearer token given as is (e.g. from a flag); used before any challenge
    # What `docker login` keeps instead of a password when the token service gives one (`identitytoken` in
    # config.json, `<token>` from a credential helper): an OAuth2 refresh token, exchanged at the realm.
    identity_token: str | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return bool(self.username or self.token or self.identity_token)


@dataclass
class Manifest:
    repository: str
    digest: str
    media_type: str
    size: int  # bytes of the manifest itself
    body: dict

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES or (
            "manifests" in self.body and "layers" not in self.body and "config" not in self.body)


@dataclass
class RepositoryStats:
    """A row of Dockyard's `GET /v2/_dockyard/repositories`."""
    name: str
    tags: int
    manifests: int
    unique_bytes: int
    shared_bytes: int
    upstream: str = ""  # a pull-through cached repository: the URL of the registry it is cached from


@dataclass
class TagStats:
    """A row of Dockyard's `GET /v2/_dockyard/repositories/<name>/tags`."""
    tag: str
    digest: str
    media_type: str
    size: int
    updated_at: str


@dataclass
class GCResult:
    dry_run: bool
    blobs_removed: int
    manifests_removed: int
    bytes_freed: int
    seconds: float
    blobs: list = field(default_factory=list)
    manifests: list = field(default_factory=list)


# -- auth ----------------------------------------------------------------------------------------------------------

CLIENT_ID = "registry-tui"  # OAuth2 client_id sent with a refresh-token grant (docker sends "docker")
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def _scope_hint(request: httpx.Request) -> tuple[str, str]:
    """Which token a request will need, guessed before the server says: (repository or path, read/write)."""
    path = request.url.path
    match = re.match(r"^/v2/(.+?)/(?:manifests|blobs|tags|referrers)/", path)
    target = match.group(1) if match else path
    return target, "read" if request.method in ("GET", "HEAD") else "write"


class RegistryAuth(httpx.Auth):
    """Basic and bearer auth. On `401 WWW-Authenticate: Bearer realm,service,scope` it GETs the realm with the
    basic credentials (or, holding an identity token, POSTs it there as docker does: `grant_type=refresh_token`),
    takes `token` (or `access_token`) and retries; tokens are cached per scope, and the scope last needed for a
    repository is remembered so the next request goes with its token at once."""

    def __init__(self, credentials: Credentials, token_client: httpx.Client, clock: Callable[[], float] = time.time):
        self.credentials = credentials
        self.token_client = token_client
        self.clock = clock
        self.tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expiry)
        self.scopes: dict[tuple[str, str], str] = {}  # scope hint -> scope
        self.basic_needed = False
        self.lock = threading.Lock()

    def _basic(self) -> str | None:
        if not self.credentials.username:
            return None
        pair = f"{self.credentials.username}:{self.credentials.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _cached(self, scope: str) -> str | None:
        with self.lock:
            entry = self.tokens.get(scope)
        if entry and entry[1] > self.clock():
            return entry[0]
        return None

    def auth_flow(self, request: httpx.Request):
        hint = _scope_hint(request)
        with self.lock:
            scope = self.scopes.get(hint)
        token = self._cached(scope) if scope is not None else None
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        elif self.credentials.token:
            request.headers["Authorization"] = f"Bearer {self.credentials.token}"
        elif self.basic_needed and self._basic():
            request.headers["Authorization"] = self._basic()
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            basic = self._basic()
            if basic is None or request.headers.get("Authorization") == basic:
                return
            self.basic_needed = True
            request.headers["Authorization"] = basic
            yield request
        elif scheme == "bearer" and "realm" in params:
            scope = params.get("scope", "")
            token = self._cached(scope) if request.headers.get("Authorization") is None else None
            if token is None:
                token = self._fetch_token(params)
            with self.lock:
                self.scopes[hint] = scope
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    def _fetch_token(self, params: dict) -> str:
        query = {k: params[k] for k in ("service", "scope") if params.get(k)}
        identity = self.credentials.identity_token
        try:
            if identity:
                form = {"grant_type": "refresh_token", "refresh_token": identity, "client_id": CLIENT_ID, **query}
                r = self.token_client.post(params["realm"], data=form)
            else:
                headers = {"Authorization": self._basic()} if self._basic() else {}
                r = self.token_client.get(params["realm"], params=query, headers=headers)
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the token service {params['realm']}: {_reason(exc)}") from None
        if identity and r.status_code in (400, 401, 403):
            raise AuthFailed(f"the token service refused the identity token ({r.status_code}): it may have expired "
                             "or been revoked; `docker login` again", status=r.status_code)
        if r.status_code in (401, 403):
            who = f"user {self.credentials.username!r}" if self.credentials.username else "anonymous access"
            raise AuthFailed(f"the token service refused {who} ({r.status_code}): check the credentials",
                             status=r.status_code)
        if r.status_code != 200:
            raise ClientError(f"the token service answered {r.status_code}", status=r.status_code)
        try:
            body = r.json()
        except ValueError:
            raise ClientError("the token service did not answer JSON") from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise ClientError("the token service answered no token")
        expires_in = body.get("expires_in") or 60
        with self.lock:
            self.tokens[params.get("scope", "")] = (token, self.clock() + max(10, int(expires_in) - 5))
        return token


def _reason(exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if "refused" in str(exc).lower() else (str(exc) or "cannot connect")
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__


# -- the client ----------------------------------------------------------------------------------------------------


def next_link(response: httpx.Response) -> str | None:
    """The target of `Link: <...>; rel="next"`, relative to the request."""
    for part in response.headers.get_list("Link"):
        for item in part.split(","):
            match = re.match(r'\s*<([^>]*)>\s*;\s*rel="?next"?', item)
            if match:
                return urljoin(str(response.request.url), match.group(1))
    return None


def _upstream_url(row: dict) -> str:
    upstream = row.get("upstream")
    url = upstream.get("url") if isinstance(upstream, dict) else None
    return url if isinstance(url, str) else ""


class RegistryClient:
    """One registry at `url`. Thread-safe (httpx.Client is), so several workers may share it."""

    def __init__(self, url: str, credentials: Credentials | None = None, *, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None, clock: Callable[[], float] = time.time):
        self.url = url.rstrip("/")
        self.credentials = credentials or Credentials()
        kwargs = {"timeout": timeout, "follow_redirects": True}
        if transport is not None:
            kwargs["transport"] = transport
        self._token_http = httpx.Client(**kwargs)
        self.auth = RegistryAuth(self.credentials, self._token_http, clock)
        self.http = httpx.Client(base_url=self.url, auth=self.auth, **kwargs)
        self._admin: bool | None = None
        self.tag_delete_supported: bool | None = None

    def close(self) -> None:
        self.http.close()
        self._token_http.close()

    @property
    def host(self) -> str:
        return httpx.URL(self.url).netloc.decode()

    # -- plumbing ------------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, ok=(200,), **kwargs) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kwargs)
        except ClientError:
            raise
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach {self.url}: {_reason(exc)}") from None
        if r.status_code in ok:
            return r
        raise self._error(method, path, r)

    def _error(self, method: str, path: str, r: httpx.Response) -> ClientError:
        code, message = None, ""
        try:
            errors = r.json().get("errors") or []
            if errors:
                code, message = errors[0].get("code"), errors[0].get("message", "")
        except (ValueError, AttributeError):
            message = r.text.strip()[:200]
        text = f"{method} {path}: {r.status_code} {code or ''} {message}".replace("  ", " ").strip()
        if r.status_code == 401:
            hint = "wrong credentials" if self.credentials else "this registry needs credentials (--username)"
            basic = parse_challenge(r.headers.get("WWW-Authenticate", ""))[0] == "basic"
            if basic and self.credentials.identity_token and not self.credentials.username:
                hint = "an identity token needs a token service, and this registry asks for a user name"
            return AuthFailed(f"{text} — {hint}", status=401, code=code)
        if r.status_code == 403:
            return AuthFailed(f"{text} — not allowed for this user", status=403, code=code)
        if r.status_code == 404:
            return NotFound(text, status=404, code=code)
        if r.status_code in (405, 501) or code == "UNSUPPORTED":
            return Unsupported(text, status=r.status_code, code=code)
        if r.status_code == 429:
            return ClientError(f"{text} — rate limited, try again shortly", status=429, code=code)
        return ClientError(text, status=r.status_code, code=code)

    def _json(self, r: httpx.Response) -> dict:
        try:
            body = r.json()
        except ValueError:
            raise ClientError(f"{r.request.method} {r.request.url.path}: the server did not answer JSON") from None
        if not isinstance(body, dict):
            raise ClientError(f"{r.request.method} {r.request.url.path}: unexpected answer")
        return body

    def _pages(self, path: str, params: dict) -> Iterator[tuple[httpx.Response, dict]]:
        """Follow `Link: rel="next"` from page to page (bounded: a server that loops is cut off)."""
        url: str | None = path
        seen = set()
        while url and url not in seen and len(seen) < 100_000:
            seen.add(url)
            r = self.request("GET", url, params=params if url == path else None)
            yield r, self._json(r)
            url = next_link(r)
            if url and url.startswith(self.url):
                url = url[len(self.url):]

    # -- V2 API --------------------------------------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/: reachable, speaks V2, credentials accepted."""
        r = self.request("GET", "/v2/", ok=(200, 404))
        if r.status_code == 404:
            raise ClientError(f"{self.url} does not speak the registry V2 API (GET /v2/ answered 404)", status=404)

    def catalog(self, page_size: int = 1000) -> Iterator[list[str]]:
        for _, body in self._pages("/v2/_catalog", {"n": page_size}):
            yield list(body.get("repositories") or [])

    def tags(self, repository: str, page_size: int = 1000) -> Iterator[list[str]]:
        for _, body in self._pages(f"/v2/{repository}/tags/list", {"n": page_size}):
            yield list(body.get("tags") or [])

    def manifest(self, repository: str, reference: str) -> Manifest:
        r = self.request("GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT_MANIFESTS})
        try:
            body = json.loads(r.content)
        except ValueError:
            raise ClientError(f"manifest {repository}:{reference} is not JSON") from None
        media_type = (r.headers.get("Content-Type") or "").split(";")[0].strip() or body.get("mediaType", "")
        if media_type not in MANIFEST_TYPES and body.get("mediaType") in MANIFEST_TYPES:
            media_type = body["mediaType"]
        digest = r.headers.get("Docker-Content-Digest") or _sha256(r.content)
        return Manifest(repository, digest, media_type, len(r.content), body)

    def manifest_digest(self, repository: str, reference: str) -> str:
        r = self.request("HEAD", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT_MANIFESTS})
        digest = r.headers.get("Docker-Content-Digest")
        return digest or self.manifest(repository, reference).digest

    def blob_json(self, repository: str, digest: str, limit: int = 4 << 20) -> dict:
        r = self.request("GET", f"/v2/{repository}/blobs/{digest}")
        if len(r.content) > limit:
            raise ClientError(f"blob {digest} is too large to be an image config")
        return self._json(r)

    def blob_exists(self, repository: str, digest: str) -> bool:
        r = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", ok=(200, 404))
        return r.status_code == 200

    def referrers(self, repository: str, digest: str) -> list[dict] | None:
        """The referrers of a manifest, or None when the server has no referrers API."""
        try:
            r = self.request("GET", f"/v2/{repository}/referrers/{digest}")
        except (NotFound, Unsupported):
            return None
        try:
            body = r.json()
        except ValueError:
            return None
        return list(body.get("manifests") or [])

    def delete_manifest(self, repository: str, digest: str) -> None:
        self.request("DELETE", f"/v2/{repository}/manifests/{digest}", ok=(200, 202))

    def delete_tag(self, repository: str, tag: str) -> None:
        """DELETE by tag (OCI 1.1). Distribution 2.8 answers 400 DIGEST_INVALID: that is `Unsupported`."""
        try:
            self.request("DELETE", f"/v2/{repository}/manifests/{quote(tag)}", ok=(200, 202))
        except Unsupported:
            self.tag_delete_supported = False
            raise
        except ClientError as exc:
            if exc.status == 400 and exc.code in ("DIGEST_INVALID", "UNSUPPORTED", None):
                self.tag_delete_supported = False
                raise Unsupported(f"{self.url} cannot delete a tag on its own, only a manifest by digest",
                                  status=400, code=exc.code) from None
            raise
        self.tag_delete_supported = True

    # -- Dockyard's admin API ------------------------------------------------------------------------------------

    def has_admin_api(self) -> bool:
        """Whether the server has Dockyard's admin API (and lets this user in). Asked once."""
        if self._admin is None:
            try:
                self.request("GET", f"{ADMIN}/storage")
                self._admin = True
            except (NotFound, Unsupported, AuthFailed):
                self._admin = False
            except ClientError as exc:
                if exc.status == 400:  # NAME_INVALID from a registry that took `_dockyard` for a repository
                    self._admin = False
                else:
                    raise
        return self._admin

    def storage(self) -> dict:
        return self._json(self.request("GET", f"{ADMIN}/storage"))

    def repositories(self, page_size: int = 1000) -> Iterator[list[RepositoryStats]]:
        for _, body in self._pages(f"{ADMIN}/repositories", {"n": page_size}):
            yield [RepositoryStats(r["name"], int(r.get("tags", 0)), int(r.get("manifests", 0)),
                                   int(r.get("unique_bytes", 0)), int(r.get("shared_bytes", 0)), _upstream_url(r))
                   for r in body.get("repositories") or []]

    def tag_stats(self, repository: str, page_size: int = 1000) -> Iterator[list[TagStats]]:
        for _, body in self._pages(f"{ADMIN}/repositories/{repository}/tags", {"n": page_size}):
            yield [TagStats(t["tag"], t["digest"], t.get("media_type", ""), int(t.get("size", 0)),
                            t.get("updated_at", "")) for t in body.get("tags") or []]

    def event_endpoints(self) -> list[dict] | None:
        """Dockyard's event delivery per notification endpoint (backlog, parked, ...); None from a server without
        it (an older release)."""
        try:
            return list(self._json(self.request("GET", f"{ADMIN}/events")).get("endpoints") or [])
        except (NotFound, Unsupported):
            return None

    def delete_repository(self, repository: str) -> dict:
        return self._json(self.request("DELETE", f"{ADMIN}/repositories/{repository}", ok=(200, 202)))

    def gc(self, *, dry_run: bool = False, grace_seconds: int | None = None,
           delete_untagged: bool | None = None) -> GCResult:
        body: dict = {"dry_run": dry_run}
        if grace_seconds is not None:
            body["grace_seconds"] = grace_seconds
        if delete_untagged is not None:
            body["delete_untagged"] = delete_untagged
        r = self._json(self.request("POST", f"{ADMIN}/gc", json=body, timeout=600))
        return GCResult(bool(r.get("dry_run")), int(r.get("blobs_removed", 0)), int(r.get("manifests_removed", 0)),
                        int(r.get("bytes_freed", 0)), float(r.get("seconds", 0.0)), list(r.get("blobs") or []),
                        list(r.get("manifests") or []))


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
