"""A PostgreSQL for a benchmark run (`scale.py --database postgresql`): Debian's server, started for the run and
removed after it, standard library only.

PostgreSQL refuses to run as root: as root it runs as the `postgres` account Debian's package creates (runuser),
in a directory under the temporary directory that account owns, listening on 127.0.0.1 on a free port. Durability
settings stay PostgreSQL's defaults (fsync on), as a deployment would have them; only shared_buffers is raised.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from harness import BenchError, free_port, progress

INSTALL = "apt-get -o DPkg::Lock::Timeout=300 install -y postgresql"


class Postgres:
    def __init__(self, directory: Path, port: int, as_user: list[str], bin_dir: Path):
        self.directory, self.port, self.as_user, self.bin = directory, port, as_user, bin_dir
        self.url = f"postgresql://dockyard@127.0.0.1:{port}/dockyard"

    def run(self, tool: str, *args: str) -> str:
        result = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True,
                                timeout=300)
        if result.returncode != 0:
            raise BenchError(f"{tool} {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def query(self, sql: str) -> str:
        return self.run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "dockyard", "-d", "dockyard",
                        "-tAc", sql).strip()

    def database_bytes(self) -> int:
        return int(self.query("SELECT pg_database_size('dockyard')"))


@contextmanager
def postgres(workdir: Path) -> Iterator[Postgres]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if not found:
        raise BenchError(f"PostgreSQL is not installed: {INSTALL}")
    bin_dir = Path(found[-1]).parent
    as_user, user = [], pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() == 0:
        user, as_user = "postgres", ["runuser", "-u", "postgres", "--"]
    directory = Path(tempfile.mkdtemp(prefix="pg-", dir=workdir.parent))
    account = pwd.getpwnam(user)
    os.chown(directory, account.pw_uid, account.pw_gid)
    server = Postgres(directory, free_port(), as_user, bin_dir)
    data = directory / "data"
    try:
        progress(f"starting PostgreSQL ({bin_dir.parent.name}) on port {server.port}")
        server.run("initdb", "-D", str(data), "-U", "dockyard", "--auth=trust", "-E", "UTF8")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {server.port}\n"
                       f"unix_socket_directories = '{directory}'\nshared_buffers = 256MB\nmax_connections = 200\n")
        server.run("pg_ctl", "-D", str(data), "-l", str(directory / "server.log"), "-w", "start")
        server.run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "dockyard", "dockyard")
        yield server
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
