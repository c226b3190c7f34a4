"""The tags of one repository: digest, size, platforms, age; sortable; tags sharing a digest stay together;
mark several and delete them, delete a manifest by digest (either with the referrers of the manifests that go,
when the operator asks in the dialog), or open the retention rules."""

from __future__ import annotations

from datetime import datetime, timezone

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import get_current_worker

from ..client import ClientError, RepositoryStats
from ..format import age, human_bytes, plural, short_digest
from ..images import Inventory, TagRow, load_tags
from ..messages import LoadFailed, PlanReady, TagRowsLoaded, TagsDone
from ..retention import make_plan, with_referrers
from ..widgets.filterbar import FilterBar
from ..widgets.plansummary import describe_plan, describe_referrers
from ..widgets.table import KeyTable
from .confirm import ConfirmDeletion, ConfirmScreen
from .manifest import ManifestScreen
from .progress import ProgressScreen
from .retention import RetentionScreen

SORTS = ("name", "date", "size")
OLDEST = datetime.min.replace(tzinfo=timezone.utc)


def error_text(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ClientError) else f"unexpected {type(exc).__name__}: {exc}"


def ordered(rows: list[TagRow], sort: str, reverse: bool) -> list[TagRow]:
    """Rows grouped by digest (tags that share one sit together), groups ordered by `sort`: name ascending,
    date newest first, size largest first; `reverse` flips it."""
    groups: dict[str, list[TagRow]] = {}
    for row in rows:
        groups.setdefault(row.digest or f"tag:{row.tag}", []).append(row)
    members = [sorted(g, key=lambda r: r.tag) for g in groups.values()]

    def key(group: list[TagRow]):
        first = group[0].tag
        if sort == "date":
            return (max((r.date or OLDEST) for r in group), first)
        if sort == "size":
            return (max((r.size if r.size is not None else -1) for r in group), first)
        return (first,)

    descending = sort != "name"
    members.sort(key=key, reverse=descending != reverse)
    return [row for group in members for row in group]


