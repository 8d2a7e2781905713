"""u-blox UBX framing and records, on the real receiver captures in ../shared/data/gnss."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import random
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyubx2 import SET, UBX_PROTOCOL, UBXMessage, UBXReader
from tests.firmware_bridges.mutation import mutate, mutations

from firmware_bridges.errors import FrameError
from firmware_bridges.parser import NEED_DATA, events
from firmware_bridges.ubx import (
    SYNC,
    UbxMessage,
    UbxParser,
    encode_ubx,
    fletcher8,
    take_frame,
    ubx_to_records,
)
from wire.schemas import GNSS_FIX, VEHICLE_SIGNALS, FixQuality, GnssFix, Signal

UBX_LOGS = [
    "gpsd/ublox-neo-m8n.log", "gpsd/ublox-zed-f9p-rtk.log", "gpsd/ublox-neo-m8l.log",
    "gpsd/ublox-neo-m8u.log", "pyubx2/pygpsdata-NAV.log", "pyubx2/pygpsdata-ESF.log",
    "pyubx2/pygpsdata-HNR.log", "pyubx2/pygpsdata-RXMRAWX.log", "pyubx2/pygpsdata-MIXED.log",
    "pyubx2/pygpsdata-BADHDR.log", "pynmeagps/pygpsdata-mixed.log",
]
GPSD_CHECKED = ["ublox-neo-m8n", "ublox-zed-f9p-rtk"]
GPSD_STATUS = {1: FixQuality.GPS, 2: FixQuality.DGPS, 3: FixQuality.RTK_FIXED,
               4: FixQuality.RTK_FLOAT, 5: FixQuality.DEAD_RECKONING}


def strip_comments(data: bytes) -> bytes:
    """Drop the leading ``#`` comment lines of a gpsd capture, as gpsfake does."""
    while data.startswith(b"#"):
        nl = data.find(b"\n")
        data = data[nl + 1 :] if nl >= 0 else b""
    return data


def load(shared_data: Path, name: str) -> bytes:
    return strip_comments((shared_data / "gnss" / name).read_bytes())


def parse_chunked(data: bytes, sizes: list[int] | None, **kw: Any) -> tuple[list[Any], dict]:
    p = UbxParser(max_buffer=max(len(data) + 1, 16384), **kw)
    out: list[Any] = []
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


def pyubx2_frames(data: bytes) -> list[bytes]:
    """The raw UBX frames pyubx2 finds (the independent reference)."""
    r = UBXReader(io.BytesIO(data), protfilter=UBX_PROTOCOL, quitonerror=0)
    return [raw for raw, _ in r]


