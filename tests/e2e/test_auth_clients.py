"""Issue 3: docker, podman and skopeo log in, push and pull against `dockyard serve` with authentication, in both
modes (htpasswd basic, and bearer tokens from the built-in token endpoint). A wrong password fails; anonymous pulls
work only where enabled; no password or token appears in any line the server wrote during a whole push.

One server per mode (module-scoped), one push and one pull per client.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

USER, PASSWORD = "alice", f"pw-{uuid.uuid4().hex}"
SERVICE = "dockyard-e2e"
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")

CONFIG = """\
[[middleware]]
name = "logging"
[middleware.options]
file = "{log}"

[[middleware]]
name = "auth"
[middleware.options]
htpasswd = "{htpasswd}"
anonymous_pull = ["public/*"]
rules = [{{ users = ["*"], repositories = ["e2e/*", "public/*"], actions = ["pull", "push", "delete"] }}]
"""
TOKEN_CONFIG = f"""\
[middleware.options.token]
service = "{SERVICE}"
expires_in = 120
"""


class Secured:
    def __init__(self, mode, server, access_log):
        self.mode, self.server, self.access_log = mode, server, access_log
        self.host = server.host

    def log_text(self) -> str:
        return self.access_log.read_text() + self.server.log_path.read_text(errors="replace")


@pytest.fixture(scope="module", params=["htpasswd", "token"])
def secured(request, start_dockyard_module, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"auth-{request.param}")
    if not shutil.which("htpasswd"):
        message = "htpasswd is not on PATH; install it with: apt-get install apache2-utils"
        pytest.fail(message) if os.environ.get("CI", "").lower() == "true" else pytest.skip(message)
    subprocess.run(["htpasswd", "-Bbc", str(home / "htpasswd"), USER, PASSWORD], check=True, capture_output=True,
                   timeout=30)
    config = CONFIG.format(log=home / "access.log", htpasswd=home / "htpasswd")
    if request.param == "token":
        config += TOKEN_CONFIG
    server = start_dockyard_module(config=config, workers=2)
    return Secured(request.param, server, home / "access.log")


def assert_pushed_and_pulled_as_user(secured, repo):
    """The access log shows the client's writes and reads of `repo` as the logged-in user, none anonymous."""
    entries = [json.loads(line) for line in secured.access_log.read_text().splitlines()]
    mine = [e for e in entries if e["repository"] == repo and e["status"] < 400]
    assert {e["action"] for e in mine} >= {"push", "pull"}, mine[:5]
    assert all(e["user"] == USER for e in mine), [e for e in mine if e["user"] != USER][:3]
    if secured.mode == "token":
        assert any(e["path"].startswith("/auth/token") and e["user"] == USER and e["status"] == 200
                   for e in entries)


def login(tool, host, password, *extra, check=True):
    return tool("login", *extra, "-u", USER, "--password-stdin", host, input=password.encode(), check=check)


def test_skopeo_login_push_pull_and_no_secret_in_logs(secured, skopeo, new_layout):
    host, repo = secured.host, f"e2e/skopeo-{uuid.uuid4().hex[:8]}"
    assert login(skopeo, host, "wrong-password", "--tls-verify=false", check=False).returncode != 0, \
        "skopeo login succeeded with a wrong password"
    anon = new_layout("anon")
    anon.add_image(tag="1", layer_sizes=(4096,))
    anonymous = skopeo("copy", "--dest-tls-verify=false", "--dest-no-creds", anon.ref("1"),
                       f"docker://{host}/{repo}:anon", check=False)
    assert anonymous.returncode != 0, "an anonymous push was accepted"

    log_start = len(secured.log_text())
    login(skopeo, host, PASSWORD, "--tls-verify=false")
    try:
        src = new_layout("src")
        image = src.add_image(tag="1", layer_sizes=(64 * 1024, 8 * 1024))
        skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", src.ref("1"),
                   f"docker://{host}/{repo}:1")
        out = new_layout("out")
        skopeo("copy", "--src-tls-verify=false", "--preserve-digests", f"docker://{host}/{repo}:1",
                   out.ref("1"))
        assert out.resolve("1")["digest"] == image.digest
        for digest in image.blob_digests:
            assert out.blob(digest) == src.blob(digest)
        assert_pushed_and_pulled_as_user(secured, repo)
    finally:
        skopeo("logout", host, check=False)

    text = secured.log_text()[log_start:]
    access = [json.loads(line) for line in secured.access_log.read_text().splitlines()]
    pushes = [e for e in access if e["repository"] == repo and e["method"] in ("POST", "PATCH", "PUT")
              and e["status"] < 300]
    assert pushes and all(e["user"] == USER for e in pushes), pushes[:3]
    assert PASSWORD not in text
    assert not JWT_RE.search(text), "a token was written to the log"
    if secured.mode == "token":
        assert any(e["path"].startswith("/auth/token") and e["status"] == 200 for e in access)


