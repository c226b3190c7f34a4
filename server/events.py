"""Events: what a change tells the notification endpoints, and how each endpoint wants it written.

`[[notifications]]` tables in the config file name the endpoints (`parse_endpoints`: URL, headers, a shared secret
for an HMAC signature, timeout, which actions, repositories and media types, the payload format, retries).
`Events` builds the events of a change for the endpoints that want it: `NewEvent`s that the metadata writes in the
transaction of the change itself (the outbox, see `metadata`), each naming the endpoints it is for. Nothing is
written when no endpoint wants an event, so a registry without endpoints pays nothing.

An event's payload is Distribution's event (`id`, `timestamp`, `action`, `target`, `request`, `actor`, `source`,
fields left out where Distribution leaves them out), so receivers written for the reference registry read it
unchanged; `render` wraps it in Distribution's envelope (`application/vnd.docker.distribution.events.v1+json`) or
as a CloudEvents 1.0 structured event. The `id` is made once, when the change is committed: every retry and every
replay carries the same one, for receivers to deduplicate.

Actions (what `actions` filters on; Distribution's action on the wire in brackets): `push` (a blob uploaded or a
manifest stored [push]), `tag` (a tag set or moved onto a manifest the repository already held [push]), `pull` (a
manifest or blob GET [pull]; batched, best effort, off unless asked for), `delete` (a manifest, a tag or a blob
link deleted [delete]), `mount` (a blob mounted from another repository [mount]), `repository_delete` (a whole
repository deleted through the admin API [delete, target.repository only]) and `gc` (a manifest removed by garbage
collection [delete]).

This module builds values only: the sender is `notify`, the storage of events the metadata's outbox.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import hmac
import json
import re
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from .model import Caller, NewEvent

ACTIONS = ("push", "tag", "pull", "delete", "mount", "repository_delete", "gc")
DEFAULT_ACTIONS = tuple(a for a in ACTIONS if a != "pull")  # pulls are the high-volume ones: asked for explicitly
WIRE_ACTION = {"push": "push", "tag": "push", "pull": "pull", "delete": "delete", "mount": "mount",
               "repository_delete": "delete", "gc": "delete"}
FORMATS = ("distribution", "cloudevents")
DISTRIBUTION_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
CLOUDEVENTS_MEDIA_TYPE = "application/cloudevents+json"
CLOUDEVENTS_BATCH_MEDIA_TYPE = "application/cloudevents-batch+json"
CLOUDEVENTS_TYPE_PREFIX = "io.dockyard."
BLOB_MEDIA_TYPE = "application/octet-stream"  # what Distribution reports for a blob's target
SIGNATURE_HEADER = "X-Dockyard-Signature"

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
HEADER_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]{0,4096}")
RESERVED_HEADERS = frozenset(("content-type", "content-length", "transfer-encoding", "host", "connection"))
KEYS = frozenset(("name", "url", "headers", "secret", "signature_header", "timeout", "actions", "repositories",
                  "media_types", "format", "max_attempts", "backoff", "max_backoff", "batch"))


@dataclass(frozen=True)
class Endpoint:
    """One `[[notifications]]` table, checked. `name` keys its delivery state in the metadata."""
    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    secret: str = field(default="", repr=False)
    signature_header: str = SIGNATURE_HEADER
    timeout: float = 5.0
    actions: frozenset = frozenset(DEFAULT_ACTIONS)
    repositories: tuple[str, ...] = ("*",)
    media_types: tuple[str, ...] = ()
    format: str = "distribution"
    max_attempts: int = 25
    backoff: float = 1.0
    max_backoff: float = 300.0
    batch: int = 10

    def __repr__(self) -> str:  # `dockyard check-config` prints this: never a secret, a header value or a password
        return (f"Endpoint(name={self.name!r}, url={redact_url(self.url)!r}, format={self.format!r}, "
                f"actions={sorted(self.actions)!r}, repositories={list(self.repositories)!r}, "
                f"media_types={list(self.media_types)!r}, timeout={self.timeout}, max_attempts={self.max_attempts}, "
                f"backoff={self.backoff}, max_backoff={self.max_backoff}, batch={self.batch}, "
                f"headers={[name for name, _ in self.headers]!r}, signed={bool(self.secret)})")

    def wants(self, action: str, repository: str, media_type: str | None) -> bool:
        """Whether this endpoint is sent the event. An event with no media type (a tag or repository delete)
        passes a `media_types` filter; globs are fnmatch's, `*` spanning `/`, as in the auth rules."""
        if action not in self.actions:
            return False
        if not any(fnmatch.fnmatchcase(repository, pattern) for pattern in self.repositories):
            return False
        return not (self.media_types and media_type
                    and not any(fnmatch.fnmatchcase(media_type, pattern) for pattern in self.media_types))

    def retry_delay(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failed ones: exponential, capped."""
        return min(self.max_backoff, self.backoff * 2 ** min(max(attempts - 1, 0), 62))


def redact_url(url: str) -> str:
    """A URL without the password of its userinfo, for messages and the admin API."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))


# -- configuration -------------------------------------------------------------------------------------------------

def _strings(where: str, key: str, value: Any, *, pattern: re.Pattern | None = None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v and len(v) <= 256 for v in value):
        raise ValueError(f"{where}.{key}: expected a list of non-empty strings")
    if pattern is not None:
        for v in value:
            if not pattern.fullmatch(v):
                raise ValueError(f"{where}.{key}: {v[:80]!r} is not allowed")
    return tuple(dict.fromkeys(value))


def _number(where: str, key: str, value: Any, low: float, high: float, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ValueError(f"{where}.{key}: expected {'an integer' if integer else 'a number of seconds'}")
    if not low <= value <= high:
        raise ValueError(f"{where}.{key}: must be between {low:g} and {high:g}, got {value!r}")
    return value


def parse_endpoint(index: int, entry: Any) -> Endpoint:
    where = f"notifications[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a table")
    unknown = set(entry) - KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{where}.name: expected 1 to 64 letters, digits, '.', '_' or '-' (it keys the "
                         "endpoint's delivery state)")
    where = f"notifications[{index}] ({name})"
    url = entry.get("url")
    if not isinstance(url, str) or len(url) > 2048:
        raise ValueError(f"{where}.url: expected an http:// or https:// URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise ValueError(f"{where}.url: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment \
            or any(c in url for c in " \t\r\n\x00"):
        raise ValueError(f"{where}.url: expected an http:// or https:// URL with a host, got {redact_url(url)[:200]!r}")
    headers = entry.get("headers", {})
    if not isinstance(headers, dict):
        raise ValueError(f"{where}.headers: expected a table of header = value")
    signature_header = entry.get("signature_header", SIGNATURE_HEADER)
    if not isinstance(signature_header, str) or not HEADER_NAME_RE.fullmatch(signature_header) \
            or signature_header.lower() in RESERVED_HEADERS:
        raise ValueError(f"{where}.signature_header: expected a header name")
    checked = []
    for header, value in headers.items():
        if not HEADER_NAME_RE.fullmatch(header) or header.lower() in RESERVED_HEADERS \
                or header.lower() == signature_header.lower():
            raise ValueError(f"{where}.headers: {header[:80]!r} is not a header name Dockyard lets you set")
        if not isinstance(value, str) or not HEADER_VALUE_RE.fullmatch(value):
            raise ValueError(f"{where}.headers.{header}: expected a string without line breaks")
        checked.append((header, value))
    secret = entry.get("secret", "")
    if not isinstance(secret, str) or len(secret) > 4096:
        raise ValueError(f"{where}.secret: expected a string")
    fmt = entry.get("format", "distribution")
    if fmt not in FORMATS:
        raise ValueError(f"{where}.format: must be one of {', '.join(FORMATS)}")
    actions = _strings(where, "actions", entry.get("actions", list(DEFAULT_ACTIONS)))
    wrong = [a for a in actions if a not in ACTIONS]
    if wrong:
        raise ValueError(f"{where}.actions: unknown action(s) {', '.join(w[:40] for w in wrong)}; known: "
                         f"{', '.join(ACTIONS)}")
    # Distribution's envelope holds "one or more events" (its notifications documentation: receivers must take
    # several, as the reference may group them); a CloudEvents structured request holds one.
    batch = int(_number(where, "batch", entry.get("batch", 1 if fmt == "cloudevents" else 10), 1, 100,
                        integer=True))
    if fmt == "cloudevents" and batch != 1:
        raise ValueError(f"{where}.batch: a CloudEvents structured request holds one event: batch must be 1")
    backoff = _number(where, "backoff", entry.get("backoff", 1.0), 0.01, 3600)
    max_backoff = _number(where, "max_backoff", entry.get("max_backoff", 300.0), 0.01, 86400)
    if max_backoff < backoff:
        raise ValueError(f"{where}.max_backoff: must be at least backoff ({backoff:g})")
    return Endpoint(
        name=name, url=url, headers=tuple(checked), secret=secret, signature_header=signature_header,
        timeout=float(_number(where, "timeout", entry.get("timeout", 5.0), 0.1, 300)),
        actions=frozenset(actions),
        repositories=_strings(where, "repositories", entry.get("repositories", ["*"])),
        media_types=_strings(where, "media_types", entry.get("media_types", [])),
        format=fmt, max_attempts=int(_number(where, "max_attempts", entry.get("max_attempts", 25), 1, 1000,
                                             integer=True)),
        backoff=float(backoff), max_backoff=float(max_backoff), batch=batch)


def parse_endpoints(value: Any) -> tuple[Endpoint, ...]:
    """`[[notifications]]` tables as endpoints; ValueError names the entry and the key at fault."""
    if not isinstance(value, list):
        raise ValueError("expected a list of [[notifications]] tables")
    if len(value) > 100:
        raise ValueError("at most 100 endpoints")
    endpoints = tuple(parse_endpoint(i, entry) for i, entry in enumerate(value))
    names = [e.name for e in endpoints]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"endpoint name(s) used twice: {', '.join(duplicates)}")
    return endpoints


# -- building events -----------------------------------------------------------------------------------------------

def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC with microseconds, as Distribution's Go encoder writes a time (to the microsecond)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def source_address(bind: str) -> str:
    """This node as Distribution's `source.addr` names it: host name and the port it listens on."""
    port = bind.rsplit(":", 1)[-1] if ":" in bind else ""
    return f"{socket.gethostname()}:{port}" if port else socket.gethostname()


class Events:
    """Builds the events of changes for the endpoints that want them (one method per kind of change)."""

    def __init__(self, endpoints: Sequence[Endpoint], *, clock: Callable[[], float], source_addr: str,
                 new_id: Callable[[], str] = lambda: str(uuid.uuid4()), instance_id: str | None = None):
        self.endpoints = tuple(endpoints)
        self.by_name = {e.name: e for e in self.endpoints}
        self.clock = clock
        self.new_id = new_id
        self.source = {"addr": source_addr, "instanceID": instance_id or str(uuid.uuid4())}
        self.pulls_wanted = any("pull" in e.actions for e in self.endpoints)

    def __bool__(self) -> bool:
        return bool(self.endpoints)

    def audience(self, action: str, repository: str, media_type: str | None) -> tuple[str, ...]:
        return tuple(e.name for e in self.endpoints if e.wants(action, repository, media_type))

    def _event(self, action: str, repository: str, target: dict, caller: Caller | None) -> list[NewEvent]:
        endpoints = self.audience(action, repository, target.get("mediaType"))
        if not endpoints:
            return []
        return [NewEvent(repository, action, self.payload(action, target, caller), endpoints)]

    def payload(self, action: str, target: dict, caller: Caller | None) -> dict:
        caller = caller or Caller()
        request = {"id": caller.request_id}
        if caller.addr:
            request["addr"] = caller.addr
        if caller.host:
            request["host"] = caller.host
        request["method"] = caller.method
        request["useragent"] = caller.user_agent
        return {"id": self.new_id(), "timestamp": timestamp(self.clock()), "action": WIRE_ACTION[action],
                "target": target, "request": request, "actor": {"name": caller.user} if caller.user else {},
                "source": dict(self.source)}

    @staticmethod
    def target(repository: str, *, media_type: str = "", size: int = 0, digest: str = "", url: str = "",
               tag: str = "", from_repository: str = "") -> dict:
        """Distribution's target, its fields in its order, empty ones left out as its encoder leaves them out."""
        target: dict[str, Any] = {}
        if media_type:
            target["mediaType"] = media_type
        if size:
            target["size"] = size
        if digest:
            target["digest"] = digest
        if size:
            target["length"] = size
        target["repository"] = repository
        if from_repository:
            target["fromRepository"] = from_repository
        if url:
            target["url"] = url
        if tag:
            target["tag"] = tag
        return target

    @staticmethod
    def _url(caller: Caller | None, path: str) -> str:
        return f"{caller.base_url}{path}" if caller is not None and caller.base_url else ""

    def blob_pushed(self, repository: str, digest: str, size: int, caller: Caller | None) -> list[NewEvent]:
        return self._event("push", repository, self.target(
            repository, media_type=BLOB_MEDIA_TYPE, size=size, digest=digest,
            url=self._url(caller, f"/v2/{repository}/blobs/{digest}")), caller)

    def blob_mounted(self, repository: str, source: str, digest: str, size: int,
                     caller: Caller | None) -> list[NewEvent]:
        return self._event("mount", repository, self.target(
            repository, media_type=BLOB_MEDIA_TYPE, size=size, digest=digest, from_repository=source,
            url=self._url(caller, f"/v2/{repository}/blobs/{digest}")), caller)

    def blob_deleted(self, repository: str, digest: str, caller: Caller | None) -> list[NewEvent]:
        return self._event("delete", repository, self.target(repository, digest=digest), caller)

    def manifest_pushed(self, repository: str, digest: str, media_type: str, size: int, tag: str | None,
                        caller: Caller | None, *, present: bool) -> list[NewEvent]:
        """A manifest PUT: `tag` when it only set a tag on a manifest the repository held (`present`)."""
        action = "tag" if present and tag else "push"
        return self._event(action, repository, self.target(
            repository, media_type=media_type, size=size, digest=digest, tag=tag or "",
            url=self._url(caller, f"/v2/{repository}/manifests/{digest}")), caller)

    def manifest_deleted(self, repository: str, digest: str, tags: Iterable[str],
                         caller: Caller | None) -> list[NewEvent]:
        """A manifest deleted by digest, and each tag that went with it (as Distribution reports it)."""
        events = self._event("delete", repository, self.target(repository, digest=digest), caller)
        for tag in tags:
            events += self.tag_deleted(repository, tag, caller)
        return events

    def tag_deleted(self, repository: str, tag: str, caller: Caller | None) -> list[NewEvent]:
        return self._event("delete", repository, self.target(repository, tag=tag), caller)

    def repository_deleted(self, repository: str, caller: Caller | None) -> list[NewEvent]:
        return self._event("repository_delete", repository, self.target(repository), caller)

    def collected(self, repository: str, manifests: Iterable[tuple[str, int]],
                  caller: Caller | None = None) -> list[NewEvent]:
        events: list[NewEvent] = []
        for digest, _ in manifests:
            events += self._event("gc", repository, self.target(repository, digest=digest), caller)
        return events

    def pulled(self, repository: str, *, digest: str, media_type: str, size: int, tag: str | None, manifest: bool,
               caller: Caller | None) -> NewEvent | None:
        """A pull, for the best-effort batch (never the outbox); None when no endpoint wants it."""
        if not self.pulls_wanted:
            return None
        path = f"/v2/{repository}/{'manifests' if manifest else 'blobs'}/{digest}"
        events = self._event("pull", repository, self.target(
            repository, media_type=media_type if manifest else BLOB_MEDIA_TYPE, size=size, digest=digest,
            tag=tag or "", url=self._url(caller, path)), caller)
        return events[0] if events else None


# -- the wire ------------------------------------------------------------------------------------------------------

def cloudevent(action: str, payload: dict) -> dict:
    """A CloudEvents 1.0 event (structured JSON) carrying Distribution's event as its data."""
    target = payload.get("target", {})
    subject = target.get("repository", "")
    if target.get("tag"):
        subject += f":{target['tag']}"
    elif target.get("digest"):
        subject += f"@{target['digest']}"
    data = {key: payload[key] for key in ("action", "target", "request", "actor", "source") if key in payload}
    return {"specversion": "1.0", "id": payload["id"],
            "source": f"dockyard://{payload.get('source', {}).get('addr', 'dockyard')}",
            "type": CLOUDEVENTS_TYPE_PREFIX + action, "subject": subject, "time": payload["timestamp"],
            "datacontenttype": "application/json", "data": data}


def render(endpoint: Endpoint, events: Sequence[tuple[str, dict]]) -> tuple[str, bytes]:
    """(Content-Type, body) of one request carrying `events` ((action, payload) pairs) to `endpoint`."""
    if endpoint.format == "cloudevents":
        if len(events) == 1:
            return CLOUDEVENTS_MEDIA_TYPE, _json(cloudevent(*events[0]))
        return CLOUDEVENTS_BATCH_MEDIA_TYPE, _json([cloudevent(action, payload) for action, payload in events])
    return DISTRIBUTION_MEDIA_TYPE, _json({"events": [payload for _, payload in events]})


def signature(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the exact body with the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def request_headers(endpoint: Endpoint, content_type: str, body: bytes) -> dict[str, str]:
    headers = {"Content-Type": content_type}
    if not any(name.lower() == "user-agent" for name, _ in endpoint.headers):  # theirs replaces ours, not repeats it
        headers["User-Agent"] = "dockyard-notifications"
    headers.update(endpoint.headers)
    if endpoint.secret:
        headers[endpoint.signature_header] = signature(endpoint.secret, body)
    return headers


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
