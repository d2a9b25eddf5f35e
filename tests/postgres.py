"""Run a real PostgreSQL from the Debian package for tests and benchmarks.

``initdb`` in a temporary folder, ``postgres -k <folder> -p <free port> -h 127.0.0.1``, a
database per test on demand, stopped (fast shutdown, then SIGKILL) at the end. PostgreSQL
refuses to run as root, so as root the server runs as the ``postgres`` user that the
Debian package creates, in a folder it owns.
"""

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
from typing import Any

import psycopg

from tests.broker import free_port

INSTALL_HINT = "install PostgreSQL: `apt-get install postgresql` (scripts/setup.sh test does)"
USER = "edgeml"


def find_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` holding initdb, None if none."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    return Path(found[-1]).parent if found else None


class Postgres:
    """A PostgreSQL server on 127.0.0.1 with trust authentication for user ``edgeml``."""

    host = "127.0.0.1"

    def __init__(self, *, fsync: bool = False) -> None:
        bin_dir = find_bin()
        if bin_dir is None:
            raise RuntimeError(f"initdb not found: {INSTALL_HINT}")
        self.bin = bin_dir
        self.port = free_port()
        self.fsync = fsync
        self.dir = Path(tempfile.mkdtemp(prefix="edgeml-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self._proc: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def start(self, timeout: float = 30.0) -> None:
        """initdb, then start the server and wait until it accepts connections."""
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
             "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True, capture_output=True, **self._as,
        )  # fmt: skip
        options = ["-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=50"]
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data),
                 "-k", str(self.dir), "-p", str(self.port), "-h", self.host, *options],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, **self._as,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres did not start; log:\n{self.log_tail()}") from None
                time.sleep(0.1)

    def url(self, dbname: str) -> str:
        """A URL for ``dbname`` on this server."""
        return f"postgresql://{USER}@{self.host}:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        self._databases += 1
        name = f"t{self._databases}_{os.getpid()}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it takes longer than ``timeout``; remove files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The server's last log lines."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
