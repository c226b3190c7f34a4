"""Fixtures for the web UI's browser tests: Debian's headless Chromium driven by selenium through Debian's
chromedriver (nothing downloads a browser), `dockyard serve` processes with users and an access log, content pushed
by skopeo, a second web site for cross-origin pages, and screenshots kept out of the repository.

Chromium starts once per test module. Every test ends by reading the browser's log and the servers' access logs:
a console error or a 5xx anywhere fails it (a test that provokes refusals on purpose drains what it expects first).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# As on every machine of this kind (see .library/env/machines): headless, as root, with no background traffic.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--disable-features=Translate,MediaRouter,OptimizationHints",
                  "--password-store=basic", "--window-size=1280,900")
PASSWORDS = {"admin": "admin-pass-1", "alice": "alice-pass-2", "bob": "bob-pass-3"}
MANIFEST_ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                             "application/vnd.docker.distribution.manifest.list.v2+json",
                             "application/vnd.docker.distribution.manifest.v2+json"])
_SCREENSHOTS = pytest.StashKey[Path]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    directory = config.stash.get(_SCREENSHOTS, None)
    if directory is not None and any(directory.iterdir()):
        terminalreporter.write_sep("-", "web UI screenshots")
        terminalreporter.write_line(f"{len(list(directory.iterdir()))} screenshots of the web UI in {directory}")


@pytest.fixture(scope="session")
def screenshots(request) -> Path:
    """Where the browser tests save a screenshot of every page they visit: $DOCKYARD_UI_SCREENSHOTS, else a new
    directory under the system's temp dir, kept after the run (pytest's own temp dirs are pruned by the next runs,
    other people's included) and never in the checkout. The path is printed at the end of the run."""
    wanted = os.environ.get("DOCKYARD_UI_SCREENSHOTS")
    directory = Path(wanted) if wanted else Path(tempfile.mkdtemp(prefix="dockyard-ui-screenshots-"))
    directory.mkdir(parents=True, exist_ok=True)
    request.config.stash[_SCREENSHOTS] = directory
    return directory


# -- the browser ---------------------------------------------------------------------------------------------------


