"""A throwaway PostgreSQL cluster for tests and benches: `initdb` + `pg_ctl` on a free port.

The server refuses to run as root, so under root (CI, containers) the cluster belongs to the
`postgres` system user that the Debian package creates, and its commands run through `runuser`.
Password authentication over TCP (scram-sha-256), as a deployment would have it; the Unix socket
lives in the cluster's own directory, never in /var/run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "coordtest"
PASSWORD = "s3cret-Test-pw"


class ClusterUnavailableError(RuntimeError):
    """No PostgreSQL server binaries here, or the cluster would not start."""


def server_bin_dir() -> Path:
    """The newest installed server's bin directory (Debian keeps them off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise ClusterUnavailableError("no PostgreSQL server found: install the Debian package `postgresql`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    data: Path
    port: int
    bin_dir: Path
    as_user: str | None  # run the server's commands as this user (when we are root)

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", self.as_user, "--", *command] if self.as_user else command

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(self._cmd(tool, *args), capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ClusterUnavailableError(f"{tool} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        """A fresh database of the cluster; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name made by the caller's own code
        return self.url(name)


@contextlib.contextmanager
def running_cluster(root: Path | None = None) -> Iterator[Cluster]:
    """Start a cluster in a new directory; stop it and delete the directory on exit."""
    bin_dir = server_bin_dir()
    as_user = "postgres" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="agent-coord-pg-", dir=root))
    data = base / "data"
    try:
        data.mkdir()
        pwfile = base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if as_user:
            shutil.chown(base, as_user)
            shutil.chown(data, as_user)
            shutil.chown(pwfile, as_user)
        cluster = Cluster(data, _free_port(), bin_dir, as_user)
        cluster._run(
            "initdb",
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
            timeout=120,
        )
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {cluster.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{base}'\n"
                "max_connections = 200\nshared_buffers = 32MB\nfsync = on\n"
            )
        cluster.start()
        try:
            _wait_accepting(cluster)
            yield cluster
        finally:
            with contextlib.suppress(ClusterUnavailableError, subprocess.TimeoutExpired):
                cluster.stop("immediate")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wait_accepting(cluster: Cluster, timeout_s: float = 30) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(cluster.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
