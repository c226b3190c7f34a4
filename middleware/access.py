"""What a request needs: the repository (or registry resource) it touches and the actions, in Docker's terms.

Shared by `auth` (to decide), `logging` (to record) and `ratelimit` (to pick a bucket). GET/HEAD pull;
POST/PATCH/PUT push, which Docker's scope convention requests as `pull,push`; DELETE deletes (cancelling an upload
session is part of a push). `GET /v2/` needs only authentication, `/v2/_catalog` the catalog scope, anything under
the admin prefix `/v2/_dockyard/` the admin role, except reading a repository's tag details
(`GET /v2/_dockyard/repositories/<name>/tags`), which needs only pull on it: sizes and push times of what the
caller may pull anyway (the web UI shows them to everyone who may browse the repository).
"""

from __future__ import annotations

from dataclasses import dataclass

from dockyard.server.names import valid_repository_name
from dockyard.server.routes import (ADMIN_REPOSITORIES, ADMIN_REPOSITORY_TAGS, API_ROOT, CATALOG, UPLOAD,
                                    is_admin_path)

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
            # Only a name of the spec's grammar: no token can be asked for another, and a header carries ASCII
            # only (a path such as /v2/_dockyard/repositories/Ā/tags must get its 401 without a scope, not a 500).
            if not valid_repository_name(self.name):
                return None
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
    if is_admin_path(template or path):
        if method in ("GET", "HEAD", "OPTIONS"):
            if template is not None:
                name = params.get("name", "") if template == ADMIN_REPOSITORY_TAGS else ""
            else:
                tags = path.startswith(ADMIN_REPOSITORIES + "/") and path.endswith("/tags")
                name = path[len(ADMIN_REPOSITORIES) + 1:-len("/tags")] if tags else ""
            if name:
                return Access("repository", name, (PULL,))
        return Access("admin")
    path = template or path
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
