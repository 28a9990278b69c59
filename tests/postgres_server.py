"""A private, throwaway PostgreSQL instance for integration tests.

Uses the Debian server binaries in ``/usr/lib/postgresql/<version>/bin`` (see
``scripts/ensure-postgres.sh``). PostgreSQL refuses to run as root, so when the
tests run as root the server binaries run as the ``postgres`` OS user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
OS_USER = "postgres"
START_TIMEOUT = 30.0

# Settings for a disposable test cluster: no durability, quick shutdown.
SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


class PostgresServerError(RuntimeError):
    """PostgreSQL binaries are missing or the server did not start/stop."""


def find_bin_dir() -> Path:
    """``bin`` dir of the newest installed PostgreSQL major version."""
    candidates = [p for p in PG_ROOT.glob("*/bin") if (p / "postgres").is_file()]
    if not candidates:
        raise PostgresServerError(
            f"no PostgreSQL server binaries under {PG_ROOT}/*/bin; "
            "run scripts/ensure-postgres.sh (as root)"
        )

    def version(path: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in path.parent.name.split("."))
        except ValueError:
            return (0,)

    return max(candidates, key=version)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temp dir, on a free port of 127.0.0.1, trust auth.

    The port and data dir are fixed for the object's life, so ``stop()`` followed
    by ``start()`` brings the same server back on the same address.
    """

    def __init__(self, *, port: int | None = None, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.port = port or free_tcp_port()
        self.host = "127.0.0.1"
        self.tmpdir = Path(tempfile.mkdtemp(prefix="lk-observer-pg-"))
        self.data_dir = self.tmpdir / "data"
        self.socket_dir = self.tmpdir
        self.log_path = self.tmpdir / "postgres.log"
        self._as_root = os.geteuid() == 0
        self._initialized = False
        if self._as_root:
            shutil.chown(self.tmpdir, user=OS_USER, group=OS_USER)

    # -- helpers ---------------------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> str:
        """Run a PostgreSQL tool (as the ``postgres`` user when we are root)."""
        cmd = [str(self.bin_dir / tool), *args]
        if self._as_root:
            cmd = ["runuser", "-u", OS_USER, "--", *cmd]
        proc = subprocess.run(
            cmd,
            cwd=self.tmpdir,  # postgres cannot chdir into root's cwd
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            # Keep the postmaster out of pytest's process group (no stray SIGINT).
            start_new_session=True,
        )
        if proc.returncode != 0:
            raise PostgresServerError(
                f"{tool} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
                f"\n{self.log_tail()}"
            )
        return proc.stdout

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        settings = dict(SERVER_SETTINGS)
        settings["port"] = str(self.port)
        settings["unix_socket_directories"] = f"'{self.socket_dir}'"
        lines = [f"{key} = {value}" for key, value in settings.items()]
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# test settings\n" + "\n".join(lines) + "\n")
        self._initialized = True

    def conninfo(self, dbname: str = "postgres") -> str:
        """libpq connection string for ``dbname``."""
        return f"host={self.host} port={self.port} user={SUPERUSER} dbname={dbname}"

    def url(self, dbname: str) -> str:
        """SQLAlchemy URL for ``dbname`` (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    @property
    def running(self) -> bool:
        """True if the postmaster of this data dir is running."""
        if not self._initialized:
            return False
        cmd = [str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir)]
        if self._as_root:
            cmd = ["runuser", "-u", OS_USER, "--", *cmd]
        return (
            subprocess.run(
                cmd, cwd=self.tmpdir, stdin=subprocess.DEVNULL, capture_output=True
            ).returncode
            == 0
        )

    # -- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """initdb on first use, start the server, wait until it accepts connections."""
        if not self._initialized:
            self._initdb()
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(int(timeout)),
            timeout=timeout + 5,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=2) as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown: connected clients are disconnected, no waiting for them."""
        if not self.running:
            return
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30")

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop and start again with the same port and data dir."""
        self.stop()
        self.start(timeout=timeout)

    def cleanup(self) -> None:
        """Stop the server (if running) and delete its temp dir."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- databases -------------------------------------------------------------

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create database ``name`` (a copy of database ``template`` if given: nobody may be
        connected to that one); returns its SQLAlchemy URL."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(query)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its clients (PG 13+)."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
