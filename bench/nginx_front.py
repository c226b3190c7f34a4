"""Real nginx in front of the registries, on 127.0.0.1, plain HTTP, as a benchmark of the deployed path.

One nginx (its own prefix, pid file, temp and log paths under the run's temporary directory; `daemon off`, so
it is a child we stop ourselves) with one `server` block per registry:

- Dockyard: the site config from `deploy/nginx/` when that directory holds one (`dockyard.conf`), with its
  upstream address, listen address and blob directory rewritten to this run's, TLS lines dropped; otherwise a
  config of our own that does what a deployment does: proxy `/v2/` unbuffered to gunicorn, and serve blob GETs
  from an `internal` location aliased to the blob directory, answered by Dockyard's `X-Accel-Redirect`
  (the `accel_redirect` setting, ACCEL_PREFIX below).
- The reference: a plain reverse proxy with the same proxy settings (it has no X-Accel-Redirect).
- Optionally (`ceiling_root`, for bench/concurrency.py) a third block that serves the same bytes as static files
  and throws upload bodies away: what nginx alone does with the same load, the ceiling the registries are under.

Sized for hundreds of clients: `worker_connections` WORKER_CONNECTIONS and `worker_rlimit_nofile` OPEN_FILES (a
proxied request holds two connections, and an X-Accel-Redirect download a file as well).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import HOST, BenchError, free_port, progress, stop_process, wait_ready

ACCEL_PREFIX = "/_dockyard_blobs"
WORKER_CONNECTIONS = 16384
OPEN_FILES = 65536
REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_SITE = REPO_ROOT / "deploy" / "nginx" / "dockyard.conf"

MAIN_CONFIG = """\
worker_processes auto;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile {open_files};
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{sites}
}}
"""

PROXY_SETTINGS = """\
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_read_timeout 900s;
        proxy_send_timeout 900s;
        client_max_body_size 0;"""

OWN_DOCKYARD_SITE = """\
upstream dockyard_bench {{
    server {upstream};
    keepalive 64;
}}
server {{
    listen {listen};
    location /v2/ {{
        proxy_pass http://dockyard_bench;
{proxy}
    }}
    location {accel}/ {{
        internal;
        alias {blobs}/;
        add_header Docker-Content-Digest $upstream_http_docker_content_digest always;
        add_header ETag $upstream_http_etag always;
        add_header Cache-Control "max-age=31536000" always;
    }}
}}
"""

REFERENCE_SITE = """\
upstream reference_bench {{
    server {upstream};
    keepalive 64;
}}
server {{
    listen {listen};
    location /v2/ {{
        proxy_pass http://reference_bench;
{proxy}
    }}
}}
"""


CEILING_SITE = """\
server {{
    listen {listen};
    root {root};
    client_max_body_size 0;
    location /v2/ {{
        types {{ }}
        default_type application/octet-stream;
    }}
    location ~ ^/v2/.+/manifests/ {{
        types {{ }}
        default_type application/vnd.docker.distribution.manifest.v2+json;
    }}
    location ~ ^/v2/.+/blobs/uploads/ {{
        add_header Location /v2/ceiling/blobs/uploads/session always;
        if ($request_method = PUT) {{
            return 201;
        }}
        return 202;
    }}
}}
"""


def accel_prefix() -> str:
    """The `internal` location Dockyard's X-Accel-Redirect must name: the deploy site's, or ours."""
    if DEPLOY_SITE.is_file():
        text = re.sub(r"#[^\n]*", "", DEPLOY_SITE.read_text())
        if found := re.search(r"location\s+(/\S*?)/?\s*\{[^}]*\binternal\s*;", text):
            return found[1]
    return ACCEL_PREFIX


@dataclass(frozen=True)
class Front:
    """Ports of nginx's server blocks, by registry name; where the Dockyard site came from."""

    ports: dict[str, int]
    dockyard_site: str
    pid: int = 0  # nginx's master process


