"""What every benchmark in bench/ shares: the registries as processes, their memory, and the report's arithmetic.

- `dockyard(...)` and `reference_registry(...)` start a registry on a free 127.0.0.1 port with a data directory of
  its own, wait until `GET /v2/` answers 200, and stop it (SIGTERM, then SIGKILL to its session) when the `with`
  block ends, also on an error or Ctrl-C (`main_guard` turns SIGTERM into KeyboardInterrupt).
- `RssSampler` samples the resident memory of a server and every process under it.
- `median`, `ratio`, `cell` and `machine()` are what the tables are made of.

Linux only (it reads /proc); Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Self

HOST = "127.0.0.1"
READY_TIMEOUT = 60.0  # seconds for a server to answer GET /v2/ with 200
STOP_TIMEOUT = 40.0  # seconds between SIGTERM and SIGKILL (gunicorn's graceful timeout is 30 s)
RSS_INTERVAL = 0.05  # seconds between RSS samples
RSS_RESCAN_EVERY = 20  # samples between two walks of /proc for new child processes

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}


class BenchError(Exception):
    """A failure the user should read: a registry misbehaved or the machine cannot run the benchmark."""


def parse_size(text: str) -> int:
    """Parse '1GiB', '256MiB', '8MB' or a plain byte count."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B|B)?\s*", text, re.IGNORECASE)
    if not match or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r} (examples: 1GiB, 256MiB, 8MB, 4096)")
    return int(match[1]) * UNITS[(match[2] or "").upper()]


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"



def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- Memory of the server -----------------------------------------------------------------------------------


class RssSampler:
    """Peak VmRSS of a process and all its descendants, sampled by a thread every RSS_INTERVAL seconds."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak_process = 0  # bytes: the largest single process (with gunicorn, the largest worker)
        self.peak_total = 0  # bytes: the largest sum over the whole tree at one instant
        self.first_process = 0  # bytes: the largest single process at the first sample, before the work
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pids = process_tree(self.root)
        self._sample(pids)
        self.first_process = self.peak_process
        samples = 1
        while not self._stop.wait(RSS_INTERVAL):
            if samples % RSS_RESCAN_EVERY == 0:  # gunicorn may have replaced a worker
                pids = process_tree(self.root)
            self._sample(pids)
            samples += 1

    def _sample(self, pids: list[int]) -> None:
        sizes = [vm_rss(pid) for pid in pids]
        self.peak_process = max(self.peak_process, max(sizes))
        self.peak_total = max(self.peak_total, sum(sizes))


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, found through the parent pid in every /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (parent := _parent_pid(entry.name)) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> float:
    """User and system CPU time of `root` and every process under it, from /proc (exited children not counted)."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (in clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def _parent_pid(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # the process has gone
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the command name may hold spaces and parentheses


def vm_rss(pid: int) -> int:
    """Resident set size in bytes; 0 for a process that has gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- The registries -----------------------------------------------------------------------------------------

DOCKYARD_CMD = "dockyard serve --bind 127.0.0.1:{port} --data {data}"
# As Debian packages it (/etc/docker/registry/config.yml: in-memory blob descriptor cache, deletes on), without
# auth (Dockyard runs without auth too) and without its access log (Dockyard's gunicorn writes none either).
REFERENCE_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {addr}
"""


