"""What a request needs: the repository (or registry resource) it touches and the actions, in Docker's terms.

Shared by `auth` (to decide), `logging` (to record) and `ratelimit` (to pick a bucket). GET/HEAD pull;
POST/PATCH/PUT push, which Docker's scope convention requests as `pull,push`; DELETE deletes (cancelling an upload
session is part of a push). `GET /v2/` needs only authentication, `/v2/_catalog` the catalog scope, anything under
the admin prefix `/v2/_dockyard/` the admin role.
"""

from __future__ import annotations

from dataclasses import dataclass

PULL, PUSH, DELETE = "pull", "push", "delete"
ACTIONS = (PULL, PUSH, DELETE)
ADMIN_PREFIX = "/v2/_dockyard"
UPLOAD_SESSION_TEMPLATE = "/v2/{name}/blobs/uploads/{upload_id}"


@dataclass(frozen=True, slots=True)
class Access:
    """kind: "repository", "catalog", "admin", "login" (authentication only) or "public" (no check)."""
    kind: str
    name: str = ""
    actions: tuple[str, ...] = ()

    @property
    def scope(self) -> str | None:
        """The scope a token must grant, as written in a `WWW-Authenticate: Bearer` challenge."""
        if self.kind == "repository":
            return f"repository:{self.name}:{','.join(self.actions)}"
        if self.kind == "catalog":
            return "registry:catalog:*"
        if self.kind == "admin":
            return "registry:admin:*"
        return None

    @property
    def label(self) -> str:
        """One word for logs and rate-limit classes."""
        if self.kind == "repository":
            return self.actions[-1] if self.actions else "none"
        return self.kind


def is_admin_path(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def required_access(method: str, path: str, template: str | None, params: dict) -> Access:
    if is_admin_path(path):
        return Access("admin")
    if not path.startswith("/v2/"):
        return Access("public")
    if path == "/v2/_catalog":
        return Access("catalog")
    name = params.get("name")
    if not name:
        return Access("login")
    if method in ("GET", "HEAD", "OPTIONS"):
        return Access("repository", name, (PULL,))
    if method == "DELETE" and template != UPLOAD_SESSION_TEMPLATE:
        return Access("repository", name, (DELETE,))
    return Access("repository", name, (PULL, PUSH))
