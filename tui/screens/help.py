"""`?`: every key of every screen, on one page that fits 80x24."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = """\
[b]Everywhere[/b]    ?  help   q  quit   escape  back   ↑↓ or j k  move
              g G  first/last row   /  filter as you type, enter: done

[b]Repositories[/b]  enter  its tags        x  delete the repository (admin API)
              C  garbage collection (admin API)       r  reload

[b]Tags[/b]          enter  manifest detail   space  mark/unmark   a  mark all
              s  sort: name → date → size       o  reverse the order
              d  delete the marked tags (or the tag under the cursor)
              D  delete the manifest under the cursor, with all its tags
              r  in their dialog: the referrers too (signatures, SBOMs)
              p  retention rules   C  garbage collection   r  reload

[b]Manifest[/b]      c  copy the pull reference   j k  scroll   escape  back
              an index: enter  open the platform under the cursor

[b]Retention[/b]     tab  next rule   enter  prune what the preview shows
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static("[b]registry-tui keys[/b]", id="help-title")
            yield Static(KEYS)

    def action_close(self) -> None:
        self.dismiss(None)
