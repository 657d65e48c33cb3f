"""A real, throwaway PostgreSQL server for the tests: ``initdb`` in a temporary directory, on a
free loopback port, with password authentication (so a URL's password matters).

``initdb`` and ``pg_ctl`` refuse to run as root: as root they run as the ``postgres`` user (Debian's
package creates it) through ``runuser``. Debian's ``postgresql`` package provides the binaries;
``.ci/run`` installs it where it is missing. In CI a missing server fails the tests (never a skip).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

PASSWORD = "pg-test-secret-7f3a"


def _bindir() -> str | None:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and os.path.exists(os.path.join(out, "initdb")):
            return out
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return os.path.dirname(candidates[0]) if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One server; :meth:`database` makes a fresh database per test (isolation without a server
    per test). :meth:`stop` and :meth:`start` again simulate an outage on the same data."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            if os.environ.get("CI"):
                raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
            pytest.skip("PostgreSQL is not installed here (apt-get install postgresql); CI installs it")
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="prysmai-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o700)
        pwfile = os.path.join(self.root, "pw")
        Path(pwfile).write_text(PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        auth = ("--auth=scram-sha-256", f"--pwfile={pwfile}")
        self._run("initdb", "-D", self.data, "-U", "postgres", *auth, "--no-sync", "-E", "UTF8")
        os.remove(pwfile)

    def _run(self, tool: str, *args: str) -> None:
        command = [os.path.join(self.bindir, tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.root, "log"), "-w", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres", password: bool = True) -> str:
        auth = f"postgres:{PASSWORD}" if password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database's URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