@dataclass(frozen=True)
class Target:
    """A registry to measure; `pid` roots the process tree whose memory is sampled (None: in-process)."""

    name: str
    port: int
    pid: int | None
    command: list[str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def reference_registry(workdir: Path, storage: str | None = None) -> AbstractContextManager[Target]:
    """The reference registry; `storage` replaces its filesystem driver's YAML lines (bench/s3.py: its s3 driver)."""
    binary = shutil.which("docker-registry")
    if not binary:
        raise BenchError(
            "the reference registry is missing: apt-get -o DPkg::Lock::Timeout=300 install -y docker-registry"
        )
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(reference_config(workdir / "data", f"{HOST}:{port}", storage))
    return server_process("reference", [binary, "serve", str(config)], port, workdir / "server.log")


def reference_config(root: Path, addr: str, storage: str | None = None) -> str:
    # JSON strings are YAML strings: quoting the path keeps any character in it literal.
    text = REFERENCE_CONFIG.format(root=json.dumps(str(root)), addr=addr)
    if storage is None:
        return text
    filesystem = f"  filesystem:\n    rootdirectory: {json.dumps(str(root))}\n"
    assert filesystem in text
    return text.replace(filesystem, storage)


def dockyard(
    workdir: Path,
    template: str = DOCKYARD_CMD,
    *,
    name: str = "dockyard",
    data: Path | None = None,
    settings: Mapping[str, str] | None = None,
) -> AbstractContextManager[Target]:
    """`dockyard serve` (or `template`) with a new data directory, or `data` shared with another server.

    `settings` become DOCKYARD_<NAME> environment variables; DOCKYARD_* variables of our own environment are
    not passed on, so every run measures the defaults plus exactly these.
    """
    port = free_port()
    if data is None:
        data = workdir / "data"
        data.mkdir()
    try:
        argv = [arg.format(port=port, data=data) for arg in shlex.split(template)]
    except (KeyError, IndexError, ValueError) as exc:
        raise BenchError(f"--dockyard-cmd {template!r}: only {{port}} and {{data}} can be filled in ({exc})")
    argv[0] = _executable(argv[0])
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKYARD_")}
    env |= {f"DOCKYARD_{key.upper()}": value for key, value in (settings or {}).items()}
    return server_process(name, argv, port, workdir / "server.log", env)


def _executable(name: str) -> str:
    """`name` on PATH, or beside this Python (a virtualenv's console scripts, not activated)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise BenchError(
            f"{name!r} is neither on PATH nor beside {sys.executable}: install the project (pip install -e .), "
            "pass --dockyard-cmd, or measure the reference alone with --only reference"
        )
    return found


@contextmanager
def server_process(
    name: str, argv: list[str], port: int, log_path: Path, env: Mapping[str, str] | None = None
) -> Iterator[Target]:
    """Run `argv` in a session of its own, wait until GET /v2/ answers 200, and stop it on exit."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    try:
        wait_ready(name, proc, port, log_path)
        yield Target(name, port, proc.pid, argv)
    finally:
        stop_process(name, proc, log_path)


def wait_ready(name: str, proc: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if (status := _exit_status(proc)) is not None:
            raise BenchError(f"{name} exited with status {status} before it answered GET /v2/ (its log is above)")
        if _v2_status(port) == 200:
            return
        time.sleep(0.1)
    raise BenchError(f"{name} did not answer GET /v2/ with 200 within {READY_TIMEOUT:.0f} s:\n{_tail(log_path)}")


def _v2_status(port: int) -> int | None:
    with closing(http.client.HTTPConnection(HOST, port, timeout=5)) as conn:
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status
        except (OSError, http.client.HTTPException):
            return None


def stop_process(name: str, proc: subprocess.Popen, log_path: Path) -> None:
    """SIGTERM the process we started and wait for it; then SIGKILL whatever is left in its session."""
    if (status := _exit_status(proc)) is not None:
        progress(f"{name} had exited by itself with status {status}; the end of its log:\n{_tail(log_path)}")
    else:
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _exit_status(proc) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if _exit_status(proc) is None:
            progress(f"{name} was still running {STOP_TIMEOUT:.0f} s after SIGTERM: killing it")
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the unreaped leader keeps this group id ours
    proc.wait(timeout=STOP_TIMEOUT)


def _exit_status(proc: subprocess.Popen) -> int | None:
    """The exit status of our child if it has ended, without reaping it, so its pid cannot be reused yet."""
    result = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return None if result is None else result.si_status


def _tail(log_path: Path, lines: int = 40) -> str:
    text = log_path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in text) or "  | (its log is empty)"



# --- Statistics, the machine, the command line --------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(dockyard_value: float | None, reference_value: float | None) -> float | None:
    if dockyard_value is None or not reference_value:
        return None
    return dockyard_value / reference_value


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 10 else f"{value:.0f}"


def nproc() -> int:
    return len(os.sched_getaffinity(0))


def load_average() -> float:
    """The 1-minute load average: near or above nproc, something else was running."""
    return os.getloadavg()[0]


def alternate(items: list, number: int) -> list:
    """`items` in order in even rounds, reversed in odd ones: neither registry always goes first."""
    return items if number % 2 == 0 else items[::-1]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main_guard(run: Callable[[], int]) -> int:
    """Run a benchmark's `run()`: a BenchError is printed, Ctrl-C and SIGTERM unwind every `with` (cleanup)."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run()
    except BenchError as exc:
        progress(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        progress("interrupted: registries stopped, temporary files removed")
        return 130