class TagsScreen(Screen):
    BINDINGS = [
        Binding("escape,backspace", "back", "Back"),
        Binding("space", "mark", "Mark"),
        Binding("a", "mark_all", "All", show=False),
        Binding("s", "sort", "Sort"),
        Binding("o", "reverse", "Reverse", show=False),
        Binding("d", "delete_tags", "Delete"),
        Binding("D", "delete_manifest", "Del digest"),
        Binding("p", "retention", "Retention"),
        Binding("slash", "filter", "Filter"),
        Binding("C", "gc", "GC", show=False),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self, repository: str, stats: dict[str, RepositoryStats] | None = None):
        super().__init__()
        self.repository = repository
        self.stats = stats or {}
        self.inventory = Inventory(repository)
        self.marked: set[str] = set()
        self.sort = "name"
        self.reverse = False
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(self.repository, id="title")
        yield FilterBar("filter tags", id="filter")
        yield KeyTable(id="tags")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(KeyTable)
        table.add_column(" ", key="mark", width=1)
        table.add_column("Tag", key="tag")
        table.add_column("Digest", key="digest", width=12)
        table.add_column("Size", key="size", width=9)
        table.add_column("Platforms", key="platforms")
        table.add_column("Age", key="age", width=4)
        table.focus()
        self.reload()

    # -- loading -------------------------------------------------------------------------------------------------

    def reload(self) -> None:
        self.inventory = Inventory(self.repository)
        self.marked &= set()
        self.error = None
        self.query_one(KeyTable).clear_rows()
        self.update_title()
        self.set_status("loading tags …", "loading")
        self.load()

    @work(thread=True, exclusive=True, group="tags", exit_on_error=False)
    def load(self) -> None:
        worker = get_current_worker()
        inventory = self.inventory
        try:
            load_tags(self.app.client, inventory, admin=bool(self.app.admin),
                      on_rows=lambda rows: self.post_message(TagRowsLoaded(rows)),
                      cancelled=lambda: worker.is_cancelled)
            if not worker.is_cancelled:
                self.post_message(TagsDone(len(inventory.tags)))
        except Exception as exc:
            self.post_message(LoadFailed("tags", error_text(exc)))

    @on(TagRowsLoaded)
    def rows_loaded(self, message: TagRowsLoaded) -> None:
        self.rebuild()
        self.set_status(f"{len(self.inventory.tags)} tags, reading manifests …", "loading")

    @on(TagsDone)
    def tags_done(self, message: TagsDone) -> None:
        self.rebuild()
        self.show_count()

    @on(LoadFailed)
    def failed(self, message: LoadFailed) -> None:
        self.error = message.error
        self.set_status(f"{message.error}   (r: retry)", "error")

    def rows(self) -> list[TagRow]:
        with self.inventory.lock:
            rows = list(self.inventory.tags.values())
        filt = self.query_one(FilterBar)
        return ordered([r for r in rows if filt.matches(r.tag)], self.sort, self.reverse)

    def rebuild(self) -> None:
        now = self.app.clock()
        cells = []
        previous = None
        for row in self.rows():
            same = row.digest is not None and row.digest == previous
            previous = row.digest
            cells.append((row.tag, (
                "●" if row.tag in self.marked else " ",
                row.tag,
                "  └ same" if same else short_digest(row.digest),
                "" if same else human_bytes(row.size),
                # Text, not str: a DataTable reads a str as markup, and a platform is whatever the pusher wrote
                Text("" if same else (",".join(row.platforms) if row.platforms is not None else "?")),
                age(row.date, now),
            )))
        self.query_one(KeyTable).replace_rows(cells)
        self.update_title()

    def update_title(self) -> None:
        arrow = "↓" if (self.sort != "name") != self.reverse else "↑"
        marked = f"  {len(self.marked)} marked" if self.marked else ""
        self.query_one("#title", Static).update(
            f"[b]{self.repository}[/b]  sort: {self.sort} {arrow}{marked}")

    def show_count(self) -> None:
        digests = len(self.inventory.by_digest())
        text = f"{plural(len(self.inventory.tags), 'tag')}, {plural(digests, 'manifest')}"
        shown = len(self.query_one(KeyTable).all_rows)
        if shown != len(self.inventory.tags):
            text = f"{shown} shown of " + text
        if not self.app.admin:
            text += "   push times unknown (no admin API): ages are image creation times"
        self.set_status(text, "ok")

    def set_status(self, text: str, state: str) -> None:
        status = self.query_one("#status", Static)
        status.update(text)
        status.set_classes(f"status -{state}")

    # -- navigation, marks, sorting ------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_filter(self) -> None:
        self.query_one(FilterBar).open()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.rebuild()
        if self.inventory.complete:
            self.show_count()

    def action_mark(self) -> None:
        table = self.query_one(KeyTable)
        tag = table.current_key
        if tag is None:
            return
        self.marked ^= {tag}
        table.update_cell(tag, "mark", "●" if tag in self.marked else " ")
        self.update_title()
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def action_mark_all(self) -> None:
        shown = {r.tag for r in self.rows()}
        self.marked = set() if shown <= self.marked else self.marked | shown
        self.rebuild()

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.reverse = False
        self.rebuild()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.rebuild()

    def action_reload(self) -> None:
        self.reload()

    @on(DataTable.RowSelected, "#tags")
    def open_manifest(self, event: DataTable.RowSelected) -> None:
        tag = event.row_key.value
        row = self.inventory.tags.get(tag)
        self.app.push_screen(ManifestScreen(self.repository, tag, row.digest if row else None, self.inventory))

    # -- deleting ------------------------------------------------------------------------------------------------

    def ready(self) -> bool:
        if not self.inventory.complete:
            self.notify("Still reading the manifests of this repository; try again in a moment.",
                        severity="warning")
            return False
        return True

    def action_delete_tags(self) -> None:
        doomed = set(self.marked) or ({self.query_one(KeyTable).current_key} - {None})
        if doomed and self.ready():
            self.plan_deletion(sorted(doomed), [], "Delete tags")

    def action_delete_manifest(self) -> None:
        tag = self.query_one(KeyTable).current_key
        row = self.inventory.tags.get(tag) if tag else None
        if row is None or not row.digest:
            return
        if self.ready():
            self.plan_deletion([], [row.digest], "Delete manifest")

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def plan_deletion(self, doomed: list[str], manifests: list[str], title: str) -> None:
        client, admin = self.app.client, self.app.admin
        try:
            result, note = make_plan(client, admin, self.inventory, self.stats, doomed, manifests)
            # The referrers of the manifests that go are looked up now, so the dialog can say what `r` would add.
            choice = with_referrers(client, admin, self.inventory, self.stats, doomed, manifests, result)
        except Exception as exc:
            self.post_message(LoadFailed("plan", error_text(exc)))
            return
        self.post_message(PlanReady(result, f"{title}\n{note}".strip(), choice))

    @on(PlanReady)
    def confirm_plan(self, message: PlanReady) -> None:
        title, _, note = message.note.partition("\n")
        if message.plan.empty:
            self.notify("Nothing to delete.")
            return
        groups = self.inventory.by_digest()
        body = describe_plan(message.plan, groups)
        if note:
            body.append(note + "\n", style="yellow")
        choice = message.referrers
        if choice is None:
            dialog = ConfirmScreen(title, body)
        else:
            body.append_text(describe_referrers(choice))
            other = None
            if choice.plan is not None:
                other = describe_plan(choice.plan, groups)
                if choice.note:
                    other.append(choice.note + "\n", style="yellow")
                other.append("r: keep the referrers, delete the manifests alone\n", style="dim")
            dialog = ConfirmDeletion(title, body, f"{title}, with referrers", other, choice.reason)

        def answered(yes: bool | None) -> None:
            if yes:
                chosen = choice.plan if isinstance(dialog, ConfirmDeletion) and dialog.with_referrers else None
                self.app.push_screen(ProgressScreen(self.repository, chosen or message.plan), self.after_delete)
        self.app.push_screen(dialog, answered)

    def after_delete(self, result: dict | None) -> None:
        self.marked = set()
        self.reload()

    def action_retention(self) -> None:
        if self.ready():
            self.app.push_screen(RetentionScreen(self.inventory, self.stats), self.after_delete)

    def action_gc(self) -> None:
        if not self.app.admin:
            self.notify("This server has no garbage collection API.", severity="warning")
            return
        self.app.push_screen(ProgressScreen(None, None), self.after_delete)
