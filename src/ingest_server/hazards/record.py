"""Every warning sent, recorded in the index for later scenario triggers (SQLAlchemy Core).

One row per warning message (``new``, each ``update``, ``end``); an episode
is the rows sharing ``episode``. ``(episode, update_count)`` is unique, so a
row written twice is stored once. The ``warnings`` table belongs to the
index: migration 2 of :mod:`ingest_server.index.migrations` creates it, so
``cvis server`` records warnings in the same database as batches. Give the
recorder an engine whose index is migrated (``create=False``), or let it
create the table itself (the default; tests and tools use other names or
schemas).

The worker's evaluation thread only :meth:`~WarningRecorder.submit` s a
warning to a bounded buffer; a recorder thread writes the buffer in one
transaction every ``flush_interval_s``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ingest_server.hazards.errors import HazardStorageError
from ingest_server.index.schema import warnings_table
from wire.warning import HazardWarning, Severity, Status, WarningType

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class RecordedWarning:
    """A row read back: the warning plus its row id."""

    id: int
    warning: HazardWarning


class WarningRecorder:
    """Writes warnings to the ``warnings`` table of an index database."""

    def __init__(self, engine: Engine, *, table_name: str = "warnings", schema: str | None = None,
                 flush_interval_s: float = 0.5, max_pending: int = 100_000,
                 create: bool = True) -> None:
        self.engine = engine
        self.metadata = sa.MetaData(schema=schema)
        self.table = warnings_table(self.metadata, table_name)
        self.flush_interval_s = flush_interval_s
        self._pending: deque[HazardWarning] = deque()
        self._max_pending = max_pending
        self.dropped = 0
        self.written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            if create:
                self.metadata.create_all(engine)
            elif not sa.inspect(engine).has_table(table_name, schema=schema):
                raise HazardStorageError(
                    f"the database has no {table_name} table: migrate the index first "
                    "(cvis server does) or let the recorder create it")
        except SQLAlchemyError as exc:
            raise HazardStorageError(f"cannot create the warnings table: {exc}") from exc

    # synchronous API

    def record(self, warnings: Sequence[HazardWarning]) -> int:
        """Insert ``warnings`` in one transaction (rows already stored are skipped)."""
        if not warnings:
            return 0
        rows = [_row(w) for w in warnings]
        try:
            with self._write() as conn, conn.begin():
                conn.execute(self.table.insert(), rows)
        except IntegrityError:
            return self._record_one_by_one(rows)
        except SQLAlchemyError as exc:
            raise HazardStorageError(f"cannot record {len(rows)} warnings: {exc}") from exc
        self.written += len(rows)
        return len(rows)

    def _record_one_by_one(self, rows: list[dict[str, Any]]) -> int:
        n = 0
        for row in rows:
            try:
                with self._write() as conn, conn.begin():
                    conn.execute(self.table.insert(), [row])
                n += 1
            except IntegrityError:
                continue  # already stored: (episode, update_count) is unique
            except SQLAlchemyError as exc:
                raise HazardStorageError(f"cannot record a warning: {exc}") from exc
        self.written += n
        return n

    def _write(self) -> Any:
        # On an index engine (ingest_server.index.migrations.create_engine) this makes SQLite
        # take its write lock at BEGIN, as every index writer does; other engines ignore it.
        return self.engine.connect().execution_options(cvis_write=True)

    def fetch(self, *, target: str | None = None, since_ns: int = 0,
              limit: int = 1000) -> list[RecordedWarning]:
        t = self.table
        q = sa.select(t).where(t.c.issued_ns >= since_ns).order_by(t.c.issued_ns, t.c.id).limit(limit)
        if target is not None:
            q = q.where(t.c.target == target)
        with self.engine.connect() as conn:
            return [RecordedWarning(r.id, _warning(r._mapping)) for r in conn.execute(q)]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one())

    # background writing

    def submit(self, w: HazardWarning) -> None:
        """Queue a warning for the recorder thread (never blocks; drops the oldest when full)."""
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(w)

    def flush(self) -> int:
        batch: list[HazardWarning] = []
        while self._pending and len(batch) < 10_000:
            batch.append(self._pending.popleft())
        try:
            return self.record(batch)
        except HazardStorageError as exc:
            self.dropped += len(batch)
            log.error("hazards: %s (dropped %d warnings)", exc, len(batch))
            return 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cvis-hazards-record", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while self._pending:
            if not self.flush():
                break

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            while self._pending:
                if not self.flush():
                    break


def _row(w: HazardWarning) -> dict[str, Any]:
    return {
        "episode": w.episode, "update_count": w.update, "status": w.status.value,
        "type": w.type.value, "severity": int(w.severity), "target": w.target,
        "counterparts": ",".join(w.counterparts), "ttc_s": w.ttc_s, "time_diff_s": w.time_diff_s,
        "lat": w.lat, "lon": w.lon, "issued_ns": w.issued_ns, "expires_ns": w.expires_ns,
        "source_ns": w.source_ns,
    }


def _warning(r: Any) -> HazardWarning:
    return HazardWarning(
        type=WarningType(r["type"]), severity=Severity(r["severity"]), target=r["target"],
        counterparts=tuple(r["counterparts"].split(",")), lat=r["lat"], lon=r["lon"],
        issued_ns=r["issued_ns"], expires_ns=r["expires_ns"], episode=r["episode"],
        update=r["update_count"], status=Status(r["status"]), ttc_s=r["ttc_s"],
        time_diff_s=r["time_diff_s"], source_ns=r["source_ns"],
    )
