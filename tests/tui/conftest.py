"""Fixtures for registry-tui: the real Dockyard app in this process (`create_app` behind httpx's WSGITransport,
with a fixed clock so push times and ages on screen are the same on every run), a real `dockyard serve` or
reference registry per test for the end-to-end tests (each starts in well under a second, and a test that deletes
and collects garbage needs a registry of its own), all seeded over the HTTP API; and helpers to drive the app with
Pilot and read what the screen shows.

In CI (CI=true) a missing server binary fails the test; elsewhere it skips it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from dockyard.middleware.htpasswd import add_user
from dockyard.server.app import create_app
from dockyard.server.config import Config
from dockyard.server.errors import DigestInvalid, error_body, error_for_status
from dockyard.tui.client import Credentials, RegistryClient

IN_CI = os.environ.get("CI", "").lower() == "true"
FIXED_NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)  # the TUI's clock
PUSHED_AT = datetime(2024, 5, 1, tzinfo=timezone.utc)  # the in-process registry's clock: every push, a month ago
URL = "http://registry.test"  # the in-process registry's address (WSGITransport never opens a socket)
USERS = {"alice": "ecila", "bob": "bob"}  # with the auth middleware: alice is an admin, bob may only pull

REFERENCE_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        reason = f"`{tool}` is not on PATH"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: a missing tool is a failure)", pytrace=False)
        pytest.skip(reason)
    return path


@dataclass
class Server:
    kind: str
    url: str
    proc: subprocess.Popen
    log: Path

    clients: list = field(default_factory=list)

    def http(self) -> httpx.Client:
        """A plain HTTP client to ask the registry what it holds (closed when the server stops)."""
        client = httpx.Client(base_url=self.url, timeout=30)
        self.clients.append(client)
        return client


def start(kind: str, argv: list, workdir: Path, port: int, ready=(200,)) -> Server:
    log = workdir / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir, start_new_session=True)
    server = Server(kind, f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{kind} exited with {proc.returncode}:\n{log.read_text()[-3000:]}", pytrace=False)
        try:
            if httpx.get(f"{server.url}/v2/", timeout=1).status_code in ready:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop(server)
            pytest.fail(f"{kind} did not answer GET /v2/ within 30s:\n{log.read_text()[-3000:]}", pytrace=False)
        time.sleep(0.05)


def stop(server: Server) -> None:
    for client in server.clients:
        client.close()
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=15)


@pytest.fixture
def dockyard(tmp_path):
    """A `dockyard serve` of this test's own: one worker, a fresh data directory."""
    port = free_port()
    server = start("dockyard", [need("dockyard"), "serve", "--bind", f"127.0.0.1:{port}", "--data",
                                tmp_path / "data", "--workers", "1"], tmp_path, port)
    yield server
    stop(server)


TOKEN_AUTH_CONFIG = """\
[[middleware]]
name = "auth"
[middleware.options]
htpasswd = "{htpasswd}"
admins = ["alice"]
rules = [{{ users = ["bob"], repositories = ["*"], actions = ["pull"] }}]
[middleware.options.token]
service = "dockyard-test"
"""


@pytest.fixture
def dockyard_with_tokens(tmp_path):
    """`dockyard serve` with htpasswd users (alice: admin, bob: pull only; passwords are the names reversed)
    and bearer tokens from its own /auth/token."""
    binary = need("dockyard")
    htpasswd = tmp_path / "htpasswd"
    for user in ("alice", "bob"):
        subprocess.run([binary, "user", "add", user, "--htpasswd", str(htpasswd), "--password-stdin",
                        "--rounds", "4"], input=user[::-1].encode(), check=True, timeout=60, capture_output=True)
    config = tmp_path / "dockyard.toml"
    config.write_text(TOKEN_AUTH_CONFIG.format(htpasswd=htpasswd))
    port = free_port()
    server = start("dockyard", [binary, "serve", "--bind", f"127.0.0.1:{port}", "--data", tmp_path / "data",
                                "--workers", "1", "--config", config], tmp_path, port, ready=(200, 401))
    yield server
    stop(server)


