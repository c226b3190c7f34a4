"""The README documents every setting with its real default, and every command; .ci/run runs the README's test command."""

import dataclasses
import re
from pathlib import Path

import pytest

from dockyard.server.cli import build_parser
from dockyard.server.config import SETTINGS, STORAGE_SETTINGS, Config, StorageConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_settings() -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*?) \|", README, re.M)}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_setting_is_documented_with_its_default(name):
    documented = readme_settings()
    assert name in documented, f"setting {name!r} missing from the README's configuration table"
    default = getattr(Config(), name)
    shown = documented[name].strip("`")
    if dataclasses.is_dataclass(default):  # a TOML table: its keys have rows of their own (below)
        assert shown == "(table)"
    elif default in ("", ()):
        assert shown in ("(none)", "(empty)")
    elif default == "":
        assert shown == "(empty)"
    elif isinstance(default, bool):
        assert shown == str(default).lower()
    else:
        assert shown == str(default)


@pytest.mark.parametrize("key", sorted(STORAGE_SETTINGS))
def test_every_storage_key_is_documented_with_its_default(key):
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `storage\.(\w+)` \| (.*?) \|", README, re.M)}
    assert key in rows, f"storage.{key} missing from the README's [storage] table"
    default, shown = getattr(StorageConfig(), key), rows[key].strip("`")
    assert shown == ("(empty)" if default == "" else str(default).lower() if isinstance(default, bool)
                     else f'"{default}"' if isinstance(default, str) else str(default))


def test_readme_documents_no_unknown_setting():
    fields = {f.name for f in dataclasses.fields(Config)}
    assert set(readme_settings()) <= fields


def test_every_command_is_documented():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for command in commands:
        assert f"dockyard {command}" in README


def test_every_error_code_is_documented_with_its_status():
    from dockyard.server.errors import ERROR_TABLE
    table = README[README.index("### Errors"):README.index("## Commands")]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\d{3}) \| (.*) \|$", table, re.M)}
    for code, (status, _) in ERROR_TABLE.items():
        assert f"`{code}`" in rows.get(str(status), ""), f"{code} ({status}) missing from the README's error table"


def test_ci_runs_the_readme_test_command():
    assert "bash tests/run.sh" in README
    assert "bash tests/run.sh" in (ROOT / ".ci" / "run").read_text()
