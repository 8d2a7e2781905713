"""Warnings recorded in the index, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from ingest_server.hazards.record import WarningRecorder
from wire.warning import HazardWarning, Severity, Status, WarningType

T0 = 1_700_000_000_000_000_000


def warning(episode: int, update: int, status: Status = Status.UPDATE, target: str = "ego",
            t: int = 0) -> HazardWarning:
    return HazardWarning(
        WarningType.ICW, Severity.ALERT, target, ("other", "rsu1#4"), 37.77, -122.43,
        T0 + t, T0 + t + 10**9, episode, update, status, ttc_s=1.25, time_diff_s=0.4,
        source_ns=T0 + t - 5_000_000,
    )


def test_round_trip_and_duplicates(warnings_db: tuple[sa.Engine, str | None]) -> None:
    engine, schema = warnings_db
    rec = WarningRecorder(engine, schema=schema)
    ws = [warning(1, 0, Status.NEW), warning(1, 1, t=500), warning(2, 0, Status.NEW, "car", 700),
          warning(1, 2, Status.END, t=900)]
    assert rec.record(ws) == 4
    # A batch holding an already stored row stores only the new ones.
    assert rec.record([warning(1, 1, t=500), warning(2, 1, target="car", t=800)]) == 1
    assert rec.count() == 5
    got = [r.warning for r in rec.fetch()]
    assert got[:3] == ws[:3] and got[4] == ws[3]
    assert [r.warning.update for r in rec.fetch(target="car")] == [0, 1]
    assert [r.warning.issued_ns - T0 for r in rec.fetch(since_ns=T0 + 800)] == [800, 900]
    # A second recorder on the same database finds the table there.
    assert WarningRecorder(engine, schema=schema).count() == 5


def test_background_recording_flushes_on_stop(warnings_db: tuple[sa.Engine, str | None]) -> None:
    engine, schema = warnings_db
    rec = WarningRecorder(engine, schema=schema, flush_interval_s=0.05, max_pending=100)
    rec.start()
    for i in range(150):
        rec.submit(warning(10 + i, 0, Status.NEW, t=i))
    rec.stop()
    # Bounded: at most 100 waited at once; whatever was dropped is counted.
    assert rec.count() + rec.dropped == 150 and rec.count() >= 100
    assert rec.written == rec.count()


def test_table_name_and_indexes(tmp_path: object) -> None:
    engine = sa.create_engine("sqlite://")
    WarningRecorder(engine, table_name="hz_warnings")
    insp = sa.inspect(engine)
    assert "hz_warnings" in insp.get_table_names()
    assert {i["name"] for i in insp.get_indexes("hz_warnings")} >= {
        "ix_hz_warnings_issued", "ix_hz_warnings_target_issued"}
