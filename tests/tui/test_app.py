"""registry-tui's behaviour around the network and the command line: a dead or slow registry, wrong
credentials, 10,000 repositories, the help screen, `--help`. Against the real Dockyard app in this process
(conftest's `registry`), with a thin transport in front of it for the faults."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from conftest import (FIXED_NOW, USERS, auth_middleware, goto, run_app, screen_text, settle, table_keys,
                      type_text)
from dockyard.tui import app as app_module
from dockyard.tui.app import RegistryApp
from dockyard.tui.client import Credentials
from seed import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, Seeder, canonical, repositories, seed


def test_a_dead_server_is_a_clear_state_and_r_retries(registry):
    seed(registry.url, transport=registry.transport)
    registry.transport.down = True

    async def scenario(pilot):
        text = screen_text(pilot.app)
        assert "cannot reach http://registry.test: connection refused   (r: retry)" in text
        assert "Traceback" not in text
        registry.transport.down = False
        await pilot.press("r")
        await settle(pilot)
        assert table_keys(pilot.app) == ["apps/api", "apps/web", "tools/cli"]

    run_app(RegistryApp(registry.client()), scenario)


def test_a_slow_server_shows_loading_and_the_keys_still_answer(registry):
    """The server holds every request until the test lets them go: the screen says it is connecting, and the help
    opens while the requests are, for certain, still pending (no clock to race on a loaded machine)."""
    seed(registry.url, transport=registry.transport)
    registry.transport.clear()
    held = registry.transport.held = threading.Event()

    async def main():
        app = RegistryApp(registry.client())
        async with app.run_test(size=(80, 24)) as pilot:
            try:
                for _ in range(200):
                    await pilot.pause()
                    if "connecting to http://registry.test" in screen_text(app):
                        break
                assert "connecting to http://registry.test …" in screen_text(app)
                await pilot.press("question_mark")
                assert "registry-tui keys" in screen_text(app)
                assert registry.transport.log == []  # not one request answered yet: the keys did not wait for them
                assert any(w.is_running for w in app.workers)
                await pilot.press("escape")
            finally:
                held.set()  # a failed check must not leave the app's worker waiting for the 60 s timeout
            await settle(pilot)
            assert table_keys(app) == ["apps/api", "apps/web", "tools/cli"]
    asyncio.run(main())


def test_wrong_credentials_are_said_on_screen(make_registry, tmp_path):
    registry = make_registry(middleware=auth_middleware(tmp_path))  # bearer tokens from the app's /auth/token

    async def scenario(pilot):
        text = screen_text(pilot.app)
        assert "the token service refused user 'alice' (401): check the credentials" in text
        assert table_keys(pilot.app) == []

    run_app(RegistryApp(registry.client(Credentials("alice", "wrong"))), scenario)
    assert registry.transport.count("GET", "/auth/token", 401) == 1


def test_ten_thousand_repositories_load_page_by_page_and_filter_as_you_type(make_registry, tmp_path):
    # bob may pull everything but is no admin: the admin API refuses him (403), so the app lists the V2 catalog,
    # as it does on a registry without the admin API
    registry = make_registry(middleware=auth_middleware(tmp_path, tokens=False))
    names = sorted(f"team{i % 50:02d}/service-{i:05d}" for i in range(10_000))
    repositories(registry.url, names, transport=registry.transport, auth=httpx.BasicAuth("alice", USERS["alice"]))
    transport = registry.transport

    async def main():
        app = RegistryApp(registry.client(Credentials("bob", USERS["bob"])))
        async with app.run_test(size=(80, 24)) as pilot:
            started = time.monotonic()
            await settle(pilot, timeout=60)
            assert len(table_keys(app)) == 10_000
            text = screen_text(app)
            assert "V2 API only" in text and "10000 repositories" in text
            assert transport.count("GET", "/v2/_dockyard/storage", 403) == 1
            assert transport.count("GET", "/v2/_catalog", 200) == 10  # n=1000, following Link
            table = app.screen.query_one("KeyTable")
            assert table.row_count == 200  # a window of the 10,000 is mounted; the cursor brings more
            await pilot.press("end")  # to the last mounted row: the next window is mounted
            await pilot.pause()
            assert table.row_count == 400 and table.current_key == names[199]
            await pilot.press("slash")
            await type_text(pilot, "service-0999")
            assert len(table_keys(app)) == 10
            await type_text(pilot, "9")
            assert table_keys(app) == ["team49/service-09999"]
            assert "1 of 10000 repositories match" in screen_text(app)
            assert time.monotonic() - started < 30
    asyncio.run(main())


def test_counts_read_in_the_singular_for_one(registry):
    repositories(registry.url, ["only/one"], transport=registry.transport)

    async def scenario(pilot):
        assert str(pilot.app.screen.query_one("#status").render()) == "1 repository"
        await pilot.press("enter")
        await settle(pilot)
        assert str(pilot.app.screen.query_one("#status").render()) == "1 tag, 1 manifest"

    run_app(RegistryApp(registry.client()), scenario)


def test_help_lists_the_keys(registry):
    async def scenario(pilot):
        await pilot.press("question_mark")
        text = screen_text(pilot.app)
        for key in ("/  filter", "space  mark/unmark", "s  sort", "D  delete the manifest", "p  retention",
                    "r  in their dialog: the referrers too", "an index: enter  open the platform"):
            assert key in text

    run_app(RegistryApp(registry.client()), scenario)


def test_help_option_prints_the_usage_and_where_settings_come_from(capsys):
    try:
        app_module.main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    else:
        raise AssertionError("--help did not exit")
    out = capsys.readouterr().out
    assert out.startswith("usage: registry-tui [-h]")
    for text in ("REGISTRY_TUI_URL", "REGISTRY_TUI_USERNAME", "REGISTRY_TUI_TOKEN", "config.toml", "config.json",
                 "credHelpers", "credsStore", "docker-credential-NAME",
                 "--password-stdin", "http://127.0.0.1:5000", "?"):
        assert text in out, text


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


def test_the_readme_shows_the_screen_as_it_is(registry):
    """The README's captured screen is today's render of the same scenario (regenerate it if this fails)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    seed(registry.url, transport=registry.transport)
    app = RegistryApp(registry.client(), clock=lambda: FIXED_NOW)
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


