"""What workers tell screens: one dataclass message per event, posted from worker threads, handled with @on."""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from .client import GCResult, RepositoryStats
from .images import TagRow
from .retention import Plan


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
    text: object  # a Rich renderable describing the manifest
    pull: list[str] = field(default_factory=list)


@dataclass
class LoadFailed(Message):
    """A network call failed: `error` is a sentence for the operator (never a traceback)."""
    what: str
    error: str


@dataclass
class PlanReady(Message):
    plan: Plan
    note: str = ""


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
