"""Issue 10: one door per layer. The import contracts in pyproject.toml ([tool.importlinter]) hold, and nothing in
the resources or middleware reaches past the domain by attribute or builds a file path itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports() -> str:
    binary = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([binary, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result.stdout


def test_the_import_contracts_are_kept():
    out = lint_imports()
    assert re.search(r"Contracts: (\d+) kept, 0 broken", out).group(1) == "4"


def test_a_forbidden_import_breaks_a_contract(tmp_path):
    """The contract can fail: a copy of the tree where a resource imports a driver is refused."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "*.egg-info"))
    blobs = copy / "server" / "resources" / "blobs.py"
    blobs.write_text(blobs.read_text().replace("from .base import Resource",
                                               "from ..storage.filesystem import FilesystemStore  # noqa\n"
                                               "from .base import Resource"))
    # Import the copy's packages, not the installed ones: a namespace path of its own.
    shim = tmp_path / "shim" / "dockyard"
    shim.mkdir(parents=True)
    for package, folder in (("server", "server"), ("middleware", "middleware"), ("tui", "tui")):
        (shim / package).symlink_to(copy / folder)
    binary = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([binary, "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(tmp_path / "shim"), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "BROKEN" in result.stdout
    assert "dockyard.server.resources.blobs -> dockyard.server.storage.filesystem" in result.stdout


SOURCES = sorted([*(ROOT / "server" / "resources").glob("*.py"), *(ROOT / "middleware").glob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_reach_past_the_domain(path):
    text = path.read_text()
    assert not re.search(r"registry\.(metadata|gc|store|_\w+)\b", text), "use a Registry method"
    if path.parent.name == "resources":
        assert not re.search(r"\b(os\.path|pathlib|Path\(|blob_path|relative_to)\b|/ \"blobs\"", text), \
            "resources build no file paths: the blob store's redirect does"
