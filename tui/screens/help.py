"""`?`: every key of every screen, on one page that fits 80x24."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = """\
[b]Everywhere[/b]   ?  help     q  quit     escape  back     ↑↓ / j k  move    g G  top/bottom
             /  filter as you type (escape leaves the filter)

[b]Repositories[/b] enter  tags of the repository     x  delete the repository (admin API)
             C  garbage collection (admin API)     r  reload

[b]Tags[/b]         enter  manifest detail     space  mark/unmark     a  mark all shown
             s  sort: name → date → size          o  reverse the order
             d  delete the marked tags (or the tag under the cursor)
             D  delete the manifest under the cursor by digest, with all its tags
             p  retention rules: preview, then prune     C  garbage collection     r  reload

[b]Manifest[/b]     c  copy the `docker pull` reference     escape  back

[b]Retention[/b]    tab  next field     enter  prune what the preview shows     escape  back
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static("[b]registry-tui keys[/b]", id="help-title")
            yield Static(KEYS)

    def action_close(self) -> None:
        self.dismiss(None)
