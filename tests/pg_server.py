"""A real PostgreSQL for the tests: Debian's server binaries, started once per session, a fresh database per test.

`PostgresServer` runs initdb + pg_ctl as an unprivileged user (PostgreSQL refuses to run as root, and CI is root:
then the `postgres` account Debian's package creates, through runuser), in a directory under /tmp that user owns
(pytest's temporary directories are private to root), listening on 127.0.0.1 on a free port with its unix socket
in that directory. Durability is off (fsync, synchronous_commit, full_page_writes): a crash of a test server loses
nothing anyone needs, and creating a database per test stays cheap.

Fixtures (imported into tests/conftest.py, so tests/contracts, tests/server, tests/middleware and tests/e2e share
them): `postgresql` (the session's server; a missing tool fails under CI=true and skips otherwise),
`postgresql_url` (a database for this test alone: a copy of a template the migrations were applied to once, or one a
test before used, emptied),
`new_postgresql_server` (a server of the test's own, for tests that stop and restart it),
`module_postgresql_server` (the same for a whole module).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

TEMPLATE = "dockyard_template"
KEPT = ("schema_migrations", "counters")  # what emptying a database for the next test leaves as the template has it


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a directory of its own; `url(database)` for clients, `stop`/`start` for tests
    of the database going away."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.as_user: list[str] = []
        self.user = pwd.getpwuid(os.getuid()).pw_name
        if os.getuid() == 0:
            self.user = "postgres"  # created by Debian's postgresql-common
            self.as_user = ["runuser", "-u", self.user, "--"]
        self.dir = Path(tempfile.mkdtemp(prefix="dockyard-pg-", dir="/tmp"))
        account = pwd.getpwnam(self.user)
        os.chown(self.dir, account.pw_uid, account.pw_gid)
        os.chmod(self.dir, 0o700)
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        self._names = itertools.count(1)
        self._free: list[str] = []
        self._tables: list[str] = []
        self._run("initdb", "-D", str(self.data), "-U", "dockyard", "--auth=trust", "-E", "UTF8", "--locale=C",
                  "--no-sync")
        settings = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.port), "unix_socket_directories": f"'{self.dir}'",
            "max_connections": "300", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "shared_buffers": "64MB", "log_line_prefix": "'%m [%p] %d '", "log_min_messages": "warning",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self.start()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True,
                              timeout=120, check=check)

    def start(self) -> None:
        result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stdout}{result.stderr}\n{self.log_text()[-3000:]}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def url(self, database: str = "postgres", **options) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"postgresql://dockyard@127.0.0.1:{self.port}/{database}" + (f"?{query}" if query else "")

    def execute(self, *statements: str, database: str = "postgres") -> list:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            rows = []
            for statement in statements:
                cur = conn.execute(statement)
                rows = cur.fetchall() if cur.description else []
            return rows

    def make_template(self) -> None:
        from dockyard.server.metadata.postgres import PostgresMetadata

        self.execute(f"CREATE DATABASE {TEMPLATE}")
        metadata = PostgresMetadata(self.url(TEMPLATE), check_schema=False)
        metadata.migrate()
        metadata.close()
        self._tables = [r[0] for r in self.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename", database=TEMPLATE)]

    def new_database(self, *, template: str | None = TEMPLATE) -> str:
        """A new database's name: a copy of the migrated template, or empty with `template=None`."""
        name = f"test_{next(self._names)}"
        source = f"TEMPLATE {template} STRATEGY FILE_COPY" if template else "TEMPLATE template0"
        self.execute(f"CREATE DATABASE {name} {source}")
        return name

    def fresh_database(self) -> str:
        """A migrated database holding no data: one a test before gave back (`give_back`), or a new copy of the
        template. Emptying one (TRUNCATE) is several times cheaper than copying the template on a busy machine."""
        return self._free.pop() if self._free else self.new_database()

    def give_back(self, name: str) -> None:
        """Empty a database a test is done with, for the next test; a database the test dropped or changed
        beyond emptying is simply not reused."""
        import psycopg

        try:
            with psycopg.connect(self.url(name), autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                conn.execute("SET lock_timeout = '2s'")
                tables = [r[0] for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
                if tables != self._tables:
                    return
                conn.execute(f"TRUNCATE {', '.join(t for t in tables if t not in KEPT)} RESTART IDENTITY; "
                             "UPDATE counters SET value = 0; SELECT pg_stat_reset()")
        except psycopg.Error:
            return
        self._free.append(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def require_postgresql() -> Path:
    """The server binaries; a missing PostgreSQL fails the test under CI=true and skips it otherwise."""
    bin_dir = server_binaries()
    missing = None if bin_dir else "PostgreSQL server (apt-get install postgresql)"
    if bin_dir and os.getuid() == 0 and not shutil.which("runuser"):
        missing = "runuser (util-linux)"
    if missing is None:
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            missing = "psycopg and psycopg_pool (pip install -e '.[postgresql]')"
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"missing tool: {missing}")
        pytest.skip(f"missing tool: {missing}")
    return bin_dir


@pytest.fixture(scope="session")
def postgresql():
    """The session's PostgreSQL, started on first use and stopped at the end."""
    server = PostgresServer(require_postgresql())
    try:
        server.make_template()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgresql_url(postgresql) -> str:
    """A URL of a migrated database for this test alone, holding no data."""
    name = postgresql.fresh_database()
    yield postgresql.url(name, pool_timeout=5)
    postgresql.give_back(name)


@pytest.fixture
def new_postgresql_server():
    """A PostgreSQL of this test's own (the test may stop and restart it), with an empty database `dockyard`."""
    yield from _own_server()


@pytest.fixture(scope="module")
def module_postgresql_server():
    """`new_postgresql_server` shared by the tests of one module (e.g. a cluster whose database a test restarts)."""
    yield from _own_server()


def _own_server():
    server = PostgresServer(require_postgresql())
    try:
        server.execute("CREATE DATABASE dockyard")
        yield server
    finally:
        server.destroy()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
