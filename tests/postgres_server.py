"""A real PostgreSQL server for the tests: Debian's `postgresql` binaries, `initdb` into a temporary directory, a
free loopback port, run as the unprivileged `postgres` user when the tests run as root (initdb refuses root).
Trust authentication on 127.0.0.1 only; fsync off (the tests measure nothing about durability here)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks.harness import wait_or_kill
from tests.support import free_port


def binaries() -> Path | None:
    """The folder holding initdb and postgres, or None when PostgreSQL is not installed."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "initdb").exists() and Path(folder, "postgres").exists():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


class PostgresServer:
    """One cluster on a temporary directory; `start`, `stop` (a restart is both) and fresh databases."""

    def __init__(self) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (.ci/run installs Debian's postgresql package)")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="darkroom-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*self._as_user, str(self.bin / "initdb"), "-D", str(self.data), "-U", "darkroom",
                        "--auth=trust", "--no-sync", "-E", "UTF8"], check=True, capture_output=True)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - the server's stderr, closed with it
        self.proc = subprocess.Popen(
            [*self._as_user, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.root / "postgres.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not start within 30 s")

    def stop(self) -> None:
        """Fast shutdown (what a restart by the operator does)."""
        if self.proc is not None and self.proc.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for clients to leave). Sent to the
            # postmaster itself (its pid file's first line), not to the runuser wrapper.
            try:
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGINT)
            except (OSError, ValueError, IndexError):
                self.proc.terminate()
            wait_or_kill(self.proc)
        self.proc = None

    def url(self, database: str) -> str:
        """A libpq URL for `database` on this server."""
        return f"postgresql://darkroom@127.0.0.1:{self.port}/{database}"

    def fresh_database(self, name: str) -> str:
        """Create an empty database; its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        """Stop and remove the cluster."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
