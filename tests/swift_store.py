"""A real S3-compatible object store for the tests: OpenStack Swift (Debian's packages) with s3api and tempauth.

`SwiftStore.start(directory)` runs a one-node Swift on 127.0.0.1 under `directory`: memcached, the account,
container and object servers and the proxy, each a single process (`workers = 0`), with rings of one replica on one
device (a plain directory). The pitfalls it avoids are those in ../shared/NOTES.md:

- Swift reads `swift.conf` only from /etc/swift/swift.conf: it is written there only when missing or unusable, and
  atomically (another test session on this machine may be reading it).
- The servers bind with SO_REUSEPORT, so a leftover server would silently share a port: every port is checked free
  before the start and, once up, checked to have exactly one listener (ours).
- The three rings are built in one Python process with the RingBuilder API (nine swift-ring-builder runs: ~6 s).
- There is no syslog socket here: the proxy's access log (one line per request, from its first `proxy-logging`)
  goes to `access.log` through a `log_custom_handlers` hook, so tests can count the requests a registry makes.

The access log line is `METHOD PATH STATUS BYTES_IN BYTES_OUT SOURCE HEADERS`, each field URL-quoted; PATH is
the S3 path with its query (`/bucket/key?partNumber=2&uploadId=...`), HEADERS the request's `X-Amz-Copy-Source` and
`Authorization` ('-' when neither; Swift cuts the latter after 16 characters), SOURCE is '-' for a client's request
and names the middleware for Swift's own sub-requests.

Swift's own Python is Debian's /usr/bin/python3 (python3-swift); the test's interpreter may be another one. This
module needs only the standard library (bench/s3.py uses it too), except `client()`, which makes a boto3 client.
"""

from __future__ import annotations

import configparser
import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

SWIFT_CONF = Path("/etc/swift/swift.conf")
SWIFT_PYTHON = "/usr/bin/python3"
SERVERS = ("account", "container", "object")
PACKAGES = "swift swift-proxy swift-account swift-container swift-object python3-swift memcached"
ACCOUNT, USER = "test", "tester"
REGION = "us-east-1"

PIPELINE = ("catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl s3api tempauth "
            "copy slo dlo versioned_writes symlink proxy-logging proxy-server")

BUILD_RINGS = """\
import sys
from swift.common.ring import RingBuilder
swift_dir, devices = sys.argv[1], sys.argv[2]
for name, port in zip(("account", "container", "object"), sys.argv[3:6]):
    builder = RingBuilder(4, 1, 1)  # 2**4 partitions, one replica, min_part_hours
    builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port), "device": "d1",
                     "weight": 100, "meta": ""})
    builder.rebalance()
    builder.get_ring().save(f"{swift_dir}/{name}.ring.gz")
"""

# The proxy's access logger writes to a file: loaded by Swift's get_logger through `log_custom_handlers`.
LOG_HOOK = """\
import logging

def to_file(conf, name, log_to_console, log_route, fmt, logger, adapted_logger):
    path = conf.get("dockyard_access_log")
    access = logging.getLogger("proxy-access")
    if path and not any(getattr(h, "dockyard", False) for h in access.handlers):
        handler = logging.FileHandler(path)
        handler.dockyard = True
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
"""


class SwiftError(RuntimeError):
    """The store could not be started; the message holds what its logs said."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port` or *:`port` (IPv4), from /proc/net/tcp."""
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                count += 1
    return count


