"""A throwaway PostgreSQL cluster for tests: started in a temp dir, always removed.

`ALERTLINK_TEST_POSTGRES_URL` points the tests at an existing server instead.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DB_NAME = "alertlink_test"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be found or started; the message says why."""


def find_bindir() -> Path:
    """The directory holding initdb/pg_ctl: pg_config's, else the newest /usr/lib/postgresql/*."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidates.append(Path(out.stdout.strip()))
    # pg_config may come from libpq-dev alone, whose bindir has no server
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(map(Path, versions), key=lambda p: int(p.parent.name), reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) found")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_postgres() -> Iterator[str]:
    """Yield `postgresql+psycopg://postgres@127.0.0.1:<port>/alertlink_test`."""
    if url := os.environ.get("ALERTLINK_TEST_POSTGRES_URL"):
        yield url
        return

    bindir = find_bindir()
    # initdb refuses to run as root: the cluster belongs to the postgres user then
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []

    with tempfile.TemporaryDirectory(prefix="alertlink-pg-") as tmp:
        root = Path(tmp)
        data, sockets, log = root / "data", root / "sock", root / "server.log"
        sockets.mkdir()
        if as_root:
            for path in (root, sockets):
                shutil.chown(path, "postgres", "postgres")

        def run(*args: str) -> None:
            # cwd: the postgres user may not be able to enter the caller's directory
            done = subprocess.run([*prefix, *args], cwd=root, capture_output=True, text=True)
            if done.returncode != 0:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise PostgresUnavailable(f"{Path(args[0]).name} failed: {done.stderr}{tail}")

        try:
            run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                "--no-sync", "-E", "UTF8", "--locale=C")
        except OSError as exc:  # e.g. no runuser, no postgres user
            raise PostgresUnavailable(str(exc)) from exc
        port = _free_port()
        # -F: no fsync, the data is thrown away anyway; -w: wait until it accepts connections
        options = f"-k {sockets} -p {port} -c listen_addresses=127.0.0.1 -F"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
            "-w", "-t", "60", "start")
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                DB_NAME)
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{DB_NAME}"
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
