"""The ingest worker end to end: real Mosquitto, real captures, real SQLite and PostgreSQL."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cvis.broker import EmbeddedBroker, ManagedBroker
from firmware_bridges.candump import format_frame
from ingest_server.archive.export import export_candump
from ingest_server.archive.foxglove_schemas import CAN_SCHEMA_NAME, decode_can_frames
from ingest_server.archive.reader import ArchiveReader
from ingest_server.archive.recovery import scan_segment
from ingest_server.errors import ConfigError
from ingest_server.index.queries import Index
from tests.ingest_server.conftest import ThreadedWorker, make_config
from tests.ingest_server.publisher import (
    AgentPublisher,
    camera_batches,
    camera_frames,
    can_batches,
    can_frames,
    gnss_batches,
    gnss_fixes,
    interleave,
)


def _raw_can_seqs(data_dir: Path) -> list[tuple[str, int]]:
    """(agent, seq) of every CAN message in every segment file, read without the index."""
    out = []
    for path in sorted(data_dir.glob("segments/*/*.mcap")):
        msgs, truncated = scan_segment(path)
        assert not truncated, f"{path} is not a finished MCAP file"
        for schema, _, m in msgs:
            if schema is not None and schema.name == CAN_SCHEMA_NAME:
                c = decode_can_frames(m.data)
                out.append((c.agent, c.seq))
    return out


def test_batches_are_archived_once_acked_and_exported(
    tmp_path: Path, broker: ManagedBroker, index_url: str, shared_data: Path
) -> None:
    frames = [f for f in can_frames(shared_data) if f.timestamp_ns < 46_408_584_930_000 + 5 * 10**9]
    can = can_batches("veh1", frames, offset_ns=1_000_000)
    gnss = gnss_batches("veh1", gnss_fixes(shared_data)[:50])
    cam = camera_batches("veh1", camera_frames(shared_data, 10))
    batches = interleave(can, gnss, cam)
    cfg = make_config(tmp_path / "data", broker, index_url)
    with ThreadedWorker(cfg):
        pub = AgentPublisher(broker.host, broker.port, "veh1", batches).start()
        try:
            assert pub.done.wait(60), f"{len(pub.acked)} of {len(batches)} batches acked"
        finally:
            pub.stop()
        # The same batches again (an agent that lost its acks): acked again, stored once.
        again = AgentPublisher(broker.host, broker.port, "veh1", batches[:20]).start()
        try:
            assert again.done.wait(30)
        finally:
            again.stop()
    assert pub.acked == {(b.stream, b.seq) for b in batches}
    assert pub.bad_acks == 0
    index = Index.open(cfg.resolved_index_url, migrate=False)
    try:
        assert index.count_batches() == len(batches)
        summary = {r["stream"]: r for r in index.stream_summary(agent="veh1")}
        assert summary["can"]["records"] == len(frames)
        assert summary["gnss"]["records"] == 50
        assert summary["camera.front"]["records"] == 10
        reader = ArchiveReader(cfg.data_dir, index)
        got = [f for m in reader.can_batches(agent="veh1") for f in m.table.records()]
        assert got == frames
        out = io.StringIO()
        assert export_candump(reader, out, agent="veh1") == len(frames)
        assert out.getvalue().splitlines() == [format_frame(f) for f in frames]
        images = [m for m in reader.messages(agent="veh1", stream="camera.front")]
        assert len(images) == 10
        assert all(m.schema is not None and m.schema.name == "foxglove.CompressedImage"
                   for m in images)
    finally:
        index.close()
    raw = _raw_can_seqs(cfg.data_dir)
    assert sorted(raw) == sorted(("veh1", b.seq) for b in can)


def test_one_mqtt_311_worker_on_the_embedded_broker_archives_and_acks_exactly_once(
    tmp_path: Path, shared_data: Path
) -> None:
    """amqtt (cvis demo's fallback broker) has no MQTT 5: one worker, no shared subscription."""
    frames = [f for f in can_frames(shared_data) if f.timestamp_ns < 46_408_584_930_000 + 3 * 10**9]
    can = can_batches("veh3", frames, offset_ns=1_000_000)
    batches = interleave(can, gnss_batches("veh3", gnss_fixes(shared_data)[:30]))
    with EmbeddedBroker(data_dir=tmp_path / "broker") as broker:
        cfg = make_config(tmp_path / "data", broker, broker__mqtt_version="3.1.1")
        assert broker.port is not None
        with ThreadedWorker(cfg):
            pub = AgentPublisher(broker.host, broker.port, "veh3", batches[: len(batches) // 2],
                                 mqtt_version="3.1.1").start()
            try:
                assert pub.done.wait(60), f"{len(pub.acked)} batches acked"
            finally:
                pub.stop()
        # A new worker (same persistent session) takes the rest, and the first half again.
        with ThreadedWorker(cfg):
            pub = AgentPublisher(broker.host, broker.port, "veh3", batches, mqtt_version="3.1.1").start()
            try:
                assert pub.done.wait(60), f"{len(pub.acked)} of {len(batches)} batches acked"
            finally:
                pub.stop()
    assert pub.acked == {(b.stream, b.seq) for b in batches} and pub.bad_acks == 0
    index = Index.open(cfg.resolved_index_url, migrate=False)
    try:
        assert index.count_batches() == len(batches)
        reader = ArchiveReader(cfg.data_dir, index)
        assert [f for m in reader.can_batches(agent="veh3") for f in m.table.records()] == frames
    finally:
        index.close()
    assert sorted(_raw_can_seqs(cfg.data_dir)) == sorted(("veh3", b.seq) for b in can)


def test_mqtt_311_refuses_more_than_one_worker(tmp_path: Path, broker: ManagedBroker) -> None:
    with pytest.raises(ConfigError, match=r"workers: 2 ingest workers need MQTT 5"):
        make_config(tmp_path, broker, workers=2, broker__mqtt_version="3.1.1")
