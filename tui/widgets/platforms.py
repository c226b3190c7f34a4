"""An index's platforms in the manifest detail, one row each: `enter` opens the one under the cursor.

The table is as tall as its rows and sits in the detail's scroll with the text around it, so it is the detail that
scrolls: moving the cursor scrolls it to keep the row in view, and `home`/`end` go to the top and the end of the
detail (a DataTable would scroll only itself, which has nothing to scroll)."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.geometry import Region
from textual.widgets import DataTable

from ..format import human_bytes, short_digest
from ..images import Footprint


class PlatformTable(DataTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Open platform"),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]

    def __init__(self, **kwargs):
        kwargs.setdefault("cursor_type", "row")
        super().__init__(**kwargs)

    def show(self, platforms: list[Footprint]) -> None:
        """One row per platform, keyed by its position in the index (a platform may be listed twice)."""
        self.clear(columns=True)
        for label in ("Platform", "Digest", "Size", "Type"):
            self.add_column(label, key=label.lower())
        for i, child in enumerate(platforms):
            kind = child.media_type.rsplit(".", 2)[-2] if child.media_type.count(".") >= 2 else child.media_type
            # Text, not str: a DataTable reads a str as markup, and the platform comes from whoever pushed the index
            self.add_row(Text(child.platform or "?"), short_digest(child.digest), human_bytes(child.total_size),
                         Text(kind or "?"), key=str(i))
        self.remove_class("-hidden")

    def watch_cursor_coordinate(self, old, new) -> None:
        super().watch_cursor_coordinate(old, new)
        if self.parent is not None and self.row_count:
            top = self.virtual_region.y + self.header_height + new.row
            self.parent.scroll_to_region(Region(0, top, 1, 1), animate=False)

    def action_scroll_home(self) -> None:
        self.parent.scroll_home(animate=False)

    def action_scroll_end(self) -> None:
        self.parent.scroll_end(animate=False)
