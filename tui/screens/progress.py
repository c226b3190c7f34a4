"""Deletion under way: a progress bar while the steps run, then garbage collection and the space it reclaimed."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import ProgressBar, Static

from ..client import ClientError
from ..format import exact_bytes, plural
from ..messages import DeleteFinished, DeleteProgress, GCFinished
from ..prune import Step, apply, steps
from ..retention import Plan


class ProgressScreen(ModalScreen[dict]):
    """Runs `plan` (or deletes `repository` whole, or nothing), then the server's GC where there is one.
    Dismisses with {"deleted": n, "errors": [...], "gc": GCResult | None}."""

    BINDINGS = [Binding("escape,enter", "close", "Close")]

    def __init__(self, repository: str | None, plan: Plan | None, *, delete_repository: bool = False):
        super().__init__()
        self.repository = repository
        self.plan = plan
        self.steps: list[Step] = steps(plan) if plan else []
        if delete_repository and repository:
            self.steps = [Step("repository", repository, repository)]
        self.result: dict = {"deleted": 0, "errors": [], "gc": None}
        self.finished = False
        self.summary: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            title = f"Deleting from {self.repository}" if self.steps else "Garbage collection"
            yield Static(title, id="dialog-title")
            yield ProgressBar(total=max(1, len(self.steps)), show_eta=False, id="progress")
            yield Static("", id="progress-step")
            yield Static("", id="progress-result")

    def on_mount(self) -> None:
        self.run_steps()

    @work(thread=True, exclusive=True, group="delete", exit_on_error=False)
    def run_steps(self) -> None:
        client = self.app.client
        errors: list[str] = []
        deleted = 0
        for i, step in enumerate(self.steps):
            self.post_message(DeleteProgress(i, len(self.steps), str(step)))
            try:
                apply(client, step)
                deleted += 1
            except ClientError as exc:
                errors.append(str(exc))
            except Exception as exc:
                errors.append(f"{step}: unexpected {type(exc).__name__}: {exc}")
        self.post_message(DeleteProgress(len(self.steps), len(self.steps), "done"))
        self.post_message(DeleteFinished(deleted, errors))
        if not self.app.admin:
            self.post_message(GCFinished(None, "Space is reclaimed when the server's garbage collection runs "
                                               "(this server has no API for it: reclaimed bytes unknown)."))
            return
        try:
            result = client.gc(grace_seconds=self.app.gc_grace)
        except Exception as exc:
            text = str(exc) if isinstance(exc, ClientError) else f"unexpected {type(exc).__name__}: {exc}"
            self.post_message(GCFinished(None, f"garbage collection failed: {text}"))
            return
        self.post_message(GCFinished(result))

    @on(DeleteProgress)
    def progress(self, message: DeleteProgress) -> None:
        self.query_one(ProgressBar).update(total=max(1, message.total), progress=message.done)
        self.query_one("#progress-step", Static).update(
            f"{message.done}/{message.total}  {message.step}" if message.total else "")

    @on(DeleteFinished)
    def deleted(self, message: DeleteFinished) -> None:
        self.result["deleted"] = message.deleted
        self.result["errors"] = message.errors
        if self.steps:
            self.summary = [f"Deleted {message.deleted} of {len(self.steps)}."]
            self.summary += [f"[red]✗ {e}[/red]" for e in message.errors[:5]]
            if len(message.errors) > 5:
                self.summary.append(f"[red]… and {len(message.errors) - 5} more errors[/red]")
        waiting = ["Running garbage collection …"] if self.app.admin else []
        self.query_one("#progress-result", Static).update("\n".join(self.summary + waiting))

    @on(GCFinished)
    def collected(self, message: GCFinished) -> None:
        self.result["gc"] = message.result
        self.finished = True
        if message.result is not None:
            r = message.result
            text = (f"Garbage collection reclaimed {exact_bytes(r.bytes_freed)}: {plural(r.blobs_removed, 'blob')}, "
                    f"{plural(r.manifests_removed, 'manifest')} removed.")
        else:
            text = message.note
        lines = self.summary + [text, "[dim]enter: close[/dim]"]
        self.query_one("#progress-result", Static).update("\n".join(lines))

    def action_close(self) -> None:
        if self.finished:
            self.dismiss(self.result)