def ensure_swift_conf() -> None:
    """/etc/swift/swift.conf with a hash path prefix and a default policy; an existing usable one is kept."""
    parser = configparser.ConfigParser()
    try:
        parser.read_string(SWIFT_CONF.read_text())
        if parser.get("swift-hash", "swift_hash_path_suffix", fallback="") or \
                parser.get("swift-hash", "swift_hash_path_prefix", fallback=""):
            return
    except (OSError, configparser.Error):
        pass
    SWIFT_CONF.parent.mkdir(parents=True, exist_ok=True)
    text = ("[swift-hash]\nswift_hash_path_suffix = dockyard-tests\nswift_hash_path_prefix = dockyard-tests\n\n"
            "[storage-policy:0]\nname = Policy-0\ndefault = yes\n")
    fd, tmp = tempfile.mkstemp(dir=SWIFT_CONF.parent, prefix=".swift.conf.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, SWIFT_CONF)


def missing_tools() -> list[str]:
    tools = [f"/usr/bin/swift-{name}-server" for name in (*SERVERS, "proxy")] + ["/usr/bin/memcached", SWIFT_PYTHON]
    missing = [tool for tool in tools if not os.access(tool, os.X_OK)]
    if not missing and subprocess.run([SWIFT_PYTHON, "-c", "import swift.common.ring"],
                                      capture_output=True).returncode != 0:
        missing.append("python3-swift")
    return missing


@dataclass
class SwiftStore:
    """A running one-node Swift; `endpoint` is its S3 endpoint, `access_key`/`secret_key` its credentials."""

    root: Path
    ports: dict[str, int]
    secret_key: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    access_key = f"{ACCOUNT}:{USER}"
    region = REGION

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy']}"

    @property
    def access_log(self) -> Path:
        return self.root / "log" / "access.log"

    # -- life cycle ----------------------------------------------------------------------------------------------

    @classmethod
    def start(cls, root: Path, timeout: float = 60.0) -> "SwiftStore":
        missing = missing_tools()
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)} missing: apt-get install --no-install-recommends "
                                    f"{PACKAGES}")
        ensure_swift_conf()
        for attempt in range(3):
            store = cls(root, {name: free_port() for name in ("memcached", *SERVERS, "proxy")},
                        secrets.token_hex(16))
            store._configure()
            try:
                store._launch(timeout)
                return store
            except _PortTaken:
                store.stop()
        raise SwiftError("could not find free ports for Swift after 3 attempts")

    def _configure(self) -> None:
        etc, node, log = self.root / "etc", self.root / "srv" / "node" / "d1", self.root / "log"
        for directory in (etc, node, log, self.root / "run", self.root / "hook"):
            directory.mkdir(parents=True, exist_ok=True)
        subprocess.run([SWIFT_PYTHON, "-c", BUILD_RINGS, etc, self.root / "srv" / "node",
                        *(str(self.ports[name]) for name in SERVERS)], check=True, capture_output=True)
        common = (f"[DEFAULT]\nbind_ip = 127.0.0.1\nworkers = 0\nswift_dir = {etc}\ndevices = {self.root}/srv/node\n"
                  "mount_check = false\ndisable_fallocate = true\nlog_level = WARNING\n"
                  f"log_udp_host = 127.0.0.1\nlog_udp_port = 9\n")  # discard: there is no syslog here
        for name in SERVERS:
            # No updater daemons run here: a container update that timed out would never reach the listings,
            # so the object server waits for it as long as it takes on a busy machine.
            extra = "container_update_timeout = 30\n" if name == "object" else ""
            (etc / f"{name}-server.conf").write_text(
                f"{common}bind_port = {self.ports[name]}\n\n[pipeline:main]\npipeline = {name}-server\n\n"
                f"[app:{name}-server]\nuse = egg:swift#{name}\n{extra}")
        (self.root / "hook" / "dockyard_swift_log.py").write_text(LOG_HOOK)
        template = "{method} {path} {status_int} {bytes_recvd} {bytes_sent} {source} {headers}"
        (etc / "proxy-server.conf").write_text(
            f"{common}bind_port = {self.ports['proxy']}\nlog_custom_handlers = dockyard_swift_log.to_file\n"
            f"dockyard_access_log = {self.access_log}\n\n"
            f"[pipeline:main]\npipeline = {PIPELINE}\n\n"
            "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\nconn_timeout = 5\n"
            "node_timeout = 60\n\n"
            f"[filter:tempauth]\nuse = egg:swift#tempauth\nuser_{ACCOUNT}_{USER} = {self.secret_key} .admin\n\n"
            f"[filter:s3api]\nuse = egg:swift#s3api\nlocation = {REGION}\n\n"
            f"[filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{self.ports['memcached']}\n\n"
            "[filter:proxy-logging]\nuse = egg:swift#proxy_logging\naccess_log_level = INFO\n"
            "access_log_headers = true\naccess_log_headers_only = X-Amz-Copy-Source,Authorization\n"
            f"log_msg_template = {template}\n\n"
            + "".join(f"[filter:{name}]\nuse = egg:swift#{egg}\n\n" for name, egg in (
                ("catch_errors", "catch_errors"), ("gatekeeper", "gatekeeper"), ("healthcheck", "healthcheck"),
                ("listing_formats", "listing_formats"), ("bulk", "bulk"), ("tempurl", "tempurl"),
                ("copy", "copy"), ("slo", "slo"), ("dlo", "dlo"), ("versioned_writes", "versioned_writes"),
                ("symlink", "symlink"))))

    def _spawn(self, name: str) -> None:
        log = open(self.root / "log" / f"{name}.log", "ab")
        if name == "memcached":
            argv = ["/usr/bin/memcached", "-l", "127.0.0.1", "-p", str(self.ports[name]), "-U", "0", "-m", "64",
                    "-u", "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")]
        else:
            argv = [f"/usr/bin/swift-{name}-server", str(self.root / "etc" / f"{name}-server.conf")]
        env = {**os.environ, "PYTHONPATH": str(self.root / "hook")}
        env.pop("PYTHONHOME", None)
        with log:
            self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def _launch(self, timeout: float) -> None:
        for name, port in self.ports.items():
            if listeners(port):
                raise _PortTaken(port)
        for name in self.ports:
            self._spawn(name)
        deadline = time.monotonic() + timeout
        for name in ("memcached", *SERVERS, "proxy"):
            self._wait_listening(name, deadline)
        self.wait_ready(deadline - time.monotonic())

    def _wait_listening(self, name: str, deadline: float) -> None:
        port = self.ports[name]
        while True:
            proc = self.processes[name]
            if proc.poll() is not None:
                raise SwiftError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            count = listeners(port)
            if count > 1:
                raise _PortTaken(port)
            if count == 1:
                return
            if time.monotonic() > deadline:
                raise SwiftError(f"{name} did not listen on 127.0.0.1:{port} in time:\n{self.log_tail(name)}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until an authenticated request through the proxy reaches the account server."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, _ = self.swift_request("HEAD", "")
                if status < 300:
                    return
                raise SwiftError(f"HEAD of the account answered {status}")
            except (OSError, http.client.HTTPException, SwiftError) as exc:  # not up yet
                if time.monotonic() > deadline:
                    raise SwiftError(f"Swift did not answer S3 requests in time ({exc!r}):\n"
                                     + "\n".join(self.log_tail(n) for n in ("proxy", *SERVERS))) from None
                time.sleep(0.1)

    def stop(self) -> list[str]:
        """Stop every process (SIGTERM, then SIGKILL); the complaints, if any."""
        complaints = []
        for name, proc in self.processes.items():
            complaint = _stop(proc, name)
            if complaint:
                complaints.append(complaint)
        self.processes.clear()
        return complaints

    # -- faults ---------------------------------------------------------------------------------------------------

    def stop_proxy(self) -> None:
        """The store goes away: connections to its endpoint are refused until `start_proxy`."""
        proc = self.processes.pop("proxy")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def start_proxy(self, timeout: float = 60.0) -> None:
        if "proxy" in self.processes:
            return
        deadline = time.monotonic() + timeout
        while listeners(self.ports["proxy"]):  # the killed process's socket goes with it
            if time.monotonic() > deadline:
                raise SwiftError(f"port {self.ports['proxy']} still taken")
            time.sleep(0.05)
        self._spawn("proxy")
        self._wait_listening("proxy", deadline)
        self.wait_ready(deadline - time.monotonic())

    # -- clients and logs -----------------------------------------------------------------------------------------

    def client(self, retries: int = 3):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": retries, "mode": "standard"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required", connect_timeout=5, read_timeout=60))

    def create_bucket(self, name: str) -> None:
        """A bucket is a Swift container: made through Swift's own API, so no S3 client is needed."""
        status, _ = self.swift_request("PUT", f"/{name}")
        if status not in (201, 202):
            raise SwiftError(f"creating bucket {name!r} answered {status}")

    def swift_request(self, method: str, path: str) -> tuple[int, dict]:
        """A request of Swift's own API to the test account (tempauth's token, asked for each time)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["proxy"], timeout=30)
        try:
            conn.request("GET", "/auth/v1.0", headers={"X-Auth-User": self.access_key, "X-Auth-Key": self.secret_key})
            auth = conn.getresponse()
            auth.read()
            if auth.status >= 300:
                raise SwiftError(f"tempauth answered {auth.status}")
            url = urllib.parse.urlsplit(auth.getheader("X-Storage-Url"))
            conn.request(method, url.path + path, headers={"X-Auth-Token": auth.getheader("X-Auth-Token"),
                                                           "Content-Length": "0"})
            answer = conn.getresponse()
            answer.read()
            return answer.status, dict(answer.getheaders())
        finally:
            conn.close()

    def log_size(self) -> int:
        try:
            return self.access_log.stat().st_size
        except FileNotFoundError:
            return 0

    def requests_since(self, offset: int) -> list["LoggedRequest"]:
        """The client requests the proxy logged after byte `offset` of its access log (Swift's own sub-requests
        left out)."""
        try:
            with open(self.access_log, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode()
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            parts = line.split(" ")
            if len(parts) < 7:
                continue
            method, path, status, received, sent, source, headers = parts[:7]
            if source != "-":
                continue
            headers = dict(line.partition(": ")[::2] for line in urllib.parse.unquote(headers).split("\n")
                           if ": " in line)
            found.append(LoggedRequest(method, urllib.parse.unquote(path), int(status), _int(received), _int(sent),
                                       {name.lower(): value for name, value in headers.items()}))
        return found

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.root / "log" / f"{name}.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"({name}: no log)"
        return f"--- {name}\n" + "\n".join(text[-lines:])


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str  # /bucket/key?query, unquoted
    status: int
    received: int
    sent: int
    headers: dict  # lower-case name -> value, of those the proxy logs (see the module docstring)

    @property
    def key(self) -> str:
        """The object key (without bucket and query), '' for a bucket request."""
        return self.path.split("?", 1)[0].split("/", 2)[2] if self.path.count("/") >= 2 else ""

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.path.partition("?")[2], keep_blank_values=True))

    @property
    def is_copy(self) -> bool:
        return self.method == "COPY" or bool(self.headers.get("x-amz-copy-source"))


class _PortTaken(Exception):
    """Someone else listens on a port we chose: try other ports."""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _stop(proc: subprocess.Popen, name: str, grace: float = 10.0) -> str | None:
    if proc.poll() is not None:
        return None
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
        return None
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        return f"{name} (pid {proc.pid}) did not stop within {grace}s of SIGTERM; killed"


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
