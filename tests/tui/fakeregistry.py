"""An in-memory registry behind httpx.MockTransport, for client unit tests and snapshot tests: the V2 API,
Dockyard's admin API (optional), basic or bearer auth with a token endpoint, and a fixed clock, so every
byte and every date on screen is the same on every run. The real servers are exercised by the e2e tests."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

import httpx

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")


def error(status: int, code: str, message: str = "", headers=None) -> httpx.Response:
    return httpx.Response(status, json={"errors": [{"code": code, "message": message or code, "detail": {}}]},
                          headers=headers)


@dataclass
class Repo:
    tags: dict[str, str] = field(default_factory=dict)  # tag -> digest
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # digest -> (media type, bytes)
    blobs: set[str] = field(default_factory=set)  # linked blob digests
    pushed: dict[str, str] = field(default_factory=dict)  # tag -> RFC 3339


class FakeRegistry:
    def __init__(self, *, admin: bool = True, auth: str | None = None, users=None, now: str = "2024-05-01T00:00:00Z",
                 tag_delete: bool = True, delay: float = 0.0):
        self.admin = admin
        self.auth = auth  # None | "basic" | "bearer"
        self.users = users or {"admin": "secret"}
        self.now = now
        self.tag_delete = tag_delete
        self.delay = delay
        self.down = False
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.uploads: dict[str, str] = {}
        self.token_requests: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- auth ------------------------------------------------------------------------------------------------

    def _user(self, request: httpx.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return user if self.users.get(user) == password else None
        return None

    def _token_endpoint(self, request: httpx.Request) -> httpx.Response:
        query = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        self.token_requests.append(query)
        user = self._user(request)
        if user is None:
            return httpx.Response(401, json={"details": "bad credentials"})
        return httpx.Response(200, json={"token": f"tok:{query.get('scope', '')}", "expires_in": 300})

    def _authorized(self, request: httpx.Request, scope: str) -> httpx.Response | None:
        if self.auth is None:
            return None
        header = request.headers.get("Authorization", "")
        if self.auth == "basic":
            if self._user(request):
                return None
            return error(401, "UNAUTHORIZED", headers={"WWW-Authenticate": 'Basic realm="fake"'})
        if header == f"Bearer tok:{scope}":
            return None
        challenge = f'Bearer realm="http://auth.test/token",service="fake",scope="{scope}"'
        return error(401, "UNAUTHORIZED", headers={"WWW-Authenticate": challenge})

    # -- content ---------------------------------------------------------------------------------------------

    def manifest_refs(self, body: bytes) -> tuple[list[str], list[str]]:
        """(blobs, child manifests) a manifest references."""
        doc = json.loads(body)
        blobs = [d["digest"] for d in [doc.get("config")] + (doc.get("layers") or []) if d]
        return blobs, [d["digest"] for d in doc.get("manifests") or []]

    def footprint(self, repo: Repo, digest: str) -> tuple[int, dict[str, int]]:
        media_type, body = repo.manifests[digest]
        blobs, children = self.manifest_refs(body)
        size, sizes = len(body), {b: len(self.blobs.get(b, b"")) for b in blobs}
        for child in children:
            if child in repo.manifests:
                child_size, child_blobs = self.footprint(repo, child)
                size += child_size
                sizes.update(child_blobs)
        return size, sizes

    def stats(self) -> dict[str, dict]:
        holders: dict[str, set[str]] = {}
        for name, repo in self.repos.items():
            for blob in repo.blobs:
                holders.setdefault(blob, set()).add(name)
        out = {}
        for name, repo in sorted(self.repos.items()):
            unique = sum(len(self.blobs[b]) for b in repo.blobs if holders[b] == {name})
            shared = sum(len(self.blobs[b]) for b in repo.blobs if len(holders[b]) > 1)
            out[name] = {"name": name, "tags": len(repo.tags), "manifests": len(repo.manifests),
                         "unique_bytes": unique, "shared_bytes": shared}
        return out

    # -- dispatch --------------------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.requests.append((request.method, request.url.path))
            if request.url.host == "auth.test":
                return self._token_endpoint(request)
            return self._route(request)

    def _route(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        query = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        if path.startswith("/v2/_dockyard/"):
            if not self.admin:
                return httpx.Response(404, text="404 page not found")
            denied = self._authorized(request, "registry:catalog:*")
            return denied or self._admin(request, path[len("/v2/_dockyard/"):], method, query)
        if path == "/v2/":
            return self._authorized(request, "") or httpx.Response(200, json={})
        if path == "/v2/_catalog":
            return self._authorized(request, "registry:catalog:*") or self._page(
                "/v2/_catalog", "repositories", sorted(self.repos), query)
        m = re.match(r"^/v2/(.+?)/(tags/list|manifests|blobs/uploads|blobs|referrers)/?(.*)$", path)
        if not m:
            return error(404, "NOT_FOUND")
        name, kind, rest = m.groups()
        action = "pull" if method in ("GET", "HEAD") else ("delete" if method == "DELETE" else "push")
        denied = self._authorized(request, f"repository:{name}:{action}")
        if denied:
            return denied
        if kind == "blobs/uploads":
            return self._upload(request, name, rest, query)
        if method == "PUT" and kind == "manifests":
            return self._put_manifest(request, name, rest)
        repo = self.repos.get(name)
        if repo is None:
            return error(404, "NAME_UNKNOWN")
        if kind == "tags/list":
            return self._page(f"/v2/{name}/tags/list", "tags", sorted(repo.tags), query, {"name": name})
        if kind == "manifests":
            return self._manifest(repo, method, rest)
        if kind == "blobs":
            if rest not in repo.blobs:
                return error(404, "BLOB_UNKNOWN")
            return httpx.Response(200, content=b"" if method == "HEAD" else self.blobs[rest],
                                  headers={"Content-Length": str(len(self.blobs[rest]))})
        referrers = []
        for digest, (media_type, body) in sorted(repo.manifests.items()):
            doc = json.loads(body)
            if (doc.get("subject") or {}).get("digest") == rest:
                referrers.append({"mediaType": media_type, "digest": digest, "size": len(body),
                                  "artifactType": doc.get("artifactType")})
        return httpx.Response(200, json={"schemaVersion": 2, "manifests": referrers},
                              headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})

    def _page(self, path, key, items, query, extra=None) -> httpx.Response:
        n = int(query["n"]) if query.get("n") else len(items)
        last = query.get("last")
        start = 0
        if last is not None:
            start = next((i + 1 for i, x in enumerate(items) if (x["name"] if isinstance(x, dict) else x) == last),
                         len(items))
        page = items[start:start + n]
        headers = {}
        if start + n < len(items) and page:
            tail = page[-1]["name"] if isinstance(page[-1], dict) else page[-1]
            tail = tail if isinstance(tail, str) else tail
            headers["Link"] = f'<{path}?{urlencode({"n": n, "last": tail})}>; rel="next"'
        return httpx.Response(200, json={**(extra or {}), key: page}, headers=headers)

    def _upload(self, request, name, rest, query) -> httpx.Response:
        if request.method == "POST":
            upload = hashlib.sha256(f"{name}{len(self.uploads)}".encode()).hexdigest()[:16]
            self.uploads[upload] = name
            return httpx.Response(202, headers={"Location": f"/v2/{name}/blobs/uploads/{upload}"})
        data = request.read()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if query.get("digest") != digest:
            return error(400, "DIGEST_INVALID")
        self.blobs[digest] = data
        self.repos.setdefault(name, Repo()).blobs.add(digest)
        return httpx.Response(201, headers={"Docker-Content-Digest": digest})

    def _put_manifest(self, request, name, reference) -> httpx.Response:
        body = request.read()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        repo = self.repos.setdefault(name, Repo())
        repo.manifests[digest] = (request.headers.get("Content-Type", ""), body)
        if not reference.startswith("sha256:"):
            repo.tags[reference] = digest
            repo.pushed[reference] = self.now
        return httpx.Response(201, headers={"Docker-Content-Digest": digest})

    def _manifest(self, repo: Repo, method: str, reference: str) -> httpx.Response:
        digest = repo.tags.get(reference, reference)
        if digest not in repo.manifests:
            return error(404, "MANIFEST_UNKNOWN")
        if method == "DELETE":
            if not reference.startswith("sha256:"):
                if not self.tag_delete:
                    return error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
                del repo.tags[reference]
                return httpx.Response(202)
            del repo.manifests[digest]
            for tag in [t for t, d in repo.tags.items() if d == digest]:
                del repo.tags[tag]
            return httpx.Response(202)
        media_type, body = repo.manifests[digest]
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest, "Content-Length": str(len(body))}
        return httpx.Response(200, content=b"" if method == "HEAD" else body, headers=headers)

    def _admin(self, request, path, method, query) -> httpx.Response:
        if path == "storage":
            stats = self.stats()
            return httpx.Response(200, json={"total_bytes": sum(len(b) for b in self.blobs.values()),
                                             "blobs": len(self.blobs), "repositories": list(stats.values())})
        if path == "repositories":
            return self._page("/v2/_dockyard/repositories", "repositories", list(self.stats().values()), query)
        if path == "gc" and method == "POST":
            return self._gc(json.loads(request.read() or b"{}"))
        m = re.match(r"^repositories/(.+?)(/tags)?$", path)
        if m and m.group(1) in self.repos:
            name, repo = m.group(1), self.repos[m.group(1)]
            if m.group(2):
                rows = []
                for tag, digest in sorted(repo.tags.items()):
                    size, blobs = self.footprint(repo, digest)
                    rows.append({"tag": tag, "digest": digest, "media_type": repo.manifests[digest][0],
                                 "size": size + sum(blobs.values()), "updated_at": repo.pushed[tag]})
                page = self._page(f"/v2/_dockyard/repositories/{name}/tags", "tags",
                                  [{"name": r["tag"], **r} for r in rows], query, {"name": name})
                body = page.json()
                body["tags"] = [{k: v for k, v in r.items() if k != "name"} for r in body["tags"]]
                return httpx.Response(200, json=body, headers=page.headers)
            if method == "DELETE":
                del self.repos[name]
                return httpx.Response(202, json={"repository": name, "manifests": len(repo.manifests),
                                                 "tags": len(repo.tags)})
        return error(404, "NAME_UNKNOWN")

    def _gc(self, options: dict) -> httpx.Response:
        used: set[str] = set()
        for repo in self.repos.values():
            for digest in repo.manifests:
                used |= set(self.manifest_refs(repo.manifests[digest][1])[0])
        gone = sorted(set(self.blobs) - used)
        freed = sum(len(self.blobs[b]) for b in gone)
        if not options.get("dry_run"):
            for b in gone:
                del self.blobs[b]
            for repo in self.repos.values():
                repo.blobs -= set(gone)
        return httpx.Response(200, json={"dry_run": bool(options.get("dry_run")), "blobs_removed": len(gone),
                                         "manifests_removed": 0, "bytes_freed": freed, "blobs": gone,
                                         "manifests": [], "seconds": 0.01})
