"""The `/` filter: an input that appears on demand and narrows a list as you type."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input

from .table import KeyTable


class FilterBar(Input):
    BINDINGS = [Binding("escape", "leave", "Leave filter", show=False),
                Binding("enter", "leave", "Done", show=False)]

    def __init__(self, placeholder: str, **kwargs):
        super().__init__(placeholder=placeholder, classes="filter -hidden", **kwargs)

    def open(self) -> None:
        self.remove_class("-hidden")
        self.focus()

    def action_leave(self) -> None:
        if not self.value:
            self.add_class("-hidden")
        self.screen.query_one(KeyTable).focus()

    def matches(self, text: str) -> bool:
        needle = self.value.strip().lower()
        return not needle or needle in text.lower()
