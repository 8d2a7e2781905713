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
from wire.codec import Dictionaries, pack, train_dictionary, unpack
from wire.columns import PaddedBytes, pack_ints, unpack_ints
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


@settings(max_examples=100, deadline=None)
@given(st.lists(can_frames(), max_size=60))
def test_decoded_can_payloads_read_as_the_bytes_that_were_sent(frames: list[CanFrame]) -> None:
    table = CAN_FRAMES.decode(unpack(pack(CAN_FRAMES.encode(CAN_FRAMES.table(frames)))), Limits())
    data = table.columns["data"]
    want = [f.data for f in frames]
    assert isinstance(data, PaddedBytes)
    assert data.joined() == b"".join(want)  # straight from the matrix, before any value is made
    assert len(data) == len(want) and data == want and list(data) == want
    if want:
        assert data[0] == want[0] and data[-1] == want[-1] and data[1:] == want[1:]


def test_padded_bytes_ignore_what_lies_past_each_length() -> None:
    m = np.arange(12, dtype=np.uint8).reshape(3, 4)
    col = PaddedBytes(m, np.array([4, 0, 2]))
    assert col.joined() == bytes([0, 1, 2, 3, 8, 9])
    assert col == [bytes([0, 1, 2, 3]), b"", bytes([8, 9])] == col.rows()
    assert col == PaddedBytes(m.copy(), np.array([4, 0, 2])) and col != [b"", b"", b""]
    with pytest.raises(ValueError, match="exceeds the width"):
        PaddedBytes(m, np.array([5, 0, 0]))


def test_a_bad_can_key_refuses_the_batch_only_if_a_frame_uses_it() -> None:
    frames = [CanFrame.make(1, "can0", 0x100, b"\x01"), CanFrame.make(2, "can0", 0x101, b"\x02")]
    obj = CAN_FRAMES.encode(CAN_FRAMES.table(frames))
    obj["keys"]["id"] = pack_ints(np.array([0x100, 0x800]), delta=True)  # 0x800: not a standard id
    with pytest.raises(SchemaError, match="frame 1: arbitration id 0x800 out of range"):
        CAN_FRAMES.decode(obj, Limits())
    obj["k"] = pack_ints(np.array([0, 0]))  # no frame uses the bad key any more
    table = CAN_FRAMES.decode(obj, Limits())
    assert table.columns["arbitration_id"].tolist() == [0x100, 0x100]  # type: ignore[union-attr]
    assert table.columns["data"] == [b"\x01", b"\x03"]  # the second is now a difference from the first


def test_packed_integers_take_any_spelling_of_an_allowed_dtype_and_check_ranges() -> None:
    for spelling in ("|i1", "i1", "int8", "b"):
        got = unpack_ints({"t": spelling, "b": b"\xff\x01"}, 2, np.dtype(np.int32), delta=False, name="c")
        assert got.tolist() == [-1, 1] and got.dtype == np.int32
    for bad in (">i2", "f8", "i4,i4", "nonsense"):
        with pytest.raises(SchemaError, match="column 'c'"):
            unpack_ints({"t": bad, "b": b"\x00\x01"}, 1, np.dtype(np.int32), delta=False, name="c")
    with pytest.raises(SchemaError, match="out of range for uint8"):
        unpack_ints({"t": "|i1", "b": b"\xff"}, 1, np.dtype(np.uint8), delta=False, name="c")
    # Delta coded: int64 sums wrap like the encoder's; a header outside int64 is refused.
    wrap = {"t": "|u1", "b": b"\x02", "d0": 2**63 - 1, "q": 1}
    got = unpack_ints(wrap, 2, np.dtype(np.int64), delta=True, name="t")
    assert got.tolist() == [2**63 - 1, -(2**63) + 1]
    with pytest.raises(SchemaError, match="out of range for uint32"):
        unpack_ints(wrap, 2, np.dtype(np.uint32), delta=True, name="t")
    with pytest.raises(SchemaError, match="delta header out of range"):
        unpack_ints({**wrap, "d0": 2**63}, 2, np.dtype(np.int64), delta=True, name="t")
