"""registry-tui's behaviour that needs no real server: a dead or slow registry, wrong credentials, 10,000
repositories, the help screen, the command line. Against the in-memory FakeRegistry (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import time

from conftest import run_app, screen_text, settle, table_keys, type_text
from dockyard.tui import app as app_module
from dockyard.tui.app import RegistryApp
from dockyard.tui.client import Credentials, RegistryClient
from fakeregistry import FakeRegistry, Repo
from seed import seed

URL = "http://registry.test"


def make_app(fake: FakeRegistry, credentials: Credentials | None = None, **kwargs) -> RegistryApp:
    return RegistryApp(RegistryClient(URL, credentials, transport=fake.transport()), **kwargs)


def test_a_dead_server_is_a_clear_state_and_r_retries():
    fake = FakeRegistry()
    seed(URL, transport=fake.transport())
    fake.down = True

    async def scenario(pilot):
        text = screen_text(pilot.app)
        assert "cannot reach http://registry.test: connection refused   (r: retry)" in text
        assert "Traceback" not in text
        fake.down = False
        await pilot.press("r")
        await settle(pilot)
        assert table_keys(pilot.app) == ["apps/api", "apps/web", "tools/cli"]

    run_app(make_app(fake), scenario)


def test_a_slow_server_shows_loading_and_the_keys_still_answer():
    fake = FakeRegistry()
    seed(URL, transport=fake.transport())
    fake.delay = 0.3

    async def main():
        app = make_app(fake)
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(20):
                await pilot.pause()
                if "connecting to http://registry.test" in screen_text(app):
                    break
            assert "connecting to http://registry.test …" in screen_text(app)
            started = time.monotonic()
            await pilot.press("question_mark")
            assert "registry-tui keys" in screen_text(app)
            assert time.monotonic() - started < 0.3 * 3  # the help opened while requests were still pending
            await pilot.press("escape")
            await settle(pilot)
            assert table_keys(app) == ["apps/api", "apps/web", "tools/cli"]
    asyncio.run(main())


def test_wrong_credentials_are_said_on_screen():
    fake = FakeRegistry(auth="bearer")

    async def scenario(pilot):
        text = screen_text(pilot.app)
        assert "the token service refused user 'admin' (401): check the credentials" in text

    run_app(make_app(fake, Credentials("admin", "nope")), scenario)


def test_ten_thousand_repositories_load_page_by_page_and_filter_as_you_type():
    fake = FakeRegistry(admin=False)
    for i in range(10_000):
        fake.repos[f"team{i % 50:02d}/service-{i:05d}"] = Repo()

    async def main():
        app = make_app(fake)
        async with app.run_test(size=(80, 24)) as pilot:
            started = time.monotonic()
            await settle(pilot, timeout=60)
            assert len(table_keys(app)) == 10_000
            assert "10000 repositories" in screen_text(app)
            catalog_pages = [p for m, p in fake.requests if p == "/v2/_catalog"]
            assert len(catalog_pages) == 10  # n=1000, following Link
            table = app.screen.query_one("KeyTable")
            assert table.row_count == 200  # a window of the 10,000 is mounted; the cursor brings more
            await pilot.press("end")  # to the last mounted row: the next window is mounted
            await pilot.pause()
            assert table.row_count == 400 and table.current_key == sorted(fake.repos)[199]
            await pilot.press("slash")
            await type_text(pilot, "service-0999")
            assert len(table_keys(app)) == 10
            await type_text(pilot, "9")
            assert table_keys(app) == ["team49/service-09999"]
            assert "1 of 10000 repositories match" in screen_text(app)
            assert time.monotonic() - started < 30
    asyncio.run(main())


def test_help_lists_the_keys():
    fake = FakeRegistry()

    async def scenario(pilot):
        await pilot.press("question_mark")
        text = screen_text(pilot.app)
        for key in ("/  filter", "space  mark/unmark", "s  sort", "D  delete the manifest", "p  retention"):
            assert key in text

    run_app(make_app(fake), scenario)


def test_main_reports_a_broken_config_file_without_a_traceback(tmp_path, monkeypatch, capsys):
    (tmp_path / "registry-tui").mkdir()
    (tmp_path / "registry-tui" / "config.toml").write_text("url = [unclosed\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("REGISTRY_TUI_URL", raising=False)
    assert app_module.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("registry-tui: cannot read") and "Traceback" not in err


def test_console_script_is_registry_tui():
    import importlib.metadata
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["registry-tui"] == "dockyard.tui.app:main"


def test_the_readme_shows_the_screen_as_it_is():
    """The README's captured screen is today's render of the same scenario (regenerate it if this fails)."""
    from pathlib import Path

    from conftest import FIXED_NOW, goto

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    fake = FakeRegistry()
    seed(URL, transport=fake.transport())
    app = make_app(fake, clock=lambda: FIXED_NOW)
    captured = []

    async def scenario(pilot):
        await goto(pilot, "apps/web")
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("space", "space", "d")
        await settle(pilot)
        captured.append(screen_text(pilot.app))

    run_app(app, scenario)
    block = "\n".join("    " + line.rstrip() for line in captured[0].splitlines())
    assert block in "\n".join(line if line.strip() else "    " for line in readme.splitlines())
