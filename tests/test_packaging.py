"""The folders install under one namespace, dockyard.*, never as bare top-level packages."""

import importlib.metadata
import subprocess
import sys


def test_namespace_packages_import_from_outside_the_checkout(tmp_path):
    code = ("import dockyard.server, dockyard.middleware, dockyard.tui, importlib.util;"
            "print(importlib.util.find_spec('server'), importlib.util.find_spec('tui'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None None"


def test_console_scripts():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.dist and ep.dist.name == "dockyard"}
    assert scripts["dockyard"] == "dockyard.server.cli:main"
