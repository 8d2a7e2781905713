"""One receiver port carrying NMEA, UBX and RTCM3: the demultiplexer on real captures."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrtcm import RTCMReader
from pyubx2 import NMEA_PROTOCOL, RTCM3_PROTOCOL, UBX_PROTOCOL, UBXReader
from tests.firmware_bridges.mutation import mutate, mutations

from firmware_bridges.gnss_demux import GnssDemux, Rtcm3Frame, crc24q, encode_rtcm3, take_rtcm3
from firmware_bridges.nmea import NmeaParser, NmeaSentence, encode_sentence
from firmware_bridges.parser import NEED_DATA, events, parse_all
from firmware_bridges.ubx import UbxMessage, UbxParser, encode_ubx

ALL_LOGS = [
    "gpsd/bu353s4.log", "gpsd/sirfstarv-nmea.log", "gpsd/ublox-f9p-hpnmea.log",
    "gpsd/ublox-neo-m8l.log", "gpsd/ublox-neo-m8n.log", "gpsd/ublox-neo-m8u.log",
    "gpsd/ublox-neo-m9n-nmea.log", "gpsd/ublox-zed-f9p-nmea.log", "gpsd/ublox-zed-f9p-rtk.log",
    "pynmeagps/pygpsdata-mixed.log", "pynmeagps/pygpsdata-nmea4.log",
    "pynmeagps/pygpsdata-nmeabadck.log", "pynmeagps/pygpsdata-nmeastartup.log",
    "pyubx2/pygpsdata-BADCK2.log", "pyubx2/pygpsdata-BADHDR.log", "pyubx2/pygpsdata-ESF.log",
    "pyubx2/pygpsdata-HNR.log", "pyubx2/pygpsdata-MIXED.log", "pyubx2/pygpsdata-NAV.log",
    "pyubx2/pygpsdata-RXMRAWX.log",
]
# Captures with known bad frames: name -> (bad checksums, truncated)
BAD_FRAMES = {"pynmeagps/pygpsdata-nmeabadck.log": (2, 0), "pyubx2/pygpsdata-BADCK2.log": (1, 0),
              "gpsd/ublox-neo-m8n.log": (0, 1)}


def strip_comments(data: bytes) -> bytes:
    """Drop the leading ``#`` comment lines of a gpsd capture, as gpsfake does."""
    while data.startswith(b"#"):
        nl = data.find(b"\n")
        data = data[nl + 1 :] if nl >= 0 else b""
    return data


def load(shared_data: Path, name: str) -> bytes:
    return strip_comments((shared_data / "gnss" / name).read_bytes())


def demux_chunked(data: bytes, sizes: list[int] | None) -> tuple[list[Any], GnssDemux]:
    d = GnssDemux(max_buffer=max(len(data) + 1, 1 << 16))
    out: list[Any] = []
    i = k = 0
    while i < len(data):
        n = len(data) if sizes is None else sizes[k % len(sizes)]
        d.feed(data[i : i + n])
        out.extend(events(d))
        i += n
        k += 1
    d.feed_eof()
    out.extend(events(d))
    assert d.buffered == 0
    return out, d


def frame_bytes(ev: Any) -> bytes:
    if isinstance(ev, NmeaSentence):
        return ev.raw.encode()
    if isinstance(ev, UbxMessage):
        return ev.encode()
    raise AssertionError(f"unexpected event {ev!r}")


def pyubx2_frames(data: bytes) -> list[bytes]:
    """The frames pyubx2 finds in a mixed stream (NMEA without its line end)."""
    r = UBXReader(io.BytesIO(data), protfilter=NMEA_PROTOCOL | UBX_PROTOCOL | RTCM3_PROTOCOL,
                  quitonerror=0)
    return [raw.rstrip(b"\r\n") if raw[:1] in b"$!" else raw for raw, _ in r]


