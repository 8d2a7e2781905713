"""PostgreSQL for the tests: the machine's server, or a throw-away cluster of the session's own.

Which server the ``postgres_url`` fixture (tests/conftest.py) gives, in order:

1. ``CVIS_TEST_POSTGRES_URL``, if set (a SQLAlchemy URL whose role may create schemas);
2. ``postgresql+psycopg://postgres@127.0.0.1:5432/test`` if it answers (the project's build
   machines run one);
3. otherwise a cluster started for the session with the PostgreSQL server binaries
   (``initdb``/``pg_ctl`` on PATH or in ``/usr/lib/postgresql/*/bin``, which
   ``scripts/setup --test`` installs), trust authentication on 127.0.0.1 and a free port,
   removed at the end. ``CVIS_TEST_POSTGRES=own`` forces this even when 5432 answers.

Each test then works in a schema of its own (``fresh_schema``), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from cvis.broker import free_port

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def answers(url: str) -> bool:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def server_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, newest PostgreSQL first; None if not installed."""
    candidates = [Path(p).parent for p in (shutil.which("initdb"),) if p]
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                           key=lambda p: int(Path(p).parent.name)
                                           if Path(p).parent.name.isdigit() else 0, reverse=True)]
    for d in candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


class OwnCluster:
    """initdb + pg_ctl start in a temporary folder; as user ``postgres`` when we are root
    (PostgreSQL refuses to run as root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="cvis-test-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/test"
        self._as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise RuntimeError("cannot run PostgreSQL as root and runuser is missing")
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.base, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {(proc.stdout + proc.stderr)[-2000:]}")

    def start(self) -> OwnCluster:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"),
                  "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")
        admin = sa.create_engine(self.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text("CREATE DATABASE test"))
        finally:
            admin.dispose()
        return self

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The URL of the PostgreSQL the tests use (see the module docstring)."""
    url = os.environ.get("CVIS_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if os.environ.get("CVIS_TEST_POSTGRES") != "own" and answers(DEFAULT_URL):
        yield DEFAULT_URL
        return
    bindir = server_binaries()
    if bindir is None:
        raise RuntimeError(
            f"the PostgreSQL tests need a server: none answers at {DEFAULT_URL} and the server "
            "binaries (initdb, pg_ctl) are not installed: run scripts/setup --test as root, or "
            "'sudo apt-get install postgresql', or set CVIS_TEST_POSTGRES_URL")
    cluster = OwnCluster(bindir).start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


def schema_url(server_url: str, schema: str) -> str:
    """``server_url`` with ``schema`` as the search path (for code that only takes a URL)."""
    sep = "&" if "?" in server_url else "?"
    return f"{server_url}{sep}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def fresh_schema(server_url: str, prefix: str) -> Iterator[tuple[sa.Engine, str]]:
    """(admin engine, name) of a new schema, dropped with everything in it afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(server_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield engine, schema
    finally:
        with contextlib.suppress(sa.exc.OperationalError), engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
