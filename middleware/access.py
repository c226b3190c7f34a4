"""What a request needs: the repository (or registry resource) it touches and the actions, in Docker's terms.

Shared by `auth` (to decide), `logging` (to record) and `ratelimit` (to pick a bucket). GET/HEAD pull;
POST/PATCH/PUT push, which Docker's scope convention requests as `pull,push`; DELETE deletes (cancelling an upload
session is part of a push). `GET /v2/` needs only authentication, `/v2/_catalog` the catalog scope, anything under
the admin prefix `/v2/_dockyard/` the admin role.
"""

from __future__ import annotations

from dataclasses import dataclass

from dockyard.server.routes import API_ROOT, CATALOG, UPLOAD, is_admin_path

PULL, PUSH, DELETE = "pull", "push", "delete"
ACTIONS = (PULL, PUSH, DELETE)


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


def required_access(method: str, path: str, template: str | None, params: dict) -> Access:
    """What a request needs, judged on the route template the router matched when there is one (so no spelling
    of a path can be judged as another), else on the path (before routing; the path is canonical by then)."""
    path = template or path
    if is_admin_path(path):
        return Access("admin")
    if not path.startswith(API_ROOT):
        return Access("public")
    if path == CATALOG:
        return Access("catalog")
    name = params.get("name")
    if not name:
        return Access("login")
    if method in ("GET", "HEAD", "OPTIONS"):
        return Access("repository", name, (PULL,))
    if method == "DELETE" and template != UPLOAD:
        return Access("repository", name, (DELETE,))
    return Access("repository", name, (PULL, PUSH))
