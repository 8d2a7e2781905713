"""Reads and writes of the index: what a worker commits at each flush, what the CLI asks.

:class:`Index` wraps one engine. Every write of a flush happens in one transaction
(:meth:`Index.commit_flush`), so a batch row, its segment's new size and the quarantine
entries of the same flush become visible together or not at all. Inserting a batch that
another worker stored first is not an error: the row is skipped and reported, so the caller
acks it (it is durable) and knows its own copy is an orphan in its segment.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from ingest_server.errors import IndexStoreError
from ingest_server.index import migrations
from ingest_server.index.schema import (
    agents,
    batches,
    quarantine,
    reject_counts,
    segments,
    streams,
)
from ingest_server.quarantine import QuarantineEntry

_ROWS_PER_INSERT = 500


@dataclass(frozen=True, slots=True)
class StreamRef:
    id: int
    agent: str
    name: str
    schema: str
    topic: str


@dataclass(frozen=True, slots=True)
class SegmentRow:
    id: int
    worker: int
    path: str
    state: str
    created_ns: int
    closed_ns: int | None
    start_ns: int | None
    end_ns: int | None
    bytes: int
    messages: int
    batches: int
    recovered: bool


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A stored batch as the reader needs it."""

    agent: str
    stream: str
    schema: str
    topic: str
    seq: int
    segment_id: int
    segment_path: str
    msg_first: int
    msg_last: int
    records: int
    log_first_ns: int
    log_last_ns: int
    capture_first_ns: int
    capture_last_ns: int
    clock_offset_ns: int
    time_quality: int
    encoded_bytes: int


@dataclass(frozen=True, slots=True)
class SegmentUpdate:
    id: int
    start_ns: int | None
    end_ns: int | None
    bytes: int
    messages: int
    batches: int


def _segment(row: Any) -> SegmentRow:
    return SegmentRow(**{k: row._mapping[k] for k in SegmentRow.__slots__})


