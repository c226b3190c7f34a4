"""What the tests that run nginx in front of Dockyard share (test_nginx.py, test_cluster.py): tools looked up the CI
way, free ports, commands that must succeed, an nginx.conf of the test's own, and a throwaway CA with a server
certificate for IP 127.0.0.1 made with the openssl CLI (clients trust the CA: docker through /etc/docker/certs.d,
skopeo and podman through --cert-dir, requests through `verify`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(reason: str):
    """A tool this test needs is not here: a failure with CI=true, else a skip."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure)", pytrace=False)
    pytest.skip(reason)


def tool(name: str, install: str) -> str:
    """The path of `name`, or `missing` with the command that installs it."""
    return shutil.which(name) or missing(f"`{name}` is not on PATH; install it with: {install}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*argv, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}: exit {proc.returncode}\n" \
                                 f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}"
    return proc


def docker_trusts(host: str, ca: Path) -> Path:
    """Make dockerd trust `ca` for `host` (host:port): it reads /etc/docker/certs.d/<host>/ca.crt at each
    connection, so no restart or flag is needed. The directory (the caller removes it)."""
    directory = Path("/etc/docker/certs.d") / host
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(ca, directory / "ca.crt")
    except PermissionError:
        missing("cannot write /etc/docker/certs.d (run as root): dockerd would not trust the test CA")
    return directory


def main_config(prefix: Path, site: Path, log_format: str = "") -> str:
    """An nginx.conf of the test's own: pid, logs and every temp path under `prefix`; `log_format`, when given, is
    the access log's format (a `log_format` named `test`)."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the temp dirs (mode 0700, root)
    access_log = f"    access_log {prefix}/logs/access.log;\n"
    if log_format:
        access_log = f"    log_format test '{log_format}';\n    access_log {prefix}/logs/access.log test;\n"
    return (f"{user}worker_processes 2;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log info;\n"
            "events { worker_connections 512; }\n"
            "http {\n" + access_log +
            f"    client_body_temp_path {prefix}/temp/client_body;\n    proxy_temp_path {prefix}/temp/proxy;\n"
            f"    fastcgi_temp_path {prefix}/temp/fastcgi;\n    uwsgi_temp_path {prefix}/temp/uwsgi;\n"
            f"    scgi_temp_path {prefix}/temp/scgi;\n    include {site};\n}}\n")


def _run(*argv) -> None:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}: exit {proc.returncode}\n{proc.stderr.decode()}"


def make_certificates(directory: Path, openssl: str, ca_name: str = "Dockyard e2e CA") -> Path:
    """fullchain.pem and privkey.pem for 127.0.0.1 (subjectAltName) in `directory`, signed by a new CA whose
    certificate (ca.crt there too) is returned."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    _run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_crt, "-days", "2",
         "-subj", f"/CN={ca_name}", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _run(openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", directory / "privkey.pem",
         "-out", directory / "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                          "keyUsage=critical,digitalSignature,keyEncipherment\n"
                                          "extendedKeyUsage=serverAuth\n")
    _run(openssl, "x509", "-req", "-in", directory / "server.csr", "-CA", ca_crt, "-CAkey", ca_key,
         "-CAcreateserial", "-out", directory / "server.crt", "-days", "2", "-extfile", directory / "server.ext")
    (directory / "fullchain.pem").write_bytes((directory / "server.crt").read_bytes() + ca_crt.read_bytes())
    return ca_crt