class Browser:
    """A selenium driver with the few moves the tests need. The UI keeps its sign-in in page memory, so moving
    within the UI goes through `visit` (the hash), never a new page load, unless a test means to reload."""

    def __init__(self, driver, screenshots: Path, module: str):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.screenshots = screenshots
        self.module = module
        self.shots = 0
        self.wait_class = WebDriverWait
        self.expected_errors: list[str] = []  # substrings of console errors a test provokes on purpose

    # navigation
    def load(self, url: str, view: str | None = None):
        self.driver.get(url)
        if view:
            self.view(view)

    def visit(self, fragment: str, view: str):
        """Go to a route of the already loaded UI (#/...), keeping its memory (and sign-in)."""
        self.js("location.hash = arguments[0]", fragment)
        return self.view(view)

    def view(self, name: str, timeout: float = 15):
        return self.wait(f'#main > .page[data-view="{name}"]', timeout=timeout)

    # finding and waiting
    def wait(self, css: str, *, text: str | None = None, gone: bool = False, timeout: float = 15):
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.common.by import By

        def ready(driver):
            found = driver.find_elements(By.CSS_SELECTOR, css)
            if gone:
                return not found
            try:
                for element in found:
                    if text is None or text in element.text:
                        return element
            except StaleElementReferenceException:  # the page re-rendered it meanwhile: look again
                pass
            return False
        try:
            return self.wait_class(self.driver, timeout, poll_frequency=0.05).until(ready)
        except TimeoutException:
            self.shot("timeout")
            raise AssertionError(f"waited {timeout}s for {css!r}" + (f" with text {text!r}" if text else "")
                                 + (" to go" if gone else "") + f"; page text:\n{self.text('body')[:3000]}") from None

    def until(self, predicate, message: str, timeout: float = 15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{message} (after {timeout}s); page text:\n{self.text('body')[:3000]}")

    def find(self, css: str):
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list:
        from selenium.webdriver.common.by import By
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def texts(self, css: str) -> list[str]:
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(20):
            try:
                return [e.text for e in self.finds(css)]
            except StaleElementReferenceException:  # re-rendered between finding and reading: read again
                time.sleep(0.05)
        raise AssertionError(f"{css!r} kept being re-rendered")

    def text(self, css: str) -> str:
        found = self.texts(css)
        return found[0] if found else ""

    def click(self, css: str, *, text: str | None = None):
        element = self.wait(css, text=text)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()
        return element

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def js_async(self, script: str, *args):
        return self.driver.execute_async_script(script, *args)

    # the UI's own moves
    def sign_in(self, user: str, password: str):
        self.visit("#/sign-in", "sign-in")
        self.wait("#username").send_keys(user)
        self.find("#password").send_keys(password)
        self.click("#sign-in-submit")
        self.wait("#signed-in-as", text=user)

    def sign_out(self):
        self.click("#sign-out")
        self.wait("#sign-in")

    # evidence
    def shot(self, name: str) -> Path:
        self.shots += 1
        path = self.screenshots / f"{self.module}-{self.shots:02d}-{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console(self) -> list[dict]:
        return self.driver.get_log("browser")

    def assert_clean_console(self):
        """No error in the browser's log since the last look, but those the test said it provokes: and those
        must be there (so a log that stayed empty for some other reason cannot pass for a clean one)."""
        severe = [e["message"] for e in self.console() if e["level"] == "SEVERE"]
        expected, self.expected_errors = self.expected_errors, []
        unseen = [x for x in expected if not any(x in message for message in severe)]
        errors = [m for m in severe if not any(x in m for x in expected)]
        assert not errors, "console errors in the browser:\n" + "\n".join(m[:500] for m in errors)
        assert not unseen, f"errors the test provoked are missing from the browser's log: {unseen}; log: {severe}"


@pytest.fixture(scope="module")
def browser(request, e2e, screenshots, tmp_path_factory):
    """Debian's chromium through Debian's chromedriver, once per test module."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            e2e.missing(f"{path} is missing; install it with: apt-get install {package}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        e2e.missing("the `selenium` Python package is not installed (pip install -e '.[test]')")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must never fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tmp_path_factory.mktemp("chromium-profile")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    try:
        yield Browser(driver, screenshots, module)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# -- registries ----------------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A `dockyard serve` of a test module, with its users and its access log."""
    process: object  # the e2e conftest's Registry
    access_log: Path
    mode: str  # "open", "htpasswd" or "token"
    offsets: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def host(self) -> str:
        return self.process.host

    @property
    def ui(self) -> str:
        return self.url + "/ui/"

    def auth(self, user: str | None) -> dict:
        if user is None:
            return {}
        token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def request(self, method: str, path: str, *, user: str | None = "admin", **kwargs) -> requests.Response:
        headers = {**self.auth(user if self.mode != "open" else None), **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=30, allow_redirects=False,
                                **kwargs)

    def tags(self, repository: str) -> list[str]:
        resp = self.request("GET", f"/v2/{repository}/tags/list")
        assert resp.status_code == 200, resp.text
        return resp.json()["tags"] or []

    def digest(self, repository: str, reference: str) -> str:
        resp = self.request("HEAD", f"/v2/{repository}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
        assert resp.status_code == 200, (repository, reference, resp.status_code)
        return resp.headers["Docker-Content-Digest"]

    def token(self, user: str | None, *scopes: str) -> str:
        params = [("scope", s) for s in scopes]
        resp = requests.get(self.url + "/auth/token", params=params, headers=self.auth(user), timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()["token"]

    def access(self) -> list[dict]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def mark(self) -> int:
        return len(self.access())

    def since(self, mark: int) -> list[dict]:
        return self.access()[mark:]

    def errors_5xx(self) -> list[dict]:
        return [e for e in self.access() if e["status"] >= 500]


def server_config(mode: str, access_log: Path, htpasswd: Path | None, *, cors_origin: str | None = None,
                  extra: str = "") -> str:
    text = f'[[middleware]]\nname = "logging"\n[middleware.options]\nfile = "{access_log}"\n'
    if cors_origin:
        text += (f'\n[[middleware]]\nname = "cors"\n[middleware.options]\norigins = ["{cors_origin}"]\n'
                 'credentials = true\n')
    if mode != "open":
        text += (f'\n[[middleware]]\nname = "auth"\n[middleware.options]\nhtpasswd = "{htpasswd}"\n'
                 'admins = ["admin"]\nanonymous_pull = ["public/*"]\n'
                 'rules = [\n'
                 '  { users = ["alice"], repositories = ["web/*", "public/*", "cors/*"], actions = ["*"] },\n'
                 '  { users = ["bob"], repositories = ["web/*"], actions = ["pull"] },\n'
                 '  { users = ["*"], repositories = ["scale/*"], actions = ["pull"] },\n'
                 ']\n')
        if mode == "token":
            text += '[middleware.options.token]\nservice = "dockyard-web-tests"\n'
    return text + extra


@pytest.fixture(scope="module")
def make_server(start_dockyard_module, tmp_path_factory):
    """make_server(mode, cors_origin=None, data=None) -> Server: `dockyard serve` with the test users."""
    home = tmp_path_factory.mktemp("web-servers")
    from dockyard.middleware.htpasswd import hash_password, write_users

    htpasswd = home / "htpasswd"
    write_users(htpasswd, {user: hash_password(password, rounds=4) for user, password in PASSWORDS.items()})
    count = [0]

    def make(mode: str, *, cors_origin: str | None = None, data: Path | None = None, workers: int = 2) -> Server:
        count[0] += 1
        access_log = home / f"access-{count[0]}-{mode}.log"
        process = start_dockyard_module(data=data, workers=workers,
                                        config=server_config(mode, access_log, htpasswd, cors_origin=cors_origin))
        return Server(process, access_log, mode)

    return make


# -- content -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pusher(e2e, tmp_path_factory):
    """push(server, layout, tag, repository, *, all=False): skopeo copy from an OCI layout, as admin."""
    home = tmp_path_factory.mktemp("skopeo")

    def push(server: Server, layout, tag: str, repository: str, *, index: bool = False, as_tag: str | None = None):
        skopeo = e2e.Skopeo(home, server.process)
        extra = ["--preserve-digests"] + (["--all"] if index else [])
        if server.mode != "open":
            extra += ["--dest-creds", f"admin:{PASSWORDS['admin']}"]
        skopeo.copy(layout.ref(tag), skopeo.docker_ref(repository, as_tag or tag), *extra)

    return push


def push_blob(server: Server, repository: str, data: bytes) -> dict:
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    resp = server.request("POST", f"/v2/{repository}/blobs/uploads/?digest={digest}", data=data,
                          headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 201, resp.text
    return {"digest": digest, "size": len(data)}


def push_referrer(server: Server, repository: str, subject_digest: str, *, artifact_type: str,
                  annotations: dict) -> str:
    """An artifact (a signature, an SBOM) whose subject is `subject_digest`, built by hand like oras does."""
    subject = server.request("GET", f"/v2/{repository}/manifests/{subject_digest}", headers={"Accept": MANIFEST_ACCEPT})
    empty = push_blob(server, repository, b"{}")
    payload = push_blob(server, repository, json.dumps({"signed": subject_digest, "by": "e2e"}).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", **empty},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", **payload}],
        "subject": {"mediaType": subject.headers["Content-Type"], "digest": subject_digest,
                    "size": len(subject.content)},
        "annotations": annotations,
    }
    data = json.dumps(manifest).encode()
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    resp = server.request("PUT", f"/v2/{repository}/manifests/{digest}", data=data,
                          headers={"Content-Type": manifest["mediaType"]})
    assert resp.status_code == 201 and resp.headers.get("OCI-Subject") == subject_digest, resp.text
    return digest


def image_with_config(layout, config: dict, *, layer: bytes, annotations: dict | None = None, tag: str) -> dict:
    """An image of one layer with a config of the test's choosing, tagged in the layout; its descriptor."""
    import gzip

    blob = gzip.compress(layer, mtime=0)
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layout.put_blob(blob),
                  "size": len(blob)}
    config_bytes = json.dumps(config).encode()
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": layout.put_blob(config_bytes),
                   "size": len(config_bytes)}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config_desc,
                "layers": [layer_desc]}
    if annotations:
        manifest["annotations"] = annotations
    data = json.dumps(manifest).encode()
    descriptor = {"mediaType": manifest["mediaType"], "digest": layout.put_blob(data), "size": len(data)}
    layout.tag(tag, descriptor)
    return descriptor


@pytest.fixture(scope="session")
def web():
    """This conftest's helpers for the test modules beside it (fixtures, never imports: see tests/e2e/conftest.py)."""
    from types import SimpleNamespace

    return SimpleNamespace(PASSWORDS=PASSWORDS, MANIFEST_ACCEPT=MANIFEST_ACCEPT, push_blob=push_blob,
                           push_referrer=push_referrer, image_with_config=image_with_config)


# -- another web site ----------------------------------------------------------------------------------------------


class OtherSite:
    """Pages served from http://localhost:<port>/: another site than http://127.0.0.1:<registry port> for the
    browser (a different host, not only a different port), for cross-origin and cross-site tests."""

    def __init__(self, port: int):
        self.port = port
        self.origin = f"http://localhost:{port}"
        self.pages: dict[str, bytes] = {}
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/favicon.ico":  # asked for by the browser: none, and no error in its log
                    self.send_response(204)
                    self.end_headers()
                    return
                body = site.pages.get(self.path.split("?", 1)[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body or b"not found")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def page(self, path: str, html: str) -> str:
        self.pages[path] = html.encode()
        return self.origin + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def other_site(e2e):
    site = OtherSite(e2e.free_port())
    yield site
    site.close()
