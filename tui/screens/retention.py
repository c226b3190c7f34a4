"""Retention rules for one repository: keep the newest N, delete older than D days, match a pattern;
previewed live (tags, manifests and the bytes garbage collection would free) before anything is deleted."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from ..client import ClientError
from ..images import Inventory
from ..messages import LoadFailed, PlanReady
from ..retention import Plan, RetentionRules, make_plan, select
from ..widgets.plansummary import describe_plan
from .confirm import ConfirmScreen
from .progress import ProgressScreen


def parse_rules(keep: str, days: str, pattern: str) -> RetentionRules:
    """The three inputs as RetentionRules; ValueError with a sentence when one is not a number."""
    keep_n = days_n = None
    if keep.strip():
        if not keep.strip().isdigit():
            raise ValueError("keep newest: a whole number of tags")
        keep_n = int(keep)
    if days.strip():
        try:
            days_n = float(days)
        except ValueError:
            raise ValueError("older than: a number of days") from None
        if days_n < 0:
            raise ValueError("older than: a number of days, not negative")
    return RetentionRules(keep_n, days_n, pattern.strip() or None)


class RetentionScreen(Screen[dict]):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("enter", "apply", "Prune"),
    ]

    def __init__(self, inventory: Inventory, stats: dict):
        super().__init__()
        self.inventory = inventory
        self.stats = stats
        self.plan: Plan | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"[b]{self.inventory.repository}[/b]  retention rules", id="title")
        with Horizontal(id="rules"):
            yield Label("keep newest")
            yield Input(placeholder="N", id="keep", classes="rule-number")
            yield Label("older than")
            yield Input(placeholder="days", id="days", classes="rule-number")
            yield Label("tags matching")
            yield Input(placeholder="glob, e.g. pr-*", id="pattern")
        with VerticalScroll(id="preview-box"):
            yield Static("Set a rule to see what it would delete.", id="preview")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#keep", Input).focus()

    @on(Input.Changed)
    def rules_changed(self, event: Input.Changed) -> None:
        try:
            rules = parse_rules(*(self.query_one(f"#{i}", Input).value for i in ("keep", "days", "pattern")))
        except ValueError as exc:
            self.plan = None
            self.query_one("#preview", Static).update(f"[red]{exc}[/red]")
            return
        if rules.empty:
            self.plan = None
            self.query_one("#preview", Static).update("Set a rule to see what it would delete.")
            return
        self.query_one("#preview", Static).update("computing …")
        self.preview(rules)

    @work(thread=True, exclusive=True, group="preview", exit_on_error=False)
    def preview(self, rules: RetentionRules) -> None:
        with self.inventory.lock:
            rows = list(self.inventory.tags.values())
        doomed = select(rows, rules, self.app.clock())
        try:
            plan, note = make_plan(self.app.client, self.app.admin, self.inventory, self.stats, doomed)
        except Exception as exc:
            text = str(exc) if isinstance(exc, ClientError) else f"unexpected {type(exc).__name__}: {exc}"
            self.post_message(LoadFailed("preview", text))
            return
        self.post_message(PlanReady(plan, note))

    @on(PlanReady)
    def show_plan(self, message: PlanReady) -> None:
        self.plan = message.plan
        text = describe_plan(message.plan, self.inventory.by_digest())
        if message.plan.tags:
            text.append("\nTags: " + ", ".join(message.plan.tags))
        if message.note:
            text.append("\n" + message.note, style="yellow")
        if not message.plan.empty:
            text.append("\nenter: prune (you will be asked to confirm)", style="bold")
        self.query_one("#preview", Static).update(text)

    @on(LoadFailed)
    def failed(self, message: LoadFailed) -> None:
        self.plan = None
        self.query_one("#preview", Static).update(f"[red]{message.error}[/red]")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.action_apply()

    def finished(self, result: dict | None) -> None:
        self.dismiss(result or {})

    def action_back(self) -> None:
        self.dismiss({})

    def action_apply(self) -> None:
        plan = self.plan
        if plan is None or plan.empty:
            self.notify("Nothing to prune.")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.push_screen(ProgressScreen(plan.repository, plan), self.finished)
        self.app.push_screen(ConfirmScreen("Prune by retention rules",
                                           describe_plan(plan, self.inventory.by_digest())), answered)
