"""TI mmWave demo UART output. No real capture exists in ../shared/data, so every stream here
is built by the encoder from the documented format and then damaged on purpose."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.firmware_bridges.mutation import mutate, mutations

from firmware_bridges.mmwave import (
    HEADER,
    MAGIC,
    PACKET_ALIGN,
    MmwaveFrame,
    MmwaveParser,
    encode_mmwave_frame,
    take_packet,
)
from firmware_bridges.parser import NEED_DATA, events
from wire.schemas import RADAR_POINTS, RadarPoint


def scene(frame: int, n: int, rng: random.Random) -> list[tuple[float, ...]]:
    """``n`` points of a plausible road scene: metres ahead, a few metres aside, m/s."""
    return [(rng.uniform(-8, 8), rng.uniform(0.5, 60), rng.uniform(-1, 3), rng.uniform(-20, 20),
             round(rng.uniform(5, 40), 1), round(rng.uniform(-5, 10), 1)) for _ in range(n)]


def stream(n_frames: int = 40, seed: int = 1) -> tuple[bytes, list[list[tuple[float, ...]]]]:
    rng = random.Random(seed)
    scenes = [scene(i, rng.randint(0, 30), rng) for i in range(n_frames)]
    data = b"".join(encode_mmwave_frame(i, pts, time_cpu_cycles=i * 600_000)
                    for i, pts in enumerate(scenes))
    return data, scenes


def parse_chunked(data: bytes, sizes: list[int] | None, **kw: Any) -> tuple[list[MmwaveFrame], dict]:
    p = MmwaveParser("front", clock_ns=lambda: 123, max_buffer=max(len(data) + 1, 1 << 16), **kw)
    out: list[MmwaveFrame] = []
    i = k = 0
    while i < len(data):
        n = len(data) if sizes is None else sizes[k % len(sizes)]
        p.feed(data[i : i + n])
        out.extend(events(p))
        i += n
        k += 1
    p.feed_eof()
    out.extend(events(p))
    assert p.buffered == 0
    return out, p.stats.as_dict()


def f32(v: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", v))[0])


def test_encode_parse_round_trip_keeps_every_point() -> None:
    data, scenes = stream()
    frames, stats = parse_chunked(data, None)
    assert [f.frame for f in frames] == list(range(len(scenes)))
    for f, pts in zip(frames, scenes, strict=True):
        assert f.sensor == "front" and f.timestamp_ns == 123
        assert f.time_cpu_cycles == f.frame * 600_000 and f.subframe == 0
        assert f.platform == 0xA6843 and f.version >> 24 == 3
        assert len(f.points) == len(pts)
        for p, (x, y, z, v, snr, noise) in zip(f.points, pts, strict=True):
            assert (p.x, p.y, p.z, p.doppler) == (f32(x), f32(y), f32(z), f32(v))
            assert p.snr_db == pytest.approx(snr) and p.noise_db == pytest.approx(noise)
            assert p.frame == f.frame and p.sensor == "front" and p.timestamp_ns == 123
        assert f.tlv_types == ((1, 7) if pts else ())
    assert stats == {"frames": len(scenes), "bad_checksum": 0, "truncated": 0,
                     "skipped_bytes": 0, "buffer_overflows": 0, "unsupported": 0}
    table = RADAR_POINTS.table([p for f in frames for p in f.points])
    assert len(table) == sum(len(s) for s in scenes)


def test_packet_layout_follows_the_ti_format() -> None:
    pkt = encode_mmwave_frame(7, [(1.0, 2.0, 3.0, -4.0, 12.3, 45.6)], platform=0xA1843,
                              time_cpu_cycles=99, subframe=2)
    assert pkt.startswith(bytes.fromhex("0201040306050807"))
    assert len(pkt) % PACKET_ALIGN == 0
    _, version, total, platform, frame, cpu, n_obj, n_tlv, sub = HEADER.unpack_from(pkt)
    assert (total, platform, frame, cpu, n_obj, n_tlv, sub) == (len(pkt), 0xA1843, 7, 99, 1, 2, 2)
    assert version == 0x03050004  # SDK 3.5.0.4
    assert struct.unpack_from("<II4f", pkt, 40) == (1, 16, 1.0, 2.0, 3.0, -4.0)
    assert struct.unpack_from("<IIhh", pkt, 64) == (7, 4, 123, 456)  # 0.1 dB steps
    assert pkt[76:] == bytes(len(pkt) - 76)  # padding


@pytest.mark.parametrize("sizes", [[1], [3, 7, 11], [40], [41], [1000, 1, 63]])
def test_any_chunking_gives_the_same_frames(sizes: list[int]) -> None:
    data, _ = stream(15, seed=2)
    garbage = b"\x00\x02\x01\x04junk" + MAGIC[:5]
    framed = garbage + data[:700] + garbage + data[700:]
    whole = parse_chunked(framed, None)
    assert parse_chunked(framed, sizes) == whole


def test_garbage_before_and_between_frames_is_counted() -> None:
    a = encode_mmwave_frame(1, [(1.0, 2.0, 0.0, 0.5)])
    b = encode_mmwave_frame(2, [])
    frames, stats = parse_chunked(b"\xff" * 100 + a + MAGIC[:7] + b"xyz" + b + b"\x02\x01", [5])
    assert [f.frame for f in frames] == [1, 2]
    assert stats["skipped_bytes"] == 100 + 10 + 2
    assert frames[1].points == () and frames[1].tlv_types == ()
    assert math.isnan(frames[0].points[0].snr_db)  # no side info TLV without SNR values


def test_cut_packet_is_truncated_and_the_next_one_parses() -> None:
    a, b, c = (encode_mmwave_frame(i, [(float(i), 1.0, 0.0, 0.0, 10.0, 1.0)] * 5)
               for i in range(3))
    for cut in (10, 39, 41, len(a) - 1):
        frames, stats = parse_chunked(a[:cut] + b + c, [1])
        assert [f.frame for f in frames] == [1, 2], cut
        assert stats["truncated"] == 1 and stats["skipped_bytes"] == 0, cut


def test_partial_packet_at_end_of_input() -> None:
    a = encode_mmwave_frame(5, [(1.0, 1.0, 1.0, 1.0)] * 10)
    p = MmwaveParser()
    p.feed(a + a[:60])
    assert [f.frame for f in events(p)] == [5]
    assert p.next_event() is NEED_DATA and p.buffered == 60
    p.feed_eof()
    assert list(events(p)) == [] and p.stats.truncated == 1 and p.buffered == 0


def test_other_tlvs_are_skipped_and_listed() -> None:
    stats_tlv = (6, struct.pack("<6I", 1, 2, 3, 4, 5, 6))
    profile = (2, bytes(256 * 2))
    pkt = encode_mmwave_frame(3, [(0.5, 9.0, 0.1, -2.0, 20.0, 3.0)], extra_tlvs=[profile, stats_tlv])
    (f,), _ = parse_chunked(pkt, [17])
    assert f.tlv_types == (1, 7, 2, 6) and len(f.points) == 1


def test_inconsistent_packets_are_rejected_and_counted() -> None:
    good = encode_mmwave_frame(9, [(1.0, 2.0, 3.0, 4.0)])
    wrong_count = bytearray(encode_mmwave_frame(1, [(1.0, 2.0, 3.0, 4.0)] * 2))
    struct.pack_into("<I", wrong_count, 28, 3)  # numDetectedObj says 3, the TLV holds 2
    overrun = bytearray(encode_mmwave_frame(2, [(1.0, 2.0, 3.0, 4.0)]))
    struct.pack_into("<I", overrun, 44, 4000)  # TLV length beyond the packet
    old_sdk = encode_mmwave_frame(4, [(1.0, 2.0, 3.0, 4.0)], version=0x02010004)
    false_magic = MAGIC + struct.pack("<8I", 0x03050004, 10**6, 0, 0, 0, 0, 0, 0)  # absurd length
    data = bytes(wrong_count) + bytes(overrun) + old_sdk + false_magic + good
    frames, stats = parse_chunked(data, [9])
    assert [f.frame for f in frames] == [9]
    assert stats["bad_checksum"] == 2 and stats["unsupported"] == 1
    assert stats["truncated"] == 0 and stats["skipped_bytes"] >= len(false_magic)


def test_take_packet_waits_for_the_whole_packet() -> None:
    pkt = encode_mmwave_frame(1, [(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)] * 3)
    for cut in range(8, len(pkt)):
        assert take_packet(pkt[:cut], 0)[0] == "need_data"
    assert take_packet(pkt, 0)[:2] == ("frame", len(pkt))


def test_bounds_and_misuse() -> None:
    with pytest.raises(ValueError, match="max_buffer"):
        MmwaveParser(max_packet=4096, max_buffer=1024)
    with pytest.raises(ValueError, match="sensor"):
        MmwaveParser("")
    with pytest.raises(ValueError, match="int16"):
        encode_mmwave_frame(1, [(1.0, 2.0, 3.0, 4.0, 1e6, 0.0)])
    with pytest.raises(ValueError, match="point"):
        encode_mmwave_frame(1, [(1.0, 2.0)])  # type: ignore[list-item]
    p = MmwaveParser(max_packet=1024, max_buffer=4096)
    big = encode_mmwave_frame(1, [(1.0, 1.0, 1.0, 1.0)] * 100)  # 1.6 kB > max_packet
    small = encode_mmwave_frame(2, [(1.0, 1.0, 1.0, 1.0)])
    for _ in range(10):
        p.feed(big)
        assert p.buffered <= 4096
    p.feed(small)
    assert [f.frame for f in events(p)] == [2]
    assert p.stats.buffer_overflows > 0


def test_radar_points_from_records() -> None:
    rp = RadarPoint(1, "front", 4, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    (f,), _ = parse_chunked(encode_mmwave_frame(4, [rp]), None)
    assert f.points == (RadarPoint(123, "front", 4, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0),)


_MUTATIONS = mutations(80)


@settings(max_examples=80, deadline=None)
@given(muts=_MUTATIONS, seed=st.integers(0, 2**16))
def test_mutated_stream_recovers_on_the_next_packet(muts: Any, seed: int) -> None:
    data, _ = stream(12, seed=3)
    bad, clean_from = mutate(data, muts)
    rng = random.Random(seed)
    p = MmwaveParser(clock_ns=lambda: 1, max_packet=4096, max_buffer=8192)
    out: list[MmwaveFrame] = []
    i = 0
    while i < len(bad):
        n = rng.randint(1, 900)
        p.feed(bytes(bad[i : i + n]))
        i += n
        out.extend(events(p))
        assert p.buffered <= 8192
    p.feed_eof()
    out.extend(events(p))
    assert p.buffered == 0
    tail = bytes(bad[clean_from:])
    first = tail.find(MAGIC)
    if first >= 0:
        q = MmwaveParser(clock_ns=lambda: 1, max_packet=4096)
        q.feed(tail[first:])
        q.feed_eof()
        expected = list(events(q))
        if expected:
            assert out[-len(expected):] == expected