def test_open_one_platform_of_an_index_and_come_back(registry):
    """Issue 15: the manifest screen of an index lists its platforms; `enter` opens one as a manifest screen of its
    own, `escape` comes back to the index with the cursor where it was."""
    s = seed(registry.url, transport=registry.transport)
    app = RegistryApp(registry.client(), clock=lambda: FIXED_NOW)

    async def scenario(pilot):
        await goto(pilot, "apps/web")
        await pilot.press("enter")
        await settle(pilot)
        await goto(pilot, "multi")
        await pilot.press("enter")
        await settle(pilot)
        assert "Platforms (2; enter: open one)" in screen_text(pilot.app)
        table = pilot.app.screen.query_one("#platforms")
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == ["linux/amd64", "linux/arm64"]
        assert pilot.app.focused is table and "Open platform" in screen_text(pilot.app)

        await pilot.press("down", "enter")
        await settle(pilot)
        text = screen_text(pilot.app)
        assert text.splitlines()[0].strip() == "apps/web : multi › linux/arm64"
        assert "application/vnd.oci.image.manifest.v1+json" in text and "Layers (1)" in text
        assert "Platform    linux/arm64" in text and "Tags        (none)" in text
        assert s.arm64.digest[:60] in text.replace("\n             ", "")
        await pilot.press("c")
        assert pilot.app.clipboard == f"registry.test/apps/web@{s.arm64.digest}"

        await pilot.press("escape")
        await settle(pilot)
        assert screen_text(pilot.app).splitlines()[0].strip() == "apps/web : multi"
        table = pilot.app.screen.query_one("#platforms")
        assert table.cursor_row == 1 and pilot.app.focused is table
        await pilot.press("up", "enter")
        await settle(pilot)
        assert "apps/web : multi › linux/amd64" in screen_text(pilot.app)
        assert s.amd64.digest[:60] in screen_text(pilot.app).replace("\n             ", "")
        await pilot.press("escape", "escape")
        await settle(pilot)
        assert "multi" in table_keys(pilot.app)

    run_app(app, scenario)
    # each platform was read by its digest, as the index lists it
    assert registry.transport.count("GET", f"/v2/apps/web/manifests/{s.arm64.digest}", 200) >= 1



def test_a_long_platform_list_follows_the_cursor_and_shows_platforms_as_text(registry):
    """The detail scrolls with the platform cursor (the table itself has nothing to scroll); a platform is text
    from whoever pushed the index, shown as it is, never read as markup (which crashed the tags screen)."""
    s = seed(registry.url, transport=registry.transport)
    seeder = Seeder(registry.url, registry.transport)
    wide = seeder.index("apps/web", [(s.arm64, "evil[/b][red]")] + [(s.amd64, f"arch{i:02d}") for i in range(11)],
                        ["wide"])
    empty = seeder.blob("apps/web", b"{}")
    body = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x[/b]",
                      "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
                      "layers": [{"mediaType": "application/y[/i]", "digest": empty, "size": 2}],
                      "subject": {"mediaType": OCI_INDEX, "digest": wide.digest, "size": wide.manifest_bytes}})
    seeder.manifest("apps/web", "odd", body, OCI_MANIFEST)
    seeder.close()
    app = RegistryApp(registry.client(), clock=lambda: FIXED_NOW)

    async def scenario(pilot):
        await goto(pilot, "apps/web")
        await pilot.press("enter")
        await settle(pilot)
        assert "linux/evil[/b][red],linux/arch00" in screen_text(pilot.app)  # the tags screen's platforms
        await goto(pilot, "wide")
        await pilot.press("enter")
        await settle(pilot)
        assert "linux/evil[/b][red]" in screen_text(pilot.app) and "linux/arch10" not in screen_text(pilot.app)
        await pilot.press(*["j"] * 11)
        await settle(pilot)
        assert "linux/arch10" in screen_text(pilot.app)
        await pilot.press("end")
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "Referrers (1)" in text and "application/x[/b]" in text  # the referrer's artifact type, as text
        await pilot.press("enter")
        await settle(pilot)
        assert "apps/web : wide › linux/arch10" in screen_text(pilot.app)
        await pilot.press("escape", "home", *["k"] * 11, "enter")
        await settle(pilot)
        assert "apps/web : wide › linux/evil[/b][red]" in screen_text(pilot.app)
        await pilot.press("escape", "escape")
        await goto(pilot, "odd")
        await pilot.press("enter")
        await settle(pilot)
        assert "application/y[/i]" in screen_text(pilot.app)  # its layer's media type

    run_app(app, scenario)


def test_the_event_backlog_is_on_the_title_line(make_registry):
    """Issue 17: with notification endpoints, the title says how many events wait and how many are parked."""
    registry = make_registry(notifications=({"name": "ci", "url": "http://127.0.0.1:9/hook", "actions": ["push"],
                                             "media_types": ["application/vnd.oci.image.manifest.v1+json"]},))
    seed(registry.url, transport=registry.transport)

    async def scenario(pilot):
        assert "3 repositories   events: 8 waiting, 0 parked" in screen_text(pilot.app)

    run_app(RegistryApp(registry.client()), scenario)
