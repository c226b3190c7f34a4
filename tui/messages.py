"""What workers tell screens: one dataclass message per event, posted from worker threads, handled with @on."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from .client import GCResult, RepositoryStats
from .images import TagRow
from .retention import Plan, ReferrerChoice


@dataclass
class Connected(Message):
    admin: bool
    storage: dict | None = None
    events: list[dict] | None = None  # notification endpoints' delivery state (admin API), when there are any


@dataclass
class RepositoriesPage(Message):
    names: list[str]
    stats: list[RepositoryStats] | None  # None: the server has no admin API, counts and sizes are unknown


@dataclass
class RepositoriesDone(Message):
    count: int


@dataclass
class TagRowsLoaded(Message):
    rows: list[TagRow]


@dataclass
class TagsDone(Message):
    count: int


@dataclass
class ManifestLoaded(Message):
    description: object  # screens.manifest.Description: the renderables, the pull references, an index's platforms


@dataclass
class LoadFailed(Message):
    """A network call failed: `error` is a sentence for the operator (never a traceback)."""
    what: str
    error: str


@dataclass
class PlanReady(Message):
    plan: Plan
    note: str = ""
    referrers: ReferrerChoice | None = None  # the same deletion with the manifests' referrers, where asked for


@dataclass
class DeleteProgress(Message):
    done: int
    total: int
    step: str


@dataclass
class DeleteFinished(Message):
    deleted: int
    errors: list[str]


@dataclass
class GCFinished(Message):
    result: GCResult | None
    note: str = ""