def iso_ms(ns: int) -> str:
    ms = (ns + 500_000) // 1_000_000
    t = dt.datetime.fromtimestamp(ms // 1000, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# Framing on real captures ----------------------------------------------------------------


@pytest.mark.parametrize("name", UBX_LOGS)
def test_real_capture_whole_bytewise_and_random_chunks_agree_with_pyubx2(
        shared_data: Path, name: str) -> None:
    data = load(shared_data, name)
    whole, whole_stats = parse_chunked(data, None)
    bytewise, byte_stats = parse_chunked(data, [1])
    rng = random.Random(name)
    chunked, chunk_stats = parse_chunked(data, [rng.randint(1, 500) for _ in range(64)])
    assert whole == bytewise == chunked
    assert whole_stats == byte_stats == chunk_stats
    assert [m.encode() for m in whole] == pyubx2_frames(data)
    assert whole_stats["bad_checksum"] == 0
    # The gpsd NEO-M8N capture ends in the middle of a NAV-TIMEGPS frame.
    assert whole_stats["truncated"] == (1 if name == "gpsd/ublox-neo-m8n.log" else 0)


def test_bad_checksum_fixture_rejects_one_frame_and_keeps_the_rest(shared_data: Path) -> None:
    data = load(shared_data, "pyubx2/pygpsdata-BADCK2.log")
    msgs, stats = parse_chunked(data, [3])
    assert len(msgs) == 25 and stats["bad_checksum"] == 1 and stats["truncated"] == 0
    # pyubx2 skips the same frame (its checksum is wrong, so it is not re-encodable)
    assert [m.encode() for m in msgs] == [f for f in pyubx2_frames(data)
                                         if fletcher8(f[2:-2]) == f[-2:]]


def test_unknown_header_b5_77_is_skipped_as_garbage(shared_data: Path) -> None:
    data = load(shared_data, "pyubx2/pygpsdata-BADHDR.log")
    msgs, stats = parse_chunked(data, [1])
    assert [m.identity for m in msgs] == ["NAV-SOL", "NAV-SVINFO"]
    assert stats["bad_checksum"] == 0 and stats["skipped_bytes"] > 0


# Framing edge cases -------------------------------------------------------------------------


def test_encode_decode_roundtrip_and_strict_errors() -> None:
    frame = encode_ubx(0x06, 0x01, b"\xf0\x05\x01")
    assert frame == bytes.fromhex("b562 0601 0300 f00501 001a")
    assert frame == UBXMessage(0x06, 0x01, SET, payload=b"\xf0\x05\x01").serialize()
    msg = UbxMessage.decode(frame)
    assert (msg.msg_class, msg.msg_id, msg.payload) == (0x06, 0x01, b"\xf0\x05\x01")
    assert msg.identity == "CFG-MSG" and msg.encode() == frame
    assert UbxMessage(0x7F, 0x7E, b"").identity == "UBX-0x7F-0x7E"
    with pytest.raises(FrameError, match="checksum"):
        UbxMessage.decode(frame[:-1] + b"\x00")
    with pytest.raises(FrameError, match="length"):
        UbxMessage.decode(frame + b"\x00")
    with pytest.raises(FrameError, match="not a UBX frame"):
        UbxMessage.decode(b"$GPGGA")
    with pytest.raises(ValueError):
        encode_ubx(256, 0)
    with pytest.raises(ValueError):
        UbxMessage(1, 7, bytes(70000))


A = encode_ubx(0x01, 0x07, bytes(range(92)))
B = encode_ubx(0x10, 0x02, bytes(16))


def test_cut_frame_followed_by_a_whole_one_counts_as_truncated() -> None:
    msgs, stats = parse_chunked(A[:40] + B + A, [1])
    assert [m.msg_class for m in msgs] == [0x10, 0x01]
    assert stats["truncated"] == 1 and stats["bad_checksum"] == 0


def test_corrupt_frame_counts_bad_checksum_and_garbage_counts_skipped() -> None:
    bad = bytearray(A)
    bad[30] ^= 0x55
    msgs, stats = parse_chunked(b"\x00garbage" + bytes(bad) + b"\xb5" + B, [7])
    assert [m.msg_class for m in msgs] == [0x10]
    assert stats["bad_checksum"] == 1
    assert stats["skipped_bytes"] == 8 + (len(A) - 2) + 1  # garbage, rescanned body, lone B5


def test_false_sync_with_huge_length_is_skipped() -> None:
    p = UbxParser(max_payload=1024)
    p.feed(SYNC + b"\x01\x07\xff\xff" + A)
    assert [m.msg_id for m in events(p)] == [0x07]
    assert p.stats.skipped_bytes == 6 and p.stats.frames == 1


def test_partial_frame_at_end_of_input_is_truncated_and_frames_inside_its_span_survive() -> None:
    # A header claiming 500 bytes, cut; then a whole frame; then the input ends.
    p = UbxParser()
    p.feed(SYNC + b"\x01\x07\xf4\x01" + b"\x00" * 10 + B)
    assert p.next_event() is NEED_DATA  # still waiting for the 500 bytes
    p.feed_eof()
    assert [m.msg_class for m in events(p)] == [0x10]
    assert p.stats.truncated == 1 and p.buffered == 0


def test_take_frame_needs_the_whole_frame() -> None:
    for cut in range(len(B)):
        assert take_frame(B[:cut], 0)[0] == "need_data"
    outcome, end, msg = take_frame(B, 0)
    assert outcome == "frame" and end == len(B) and msg is not None


def test_feeding_without_draining_is_bounded() -> None:
    p = UbxParser(max_payload=512, max_buffer=4096)
    for _ in range(100):
        p.feed(A)
        assert p.buffered <= 4096
    assert p.stats.buffer_overflows > 0
    assert 0 < len(list(events(p))) <= 4096 // len(A)
    with pytest.raises(ValueError, match="max_buffer"):
        UbxParser(max_payload=8192, max_buffer=1000)


# Records ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GPSD_CHECKED)
def test_nav_pvt_fixes_agree_with_gpsd(shared_data: Path, name: str) -> None:
    msgs, _ = parse_chunked(load(shared_data, f"gpsd/{name}.log"), None)
    fixes = [r for m in msgs for r in ubx_to_records(m, 42) if isinstance(r, GnssFix)]
    assert len(fixes) == sum(1 for m in msgs if m.identity == "NAV-PVT")
    tpvs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in (shared_data / f"gnss/gpsd/{name}.log.chk").read_text().splitlines():
        if line.startswith("{"):
            j = json.loads(line)
            if j["class"] == "TPV" and "time" in j:
                tpvs[j["time"]].append(j)
    ours = {iso_ms(f.time_utc_ns): f for f in fixes}
    assert set(tpvs) <= set(ours)
    assert len(set(ours) - set(tpvs)) <= 2  # gpsd reports neither the first nor the last epoch
    for when, reports in tpvs.items():
        f = ours[when]
        assert f.timestamp_ns == 42
        for j in reports:
            assert round(f.lat, 9) == pytest.approx(j["lat"], abs=1e-12), when
            assert round(f.lon, 9) == pytest.approx(j["lon"], abs=1e-12), when
            assert f.alt_m == pytest.approx(j["altMSL"], abs=1e-3)
            assert f.speed_mps == pytest.approx(j["speed"], abs=1e-3)
            assert f.fix_quality == GPSD_STATUS[j["status"]]
    GNSS_FIX.table(fixes)


def test_hnr_pvt_fixes_match_the_payload_bytes(shared_data: Path) -> None:
    msgs, _ = parse_chunked(load(shared_data, "pyubx2/pygpsdata-HNR.log"), None)
    assert len(msgs) == 13
    for m in msgs:
        (f,) = ubx_to_records(m, lambda: 7)
        assert isinstance(f, GnssFix)
        year, month, day, hour, minute, sec = struct.unpack_from("<H5B", m.payload, 4)
        nano, = struct.unpack_from("<i", m.payload, 12)
        lon, lat, _height, hmsl, gspeed = struct.unpack_from("<5i", m.payload, 20)
        when = dt.datetime(year, month, day, hour, minute, sec, tzinfo=dt.UTC)
        assert f.time_utc_ns == int(when.timestamp()) * 10**9 + nano
        assert f.lat == pytest.approx(lat * 1e-7, abs=1e-12)
        assert f.lon == pytest.approx(lon * 1e-7, abs=1e-12)
        assert f.alt_m == hmsl / 1000 and f.speed_mps == gspeed / 1000
        assert f.satellites == 0 and math.isnan(f.hdop) and f.timestamp_ns == 7


ESF_NAMES = {5: "esf.gyro_z_dps", 11: "esf.speed_mps", 12: "esf.gyro_temp_c",
             13: "esf.gyro_y_dps", 14: "esf.gyro_x_dps", 16: "esf.accel_x_mps2",
             17: "esf.accel_y_mps2", 18: "esf.accel_z_mps2"}


@pytest.mark.parametrize("name", ["pyubx2/pygpsdata-ESF.log", "gpsd/ublox-neo-m8l.log",
                                  "gpsd/ublox-neo-m8u.log"])
def test_esf_meas_signals_match_the_payload_bytes(shared_data: Path, name: str) -> None:
    msgs, _ = parse_chunked(load(shared_data, name), None)
    esf = [m for m in msgs if m.identity == "ESF-MEAS"]
    assert esf
    seen = set()
    for m in esf:
        signals = ubx_to_records(m, 9)
        flags, = struct.unpack_from("<H", m.payload, 4)
        expected = []
        for i in range(flags >> 11 & 0x1F):  # numMeas
            word, = struct.unpack_from("<I", m.payload, 8 + 4 * i)
            value, kind = word & 0xFFFFFF, word >> 24 & 0x3F
            if kind in ESF_NAMES:
                signed = value - (1 << 24) if value >= 1 << 23 else value
                scale = {5: 2**-12, 13: 2**-12, 14: 2**-12, 11: 1e-3, 12: 1e-2}.get(kind, 2**-10)
                expected.append((ESF_NAMES[kind], signed * scale))
            elif 6 <= kind <= 10:
                wheel = {6: "esf.wheel_tick_fl", 7: "esf.wheel_tick_fr", 8: "esf.wheel_tick_rl",
                         9: "esf.wheel_tick_rr", 10: "esf.speed_tick"}[kind]
                expected += [(wheel, value & 0x7FFFFF), (wheel + "_backward", value >> 23)]
        assert [s.name for s in signals] == [name for name, _ in expected]
        assert [s.value for s in signals] == pytest.approx([v for _, v in expected], abs=1e-12)
        assert all(isinstance(s, Signal) and s.timestamp_ns == 9 for s in signals)
        seen |= {s.name for s in signals}
        VEHICLE_SIGNALS.table(signals)
    if name.endswith("ESF.log"):
        # Receivers at rest: each accelerometer triple measures gravity alone.
        triples = [{s.name: s.value for s in ubx_to_records(m, 0)} for m in esf]
        norms = [math.sqrt(sum(t[f"esf.accel_{a}_mps2"] ** 2 for a in "xyz"))
                 for t in triples if "esf.accel_x_mps2" in t]
        assert len(norms) == 9 and all(9.6 < g < 10.2 for g in norms)
        assert all(20 < t["esf.gyro_temp_c"] < 35 for t in triples if "esf.gyro_temp_c" in t)
    assert seen


def test_other_messages_give_no_records_and_bad_payload_raises_frame_error(
        shared_data: Path) -> None:
    msgs, _ = parse_chunked(load(shared_data, "pyubx2/pygpsdata-NAV.log"), None)
    assert [r for m in msgs if m.identity != "NAV-PVT" for r in ubx_to_records(m, 0)] == []
    with pytest.raises(FrameError, match="NAV-PVT payload of 10 bytes"):
        ubx_to_records(UbxMessage(0x01, 0x07, bytes(10)), 0)


def test_nav_pvt_without_fix_has_no_position(shared_data: Path) -> None:
    msgs, _ = parse_chunked(load(shared_data, "gpsd/ublox-neo-m8n.log"), None)
    pvt = next(m for m in msgs if m.identity == "NAV-PVT")
    payload = bytearray(pvt.payload)
    payload[20] = 0  # fixType: no fix
    payload[21] = 0  # flags: gnssFixOK = 0
    (f,) = ubx_to_records(UbxMessage(0x01, 0x07, bytes(payload)), 0)
    assert isinstance(f, GnssFix)
    assert f.fix_quality == FixQuality.NONE and math.isnan(f.lat) and math.isnan(f.alt_m)
    payload[11] = 0  # valid flags: date and time not valid
    (g,) = ubx_to_records(UbxMessage(0x01, 0x07, bytes(payload)), 0)
    assert isinstance(g, GnssFix) and g.time_utc_ns == 0
    payload[20], payload[21] = 3, 0b1000_0011  # 3D, fix OK, carrier solution fixed
    (h,) = ubx_to_records(UbxMessage(0x01, 0x07, bytes(payload)), 0)
    assert isinstance(h, GnssFix) and h.fix_quality == FixQuality.RTK_FIXED


# Hostile input --------------------------------------------------------------------------------

_MUTATIONS = mutations(60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(muts=_MUTATIONS, seed=st.integers(0, 2**16))
def test_mutated_capture_recovers_on_the_next_frame(shared_data: Path, muts: Any,
                                                    seed: int) -> None:
    data = load(shared_data, "gpsd/ublox-zed-f9p-rtk.log")
    bad, clean_from = mutate(data, muts)
    rng = random.Random(seed)
    p = UbxParser(max_payload=2048, max_buffer=8192)
    out: list[UbxMessage] = []
    i = 0
    while i < len(bad):
        n = rng.randint(1, 700)
        p.feed(bad[i : i + n])
        i += n
        out.extend(events(p))
        assert p.buffered <= 8192
    p.feed_eof()
    out.extend(events(p))
    assert p.buffered == 0
    for m in out:
        assert fletcher8(m.encode()[2:-2]) == m.encode()[-2:]
        try:
            records = ubx_to_records(m, 0)
        except FrameError:
            continue  # the package's own error for a payload of the wrong length
        GNSS_FIX.table([r for r in records if isinstance(r, GnssFix)])
    tail = bad[clean_from:]
    first = tail.find(SYNC)
    if first >= 0:
        expected, _ = parse_chunked(tail[first:], None, max_payload=2048)
        if expected:
            assert out[-len(expected):] == expected


def test_random_bytes_never_raise() -> None:
    rng = random.Random(5)
    blob = bytes(rng.randrange(256) for _ in range(200_000)) + A
    msgs, stats = parse_chunked(blob, [1000])
    assert msgs[-1] == UbxMessage.decode(A)
    assert stats["skipped_bytes"] > 190_000