@pytest.fixture
def reference(tmp_path):
    """The reference registry (Distribution 2.8.2, `docker-registry`) with filesystem storage and deletes on."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(binary).exists():
        need("docker-registry")
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(REFERENCE_CONFIG.format(root=tmp_path / "data", port=port))
    server = start("reference", [binary, "serve", config], tmp_path, port)
    yield server
    stop(server)


# -- the real app, in this process ---------------------------------------------------------------------------


def pushed_clock() -> float:
    return PUSHED_AT.timestamp()


def json_error(error, request: httpx.Request) -> httpx.Response:
    return httpx.Response(error.status, content=error_body(error), headers={"Content-Type": "application/json"},
                          request=request)


class Transport(httpx.BaseTransport):
    """The real app through httpx.WSGITransport, with what a test needs around it: a server that is down
    (`down`: connection refused), a slow one (`delay` seconds before each request; or `held`: every request waits
    until the test sets the event), and every request it
    answered, with the status, in `log`.

    `like_distribution=True` answers as the reference registry (Distribution 2.8) does where Dockyard does more:
    it has no admin API and no referrers API (404 under /v2/_dockyard/ and for /referrers/), and it deletes
    manifests only by digest (a DELETE by tag is 400 DIGEST_INVALID). Every other answer is the real app's."""

    def __init__(self, app, *, like_distribution: bool = False):
        self.wsgi = httpx.WSGITransport(app=app)
        self.like_distribution = like_distribution
        self.down = False
        self.delay = 0.0
        self.held: threading.Event | None = None
        self.log: list[tuple[httpx.Request, int]] = []
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.delay:
            time.sleep(self.delay)
        if self.held is not None and not self.held.wait(timeout=60):
            raise httpx.ReadTimeout("held for 60s: the test never let the request go", request=request)
        response = self.distribution_answer(request) or self.wsgi.handle_request(request)
        with self.lock:
            self.log.append((request, response.status_code))
        return response

    def distribution_answer(self, request: httpx.Request) -> httpx.Response | None:
        if not self.like_distribution:
            return None
        path = request.url.path
        if path.startswith("/v2/_dockyard/") or "/referrers/" in path:
            return json_error(error_for_status(404, detail={"path": path}, message="not found"), request)
        reference = path.rpartition("/manifests/")[2]
        if request.method == "DELETE" and "/manifests/" in path and not reference.startswith("sha256:"):
            return json_error(DigestInvalid({"reference": reference},
                                            message="provided digest did not match uploaded content"), request)
        return None

    def sent(self, method: str, path: str, status: int | None = None) -> list[httpx.Request]:
        """The requests `method path` (a path ending in `*`: every path it begins), answered with `status`."""
        def matches(p: str) -> bool:
            return p.startswith(path[:-1]) if path.endswith("*") else p == path
        with self.lock:
            return [r for r, s in self.log if r.method == method and matches(r.url.path) and status in (None, s)]

    def count(self, method: str, path: str, status: int | None = None) -> int:
        return len(self.sent(method, path, status))

    def clear(self) -> None:
        with self.lock:
            self.log.clear()


@dataclass
class InProcessRegistry:
    """Dockyard's WSGI app built by create_app from a Config, as `dockyard serve` builds it, but called in
    this process: each test gets its own data directory and database."""
    app: object
    transport: Transport
    url: str = URL
    clients: list = field(default_factory=list)

    def client(self, credentials: Credentials | None = None, **kwargs) -> RegistryClient:
        client = RegistryClient(self.url, credentials, transport=self.transport, **kwargs)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.app.registry.close()


def auth_middleware(directory: Path, *, tokens: bool = True) -> tuple:
    """The `auth` middleware of TOKEN_AUTH_CONFIG (the same options `dockyard_with_tokens` serves), with an
    htpasswd file of USERS; without its token table when `tokens` is false (basic auth only)."""
    htpasswd = directory / "htpasswd"
    for user, password in USERS.items():
        add_user(htpasswd, user, password, rounds=4)  # the fewest bcrypt allows: these tests are not about bcrypt
    middleware = tomllib.loads(TOKEN_AUTH_CONFIG.format(htpasswd=htpasswd))["middleware"]
    if not tokens:
        del middleware[0]["options"]["token"]
    return tuple(middleware)


@pytest.fixture
def make_registry(tmp_path):
    """`make_registry(middleware=(), clock=pushed_clock, like_distribution=False)`: a fresh in-process registry."""
    made = []

    def make(*, middleware: tuple = (), clock=pushed_clock, like_distribution: bool = False,
             **settings) -> InProcessRegistry:
        config = Config(data=str(tmp_path / f"data{len(made)}"), middleware=middleware, **settings)
        app = create_app(config, clock=clock)
        made.append(InProcessRegistry(app, Transport(app, like_distribution=like_distribution)))
        return made[-1]

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def registry(make_registry) -> InProcessRegistry:
    return make_registry()


# -- docker's credential helpers ---------------------------------------------------------------------------------


