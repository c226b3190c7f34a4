"""A throwaway CA and a server certificate for IP 127.0.0.1, made with the openssl CLI, for the tests that run nginx
with TLS (test_nginx.py, test_cluster.py): clients trust the CA (docker through /etc/docker/certs.d, skopeo and
podman through --cert-dir, requests through `verify`)."""

from __future__ import annotations

import subprocess
from pathlib import Path


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
