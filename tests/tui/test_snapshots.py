"""Snapshots of the main screens at 80x24, against the real Dockyard app in this process. Stable by construction:
the registry holds the same seeded content (names, sizes, digests) on every run, its clock is fixed (every push
a month before FIXED_NOW), and the app's clock is injected."""

from __future__ import annotations

import pytest

from conftest import FIXED_NOW, goto, settle, type_text
from dockyard.tui.app import RegistryApp
from seed import seed


@pytest.fixture
def app(registry):
    seed(registry.url, transport=registry.transport)
    return RegistryApp(registry.client(), clock=lambda: FIXED_NOW)


def steps(*actions):
    """A run_before for snap_compare: key presses (str) and row moves (("goto", key)), settling in between."""
    async def run_before(pilot):
        await settle(pilot)
        for action in actions:
            if isinstance(action, tuple) and action[0] == "goto":
                await goto(pilot, action[1])
            elif isinstance(action, tuple) and action[0] == "type":
                await type_text(pilot, action[1])
            else:
                await pilot.press(action)
            await settle(pilot)
        pilot.app.screen.query_one("#detail").scroll_home(animate=False) if pilot.app.screen.query("#detail") \
            else None
        await settle(pilot)
    return run_before


def test_repositories_screen(snap_compare, app):
    assert snap_compare(app, run_before=steps())


def test_tags_screen_with_two_marked(snap_compare, app):
    assert snap_compare(app, run_before=steps(("goto", "apps/web"), "enter", "space", "space"))


def test_tags_sorted_by_size(snap_compare, app):
    assert snap_compare(app, run_before=steps(("goto", "apps/web"), "enter", "s", "s"))


def test_manifest_of_an_index(snap_compare, app):
    assert snap_compare(app, run_before=steps(("goto", "apps/web"), "enter", ("goto", "multi"), "enter"))


def test_confirm_deleting_marked_tags(snap_compare, app):
    assert snap_compare(app, run_before=steps(("goto", "apps/web"), "enter", "space", "space", "d"))


def test_retention_preview(snap_compare, app):
    assert snap_compare(app, run_before=steps(("goto", "apps/web"), "enter", "p", "tab",
                                              ("type", "20"), "tab", ("type", "1.*")))


def test_help(snap_compare, app):
    assert snap_compare(app, run_before=steps("question_mark"))


def test_confirm_deleting_a_manifest_with_its_referrers(snap_compare, app):
    """Issue 15: `r` in the dialog of D: the manifest, its tags and its SBOM, each said, and the bytes they free."""
    assert snap_compare(app, run_before=steps(("goto", "apps/web"), "enter", ("goto", "2.0"), "D", "r"))
