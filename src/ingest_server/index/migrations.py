"""Engines and versioned schema migrations for the index (SQLite or PostgreSQL).

``create_engine(url)`` sets SQLite up for several writer processes (WAL, a busy timeout,
``BEGIN IMMEDIATE`` for write transactions so two writers never deadlock on a lock upgrade,
foreign keys on). ``migrate(engine)`` applies every migration newer than the stored version,
each in its own transaction, under a lock (SQLite's write lock, a PostgreSQL advisory lock),
so several workers may start at once. A later issue adds a migration by appending to
:data:`MIGRATIONS`; never edit one that has shipped.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ingest_server.errors import IndexStoreError
from ingest_server.index import schema

log = logging.getLogger(__name__)

#: Arbitrary constant naming the PostgreSQL advisory lock that serializes migrations.
_PG_LOCK = 0x63766973


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=list(schema.V1_TABLES))


def _v2(conn: Connection) -> None:
    # checkfirst: a ``cvis hazards --db`` of an older cvis may have created the same table.
    schema.metadata.create_all(conn, tables=list(schema.V2_TABLES))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "agents, streams, segments, batches, quarantine, reject counts", _v1),
    Migration(2, "hazard warnings", _v2),
)
LATEST = MIGRATIONS[-1].version


def create_engine(url: str, *, busy_timeout_s: float = 30.0, synchronous: str = "FULL") -> Engine:
    """An engine for the index at ``url``; SQLite gets WAL and multi-process settings."""
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})

            @sa.event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, record: Any) -> None:
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
                _set_wal(cur, busy_timeout_s)
                cur.execute(f"PRAGMA synchronous={synchronous}")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

            @sa.event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                write = conn.get_execution_options().get("cvis_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

            return engine
        return sa.create_engine(url, pool_pre_ping=True)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise IndexStoreError(f"index URL {url!r}: {exc}") from exc


def _set_wal(cur: Any, timeout_s: float) -> None:
    """Switch a new database to WAL. Several processes opening a fresh index at once can get
    "database is locked" here at once, without SQLite's busy handler waiting (the switch
    needs an exclusive lock); so wait for it ourselves, as long as the busy timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def write_conn(engine: Engine) -> Any:
    """A context manager for one write transaction (BEGIN IMMEDIATE on SQLite)."""
    return engine.connect().execution_options(cvis_write=True)


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    v = conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar()
    return int(v or 0)


def migrate(engine: Engine) -> int:
    """Bring the index to :data:`LATEST`; returns the version now in place."""
    try:
        with write_conn(engine) as conn, conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
            version = current_version(conn)
            if version > LATEST:
                raise IndexStoreError(
                    f"index schema version {version} is newer than this cvis ({LATEST}); "
                    "upgrade cvis"
                )
            for m in MIGRATIONS:
                if m.version <= version:
                    continue
                m.apply(conn)
                conn.execute(schema.schema_version.insert().values(
                    version=m.version, applied_ns=time.time_ns(), description=m.description))
                log.info("index: migrated to version %d (%s)", m.version, m.description)
                version = m.version
            return version
    except sa.exc.SQLAlchemyError as exc:
        raise IndexStoreError(f"index migration failed: {exc}") from exc


def check_version(engine: Engine) -> int:
    """The index's version; an error if it is not :data:`LATEST` (run ``migrate`` first)."""
    try:
        with engine.connect() as conn:
            version = current_version(conn)
    except sa.exc.SQLAlchemyError as exc:
        raise IndexStoreError(f"cannot read the index: {exc}") from exc
    if version != LATEST:
        raise IndexStoreError(f"index schema version {version}, this cvis needs {LATEST}")
    return version
