"""A yes/no question over the current screen: dismisses with True only on an explicit yes. The deletion dialog
adds one switch: the referrers of the manifests that go (signatures, SBOMs), deleted with them or left."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, body: object, *, yes: str = "Delete"):
        super().__init__()
        self.title_text = title
        self.body = body
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.title_text, id="dialog-title")
            with VerticalScroll(id="dialog-body"):
                yield Static(self.body)
            with Horizontal(id="dialog-buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("Cancel (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # the safe answer is the default

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class ConfirmDeletion(ConfirmScreen):
    """The deletion dialog with a second answer on `r`: the manifests alone (the default), or with their referrers.
    The title and body always say exactly what goes; where the referrers cannot be offered, `r` says why.
    Dismisses with True on yes; `with_referrers` tells which of the two was confirmed."""

    BINDINGS = [Binding("r", "toggle_referrers", "Referrers too")]

    def __init__(self, title: str, alone: object, title_with: str, with_referrers: object | None, refusal: str):
        super().__init__(title, alone)
        self.answers = ((title, alone), (title_with, with_referrers))
        self.refusal = refusal
        self.with_referrers = False

    def action_toggle_referrers(self) -> None:
        body = self.query_one("#dialog-body Static", Static)
        if self.answers[1][1] is None:
            # said in the dialog itself, under what goes: a toast could pass unseen while the operator decides
            refused = Text.assemble(self.answers[0][1], (f"Cannot delete the referrers: {self.refusal}.", "bold"))
            body.update(refused)
            return
        self.with_referrers = not self.with_referrers
        title, text = self.answers[self.with_referrers]
        self.query_one("#dialog-title", Static).update(title)
        body.update(text)
