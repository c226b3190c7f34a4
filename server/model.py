"""The values that cross layers: what the blob store, the metadata, the domain and the resources hand each other.

Plain dataclasses, no behaviour beyond (de)serialization, so any layer may import them without importing another
layer (tests/test_architecture.py holds the layering).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class UploadState:
    """How far an upload session has come, as data the metadata keeps between requests.

    `length` bytes have been received and stored; `hash` is the saved running SHA-256 of exactly those bytes
    (`storage.hashing`), so any worker or host can continue the session without reading them back; `driver` is what
    the blob store needs to continue writing (nothing for the filesystem; the multipart upload and its parts for an
    object store). Everything here is what the store returned from its last `append`.
    """
    length: int = 0
    hash: bytes = b""
    driver: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"hash": self.hash.hex(), "driver": self.driver}, separators=(",", ":"))

    @classmethod
    def from_json(cls, length: int, text: str | None) -> "UploadState":
        data = json.loads(text) if text else {}
        return cls(length, bytes.fromhex(data.get("hash", "")), data.get("driver") or {})


@dataclass(slots=True)
class UploadSession:
    id: str
    repository: str
    state: UploadState
    created_at: float
    updated_at: float
    monolithic: bool = False  # a session of one request (POST ?digest= with the whole blob)

    @property
    def length(self) -> int:
        return self.state.length


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """How many upload sessions may be open at once, per repository and per user (0: no limit)."""
    per_repository: int = 0
    per_user: int = 0


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob the store has verified and made durable under `key`; not visible until the metadata records it."""
    digest: str
    size: int
    key: str


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """A committed blob as the metadata knows it: readable in some repository, its bytes at `key` in the store."""
    digest: str
    size: int
    key: str


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object the blob store holds, as its listing reports it (for garbage collection and fsck)."""
    key: str
    size: int
    modified: float


@dataclass(frozen=True, slots=True)
class Redirect:
    """A download that leaves without passing through Python: `accel` is an `X-Accel-Redirect` to an internal
    location of the nginx in front; `temporary` is a 307 to a URL the client fetches itself."""
    kind: str
    location: str


@dataclass(slots=True)
class ManifestRecord:
    digest: str
    media_type: str
    size: int
    data: bytes | None = None


@dataclass(slots=True)
class NewManifest:
    """What a manifest PUT stores; built by the manifest parser."""
    digest: str
    media_type: str
    data: bytes
    blobs: list[str]
    manifests: list[str]
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict | None = None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A change worth telling the world about, written in the same metadata transaction as the change itself
    (the outbox): a committed change always has its event, a rolled-back one never does."""
    repository: str
    action: str
    payload: dict
    endpoints: tuple[str, ...] = ()  # the notification endpoints it is to be delivered to (`events`)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked for a change and through which request: what events report as `actor` and `request`. Built by
    the resources from the request and handed to the domain explicitly."""
    user: str | None = None
    addr: str = ""  # the client's address (believed through trusted proxies only), with its port when direct
    host: str = ""  # the Host header the client sent
    method: str = ""
    user_agent: str = ""
    request_id: str = ""
    base_url: str = ""  # the registry's external URL as this client reaches it (event target URLs)


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event as the outbox holds it for delivery: `number` is its row, `seq` its place in its repository's
    commit order, `uid` the stable id receivers see."""
    number: int
    uid: str
    repository: str
    seq: int
    action: str
    payload: dict
    created_at: float


@dataclass(frozen=True, slots=True)
class Claim:
    """An endpoint's queue of one repository, leased to one sender until `lease_until`."""
    endpoint: str
    repository: str
    attempts: int


@dataclass(frozen=True, slots=True)
class StorageUsage:
    blobs: int
    blob_bytes: int
    upload_sessions: int
