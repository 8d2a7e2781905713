"""The index on SQLite and PostgreSQL: migrations, idempotent batch rows, queries."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest_server.errors import IndexStoreError
from ingest_server.index import migrations, schema
from ingest_server.index.queries import Index, SegmentUpdate
from ingest_server.quarantine import Quarantine


def _row(stream_id: int, seq: int, segment_id: int, t: int = 0) -> dict[str, int]:
    return {"stream_id": stream_id, "seq": seq, "segment_id": segment_id, "msg_first": seq + 1,
            "msg_last": seq + 1, "records": 10, "log_first_ns": t, "log_last_ns": t + 99,
            "capture_first_ns": t - 5, "capture_last_ns": t + 94, "clock_offset_ns": 5,
            "time_quality": 2, "encoded_bytes": 100, "stored_ns": 1, "worker": 0}


def test_migrations_build_the_declared_schema_once(index_url: str) -> None:
    engines = [migrations.create_engine(index_url) for _ in range(3)]
    versions: list[int] = []
    errors: list[BaseException] = []

    def run(e: sa.Engine) -> None:
        try:
            versions.append(migrations.migrate(e))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert not errors and versions == [migrations.LATEST] * 3
        with engines[0].connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(
                schema.schema_version)).scalar_one() == len(migrations.MIGRATIONS)
            insp = sa.inspect(conn)
            for table in schema.metadata.sorted_tables:
                cols = {c["name"] for c in insp.get_columns(table.name)}
                assert cols == {c.name for c in table.columns}, table.name
        assert migrations.check_version(engines[0]) == migrations.LATEST
    finally:
        for e in engines:
            e.dispose()


def test_a_newer_index_is_refused(index_url: str) -> None:
    ix = Index.open(index_url)
    try:
        with ix.engine.begin() as conn:
            conn.execute(schema.schema_version.insert().values(
                version=migrations.LATEST + 1, applied_ns=0, description="from the future"))
        with pytest.raises(IndexStoreError, match="newer than this cvis"):
            migrations.migrate(ix.engine)
    finally:
        ix.close()


def test_batch_rows_are_unique_and_queries_filter(index_url: str) -> None:
    ix = Index.open(index_url)
    try:
        can = ix.stream("veh1", "can", "can.frames/1", "/veh1/can")
        gnss = ix.stream("veh1", "gnss", "gnss.fix/1", "/veh1/gnss")
        other = ix.stream("veh2", "can", "can.frames/1", "/veh2/can")
        assert ix.stream("veh1", "can", "ignored", "ignored") == can
        seg = ix.open_segment(0, "segments/x/a.mcap")
        rows = [_row(can.id, i, seg, i * 100) for i in range(10)] + [_row(gnss.id, 0, seg)]
        assert ix.commit_flush(SegmentUpdate(seg, 0, 999, 1234, 11, 11), rows) == {
            (r["stream_id"], r["seq"]) for r in rows}
        # A second worker inserting some of the same keys: only the new ones go in.
        again = [_row(can.id, 8, seg), _row(can.id, 9, seg), _row(can.id, 10, seg),
                 _row(other.id, 8, seg)]
        assert ix.commit_flush(None, again) == {(can.id, 10), (other.id, 8)}
        assert ix.existing([(can.id, 3), (can.id, 11), (other.id, 8)]) == {(can.id, 3),
                                                                           (other.id, 8)}
        assert ix.count_batches() == 13
        assert [r.seq for r in ix.batch_rows(agent="veh1", stream="can", start_ns=250,
                                              end_ns=450)] == [2, 3, 4]
        summary = ix.stream_summary(agent="veh1")
        assert [(s["stream"], s["batches"], s["records"]) for s in summary] == [
            ("can", 11, 110), ("gnss", 1, 10)]
        assert ix.segment_ranges(seg)["/veh1/can"][0] == (1, 1)
        with pytest.raises(IndexStoreError):
            ix.delete_segment(seg)
        ix.close_segment(SegmentUpdate(seg, 0, 1099, 2000, 14, 14))
        s, = ix.segments(state="closed")
        assert (s.bytes, s.messages, s.batches) == (2000, 14, 14)
    finally:
        ix.close()


def test_quarantine_is_bounded_in_the_index(index_url: str) -> None:
    ix = Index.open(index_url)
    q = Quarantine(worker=3, max_entries=5, keep_bytes=4)
    try:
        for i in range(12):
            q.add(i, "cvis/v1/x/batch/y", b"payload", "bad_envelope" if i % 3 else "limit", "why")
            if i % 4 == 3:
                entries, counts = q.take_unsaved()
                ix.commit_flush(None, [], entries, counts, worker=3, keep_quarantine=5)
        rows = ix.quarantine_entries(100)
        assert len(rows) == 5
        assert [r["received_ns"] for r in rows] == [11, 10, 9, 8, 7]
        assert all(r["head"] == b"payl" for r in rows)
        assert ix.reject_totals() == {"bad_envelope": 8, "limit": 4}
    finally:
        ix.close()


def test_a_known_stream_is_found_without_a_write_transaction(tmp_path: Path) -> None:
    """A restarted worker looks up every stream again: that must not queue behind writers."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    first = Index.open(url)
    ref = first.stream("veh1", "can0", "can.frames/1", "cvis/v1/veh1/batch/can0")
    first.close()
    again = Index.open(url, busy_timeout_s=0.2)
    writer = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another worker's flush holds the write lock
        assert again.stream("veh1", "can0", "can.frames/1", "cvis/v1/veh1/batch/can0") == ref
        with pytest.raises(IndexStoreError, match="cannot register stream veh1/gnss"):
            again.stream("veh1", "gnss", "gnss.fix/1", "cvis/v1/veh1/batch/gnss")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        again.close()