def credential_helper(bin_dir, name: str, answers: dict[str, dict], *, fail: str | None = None):
    """A `docker-credential-<name>` that logs each call and answers `get` from `answers` (server -> JSON), or
    prints `fail` and exits 1: docker-credential-helpers' programs print their errors on stdout, and the one for
    a server they hold nothing for is "credentials not found in native keychain"."""
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / f"{name}.log"
    cases = "".join(f"  'get {server}') printf '%s\\n' '{json.dumps(answer)}' ;;\n"
                    for server, answer in answers.items())
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(f"""#!/bin/sh
server=$(cat)
printf '%s %s\\n' "$1" "$server" >> '{log}'
{f"echo '{fail}'; exit 1" if fail else ""}
case "$1 $server" in
{cases}  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac
""")
    script.chmod(0o755)
    return log


def docker_environment(tmp_path, config: dict) -> dict:
    """An environment whose docker config.json is `config` and whose PATH starts with `tmp_path/bin` (the helpers)."""
    (tmp_path / "docker").mkdir(exist_ok=True)
    (tmp_path / "docker" / "config.json").write_text(json.dumps(config))
    return {"HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "docker"),
            "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}


# -- driving the app ---------------------------------------------------------------------------------------------


def painting(app) -> bool:
    """Whether the current screen still has work Textual does when idle: a DataTable's column widths, a layout, a
    repaint. These are Textual 8.2's own flags (the test extra pins textual)."""
    from textual.widgets import DataTable
    screen = app.screen
    if screen._layout_required or screen._repaint_required or screen._dirty_widgets:
        return True
    return any(t._require_update_dimensions or t._new_rows or t._updated_cells for t in screen.query(DataTable))


async def settle(pilot, timeout: float = 15) -> None:
    """Wait until every worker has finished, the messages they posted have been handled, and the screen has
    painted the result.

    Messages are handled first (pilot._wait_for_screen), the paint is forced (pilot.pause) only once nothing is
    pending: pilot.pause() paints at once, and it judges idleness by this process's CPU time, which a loaded
    machine starves. A paint forced between a DataTable's new rows and its column widths (computed when it is next
    idle) leaves lines drawn with the old widths in the table's line cache, and a dialog opened over the screen then
    shows them."""
    from textual.worker import WorkerState

    def busy() -> list:
        return [w for w in pilot.app.workers if w.state in (WorkerState.PENDING, WorkerState.RUNNING)]

    deadline = time.monotonic() + timeout
    while True:
        await asyncio.sleep(0.02)  # the app runs: messages posted from worker threads land, idle work is done
        await pilot._wait_for_screen()
        if not busy() and not painting(pilot.app):
            await pilot.pause()
            await pilot._wait_for_screen()
            if not busy() and not painting(pilot.app):
                await pilot.pause()
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"workers still running or the screen still painting after {timeout}s: {busy()}")


def screen_text(app) -> str:
    """What the terminal shows, as plain text (the same render as a screenshot)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      legacy_windows=False, color_system="truecolor")
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def dialog_text(app) -> str:
    """The open dialog (inside its █ box) as the operator reads it: title, body and buttons, each wrapped line
    joined to the next by a space, so a sentence can be looked for whole."""
    inside = []
    for line in screen_text(app).splitlines():
        if line.count("█") >= 2:
            text = line[line.index("█") + 1:line.rindex("█")].strip()
            if text and not set(text) <= set("▀▄▔▁ "):
                inside.append(text)
    return " ".join(inside)


def run_app(app, scenario, size=(80, 24)):
    """Run `scenario(pilot)` against `app` at `size` in a headless terminal."""
    async def main():
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            await scenario(pilot)
    asyncio.run(main())


@pytest.fixture
def fixed_clock():
    return lambda: FIXED_NOW


def table_keys(app, selector: str = "KeyTable") -> list[str]:
    """The row keys of the screen's table, top to bottom (all of them, mounted or not yet)."""
    return app.screen.query_one(selector).all_keys


async def goto(pilot, key: str, selector: str = "KeyTable") -> None:
    """Move the cursor to the row `key` with the arrow keys, as a user would."""
    table = pilot.app.screen.query_one(selector)
    keys = table_keys(pilot.app, selector)
    assert key in keys, f"{key!r} not among the rows {keys}"
    for _ in range(len(keys) + 1):
        current = table.current_key
        if current == key:
            return
        await pilot.press("down" if keys.index(current) < keys.index(key) else "up")
    raise AssertionError(f"could not reach row {key!r}")


async def type_text(pilot, text: str) -> None:
    await pilot.press(*[{"/": "slash", " ": "space", ".": "full_stop", "*": "asterisk", "-": "minus"}.get(c, c)
                        for c in text])
