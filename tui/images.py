"""What a repository holds, read through the V2 API (and the admin API where it helps): tags, their manifests,
and each manifest's footprint (its own bytes, its children, its blobs) so sizes and deletions can be reckoned.

No Textual here; `load_tags` calls back with batches so a UI can show rows as they arrive.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, Iterable

from .client import ClientError, RegistryClient

IMAGE_CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")


@dataclass
class Footprint:
    """A manifest as stored: `manifest_bytes` of its own, `blobs` it references (digest -> size), and for an
    index the child manifests it references."""
    digest: str
    media_type: str
    manifest_bytes: int
    blobs: dict[str, int] = field(default_factory=dict)
    children: list["Footprint"] = field(default_factory=list)
    platform: str | None = None  # "linux/amd64" for an image manifest whose config says so
    created: str | None = None
    artifact_type: str | None = None

    def manifests(self) -> dict[str, int]:
        """Every manifest this one brings (itself and its children): digest -> bytes."""
        out = {self.digest: self.manifest_bytes}
        for child in self.children:
            out.update(child.manifests())
        return out

    def all_blobs(self) -> dict[str, int]:
        out = dict(self.blobs)
        for child in self.children:
            out.update(child.all_blobs())
        return out

    @property
    def total_size(self) -> int:
        """Manifest bytes plus every blob, each counted once (what Dockyard's admin API calls `size`)."""
        return sum(self.manifests().values()) + sum(self.all_blobs().values())

    @property
    def platforms(self) -> list[str]:
        if self.children:
            return [c.platform or "?" for c in self.children]
        return [self.platform] if self.platform else []


def platform_string(platform: dict | None) -> str | None:
    if not platform:
        return None
    text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    if platform.get("variant"):
        text += "/" + platform["variant"]
    return text


def load_footprint(client: RegistryClient, repository: str, reference: str,
                   cache: dict[str, Footprint] | None = None, *, depth: int = 0) -> Footprint:
    """GET the manifest (and an index's children, and an image's config for its platform and creation time)."""
    if cache is not None and reference in cache:
        return cache[reference]
    manifest = client.manifest(repository, reference)
    body = manifest.body
    fp = Footprint(manifest.digest, manifest.media_type, manifest.size,
                   artifact_type=body.get("artifactType") or (body.get("config") or {}).get("mediaType"))
    if manifest.is_index:
        fp.artifact_type = body.get("artifactType")
        for descriptor in body.get("manifests") or []:
            if depth >= 2:
                break
            child = load_footprint(client, repository, descriptor["digest"], cache, depth=depth + 1)
            child = replace(child, platform=platform_string(descriptor.get("platform")) or child.platform)
            fp.children.append(child)
    else:
        config = body.get("config") or {}
        if config.get("digest"):
            fp.blobs[config["digest"]] = int(config.get("size", 0))
        for layer in body.get("layers") or []:
            fp.blobs[layer["digest"]] = int(layer.get("size", 0))
        if config.get("mediaType") in IMAGE_CONFIG_TYPES and config.get("digest"):
            try:
                image = client.blob_json(repository, config["digest"])
                fp.platform = platform_string(image)
                fp.created = image.get("created")
            except ClientError:
                pass  # a config we cannot read leaves platform and date unknown, nothing worse
    if cache is not None:
        cache[manifest.digest] = fp
        cache[reference] = fp
    return fp


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass
class TagRow:
    """A tag as the tags screen shows it; fields are None while unknown (or when the server cannot tell)."""
    tag: str
    digest: str | None = None
    size: int | None = None
    platforms: list[str] | None = None
    pushed: datetime | None = None
    created: datetime | None = None
    media_type: str | None = None

    @property
    def date(self) -> datetime | None:
        return self.pushed or self.created


class Inventory:
    """The tags of one repository and the footprints of their manifests, filled in by `load_tags`."""

    def __init__(self, repository: str):
        self.repository = repository
        self.tags: dict[str, TagRow] = {}
        self.footprints: dict[str, Footprint] = {}
        self.lock = threading.Lock()
        self.complete = False

    def footprint(self, digest: str | None) -> Footprint | None:
        return self.footprints.get(digest) if digest else None

    def by_digest(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for row in self.tags.values():
            if row.digest:
                groups.setdefault(row.digest, []).append(row.tag)
        return {d: sorted(t) for d, t in groups.items()}


def load_tags(client: RegistryClient, inventory: Inventory, *, admin: bool,
              on_rows: Callable[[list[TagRow]], None], threads: int = 8,
              cancelled: Callable[[], bool] = lambda: False) -> None:
    """List the tags page by page (calling back with the bare rows), then fetch each manifest's footprint in a
    small thread pool and call back again with the completed rows."""
    repo = inventory.repository
    if admin:
        for page in client.tag_stats(repo):
            rows = [TagRow(t.tag, t.digest, t.size, None, parse_time(t.updated_at), None, t.media_type)
                    for t in page]
            _store(inventory, rows)
            on_rows(rows)
            if cancelled():
                return
    else:
        for page in client.tags(repo):
            rows = [TagRow(tag) for tag in page]
            _store(inventory, rows)
            on_rows(rows)
            if cancelled():
                return

    def enrich(row: TagRow) -> TagRow:
        fp = load_footprint(client, repo, row.digest or row.tag, inventory.footprints)
        return replace(row, digest=fp.digest, size=row.size if row.size is not None else fp.total_size,
                       platforms=fp.platforms, created=parse_time(fp.created) or _newest_child(fp),
                       media_type=fp.media_type)

    pending = list(inventory.tags.values())
    # Tags that share a digest need one fetch: do one per digest first, the rest then hit the cache.
    first: dict[str, TagRow] = {}
    rest: list[TagRow] = []
    for row in pending:
        key = row.digest or row.tag
        if key in first:
            rest.append(row)
        else:
            first[key] = row
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for batch in _chunks(list(first.values()), threads * 4):
            if cancelled():
                return
            done = []
            for row, result in zip(batch, pool.map(_safe(enrich), batch)):
                done.append(result or row)
            _store(inventory, done)
            on_rows(done)
    done = [_safe(enrich)(row) or row for row in rest]
    if done:
        _store(inventory, done)
        on_rows(done)
    inventory.complete = True


def _newest_child(fp: Footprint) -> datetime | None:
    dates = [parse_time(c.created) for c in fp.children if c.created]
    dates = [d for d in dates if d]
    return max(dates) if dates else None


def _safe(fn):
    def call(row):
        try:
            return fn(row)
        except ClientError:
            return None  # this row stays partly unknown; the listing goes on
    return call


def _store(inventory: Inventory, rows: Iterable[TagRow]) -> None:
    with inventory.lock:
        for row in rows:
            inventory.tags[row.tag] = row


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
