"""The MCAP archive without a broker: lossless CAN messages, the protobuf schema, segment
rotation, and recovery of a segment cut off mid-write."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcap.reader import make_reader

from ingest_server.archive.foxglove_schemas import (
    _CanFrames,
    can_descriptor,
    channel_spec,
    channel_topic,
    decode_can_frames,
    encode_can_frames,
    to_messages,
)
from ingest_server.archive.reader import ArchiveReader
from ingest_server.archive.recovery import recover_worker, scan_segment
from ingest_server.archive.writer import ArchiveWriter
from ingest_server.index.queries import Index
from ingest_server.validate import ValidBatch, validate
from tests.ingest_server.publisher import OutBatch, can_batches, can_frames
from tests.wire.strategies import can_frames as can_frame_strategy
from wire.envelope import Batch, TimeQuality, encode_batch
from wire.limits import DEFAULT_LIMITS
from wire.schemas import CAN_FRAMES


def _parse_pb(buf: bytes) -> list[tuple[int, int, object]]:
    """A generic protobuf wire-format parser: (field, wire type, value) triples."""
    out: list[tuple[int, int, object]] = []
    pos = 0

    def varint() -> int:
        nonlocal pos
        v = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v

    while pos < len(buf):
        key = varint()
        field, wt = key >> 3, key & 7
        if wt == 0:
            out.append((field, wt, varint()))
        elif wt == 2:
            n = varint()
            out.append((field, wt, buf[pos : pos + n]))
            pos += n
        elif wt == 1:
            out.append((field, wt, buf[pos : pos + 8]))
            pos += 8
        else:
            raise AssertionError(f"wire type {wt}")
    return out


def test_can_descriptor_is_a_file_descriptor_set() -> None:
    files = [v for f, wt, v in _parse_pb(can_descriptor()) if f == 1]
    assert len(files) == 1
    file = {f: v for f, _, v in _parse_pb(files[0])}  # type: ignore[arg-type]
    assert file[1] == b"cvis/can_frames.proto" and file[2] == b"cvis" and file[12] == b"proto3"
    message = _parse_pb(file[4])  # type: ignore[arg-type]
    assert message[0] == (1, 2, b"CanFrames")
    fields = [{f: v for f, _, v in _parse_pb(v)} for f, _, v in message if f == 2]  # type: ignore[arg-type]
    by_name = {fd[1]: fd for fd in fields}
    # name, number, label (1 optional, 3 repeated), type (FieldDescriptorProto.Type)
    assert by_name[b"timestamp_ns"][3] == 7 and by_name[b"timestamp_ns"][4] == 3
    assert by_name[b"timestamp_ns"][5] == 16  # sfixed64
    assert by_name[b"arbitration_id"][5] == 7  # fixed32
    assert by_name[b"data"][5] == 12 and by_name[b"data"][4] == 1  # bytes, optional
    assert sorted(fd[3] for fd in fields) == list(range(1, 14))
    assert channel_spec("can.frames/1").schema.name == "cvis.CanFrames"


def test_can_messages_hold_the_real_log_losslessly(shared_data: Path) -> None:
    frames = can_frames(shared_data)
    batches = can_batches("veh1", frames, offset_ns=-5_000)
    assert len(batches) > 500
    got = []
    for ob in batches:
        vb = validate(f"cvis/v1/veh1/batch/{ob.stream}", ob.payload, DEFAULT_LIMITS)
        (data, log_time), = to_messages(vb.batch, vb.table)
        assert log_time == vb.batch.first_ns - 5_000
        msg = decode_can_frames(data)
        assert (msg.agent, msg.stream, msg.seq, msg.clock_offset_ns) == ("veh1", "can", ob.seq,
                                                                         -5_000)
        assert msg.time_quality == TimeQuality.SERVER_SYNCED
        assert msg.table == vb.table
        got.extend(msg.table.records())
    assert got == frames


@settings(max_examples=60, deadline=None)
@given(st.lists(can_frame_strategy(), min_size=1, max_size=50))
def test_can_messages_are_lossless_for_any_frames(frames: list) -> None:  # type: ignore[type-arg]
    frames = sorted(frames, key=lambda f: f.timestamp_ns)
    batch = encode_batch("a", "can", CAN_FRAMES.table(frames), 3, clock_offset_ns=7)
    assert decode_can_frames(encode_can_frames(batch, batch.table())).table.records() == frames


@settings(max_examples=100, deadline=None)
@given(st.lists(can_frame_strategy(), max_size=40), st.integers(-(2**63), 2**63 - 1),
       st.integers(0, 2**63 - 1), st.sampled_from(TimeQuality), st.booleans())
def test_can_messages_are_the_same_from_listed_and_padded_payloads(  # type: ignore[type-arg]
        frames: list, offset: int, seq: int, quality: TimeQuality, many_buses: bool) -> None:
    """The message built from frames one by one equals the one built from a decoded batch,
    whose payloads stay in a padded matrix (PaddedBytes)."""
    if many_buses:  # channel codes past 127 take two varint bytes
        frames = [dataclasses.replace(f, channel=f"can{i}") for i, f in enumerate(frames * 5)]
    table = CAN_FRAMES.table(frames)
    batch = encode_batch("veh-1", "can", table, seq, clock_offset_ns=offset, time_quality=quality)
    cols = table.columns
    want = _CanFrames(
        agent=batch.agent, stream=batch.stream, seq=seq, clock_offset_ns=offset,
        time_quality=int(quality), channel_names=cols["channel"].categories,  # type: ignore[union-attr]
        timestamp_ns=cols["timestamp_ns"].tolist(), channel=cols["channel"].codes.tolist(),  # type: ignore[union-attr]
        arbitration_id=cols["arbitration_id"].tolist(), flags=cols["flags"].tobytes(),  # type: ignore[union-attr]
        dlc=cols["dlc"].tobytes(), length=bytes(len(f.data) for f in frames),  # type: ignore[union-attr]
        data=b"".join(f.data for f in frames),
    ).SerializeToString()
    assert encode_can_frames(batch, table) == want  # data column as a list of bytes
    assert encode_can_frames(batch, batch.table()) == want  # as decoded from the wire (padded)


def _store(aw: ArchiveWriter, index: Index, vbs: list[ValidBatch], commit: bool = True) -> None:
    """What a worker flush does, without MQTT: write, sync, commit (or crash before it)."""
    rows = []
    for vb in vbs:
        b = vb.batch
        ref = index.stream(b.agent, b.stream, b.schema_key, channel_topic(b.agent, b.stream))
        placed = aw.write(ref.topic, channel_spec(b.schema_key), {}, to_messages(b, vb.table))
        rows.append({"stream_id": ref.id, "seq": b.seq, "segment_id": aw.segment_id,
                     "msg_first": placed.msg_first, "msg_last": placed.msg_last,
                     "records": b.count, "log_first_ns": vb.log_first_ns,
                     "log_last_ns": vb.log_last_ns, "capture_first_ns": b.first_ns,
                     "capture_last_ns": b.last_ns, "clock_offset_ns": b.clock_offset_ns,
                     "time_quality": int(b.time_quality), "encoded_bytes": vb.size,
                     "stored_ns": 0, "worker": aw.worker})
    update = aw.sync()
    if commit:
        index.commit_flush(update, rows)


def _valid(batches: list[OutBatch]) -> list[ValidBatch]:
    return [validate(f"cvis/v1/veh1/batch/{b.stream}", b.payload, DEFAULT_LIMITS)
            for b in batches]


@pytest.fixture
def sqlite_index(tmp_path: Path) -> Index:
    ix = Index.open(f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield ix  # type: ignore[misc]
    ix.close()


def test_segments_rotate_by_size_and_read_back_in_order(
    tmp_path: Path, shared_data: Path, sqlite_index: Index
) -> None:
    vbs = _valid(can_batches("veh1", can_frames(shared_data)[:40_000]))
    aw = ArchiveWriter(tmp_path, 0, sqlite_index, max_bytes=64 * 1024)
    for i in range(0, len(vbs), 10):
        _store(aw, sqlite_index, vbs[i : i + 10])
        if aw.due():
            aw.close()
    aw.close()
    segs = sqlite_index.segments()
    assert len(segs) >= 3
    assert all(s.state == "closed" and s.bytes == (tmp_path / s.path).stat().st_size for s in segs)
    for s in segs:
        with open(tmp_path / s.path, "rb") as f:
            summary = make_reader(f).get_summary()
        assert summary is not None and summary.statistics is not None
        assert summary.statistics.message_count == s.messages
    got = [f for m in ArchiveReader(tmp_path, sqlite_index).can_batches() for f in m.table.records()]
    assert got == can_frames(shared_data)[:40_000]


@pytest.mark.parametrize("cut", ["footer", "mid_chunk", "uncommitted"])
def test_recovery_keeps_complete_indexed_chunks_only(
    tmp_path: Path, shared_data: Path, sqlite_index: Index, cut: str
) -> None:
    vbs = _valid(can_batches("veh1", can_frames(shared_data)[:30_000]))
    aw = ArchiveWriter(tmp_path, 1, sqlite_index)
    _store(aw, sqlite_index, vbs[:20])
    _store(aw, sqlite_index, vbs[20:40])
    assert aw.segment is not None
    path = aw.segment.path
    committed = 40
    if cut == "uncommitted":
        # Flushed and fsynced, but the worker died before its index commit: never acked.
        _store(aw, sqlite_index, vbs[40:60], commit=False)
    elif cut == "mid_chunk":
        _store(aw, sqlite_index, vbs[40:60])
        size_before = path.stat().st_size
        _store(aw, sqlite_index, vbs[60:80], commit=False)
        size_after = path.stat().st_size
    crashed = tmp_path / "crashed.mcap"
    shutil.copy(path, crashed)
    aw.segment.close()  # release the writer; the copy is what a kill -9 left behind
    shutil.copy(crashed, path)
    if cut == "mid_chunk":
        # A torn write: the last chunk is cut in the middle.
        with open(path, "r+b") as f:
            f.truncate((size_before + size_after) // 2)
        committed = 60
    assert sqlite_index.segments(worker=1)[0].state == "open"
    assert recover_worker(tmp_path, 1, sqlite_index) == 1
    seg, = sqlite_index.segments(worker=1)
    assert seg.state == "closed" and seg.recovered
    msgs, truncated = scan_segment(path)
    assert not truncated
    assert [decode_can_frames(m.data).seq for _, _, m in msgs] == list(range(committed))
    got = [f for m in ArchiveReader(tmp_path, sqlite_index).can_batches() for f in m.table.records()]
    assert got == [f for vb in vbs[:committed] for f in vb.table.records()]
    # Recovery is idempotent: nothing left open, a second run does nothing.
    assert recover_worker(tmp_path, 1, sqlite_index) == 0


def test_recovery_drops_a_segment_with_nothing_indexed(
    tmp_path: Path, shared_data: Path, sqlite_index: Index
) -> None:
    vbs = _valid(can_batches("veh1", can_frames(shared_data)[:5000]))
    aw = ArchiveWriter(tmp_path, 2, sqlite_index)
    _store(aw, sqlite_index, vbs, commit=False)
    assert aw.segment is not None
    path = aw.segment.path
    aw.segment.close()
    assert recover_worker(tmp_path, 2, sqlite_index) == 1
    assert sqlite_index.segments(worker=2) == []
    assert not path.exists()


def test_orphans_are_compacted_out_when_a_segment_closes(
    tmp_path: Path, shared_data: Path, sqlite_index: Index
) -> None:
    vbs = _valid(can_batches("veh1", can_frames(shared_data)[:5000]))
    first = ArchiveWriter(tmp_path, 0, sqlite_index)
    _store(first, sqlite_index, vbs[:10])
    # Worker 1 got the same batches (a resend) and lost the race to the index.
    second = ArchiveWriter(tmp_path, 1, sqlite_index)
    _store(second, sqlite_index, vbs[5:15])
    second.orphans = 5
    first.close()
    second.close()
    seqs = []
    for seg in sqlite_index.segments():
        msgs, _ = scan_segment(tmp_path / seg.path)
        seqs += [decode_can_frames(m.data).seq for _, _, m in msgs]
    assert sorted(seqs) == list(range(15))


def test_other_schemas_map_to_foxglove_messages(shared_data: Path) -> None:
    from tests.ingest_server.publisher import camera_batches, camera_frames, gnss_batches, gnss_fixes

    gnss, = gnss_batches("veh1", gnss_fixes(shared_data)[:10], per_batch=10)
    cam, = camera_batches("veh1", camera_frames(shared_data, 3), per_batch=3)
    for ob, schema, n in ((gnss, "foxglove.LocationFix", 10), (cam, "foxglove.CompressedImage", 3)):
        b = Batch.decode(ob.payload)
        msgs = to_messages(b, b.table())
        assert len(msgs) == n
        assert channel_spec(b.schema_key).schema.name == schema
        assert [t for _, t in msgs] == sorted(t for _, t in msgs)
    b = Batch.decode(cam.payload)
    jpegs = b.table().columns["jpeg"]
    assert all(j in m for j, (m, _) in zip(jpegs, to_messages(b, b.table()), strict=True))  # type: ignore[arg-type]


def test_signals_become_plottable_json_per_sample_time() -> None:
    import json

    import numpy as np

    from wire.schemas import VEHICLE_SIGNALS

    t = VEHICLE_SIGNALS.from_columns(
        timestamp_ns=np.array([5, 5, 6, 6, 6]), name=["SPEED", 'odd"name', "SPEED", 'odd"name', "x"],
        value=[1.5, float("nan"), 1e300, -0.0, float("inf")])
    b = encode_batch("veh1", "signals", t, 0, clock_offset_ns=10)
    msgs = to_messages(b, b.table())
    assert [lt for _, lt in msgs] == [15, 16]
    assert [json.loads(m) for m, _ in msgs] == [
        {"capture_ns": 5, "values": {"SPEED": 1.5, 'odd"name': None}},
        {"capture_ns": 6, "values": {"SPEED": 1e300, 'odd"name': -0.0, "x": None}},
    ]
    assert channel_spec("vehicle.signals/1").message_encoding == "json"


def test_segments_rotate_by_duration(tmp_path: Path, shared_data: Path, sqlite_index: Index) -> None:
    vbs = _valid(can_batches("veh1", can_frames(shared_data)[:3000]))
    aw = ArchiveWriter(tmp_path, 0, sqlite_index, max_duration_s=0.0)
    assert not aw.due()  # nothing open yet
    _store(aw, sqlite_index, vbs[:5])
    assert aw.due()
    aw.close()
    _store(aw, sqlite_index, vbs[5:])
    aw.close()
    segs = sqlite_index.segments()
    assert [s.batches for s in segs] == [5, len(vbs) - 5]
    assert all(s.state == "closed" for s in segs)
