"""Round trips of every record schema and the envelope, with hypothesis and the real CAN log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridges.candump import read_candump
from tests.wire.strategies import INT64, can_frames, records
from wire import Batch, Limits, TimeQuality, encode_batch
from wire.codec import Dictionaries, pack, train_dictionary
from wire.errors import LimitError, SchemaError, ValidationError
from wire.schemas import CAN_FRAMES, SCHEMAS, VEHICLE_SIGNALS, CanFrame, GnssFix, Signal

TABLE_SCHEMAS = [s for k, s in sorted(SCHEMAS.items()) if k != "can.frames/1"]


@pytest.mark.parametrize("schema", TABLE_SCHEMAS, ids=lambda s: s.key)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_schema_round_trips_through_the_envelope(schema, data) -> None:  # type: ignore[no-untyped-def]
    recs = data.draw(records(schema))
    table = schema.table(recs)
    seq = data.draw(st.integers(0, 2**63 - 1))
    off = data.draw(INT64)
    codec_name = data.draw(st.sampled_from(["zstd", "none"]))
    batch = encode_batch("car-1", "s", table, seq, clock_offset_ns=off,
                         time_quality=TimeQuality.SERVER_SYNCED, codec_name=codec_name)
    back = Batch.decode(batch.encode())
    assert back == batch
    decoded = back.table()
    assert decoded == table
    got = decoded.records()
    assert len(got) == len(recs)
    for a, b in zip(got, recs, strict=True):
        for name in schema.columns:
            x, y = getattr(a, name), getattr(b, name)
            if isinstance(y, float):
                kind = schema.columns[name]
                want = float(np.float32(y)) if kind == "f4" else y
                assert (x != x and want != want) or x == want
            else:
                assert x == y


@settings(max_examples=200, deadline=None)
@given(st.lists(can_frames(), max_size=120))
def test_can_frames_round_trip_lossless(frames: list[CanFrame]) -> None:
    table = CAN_FRAMES.table(frames)
    batch = encode_batch("car-1", "can0", table, 7)
    assert Batch.decode(batch.encode()).table().records() == frames


def test_can_fd_64_byte_frames_and_extreme_timestamps() -> None:
    frames = [
        CanFrame.make(-(2**63), "can0", 0x1FFFFFFF, bytes(range(64)), is_extended=True, is_fd=True),
        CanFrame.make(2**63 - 1, "can0", 0x7FF, b"\xff" * 64, is_fd=True, bitrate_switch=True),
        CanFrame.make(0, "can1", 0x100, b"", is_remote=True, dlc=8),
        CanFrame.make(5, "can1", 0x100, b"\x01\x02"),
    ]
    batch = encode_batch("a", "can", CAN_FRAMES.table(frames), 0)
    assert batch.first_ns == -(2**63) and batch.last_ns == 2**63 - 1
    assert Batch.decode(batch.encode()).table().records() == frames


def test_empty_batches_round_trip() -> None:
    for schema in SCHEMAS.values():
        batch = encode_batch("a", "s", schema.empty(), 1)
        assert batch.count == 0
        assert Batch.decode(batch.encode()).table() == schema.empty()


def test_maximum_size_batch_is_accepted_and_one_more_is_rejected() -> None:
    limits = Limits(max_records=5000)
    sigs = [Signal(i * 10_000_000, f"MSG.SIG{i % 7}", i / 3) for i in range(5000)]
    ok = encode_batch("a", "signals", VEHICLE_SIGNALS.table(sigs), 1).encode()
    assert len(Batch.decode(ok, limits).table(limits)) == 5000
    too_many = encode_batch("a", "signals", VEHICLE_SIGNALS.table([*sigs, sigs[0]]), 2).encode()
    with pytest.raises(LimitError, match="5001"):
        Batch.decode(too_many, limits).table(limits)


def test_invalid_records_are_rejected_when_built() -> None:
    with pytest.raises(ValidationError, match="out of range"):
        CanFrame.make(0, "can0", 0x800, b"")  # 11-bit id too large
    with pytest.raises(ValidationError, match="DLC 3 but 2 data bytes"):
        CanFrame(0, "can0", 1, 0, 3, b"\x00\x00")
    with pytest.raises(ValidationError, match="CAN FD payload length"):
        CanFrame.make(0, "can0", 1, b"\x00" * 9, is_fd=True)
    bad = GnssFix(0, 0, 1.0, 2.0, 3.0, 4.0, 5.0, 300, 1, 1.0)  # fix quality does not fit u1
    from wire.schemas import GNSS_FIX

    with pytest.raises(ValidationError, match="fix_quality"):
        GNSS_FIX.table([bad])


def test_unknown_schema_version_is_rejected() -> None:
    batch = encode_batch("a", "s", VEHICLE_SIGNALS.empty(), 1)
    import dataclasses

    other = dataclasses.replace(batch, schema_version=99)
    with pytest.raises(SchemaError, match=r"vehicle\.signals/99"):
        Batch.decode(other.encode()).table()


@pytest.fixture(scope="module")
def rav4_frames(shared_data: Path) -> list[CanFrame]:
    return list(read_candump(shared_data / "can" / "toyota_rav4_comma2k19_seg40.log.gz"))


def test_real_can_log_round_trips_in_100ms_batches_and_beats_row_msgpack(rav4_frames) -> None:  # type: ignore[no-untyped-def]
    import msgpack
    import zstandard

    assert len(rav4_frames) == 135468
    ts = np.array([f.timestamp_ns for f in rav4_frames])
    edges = np.searchsorted(ts, np.arange(ts[0], ts[-1] + 10**8, 10**8))
    ours = rows = 0
    cctx = zstandard.ZstdCompressor(level=3)
    for seq, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        chunk = rav4_frames[a:b]
        data = encode_batch("rav4", "can", CAN_FRAMES.table(chunk), seq).encode()
        assert Batch.decode(data).table().records() == chunk
        ours += len(data)
        rows += len(cctx.compress(msgpack.packb(
            [[f.timestamp_ns, f.channel, f.arbitration_id, f.flags, f.dlc, f.data] for f in chunk])))
    # The columnar layout must clearly beat a row-wise msgpack+zstd batch (the bench has figures).
    assert ours < 0.8 * rows


def test_trained_dictionary_round_trip_and_unknown_id(rav4_frames) -> None:  # type: ignore[no-untyped-def]
    chunks = [rav4_frames[i : i + 200] for i in range(0, 40_000, 200)]
    samples = [pack(CAN_FRAMES.encode(CAN_FRAMES.table(c))) for c in chunks[:150]]
    raw = train_dictionary(samples, 16 * 1024)
    dicts = Dictionaries([raw])
    (dict_id,) = dicts.ids()
    test_chunk = chunks[180]
    with_dict = encode_batch("rav4", "can", CAN_FRAMES.table(test_chunk), 1, dict_id=dict_id, dicts=dicts)
    without = encode_batch("rav4", "can", CAN_FRAMES.table(test_chunk), 1)
    assert len(with_dict.payload) < len(without.payload)
    data = with_dict.encode()
    assert Batch.decode(data).table(dicts=dicts).records() == test_chunk
    from wire.errors import DecodeError

    with pytest.raises(DecodeError, match=f"unknown zstd dictionary id {dict_id}"):
        Batch.decode(data).table()
    with pytest.raises(ValidationError, match="unknown zstd dictionary"):
        encode_batch("rav4", "can", CAN_FRAMES.table(test_chunk), 1, dict_id=12345, dicts=dicts)


def test_dictionaries_save_and_load(tmp_path: Path, rav4_frames) -> None:  # type: ignore[no-untyped-def]
    samples = [pack(CAN_FRAMES.encode(CAN_FRAMES.table(rav4_frames[i : i + 100])))
               for i in range(0, 5000, 100)]
    d = Dictionaries([train_dictionary(samples, 8 * 1024)])
    d.save(tmp_path)
    assert Dictionaries.load_dir(tmp_path).ids() == d.ids()
    (tmp_path / "junk.zdict").write_bytes(b"not a dictionary")
    with pytest.raises(ValidationError, match="dictionary"):
        Dictionaries.load_dir(tmp_path)


def test_columns_that_bypass_can_frame_checks_are_rejected_before_encoding() -> None:
    good = {"timestamp_ns": [1, 2], "channel": ["can0", "can0"], "arbitration_id": [0x100, 0x101],
            "flags": [0, 0], "dlc": [2, 1], "data": [b"\x01\x02", b"\x03"]}
    ok = encode_batch("a", "can", CAN_FRAMES.from_columns(**good), 1).encode()
    assert len(Batch.decode(ok).table()) == 2
    # Lengths swapped: the byte totals agree, so only a per-frame check catches it.
    swapped = {**good, "dlc": [1, 2]}
    with pytest.raises(ValidationError, match="frame 0: DLC 1 but 2 data bytes"):
        encode_batch("a", "can", CAN_FRAMES.from_columns(**swapped), 1)
    too_big_id = {**good, "arbitration_id": [0x800, 0x101]}
    with pytest.raises(ValidationError, match="arbitration id 0x800 out of range"):
        encode_batch("a", "can", CAN_FRAMES.from_columns(**too_big_id), 1)