def test_podman_login_push_pull(secured, podman, new_layout):
    host, repo = secured.host, f"e2e/podman-{uuid.uuid4().hex[:8]}"
    assert login(podman, host, "wrong-password", "--tls-verify=false", check=False).returncode != 0
    login(podman, host, PASSWORD, "--tls-verify=false")
    try:
        src = new_layout("src")
        image = src.add_image(tag="1", layer_sizes=(32 * 1024,))
        name = f"{host}/{repo}:1"
        # podman names an image pulled from a layout after its path, which must then be a valid reference.
        clean = Path(tempfile.gettempdir()) / f"dyauth{uuid.uuid4().hex}"
        clean.symlink_to(src.path)
        try:
            image_id = podman("pull", f"oci:{clean}:1").out.strip().splitlines()[-1]
        finally:
            clean.unlink()
        podman("tag", image_id, name)
        podman("push", "--tls-verify=false", name)
        podman("rmi", "-f", name)
        podman("pull", "--tls-verify=false", name)
        pulled = json.loads(podman("image", "inspect", name).out)[0]
        assert "sha256:" + pulled["Id"] == image.config_digest
        assert_pushed_and_pulled_as_user(secured, repo)
    finally:
        podman("logout", host, check=False)


def test_docker_login_push_pull(secured, docker, workdir):
    host, repo = secured.host, f"e2e/docker-{uuid.uuid4().hex[:8]}"
    assert login(docker, host, "wrong-password", check=False).returncode != 0
    login(docker, host, PASSWORD)
    try:
        context = workdir / "ctx"
        context.mkdir()
        (context / "data.bin").write_bytes(uuid.uuid4().bytes * 2048)
        (context / "Dockerfile").write_text(f"FROM scratch\nCOPY data.bin /data.bin\nLABEL nonce={uuid.uuid4()}\n")
        name = f"{host}/{repo}:1"
        docker("build", "-q", "-t", name, context)
        image_id = json.loads(docker("image", "inspect", name).out)[0]["Id"]
        docker("push", name)
        docker("rmi", name)
        docker("pull", name)
        assert json.loads(docker("image", "inspect", name).out)[0]["Id"] == image_id
        docker("rmi", name)
        assert_pushed_and_pulled_as_user(secured, repo)
    finally:
        docker("logout", host, check=False)


def test_anonymous_pull_only_where_enabled(secured, skopeo, new_layout):
    host = secured.host
    src = new_layout("src")
    image = src.add_image(tag="1", layer_sizes=(8 * 1024,))
    login(skopeo, host, PASSWORD, "--tls-verify=false")
    try:
        for repo in ("public/open", "e2e/closed"):
            skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", src.ref("1"),
                       f"docker://{host}/{repo}:1")
    finally:
        skopeo("logout", host, check=False)
    out = new_layout("out")
    skopeo("copy", "--src-tls-verify=false", "--src-no-creds", "--preserve-digests",
               f"docker://{host}/public/open:1", out.ref("1"))
    assert out.resolve("1")["digest"] == image.digest
    closed = skopeo("copy", "--src-tls-verify=false", "--src-no-creds",
                        f"docker://{host}/e2e/closed:1", new_layout("closed").ref("1"), check=False)
    assert closed.returncode != 0
    assert re.search(r"unauthorized|authentication required|401", closed.stderr.decode(), re.I), closed.stderr