class Index:
    """The archive index at one SQLAlchemy URL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._streams: dict[tuple[str, str], StreamRef] = {}
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._insert_batches = (self._insert(batches)
                                .on_conflict_do_nothing(index_elements=["stream_id", "seq"])
                                .returning(batches.c.stream_id, batches.c.seq))

    @classmethod
    def open(
        cls, url: str, *, migrate: bool = True, busy_timeout_s: float = 30.0,
        synchronous: str = "FULL",
    ) -> Index:
        engine = migrations.create_engine(url, busy_timeout_s=busy_timeout_s,
                                          synchronous=synchronous)
        try:
            if migrate:
                migrations.migrate(engine)
            else:
                migrations.check_version(engine)
        except IndexStoreError:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def _write(self) -> Any:
        return migrations.write_conn(self.engine)

    # streams -------------------------------------------------------------------------

    def cached_stream(self, agent: str, stream: str) -> StreamRef | None:
        return self._streams.get((agent, stream))

    def stream(self, agent: str, stream: str, schema: str, topic: str) -> StreamRef:
        """The stream's row, created (with its agent) if new."""
        ref = self._streams.get((agent, stream))
        if ref is not None:
            return ref
        now = time.time_ns()
        find = (sa.select(streams.c.id, streams.c.schema, streams.c.topic)
                .join(agents, agents.c.id == streams.c.agent_id)
                .where(agents.c.name == agent, streams.c.name == stream))
        try:
            # Known streams (every stream after a worker restart) need no write transaction.
            with self.engine.connect() as conn:
                row = conn.execute(find).one_or_none()
            if row is not None:
                ref = StreamRef(int(row.id), agent, stream, row.schema, row.topic)
                self._streams[(agent, stream)] = ref
                return ref
            with self._write() as conn, conn.begin():
                conn.execute(self._insert(agents).values(name=agent, created_ns=now)
                             .on_conflict_do_nothing(index_elements=["name"]))
                agent_id = conn.execute(sa.select(agents.c.id).where(agents.c.name == agent)).scalar_one()
                conn.execute(self._insert(streams).values(
                    agent_id=agent_id, name=stream, schema=schema, topic=topic, created_ns=now,
                ).on_conflict_do_nothing(index_elements=["agent_id", "name"]))
                row = conn.execute(sa.select(streams.c.id, streams.c.schema, streams.c.topic).where(
                    streams.c.agent_id == agent_id, streams.c.name == stream)).one()
        except sa.exc.SQLAlchemyError as exc:
            raise IndexStoreError(f"index: cannot register stream {agent}/{stream}: {exc}") from exc
        ref = StreamRef(int(row.id), agent, stream, row.schema, row.topic)
        self._streams[(agent, stream)] = ref
        return ref

    # the ingest path -----------------------------------------------------------------

    def existing(self, keys: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
        """Which ``(stream_id, seq)`` keys are already stored."""
        keys = list(keys)
        found: set[tuple[int, int]] = set()
        try:
            with self.engine.connect() as conn:
                for i in range(0, len(keys), _ROWS_PER_INSERT):
                    part = keys[i : i + _ROWS_PER_INSERT]
                    q = sa.select(batches.c.stream_id, batches.c.seq).where(
                        sa.tuple_(batches.c.stream_id, batches.c.seq).in_(part))
                    found.update((int(r[0]), int(r[1])) for r in conn.execute(q))
        except sa.exc.SQLAlchemyError as exc:
            raise IndexStoreError(f"index: duplicate check failed: {exc}") from exc
        return found

    def open_segment(self, worker: int, path: str) -> int:
        try:
            with self._write() as conn, conn.begin():
                return int(conn.execute(segments.insert().values(
                    worker=worker, path=path, state="open", created_ns=time.time_ns(),
                    bytes=0, messages=0, batches=0, recovered=False,
                ).returning(segments.c.id)).scalar_one())
        except sa.exc.SQLAlchemyError as exc:
            raise IndexStoreError(f"index: cannot register segment {path}: {exc}") from exc

    def commit_flush(
        self,
        segment: SegmentUpdate | None,
        rows: Sequence[dict[str, Any]],
        quarantined: Sequence[QuarantineEntry] = (),
        reject_deltas: dict[str, int] | None = None,
        *,
        worker: int = 0,
        keep_quarantine: int = 1000,
    ) -> set[tuple[int, int]]:
        """Write one flush; returns the ``(stream_id, seq)`` keys actually inserted."""
        inserted: set[tuple[int, int]] = set()
        try:
            with self._write() as conn, conn.begin():
                if rows:
                    # executemany with RETURNING: SQLAlchemy batches the rows into multi-row
                    # INSERTs ("insertmanyvalues") from one cached statement.
                    result = conn.execute(self._insert_batches, list(rows))
                    inserted.update((int(r[0]), int(r[1])) for r in result)
                if segment is not None:
                    conn.execute(segments.update().where(segments.c.id == segment.id).values(
                        start_ns=segment.start_ns, end_ns=segment.end_ns, bytes=segment.bytes,
                        messages=segment.messages, batches=segment.batches))
                if quarantined:
                    self._add_quarantine(conn, quarantined, keep_quarantine)
                for reason, n in (reject_deltas or {}).items():
                    upsert = self._insert(reject_counts).values(worker=worker, reason=reason,
                                                                count=n)
                    conn.execute(upsert.on_conflict_do_update(
                        index_elements=["worker", "reason"],
                        set_={"count": reject_counts.c.count + n}))
        except sa.exc.SQLAlchemyError as exc:
            raise IndexStoreError(f"index: flush commit failed: {exc}") from exc
        return inserted

    def _add_quarantine(self, conn: Any, entries: Sequence[QuarantineEntry], keep: int) -> None:
        conn.execute(quarantine.insert(), [
            {"received_ns": e.received_ns, "worker": e.worker, "topic": e.topic, "agent": e.agent,
             "reason": e.reason, "detail": e.detail, "size": e.size, "head": e.head}
            for e in entries
        ])
        top = conn.execute(sa.select(sa.func.max(quarantine.c.id))).scalar() or 0
        conn.execute(quarantine.delete().where(quarantine.c.id <= top - keep))

    # segments ------------------------------------------------------------------------

    def segments(self, *, worker: int | None = None, state: str | None = None) -> list[SegmentRow]:
        q = sa.select(segments).order_by(segments.c.id)
        if worker is not None:
            q = q.where(segments.c.worker == worker)
        if state is not None:
            q = q.where(segments.c.state == state)
        with self.engine.connect() as conn:
            return [_segment(r) for r in conn.execute(q)]

    def segment_ranges(self, segment_id: int) -> dict[str, list[tuple[int, int]]]:
        """Per channel topic, the message sequence ranges of the batches indexed in a segment."""
        q = (sa.select(streams.c.topic, batches.c.msg_first, batches.c.msg_last)
             .join(streams, streams.c.id == batches.c.stream_id)
             .where(batches.c.segment_id == segment_id)
             .order_by(batches.c.msg_first))
        out: dict[str, list[tuple[int, int]]] = {}
        with self.engine.connect() as conn:
            for topic, lo, hi in conn.execute(q):
                out.setdefault(topic, []).append((int(lo), int(hi)))
        return out

    def close_segment(self, update: SegmentUpdate, *, recovered: bool = False) -> None:
        try:
            with self._write() as conn, conn.begin():
                conn.execute(segments.update().where(segments.c.id == update.id).values(
                    state="closed", closed_ns=time.time_ns(), start_ns=update.start_ns,
                    end_ns=update.end_ns, bytes=update.bytes, messages=update.messages,
                    batches=update.batches, recovered=recovered))
        except sa.exc.SQLAlchemyError as exc:
            raise IndexStoreError(f"index: cannot close segment {update.id}: {exc}") from exc

    def delete_segment(self, segment_id: int) -> None:
        with self._write() as conn, conn.begin():
            n = conn.execute(sa.select(sa.func.count()).select_from(batches)
                             .where(batches.c.segment_id == segment_id)).scalar_one()
            if n:
                raise IndexStoreError(f"segment {segment_id} still holds {n} batches")
            conn.execute(segments.delete().where(segments.c.id == segment_id))

    # queries -------------------------------------------------------------------------

    def batch_rows(
        self,
        *,
        agent: str | None = None,
        stream: str | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[BatchRow]:
        """Stored batches overlapping ``[start_ns, end_ns]`` (log time), by segment then seq."""
        q = (sa.select(
                agents.c.name.label("agent"), streams.c.name.label("stream"), streams.c.schema,
                streams.c.topic, batches.c.seq, batches.c.segment_id,
                segments.c.path.label("segment_path"), batches.c.msg_first, batches.c.msg_last,
                batches.c.records, batches.c.log_first_ns, batches.c.log_last_ns,
                batches.c.capture_first_ns, batches.c.capture_last_ns, batches.c.clock_offset_ns,
                batches.c.time_quality, batches.c.encoded_bytes)
             .join(streams, streams.c.id == batches.c.stream_id)
             .join(agents, agents.c.id == streams.c.agent_id)
             .join(segments, segments.c.id == batches.c.segment_id)
             .order_by(batches.c.segment_id, streams.c.id, batches.c.seq))
        q = _filters(q, agent, stream, start_ns, end_ns)
        with self.engine.connect() as conn:
            return [BatchRow(**r._mapping) for r in conn.execute(q)]

    def stream_summary(
        self,
        *,
        agent: str | None = None,
        stream: str | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> list[dict[str, Any]]:
        """Per agent and stream: schema, batches, records, bytes, time range, segments."""
        q = (sa.select(
                agents.c.name.label("agent"), streams.c.name.label("stream"), streams.c.schema,
                sa.func.count().label("batches"),
                sa.func.sum(batches.c.records).label("records"),
                sa.func.sum(batches.c.encoded_bytes).label("bytes"),
                sa.func.min(batches.c.log_first_ns).label("first_ns"),
                sa.func.max(batches.c.log_last_ns).label("last_ns"),
                sa.func.min(batches.c.seq).label("seq_min"),
                sa.func.max(batches.c.seq).label("seq_max"),
                sa.func.count(sa.distinct(batches.c.segment_id)).label("segments"))
             .join(streams, streams.c.id == batches.c.stream_id)
             .join(agents, agents.c.id == streams.c.agent_id)
             .group_by(agents.c.name, streams.c.name, streams.c.schema)
             .order_by(agents.c.name, streams.c.name))
        q = _filters(q, agent, stream, start_ns, end_ns)
        with self.engine.connect() as conn:
            # PostgreSQL sums BIGINT as NUMERIC (Decimal): hand out plain ints.
            return [{k: (int(v) if isinstance(v, int | float | Decimal) else v)
                     for k, v in r._mapping.items()} for r in conn.execute(q)]

    def reject_totals(self) -> dict[str, int]:
        q = (sa.select(reject_counts.c.reason, sa.func.sum(reject_counts.c.count))
             .group_by(reject_counts.c.reason))
        with self.engine.connect() as conn:
            return {r: int(n) for r, n in conn.execute(q)}

    def quarantine_entries(self, limit: int = 100) -> list[dict[str, Any]]:
        q = sa.select(quarantine).order_by(quarantine.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def count_batches(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(batches)).scalar_one())


def _filters(q: Any, agent: str | None, stream: str | None, start_ns: int | None,
             end_ns: int | None) -> Any:
    if agent is not None:
        q = q.where(agents.c.name == agent)
    if stream is not None:
        q = q.where(streams.c.name == stream)
    if start_ns is not None:
        q = q.where(batches.c.log_last_ns >= start_ns)
    if end_ns is not None:
        q = q.where(batches.c.log_first_ns <= end_ns)
    return q
