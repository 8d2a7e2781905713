"""Untrusted bytes: decoding raises only wire errors, never hangs, never allocates past the limits."""

from __future__ import annotations

import tracemalloc
import zlib

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.wire.strategies import can_frames
from wire import Batch, Limits, encode_batch
from wire.codec import compress, decompress, pack, unpack
from wire.control import Ack, TimeRequest, TimeResponse
from wire.errors import DecodeError, LimitError, SchemaError, WireError
from wire.schemas import CAN_FRAMES, GNSS_FIX, GnssFix
from wire.state import State

SMALL = Limits(max_encoded_bytes=1 << 20, max_decoded_bytes=8 << 20, max_records=10_000,
               max_field_bytes=1 << 20)


def decode_fully(data: bytes, limits: Limits = SMALL) -> None:
    Batch.decode(data, limits).table(limits)


def _valid_batches() -> list[bytes]:
    fixes = [GnssFix(i * 100_000_000, i * 100_000_000, 37.1 + i * 1e-5, -122.2, 12.0, 20.0, 90.0, 1,
                     9, 0.9) for i in range(10)]
    frames = [
        CAN_FRAMES.table(
            [  # a mix of frames from several ids so per-id deltas are exercised
                *(CanFrame_(i, 0x100 + i % 3, bytes([i % 256] * 8)) for i in range(30)),
            ]
        )
    ]
    return [
        encode_batch("car-1", "gnss", GNSS_FIX.table(fixes), 3).encode(),
        encode_batch("car-1", "can0", frames[0], 4).encode(),
    ]


def CanFrame_(i: int, cid: int, data: bytes):  # type: ignore[no-untyped-def]
    from wire.schemas import CanFrame

    return CanFrame.make(i * 1000, "can0", cid, data)


VALID = _valid_batches()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_raise_only_wire_errors(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_fully(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.data())
def test_mutated_envelopes_raise_only_wire_errors(valid: bytes, data: st.DataObject) -> None:
    buf = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "drop", "insert", "dup"]))
        i = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "drop" and buf:
            del buf[i]
        elif op == "insert":
            buf.insert(i, data.draw(st.integers(0, 255)))
        elif op == "dup" and buf:
            buf[i:i] = buf[i : i + data.draw(st.integers(1, 16))]
    try:
        decode_fully(bytes(buf))
    except WireError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(can_frames(), min_size=1, max_size=30), st.data())
def test_mutated_payloads_with_valid_checksum_raise_only_wire_errors(frames, data) -> None:  # type: ignore[no-untyped-def]
    """Deeper: mutate the decoded payload map, then re-seal it so the checksum passes."""
    batch = encode_batch("car-1", "can0", CAN_FRAMES.table(frames), 1)
    payload = unpack(decompress(batch.payload, "zstd"))
    key = data.draw(st.sampled_from(sorted(payload)))
    payload[key] = data.draw(
        st.one_of(st.none(), st.integers(-5, 2**40), st.binary(max_size=64), st.text(max_size=5),
                  st.just({"t": "<i8", "b": b"\x00" * 7}), st.just({"t": "|O", "b": b""}),
                  st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3), st.just(payload.get(key)))
    )
    raw = pack(payload)
    env = msgpack.unpackb(batch.encode(), raw=False)
    env["p"] = compress(raw)
    env["crc"] = zlib.crc32(raw)
    try:
        decode_fully(msgpack.packb(env, use_bin_type=True))
    except WireError:
        pass


def _bomb(size: int, declare: bool) -> bytes:
    cctx = zstandard.ZstdCompressor(level=1)
    chunk = bytes(1 << 20)
    if declare:
        return cctx.compress(bytes(size)) if size <= (64 << 20) else _streamed(cctx, chunk, size, True)
    return _streamed(cctx, chunk, size, False)


def _streamed(cctx: zstandard.ZstdCompressor, chunk: bytes, size: int, declare: bool) -> bytes:
    import io

    out = io.BytesIO()
    with cctx.stream_writer(out, size=size if declare else -1, closefd=False) as w:
        for _ in range(size // len(chunk)):
            w.write(chunk)
    return out.getvalue()


@pytest.fixture(scope="module")
def gib_bomb() -> bytes:
    return _bomb(1 << 30, declare=False)


def _sealed_batch(payload: bytes, limits: Limits = SMALL) -> bytes:
    env = msgpack.unpackb(VALID[0], raw=False)
    env["p"] = payload
    env["crc"] = 0
    return msgpack.packb(env, use_bin_type=True)


def test_one_gib_zstd_bomb_is_rejected_within_the_memory_limit(gib_bomb: bytes) -> None:
    assert len(gib_bomb) < 64 * 1024  # a few tens of KiB that claim a GiB
    tracemalloc.start()
    try:
        with pytest.raises(LimitError, match="more than"):
            decode_fully(_sealed_batch(gib_bomb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < SMALL.max_decoded_bytes * 1.25 + (4 << 20)


def test_bomb_with_declared_size_is_rejected_from_its_header() -> None:
    bomb = _bomb(1 << 30, declare=True)
    tracemalloc.start()
    try:
        with pytest.raises(LimitError, match="declares"):
            decode_fully(_sealed_batch(bomb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_oversize_envelope_and_fields_are_limit_errors() -> None:
    with pytest.raises(LimitError):
        decode_fully(b"\x00" * (SMALL.max_encoded_bytes + 1))
    big = msgpack.packb({"v": [1, 0], "p": b"x" * (SMALL.max_field_bytes + 1)}, use_bin_type=True)
    with pytest.raises(LimitError):
        Batch.decode(big, Limits(max_field_bytes=SMALL.max_field_bytes))
    with pytest.raises(LimitError):
        unpack(msgpack.packb(list(range(20_000))), SMALL)


def test_envelope_version_and_field_errors_name_the_problem() -> None:
    env = msgpack.unpackb(VALID[0], raw=False)
    env["v"] = [2, 0]
    with pytest.raises(SchemaError, match="major version 2"):
        Batch.decode(msgpack.packb(env, use_bin_type=True))
    env = msgpack.unpackb(VALID[0], raw=False)
    env["v"] = [1, 7]
    env["future_field"] = {"anything": 1}
    assert Batch.decode(msgpack.packb(env, use_bin_type=True)).seq == 3  # minor bump + extra key ok
    env = msgpack.unpackb(VALID[0], raw=False)
    del env["seq"]
    with pytest.raises(DecodeError, match="'seq'"):
        Batch.decode(msgpack.packb(env, use_bin_type=True))
    env = msgpack.unpackb(VALID[0], raw=False)
    env["agent"] = "bad agent!"
    with pytest.raises(DecodeError, match="invalid agent id"):
        Batch.decode(msgpack.packb(env, use_bin_type=True))
    env = msgpack.unpackb(VALID[0], raw=False)
    env["crc"] ^= 1
    with pytest.raises(DecodeError, match="checksum"):
        decode_fully(msgpack.packb(env, use_bin_type=True))
    env = msgpack.unpackb(VALID[0], raw=False)
    env["n"] = 11
    raw = msgpack.packb(env, use_bin_type=True)
    with pytest.raises(SchemaError, match="11 records"):
        decode_fully(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_control_and_state_messages_reject_garbage_with_wire_errors(data: bytes) -> None:
    for cls in (Ack, TimeRequest, TimeResponse):
        try:
            cls.decode(data, SMALL)
        except WireError:
            pass
    try:
        State.decode(data)
    except WireError:
        pass
