"""A DataTable for long lists over SSH: vim keys, rows addressed by key, and only a window of the rows mounted.

DataTable.add_row costs about 0.1 ms, so putting 10,000 rows in place on every keystroke of a filter would
freeze the screen for a second or more. KeyTable keeps every row in a plain list and mounts the first WINDOW;
moving the cursor near the end mounts the next WINDOW.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import DataTable

WINDOW = 200


class KeyTable(DataTable):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "bottom", "Bottom", show=False),
        Binding("home", "scroll_top", "Top", show=False),
        Binding("end", "scroll_bottom", "End of the mounted rows", show=False),
        Binding("ctrl+f", "page_down", "Page down", show=False),
        Binding("ctrl+b", "page_up", "Page up", show=False),
    ]

    def __init__(self, **kwargs):
        kwargs.setdefault("cursor_type", "row")
        kwargs.setdefault("zebra_stripes", False)
        super().__init__(**kwargs)
        self.all_rows: list[tuple[str, tuple]] = []
        self.mounted_rows = 0

    @property
    def all_keys(self) -> list[str]:
        return [key for key, _ in self.all_rows]

    @property
    def current_key(self) -> str | None:
        """The key of the row under the cursor, or None on an empty table."""
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # the cursor can sit past the end for a moment while rows are replaced
            return None

    def _mount_upto(self, count: int) -> None:
        count = min(count, len(self.all_rows))
        for key, cells in self.all_rows[self.mounted_rows:count]:
            self.add_row(*cells, key=key)
        self.mounted_rows = max(self.mounted_rows, count)

    def replace_rows(self, rows: list[tuple[str, tuple]]) -> None:
        """Put these (key, cells) rows in place of the old ones, keeping the cursor on the same key if it stays."""
        keep = self.current_key
        self.all_rows = list(rows)
        self.clear()
        self.mounted_rows = 0
        position = next((i for i, (key, _) in enumerate(self.all_rows) if key == keep), None)
        if position is not None and position >= 4 * WINDOW:
            position = None  # following a row that far down would mount thousands: back to the top instead
        self._mount_upto(max(WINDOW, (position or 0) + WINDOW // 2))
        if position is not None:
            self.move_cursor(row=position, animate=False)

    def append_rows(self, rows: list[tuple[str, tuple]]) -> None:
        """More rows at the end (a page that just arrived): mounted only while the window is not full, or when
        the cursor is already near the end."""
        self.all_rows.extend(rows)
        if self.mounted_rows < WINDOW:
            self._mount_upto(WINDOW)
        elif self.cursor_row >= self.mounted_rows - 10:
            self._mount_upto(self.mounted_rows + WINDOW)

    def clear_rows(self) -> None:
        self.all_rows = []
        self.mounted_rows = 0
        self.clear()

    def watch_cursor_coordinate(self, old, new) -> None:
        super().watch_cursor_coordinate(old, new)
        if new.row >= self.mounted_rows - 10 and self.mounted_rows < len(self.all_rows):
            self.call_after_refresh(self._mount_upto, self.mounted_rows + WINDOW)

    def action_bottom(self) -> None:
        self._mount_upto(len(self.all_rows))
        self.move_cursor(row=self.row_count - 1, animate=False)
