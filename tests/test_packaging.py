"""The folders install under one namespace, dockyard.*, never as bare top-level packages; and a plain
`pip install .` gives working commands."""

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def test_namespace_packages_import_from_outside_the_checkout(tmp_path):
    code = ("import dockyard.server, dockyard.middleware, dockyard.tui, importlib.util;"
            "print(importlib.util.find_spec('server'), importlib.util.find_spec('tui'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None None"


def test_console_scripts():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.dist and ep.dist.name == "dockyard"}
    assert scripts["dockyard"] == "dockyard.server.cli:main"


# -- `pip install .` into a clean virtual environment gives a registry-tui that starts --------------------------
#
# The install half of the README's first command, `python3 -m venv .venv && .venv/bin/pip install .`, into a
# temporary directory: nothing from the test environment (the `test` and `tui` extras, the editable install) can
# make up for a dependency the distribution forgets. Regression test for the issue "Installing Dockyard installs a
# `registry-tui` that cannot start" (ModuleNotFoundError: textual).

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"

# Run by the clean environment's own Python: registry-tui headless (Textual's run_test), until its workers are
# done, then what the repositories screen shows, as JSON.
BROWSE = """\
import asyncio, json, sys
from textual.worker import WorkerState
from dockyard.tui.app import RegistryApp
from dockyard.tui.client import RegistryClient

async def main(url):
    app = RegistryApp(RegistryClient(url))
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(1000):
            await pilot.pause()
            if not any(w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in app.workers):
                break
            await asyncio.sleep(0.02)
        await pilot.pause()
        screen = app.screen
        print(json.dumps({"screen": type(screen).__name__,
                          "title": str(screen.query_one("#title").render()),
                          "status": str(screen.query_one("#status").render()),
                          "repositories": screen.query_one("KeyTable").all_keys}))

asyncio.run(main(sys.argv[1]))
"""


def run(argv: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, **kwargs)
    assert result.returncode == 0, \
        f"{argv} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def clean_install(tmp_path_factory) -> Path:
    """A new virtual environment with `pip install <this checkout>` and nothing else; its bin directory."""
    python3 = shutil.which("python3")
    if python3 is None or importlib.util.find_spec("ensurepip") is None:
        reason = "python3 with venv and ensurepip (apt-get install python3-venv) is needed"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: a missing tool is a failure)", pytrace=False)
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("clean")
    # pip builds a local project in place: install from a copy, so no build/ or egg-info lands in the checkout
    # (and nothing left there from an earlier build can end up in this install).
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", "data"))
    venv = base / "venv"
    run([python3, "-m", "venv", venv], timeout=120)
    run([venv / "bin" / "pip", "install", source], timeout=900, cwd=base)
    return venv / "bin"


@pytest.mark.e2e
def test_registry_tui_from_a_plain_install_prints_its_usage(clean_install):
    result = run([clean_install / "registry-tui", "--help"], timeout=60)
    assert result.stdout.startswith("usage: registry-tui [-h]")
    assert "REGISTRY_TUI_URL" in result.stdout and "Traceback" not in result.stderr


def push_small_image(http: httpx.Client, repository: str, tag: str) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    r = http.post(f"/v2/{repository}/blobs/uploads/", params={"digest": digest}, content=config)
    assert r.status_code == 201, r.text
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": [],
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest,
                           "size": len(config)}}
    r = http.put(f"/v2/{repository}/manifests/{tag}", json=manifest,
                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 201, r.text


@pytest.mark.e2e
def test_registry_tui_from_a_plain_install_browses_a_registry(clean_install, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([str(clean_install / "dockyard"), "serve", "--bind", f"127.0.0.1:{port}", "--data",
                               str(tmp_path / "data"), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    if http.get("/v2/").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "dockyard serve did not answer GET /v2/ within 30 s"
                time.sleep(0.05)
            push_small_image(http, "clean/install", "1.0")

        script = tmp_path / "browse.py"
        script.write_text(BROWSE)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_TUI_", "PYTHON"))}
        env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
        shown = json.loads(run([clean_install / "python", script, url], timeout=120, env=env,
                               cwd=tmp_path).stdout.strip().splitlines()[-1])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
        log.close()
    assert shown["screen"] == "RepositoriesScreen"
    assert shown["repositories"] == ["clean/install"]
    assert "(admin API)" in shown["title"] and shown["status"] == "1 repository"


@pytest.mark.e2e
def test_a_plain_install_ships_every_file_of_the_web_ui(clean_install):
    """Issue 15: the web UI's static files are package data; a `pip install .` without them serves no UI."""
    shipped = ROOT / "server" / "web" / "static"
    found = run([clean_install / "python", "-c", "import dockyard.server.web as w; print(w.ASSET_DIR)"],
                timeout=60, cwd=clean_install).stdout.strip()
    installed = Path(found)
    assert ROOT not in installed.parents, f"the web UI was imported from the checkout, not the install: {installed}"
    assert sorted(p.name for p in installed.iterdir()) == sorted(p.name for p in shipped.iterdir())
    for path in shipped.iterdir():
        assert (installed / path.name).read_bytes() == path.read_bytes()