def station_1005(station: int, x: float, y: float, z: float) -> bytes:
    """An RTCM3 1005 payload (reference station ARP, ECEF in 0.1 mm), packed bit by bit."""
    fields = [(1005, 12), (station, 12), (0, 6), (1, 1), (1, 1), (0, 1), (0, 1),
              (round(x * 1e4), 38), (0, 1), (0, 1), (round(y * 1e4), 38), (0, 2),
              (round(z * 1e4), 38)]
    bits = 0
    nbits = 0
    for value, width in fields:
        bits = bits << width | (value & ((1 << width) - 1))
        nbits += width
    return bits.to_bytes(nbits // 8, "big")


STATION = encode_rtcm3(station_1005(7, 4195432.03, 1140820.66, 4652177.70))
MSM7 = encode_rtcm3(bytes([1077 >> 4, (1077 & 0xF) << 4]) + random.Random(1).randbytes(300))


# Real captures ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_LOGS)
def test_every_capture_splits_like_pyubx2_whole_bytewise_and_chunked(
        shared_data: Path, name: str) -> None:
    data = load(shared_data, name)
    whole, d1 = demux_chunked(data, None)
    bytewise, d2 = demux_chunked(data, [1])
    rng = random.Random(name)
    chunked, d3 = demux_chunked(data, [rng.randint(1, 400) for _ in range(50)])
    assert whole == bytewise == chunked
    assert d1.stats == d2.stats == d3.stats
    assert d1.protocol_stats == d2.protocol_stats == d3.protocol_stats
    # pyubx2 skips bad frames too: both keep exactly the same good ones.
    assert [frame_bytes(e) for e in whole] == pyubx2_frames(data)
    assert d1.stats.frames == len(whole)
    assert (d1.stats.bad_checksum, d1.stats.truncated) == BAD_FRAMES.get(name, (0, 0))


def test_mixed_port_gives_the_same_frames_as_the_single_protocol_parsers(
        shared_data: Path) -> None:
    data = load(shared_data, "gpsd/ublox-neo-m8l.log")
    events_, d = demux_chunked(data, [64])
    sentences = parse_all(NmeaParser(max_buffer=len(data) + 1), data, len(data))
    messages = parse_all(UbxParser(max_buffer=len(data) + 1), data, len(data))
    assert [e for e in events_ if isinstance(e, NmeaSentence)] == sentences
    assert [e for e in events_ if isinstance(e, UbxMessage)] == messages
    assert d.protocol_stats["nmea"].frames == 14 and d.protocol_stats["ubx"].frames == 1388


def test_comment_header_and_stray_bytes_are_counted_as_skipped(shared_data: Path) -> None:
    raw = (shared_data / "gnss/gpsd/ublox-neo-m8n.log").read_bytes()
    header = raw[: len(raw) - len(strip_comments(raw))]
    _, d = demux_chunked(raw, [13])
    # The capture ends inside a frame: it is given up at EOF and its bytes after the
    # preamble are rescanned as garbage.
    partial = raw[raw.rfind(b"\xb5b") + 1 :]
    assert d.stats.truncated == 1
    # comment text and the two stray bytes E0 00 before the first frame (line ends excepted)
    assert d.stats.skipped_bytes == (len(header) - header.count(b"\n") + 2
                                     + len(partial) - partial.count(b"\n") - partial.count(b"\r"))


# RTCM3 ------------------------------------------------------------------------------------------


def test_rtcm3_encoder_and_crc_agree_with_pyrtcm() -> None:
    msg = RTCMReader.parse(STATION)
    assert msg.identity == "1005" and msg.DF003 == 7
    x, z = msg.DF025, msg.DF027  # ECEF X and Z of the station, metres
    assert x == pytest.approx(4195432.03) and z == pytest.approx(4652177.70)
    assert crc24q(b"") == 0
    assert take_rtcm3(STATION, 0) == ("frame", len(STATION), Rtcm3Frame(1005, 19))
    assert take_rtcm3(STATION[:-1], 0)[0] == "need_data"
    with pytest.raises(ValueError):
        encode_rtcm3(bytes(1024))


def interleave(frames: list[bytes], extra: list[bytes], seed: int) -> tuple[bytes, list[bytes]]:
    rng = random.Random(seed)
    out: list[bytes] = []
    for f in frames:
        out.append(f)
        if rng.random() < 0.3:
            out.append(rng.choice(extra))
    return b"".join(out), out


@pytest.mark.parametrize("name", ["pyubx2/pygpsdata-MIXED.log", "gpsd/ublox-zed-f9p-rtk.log",
                                  "gpsd/ublox-f9p-hpnmea.log"])
def test_rtcm3_interleaved_with_real_nmea_and_ubx_is_skipped_and_counted(
        shared_data: Path, name: str) -> None:
    data = load(shared_data, name)
    frames = [f + b"\r\n" if f[:1] == b"$" else f for f in pyubx2_frames(data)]
    mixed, order = interleave(frames, [STATION, MSM7], seed=len(data))
    n_rtcm = sum(1 for f in order if f in (STATION, MSM7))
    assert n_rtcm > 3
    for sizes in (None, [1], [37, 5, 900]):
        events_, d = demux_chunked(mixed, sizes)
        rtcm = [e for e in events_ if isinstance(e, Rtcm3Frame)]
        assert [e for e in events_ if not isinstance(e, Rtcm3Frame)] == demux_chunked(data, None)[0]
        assert len(rtcm) == n_rtcm == d.protocol_stats["rtcm3"].frames
        assert {r.msg_type for r in rtcm} <= {1005, 1077}
        assert {(r.msg_type, r.length) for r in rtcm} <= {(1005, 19), (1077, 302)}
        assert d.stats.skipped_bytes == 0 and d.stats.bad_checksum == 0


def test_corrupt_rtcm3_is_counted_and_the_next_frames_survive() -> None:
    gga = encode_sentence("GNGGA,014500.00,4404.1306024,N,12118.8446777,W,2,12,0.49,1,M,-2,M,,")
    ubx = encode_ubx(0x01, 0x07, bytes(92))
    bad = bytearray(STATION)
    bad[10] ^= 0x01
    events_, d = demux_chunked(bytes(bad) + gga + b"\xd3\xff" + ubx + MSM7, [3])
    kinds = [type(e).__name__ for e in events_]
    assert kinds == ["NmeaSentence", "UbxMessage", "Rtcm3Frame"]
    assert d.protocol_stats["rtcm3"].bad_checksum == 1
    body = bytes(bad[1:])  # rescanned after the CRC failed (line-end bytes are never counted)
    assert d.stats.skipped_bytes == len(body) - body.count(b"\n") - body.count(b"\r") + 2


def test_cut_ubx_frame_before_nmea_and_partial_frame_at_end() -> None:
    gga = encode_sentence("GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,")
    ubx = encode_ubx(0x01, 0x07, bytes(range(92)))
    ack = encode_ubx(0x05, 0x01, b"\x06\x01")
    d = GnssDemux()
    # A whole frame inside the span a cut frame claimed marks the cut frame as truncated; a
    # frame reaching beyond that span cannot tell a cut from a corrupt frame (bad checksum).
    d.feed(ubx[:50] + ack + gga + ubx[:50] + ubx + gga + STATION[:10])
    got = list(events(d))
    assert [type(e).__name__ for e in got] == ["UbxMessage", "NmeaSentence", "UbxMessage",
                                               "NmeaSentence"]
    assert got[0] == UbxMessage(0x05, 0x01, b"\x06\x01") and got[2] == UbxMessage.decode(ubx)
    assert d.protocol_stats["ubx"].truncated == 1 and d.protocol_stats["ubx"].bad_checksum == 1
    assert d.next_event() is NEED_DATA
    d.feed_eof()
    assert list(events(d)) == [] and d.protocol_stats["rtcm3"].truncated == 1
    assert d.buffered == 0


def test_rtcm3_and_nmea_inside_a_cut_ubx_frames_span_are_not_lost() -> None:
    # Found by the mutation test in CI: a UBX length field damaged to claim a long span that
    # holds an RTCM3 frame, an NMEA sentence and then a whole UBX frame. The UBX-only recovery
    # jumped to that inner UBX frame and dropped the RTCM3 frame and the sentence before it.
    gga = encode_sentence("GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,")
    ubx = encode_ubx(0x01, 0x07, bytes(range(92)))
    cut = bytearray(ubx)
    del cut[5:9]  # the length's high byte now comes from the payload: 0x0302 bytes claimed
    tail = STATION + gga + ubx
    assert 6 + (cut[4] | cut[5] << 8) + 2 > len(cut) + len(tail) - len(ubx)
    got, d = demux_chunked(bytes(cut) + tail + bytes(800), [7])
    assert got == [Rtcm3Frame(1005, len(STATION) - 6), *parse_all(NmeaParser(), gga),
                   UbxMessage.decode(ubx)]
    assert d.protocol_stats["ubx"].truncated == 1


def test_buffer_bound_and_misuse() -> None:
    with pytest.raises(ValueError, match="max_buffer"):
        GnssDemux(max_buffer=100)
    d = GnssDemux(max_buffer=16384)
    for _ in range(50):
        d.feed(STATION * 20)
        assert d.buffered <= 16384
    assert d.stats.buffer_overflows > 0
    assert all(isinstance(e, Rtcm3Frame) for e in events(d))


# Hostile input --------------------------------------------------------------------------------

_MUTATIONS = mutations(60)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(muts=_MUTATIONS, seed=st.integers(0, 2**16))
def test_mutated_mixed_stream_recovers_on_the_next_frame(shared_data: Path, muts: Any,
                                                         seed: int) -> None:
    data = load(shared_data, "pynmeagps/pygpsdata-mixed.log")
    frames = [f + b"\r\n" if f[:1] == b"$" else f for f in pyubx2_frames(data)]
    clean, _ = interleave(frames, [STATION, MSM7], seed=4)
    bad, clean_from = mutate(clean, muts)
    rng = random.Random(seed)
    d = GnssDemux(max_payload=2048, max_buffer=4096)
    out: list[Any] = []
    i = 0
    while i < len(bad):
        n = rng.randint(1, 500)
        d.feed(bad[i : i + n])
        i += n
        out.extend(events(d))
        assert d.buffered <= 4096
    d.feed_eof()
    out.extend(events(d))
    assert d.buffered == 0
    assert all(isinstance(e, NmeaSentence | UbxMessage | Rtcm3Frame) for e in out)
    # Frames that start after the damage come out unchanged, whatever came before them.
    tail = bad[clean_from:]
    starts = [i for i in (tail.find(b"$"), tail.find(b"\xb5b"), tail.find(b"\xd3")) if i >= 0]
    if starts:
        expected, _ = demux_chunked(tail[min(starts):], None)
        if expected:
            assert out[-len(expected):] == expected
