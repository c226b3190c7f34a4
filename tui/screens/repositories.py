"""The first screen: every repository of the catalog, loaded page by page in the background, filtered as you type."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import get_current_worker

from ..client import ClientError, RepositoryStats
from ..format import human_bytes, plural
from ..messages import Connected, LoadFailed, RepositoriesDone, RepositoriesPage
from ..widgets.filterbar import FilterBar
from ..widgets.table import KeyTable
from .confirm import ConfirmScreen
from .progress import ProgressScreen
from .tags import TagsScreen


def describe_error(error: Exception) -> str:
    return str(error) if isinstance(error, ClientError) else f"unexpected {type(error).__name__}: {error}"


def events_summary(endpoints: list[dict] | None) -> str:
    """The event backlog for the title line: events waiting and parked across the notification endpoints."""
    if not endpoints:
        return ""
    backlog = sum(int(e.get("backlog") or 0) for e in endpoints)
    parked = sum(int(e.get("parked") or 0) for e in endpoints)
    failing = [e["name"] for e in endpoints if e.get("retrying")]
    text = f"   events: {backlog} waiting, {parked} parked"
    return text + (f" ({', '.join(failing)} failing)" if failing else "")


class RepositoriesScreen(Screen):
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("x", "delete_repository", "Delete"),
        Binding("C", "gc", "GC"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self):
        super().__init__()
        self.names: list[str] = []
        self.stats: dict[str, RepositoryStats] = {}
        self.fetching = False
        self.events = ""  # the event backlog, for the status line (admin API with notification endpoints)

    def compose(self) -> ComposeResult:
        yield Static(self.app.client.url, id="title")
        yield FilterBar("filter repositories", id="filter")
        yield KeyTable(id="repos")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(KeyTable)
        table.add_column("Repository", key="name")
        table.add_column("Tags", key="tags", width=6)
        table.add_column("Size", key="size", width=10)
        table.add_column("Shared", key="shared", width=10)
        table.focus()
        self.reload()

    # -- loading -------------------------------------------------------------------------------------------------

    def reload(self) -> None:
        self.names, self.stats = [], {}
        self.query_one(KeyTable).clear_rows()
        self.fetching = True
        self.set_status(f"connecting to {self.app.client.url} …", "loading")
        self.load()

    @work(thread=True, exclusive=True, group="repositories", exit_on_error=False)
    def load(self) -> None:
        client = self.app.client
        worker = get_current_worker()
        try:
            client.ping()
            admin = client.has_admin_api()
            self.post_message(Connected(admin, client.storage() if admin else None,
                                        client.event_endpoints() if admin else None))
            count = 0
            pages = client.repositories() if admin else client.catalog()
            for page in pages:
                if worker.is_cancelled:
                    return
                count += len(page)
                if admin:
                    self.post_message(RepositoriesPage([r.name for r in page], page))
                else:
                    self.post_message(RepositoriesPage(page, None))
            self.post_message(RepositoriesDone(count))
        except Exception as exc:  # shown on screen, never as a traceback
            self.post_message(LoadFailed("repositories", describe_error(exc)))

    @on(Connected)
    def connected(self, message: Connected) -> None:
        self.app.admin = message.admin
        user = self.app.client.credentials.username
        who = f"  as {user}" if user else ""
        admin = "admin API" if message.admin else "V2 API only"
        total = ""
        if message.storage:
            # Dockyard's total_bytes counts the manifests as well as the blobs
            total = f"  {human_bytes(message.storage.get('total_bytes'))} in {message.storage.get('blobs', '?')} blobs"
            if message.storage.get("manifest_bytes"):
                total += " + manifests"
        self.query_one("#title", Static).update(f"[b]{self.app.client.url}[/b]{who}  ({admin}){total}")
        self.events = events_summary(message.events)
        self.set_status("loading repositories …", "loading")

    @on(RepositoriesPage)
    def page(self, message: RepositoriesPage) -> None:
        self.names.extend(message.names)
        for stats in message.stats or []:
            self.stats[stats.name] = stats
        filt = self.query_one(FilterBar)
        self.query_one(KeyTable).append_rows([(n, self.cells(n)) for n in message.names if filt.matches(n)])
        self.set_status(f"{len(self.names)} repositories so far, loading …", "loading")

    @on(RepositoriesDone)
    def done(self, message: RepositoriesDone) -> None:
        self.fetching = False
        self.show_count()

    @on(LoadFailed)
    def failed(self, message: LoadFailed) -> None:
        self.fetching = False
        self.set_status(f"{message.error}   (r: retry)", "error")

    def cells(self, name: str) -> tuple:
        stats = self.stats.get(name)
        if stats is None:
            return (name, "?", "?", "?")
        shown = f"{name}  ← {stats.upstream}" if stats.upstream else name  # a pull-through cache, and its source
        return (shown, str(stats.tags), human_bytes(stats.unique_bytes + stats.shared_bytes),
                human_bytes(stats.shared_bytes))

    def show_count(self) -> None:
        shown = len(self.query_one(KeyTable).all_rows)
        text = plural(len(self.names), "repository", "repositories")
        if shown != len(self.names):
            text = f"{shown} of {text} match"
        if self.app.admin is False:
            text += "   tag counts and sizes: unknown (no admin API)"
        text += self.events
        self.set_status(text, "ok")

    def set_status(self, text: str, state: str) -> None:
        status = self.query_one("#status", Static)
        status.update(text)
        status.set_classes(f"status -{state}")

    # -- filter --------------------------------------------------------------------------------------------------

    def action_filter(self) -> None:
        self.query_one(FilterBar).open()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        filt = self.query_one(FilterBar)
        self.query_one(KeyTable).replace_rows([(n, self.cells(n)) for n in self.names if filt.matches(n)])
        if not self.fetching:
            self.show_count()

    # -- actions -------------------------------------------------------------------------------------------------

    @on(DataTable.RowSelected, "#repos")
    def open_repository(self, event: DataTable.RowSelected) -> None:
        self.app.push_screen(TagsScreen(event.row_key.value, self.stats))

    def action_reload(self) -> None:
        self.reload()

    def action_delete_repository(self) -> None:
        name = self.query_one(KeyTable).current_key
        if name is None:
            return
        if not self.app.admin:
            self.notify("This server has no API to delete a whole repository: delete its tags instead.",
                        severity="warning")
            return
        stats = self.stats.get(name)
        detail = f"{stats.tags} tags, {stats.manifests} manifests, {human_bytes(stats.unique_bytes)} only here" \
            if stats else "its tags and manifests"
        body = f"Delete repository [b]{name}[/b]?\n{detail}\nThen run garbage collection to reclaim the space."

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.push_screen(ProgressScreen(name, None, delete_repository=True), lambda _: self.reload())
        self.app.push_screen(ConfirmScreen("Delete repository", body), answered)

    def action_gc(self) -> None:
        if not self.app.admin:
            self.notify("This server has no garbage collection API: run it on the server "
                        "(e.g. `registry garbage-collect`).", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.push_screen(ProgressScreen(None, None), lambda _: self.reload())
        self.app.push_screen(ConfirmScreen("Garbage collection", "Remove every blob no manifest references?",
                                           yes="Collect"), answered)