def deploy_site(upstream: str, listen: str, blobs: Path) -> str | None:
    """deploy/nginx/dockyard.conf adapted to this run (plain HTTP on `listen`), or None when there is none."""
    if not DEPLOY_SITE.is_file():
        return None
    text = re.sub(r"#[^\n]*", "", DEPLOY_SITE.read_text())  # comments may hold braces
    # The HTTP-to-HTTPS redirect block goes; the TLS block becomes a plain HTTP one on our address.
    text = "".join(block for block in _top_level_blocks(text) if "return 301" not in block)
    text = re.sub(r"^\s*(ssl_\w+|http2)\b[^;]*;[ \t]*$", "", text, flags=re.MULTILINE)
    text = re.sub(r"^(\s*)listen\s+[^;]*;", rf"\1listen {listen};", text, flags=re.MULTILINE)
    text = re.sub(rf"(listen {re.escape(listen)};)(\s*listen {re.escape(listen)};)+", r"\1", text)  # [::] too
    text = re.sub(r"(upstream\s+\S+\s*\{[^}]*?server\s+)[^\s;]+", rf"\g<1>{upstream}", text, flags=re.DOTALL)
    text = re.sub(r"(alias\s+)[^;]*;", rf"\g<1>{blobs}/;", text)
    return text


def _top_level_blocks(text: str) -> list[str]:
    """`text` cut after each top-level `{...}` block (and trailing directives), braces balanced."""
    blocks, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                blocks.append(text[start:index + 1])
                start = index + 1
    if depth != 0:
        raise BenchError(f"{DEPLOY_SITE}: unbalanced braces")
    return [*blocks, text[start:]]


@contextmanager
def nginx(workdir: Path, dockyard_port: int, dockyard_data: Path, reference_port: int,
          ceiling_root: Path | None = None) -> Iterator[Front]:
    """nginx in front of both registries (and serving `ceiling_root` as static files, when given); stopped
    (SIGTERM, then SIGKILL) when the block ends."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not binary:
        raise BenchError("nginx is missing: apt-get -o DPkg::Lock::Timeout=300 install -y nginx")
    prefix = workdir / "nginx"
    prefix.mkdir()
    blobs = dockyard_data / "blobs"
    # nginx's workers run as nobody when we are root: they must be able to reach the blob files.
    blobs.mkdir(parents=True, exist_ok=True)
    for path in [*reversed(blobs.parents), blobs]:
        if path.is_relative_to(workdir):
            path.chmod(path.stat().st_mode | 0o755)
    ports = {"dockyard": free_port(), "reference": free_port()}
    if ceiling_root is not None:
        ports["ceiling"] = free_port()
        for path in [*reversed(ceiling_root.parents), ceiling_root, *ceiling_root.rglob("*")]:
            if path.is_relative_to(workdir):
                path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o644))
    upstream = f"{HOST}:{dockyard_port}"
    listen = f"{HOST}:{ports['dockyard']}"
    site = deploy_site(upstream, listen, blobs)
    source = str(DEPLOY_SITE.relative_to(REPO_ROOT)) if site else "bench/nginx_front.py (deploy/nginx/ has none)"
    if site is None:
        site = OWN_DOCKYARD_SITE.format(upstream=upstream, listen=listen, proxy=PROXY_SETTINGS, accel=ACCEL_PREFIX,
                                        blobs=blobs)
    site += REFERENCE_SITE.format(upstream=f"{HOST}:{reference_port}", listen=f"{HOST}:{ports['reference']}",
                                  proxy=PROXY_SETTINGS)
    if ceiling_root is not None:
        site += CEILING_SITE.format(listen=f"{HOST}:{ports['ceiling']}", root=ceiling_root)
    config = prefix / "nginx.conf"
    config.write_text(MAIN_CONFIG.format(prefix=prefix, sites=site, connections=WORKER_CONNECTIONS,
                                         open_files=OPEN_FILES))
    checked = subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(config)], capture_output=True, text=True,
                             timeout=30, check=False)
    if checked.returncode != 0:
        raise BenchError(f"nginx refused the generated config {config}:\n{checked.stderr}")
    log_path = prefix / "stderr.log"
    progress(f"starting nginx (Dockyard site from {source})")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for port in ports.values():
            wait_ready("nginx", proc, port, log_path)
        yield Front(ports, source, proc.pid)
    finally:
        stop_process("nginx", proc, log_path)
