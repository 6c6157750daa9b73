"""A throwaway PostgreSQL cluster: ``initdb`` into a temporary folder, a free loopback port,
``fsync=off``; one database per service or per test; everything removed by ``stop``.

``initdb`` refuses to run as root, so where we are root the cluster is created and run as the
``postgres`` system user that Debian's package creates. The binaries come from the Debian
package (``scripts/ensure-postgres`` installs it where it is missing).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from aijobs_dev.controlplane.cluster import free_port

__all__ = ["PostgresCluster", "PostgresError", "find_bindir"]


class PostgresError(RuntimeError):
    pass


def find_bindir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian keeps them out of PATH)."""
    override = os.environ.get("AIJOBS_PG_BINDIR")
    candidates = (
        [override]
        if override
        else sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    )
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file():
            return Path(folder)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise PostgresError(
        "PostgreSQL server binaries not found: run scripts/ensure-postgres "
        "(installs Debian's postgresql package) or set AIJOBS_PG_BINDIR"
    )


class PostgresCluster:
    def __init__(self) -> None:
        # Under the system temp folder, never under a caller's private one: the server runs as
        # `postgres` and must be able to reach its data folder through every parent.
        self.root = Path(tempfile.mkdtemp(prefix="aijobs-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._bindir = find_bindir()
        self._as_postgres = os.geteuid() == 0

    def _run(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
        if proc.returncode != 0:
            raise PostgresError(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc  # type: ignore[no-any-return]

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            [
                str(self._bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ]
        )
        self.port = free_port()
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                # A test database: durability is not under test here, speed is welcome.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
            ]
        )
        self._run(
            [
                str(self._bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(PostgresError):
                self._run(
                    [str(self._bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]
                )
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases -----------------------------------------------------------------------------
    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """A SQLAlchemy URL for ``database`` (``driver="postgresql"`` gives a libpq DSN)."""
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def wait_gone(self, timeout: float = 30.0) -> bool:
        """True once nothing answers on the cluster's port (for teardown checks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                psycopg.connect(self.admin_dsn, connect_timeout=1).close()
            except psycopg.OperationalError:
                return True
            time.sleep(0.1)
        return False
