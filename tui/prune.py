"""Carrying out a deletion plan through the API, one step at a time (so a UI can show progress)."""

from __future__ import annotations

from dataclasses import dataclass

from .client import ClientError, NotFound, RegistryClient, Unsupported
from .retention import Plan


@dataclass(frozen=True)
class Step:
    kind: str  # "tag" | "manifest" | "repository"
    repository: str
    target: str

    def __str__(self) -> str:
        if self.kind == "tag":
            return f"tag {self.repository}:{self.target}"
        if self.kind == "manifest":
            return f"manifest {self.repository}@{self.target[:19]}"
        return f"repository {self.repository}"


def steps(plan: Plan) -> list[Step]:
    """Tags that go on their own first, then manifests by digest (indexes before their children)."""
    return ([Step("tag", plan.repository, t) for t in plan.untag]
            + [Step("manifest", plan.repository, d) for d in plan.manifests])


def apply(client: RegistryClient, step: Step) -> None:
    """One step; a manifest already gone counts as done (another step or person deleted it)."""
    try:
        if step.kind == "tag":
            client.delete_tag(step.repository, step.target)
        elif step.kind == "manifest":
            client.delete_manifest(step.repository, step.target)
        else:
            client.delete_repository(step.repository)
    except NotFound:
        if step.kind == "repository":
            raise
    except Unsupported:
        if step.kind == "tag":
            raise ClientError(f"{step}: this server cannot delete a tag while other tags keep its manifest; "
                              "it stays") from None
        raise
