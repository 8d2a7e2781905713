"""TI mmWave SDK "mmw demo" UART output (sans-IO): packets of detected points into ``radar.points``.

Format (mmWave SDK 3.x out-of-box demo, xWR16xx/18xx/68xx; all little-endian):

- frame header, 40 bytes: magic word ``02 01 04 03 06 05 08 07``, then uint32
  version (major << 24 | minor << 16 | bugfix << 8 | build), totalPacketLen
  (header included), platform (e.g. ``0xA6843``), frameNumber,
  timeCpuCycles, numDetectedObj, numTLVs, subFrameNumber;
- numTLVs TLVs, each uint32 type + uint32 length of the value that follows;
  type 1 = detected points, numDetectedObj x (x, y, z, doppler) float32 in m
  and m/s; type 7 = side info, numDetectedObj x (snr, noise) int16 in 0.1 dB;
  other types (range profile, heat maps, statistics...) are skipped;
- padding up to totalPacketLen (the demo pads to a multiple of 32 bytes).

The packet has no checksum, so integrity is structural: a length outside
40..``max_packet`` or more than :data:`MAX_TLVS` TLVs marks a false magic
word (skipped); another magic word starting inside the span the length claims
marks a cut packet (``truncated``; parsing resumes at that magic word, as
soon as it is seen); TLVs that overrun the packet or a point TLV that disagrees with
numDetectedObj count as ``bad_checksum`` (failed integrity check). SDK 1.x/2.x
packets (Q-format points, 36-byte xWR14xx header) are counted as
``unsupported`` and skipped.

No real capture of this output exists in the project's data, so the format
follows TI's documentation and demo parser, and tests use packets built by
:func:`encode_mmwave_frame`.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from firmware_bridges.parser import DEFAULT_MAX_BUFFER, NEED_DATA, BufferedInput, NeedData, ParserStats
from wire.schemas import RadarPoint

log = logging.getLogger(__name__)

MAGIC = b"\x02\x01\x04\x03\x06\x05\x08\x07"
HEADER = struct.Struct("<8s8I")
TLV_HEADER = struct.Struct("<2I")
POINT = struct.Struct("<4f")
SIDE_INFO = struct.Struct("<2h")
TLV_DETECTED_POINTS = 1
TLV_SIDE_INFO = 7
#: SDK 3.5.0.4, the version the encoder writes by default.
SDK_VERSION = 0x03050004
PLATFORM_IWR6843 = 0xA6843
PACKET_ALIGN = 32
#: Largest packet accepted by default (heat-map TLVs can be tens of kB).
MAX_PACKET = 32 * 1024
MAX_TLVS = 32
NAN = float("nan")

Take = Literal["frame", "need_data", "bad_checksum", "truncated", "garbage", "unsupported"]

PointLike = RadarPoint | tuple[float, float, float, float] | tuple[
    float, float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class MmwaveFrame:
    """One output packet: its header fields and its detected points (``radar.points`` records)."""

    timestamp_ns: int
    sensor: str
    frame: int
    points: tuple[RadarPoint, ...]
    version: int = SDK_VERSION
    platform: int = PLATFORM_IWR6843
    time_cpu_cycles: int = 0
    subframe: int = 0
    tlv_types: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.frame <= 0xFFFFFFFF:
            raise ValueError(f"mmWave frame number {self.frame} is not a uint32")


def _point_values(p: PointLike) -> tuple[float, float, float, float, float, float]:
    if isinstance(p, RadarPoint):
        return p.x, p.y, p.z, p.doppler, p.snr_db, p.noise_db
    if len(p) == 4:
        return p[0], p[1], p[2], p[3], NAN, NAN
    if len(p) == 6:
        return p[0], p[1], p[2], p[3], p[4], p[5]
    raise ValueError(f"a point is (x, y, z, doppler[, snr_db, noise_db]), got {p!r}")


def encode_mmwave_frame(frame_number: int, points: Sequence[PointLike], *,
                        version: int = SDK_VERSION, platform: int = PLATFORM_IWR6843,
                        time_cpu_cycles: int = 0, subframe: int = 0,
                        side_info: bool | None = None, pad: bool = True,
                        extra_tlvs: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """One packet as the TI mmw demo writes it (for simulators and tests).

    ``side_info`` defaults to "when every point has a finite SNR and noise";
    SNR/noise are rounded to the format's 0.1 dB. ``extra_tlvs`` are
    appended as they are (a parser must skip them).
    """
    values = [_point_values(p) for p in points]
    if side_info is None:
        side_info = bool(values) and all(math.isfinite(v[4]) and math.isfinite(v[5])
                                         for v in values)
    tlvs = [(TLV_DETECTED_POINTS, b"".join(POINT.pack(*v[:4]) for v in values))] if values else []
    if side_info and values:
        try:
            side = b"".join(SIDE_INFO.pack(round(v[4] * 10), round(v[5] * 10)) for v in values)
        except (ValueError, OverflowError, struct.error) as exc:
            raise ValueError(f"SNR/noise do not fit int16 0.1 dB: {exc}") from exc
        tlvs.append((TLV_SIDE_INFO, side))
    tlvs.extend(extra_tlvs)
    body = b"".join(TLV_HEADER.pack(t, len(v)) + v for t, v in tlvs)
    total = HEADER.size + len(body)
    if pad:
        total += -total % PACKET_ALIGN
    header = HEADER.pack(MAGIC, version, total, platform, frame_number, time_cpu_cycles,
                         len(values), len(tlvs), subframe)
    return header + body + bytes(total - HEADER.size - len(body))


def take_packet(buf: bytes | bytearray, start: int, max_packet: int = MAX_PACKET,
                eof: bool = False) -> tuple[Take, int, tuple[int, ...] | None]:
    """Try to frame one packet whose magic word is at ``buf[start]``.

    On ``"frame"`` returns the unpacked header fields (version, length,
    platform, frame, cpu cycles, objects, tlvs, subframe); decoding the TLVs
    is :func:`decode_tlvs`. When the packet's last bytes could begin a magic
    word (a packet cut by fewer than 8 bytes), the decision waits for the
    next bytes, unless ``eof``.
    """
    n = len(buf)
    # A magic word inside the header means the header itself was cut.
    inner = buf.find(MAGIC, start + 8, min(n, start + HEADER.size))
    if inner >= 0:
        return "truncated", inner, None
    if n - start < HEADER.size:
        return "need_data", start, None
    fields = HEADER.unpack_from(buf, start)[1:]
    version, total, _platform, _frame, _cpu, num_obj, num_tlvs, _sub = fields
    if not HEADER.size <= total <= max_packet or num_tlvs > MAX_TLVS:
        return "garbage", start + 1, None
    end = start + total
    inner = buf.find(MAGIC, start + 8, min(n, end))
    if inner >= 0:
        return "truncated", inner, None
    if n < end:
        return "need_data", start, None
    for i in range(max(start + 8, end - 7), end):  # a magic word across the end of the span
        if MAGIC.startswith(buf[i:end]):
            if n >= i + 8:
                if buf[i : i + 8] == MAGIC:
                    return "truncated", i, None
            elif not eof:
                return "need_data", start, None
    if version >> 24 < 3:
        return "unsupported", end, None
    if num_obj * POINT.size > total:
        return "bad_checksum", start + 8, None
    return "frame", end, fields


def decode_tlvs(buf: bytes | bytearray, start: int, end: int, num_obj: int, num_tlvs: int
                ) -> tuple[list[tuple[float, ...]], list[tuple[int, ...]], list[int]] | None:
    """Points, side info and TLV types of the packet ``buf[start:end]``; None if inconsistent."""
    off = start + HEADER.size
    points: list[tuple[float, ...]] = []
    side: list[tuple[int, ...]] = []
    types: list[int] = []
    for _ in range(num_tlvs):
        if off + TLV_HEADER.size > end:
            return None
        kind, length = TLV_HEADER.unpack_from(buf, off)
        off += TLV_HEADER.size
        if length > end - off:
            return None
        if kind == TLV_DETECTED_POINTS:
            if length != num_obj * POINT.size:
                return None
            points = list(POINT.iter_unpack(buf[off : off + length]))
        elif kind == TLV_SIDE_INFO:
            if length != num_obj * SIDE_INFO.size:
                return None
            side = list(SIDE_INFO.iter_unpack(buf[off : off + length]))
        types.append(kind)
        off += length
    return points, side, types


class MmwaveParser(BufferedInput):
    """Sans-IO parser of TI mmWave demo output: ``next_event()`` -> MmwaveFrame | NEED_DATA.

    ``sensor`` names the radar in the records; ``clock_ns`` gives each packet's
    capture time (read when the packet completes). ``max_buffer`` bounds the
    bytes held between calls (oldest dropped and counted in
    ``buffer_overflows`` when a caller feeds without draining).
    """

    protocol = "mmWave"

    def __init__(self, sensor: str = "mmwave0", clock_ns: Callable[[], int] = time.time_ns, *,
                 max_packet: int = MAX_PACKET, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        if not sensor:
            raise ValueError("sensor name must not be empty")
        if max_packet < HEADER.size:
            raise ValueError(f"max_packet must be at least {HEADER.size}, got {max_packet}")
        if max_buffer < max_packet:
            raise ValueError(f"max_buffer ({max_buffer}) must hold one packet ({max_packet})")
        self.stats = ParserStats()
        self.sensor = sensor
        self._clock_ns = clock_ns
        self._max_packet = max_packet
        self._init_buffer(max_buffer)

    def next_event(self) -> MmwaveFrame | NeedData:
        buf, stats = self._buf, self.stats
        pos = self._pos
        while True:
            s = buf.find(MAGIC, pos)
            if s < 0:
                # Keep a tail that may be the start of a magic word split across reads.
                stop = len(buf) if self._eof else max(pos, len(buf) - (len(MAGIC) - 1))
                stats.skipped_bytes += stop - pos
                self._pos = stop
                return NEED_DATA
            stats.skipped_bytes += s - pos
            outcome, pos, fields = take_packet(buf, s, self._max_packet, self._eof)
            if fields is not None:
                frame = self._frame(buf, s, pos, fields)
                if frame is not None:
                    stats.frames += 1
                    self._pos = pos
                    return frame
                stats.bad_checksum += 1
                pos = s + len(MAGIC)
            elif outcome == "need_data":
                if not self._eof:
                    self._pos = s
                    return NEED_DATA
                stats.truncated += 1  # the input ended inside this packet; rescan what follows
                pos = s + 1
            elif outcome == "bad_checksum":
                stats.bad_checksum += 1
            elif outcome == "truncated":
                stats.truncated += 1
            elif outcome == "unsupported":
                stats.unsupported += 1
            else:
                stats.skipped_bytes += pos - s

    def _frame(self, buf: bytearray, start: int, end: int, fields: tuple[int, ...]
               ) -> MmwaveFrame | None:
        version, _total, platform, frame_no, cpu, num_obj, num_tlvs, subframe = fields
        decoded = decode_tlvs(buf, start, end, num_obj, num_tlvs)
        if decoded is None:
            return None
        raw_points, side, types = decoded
        now = self._clock_ns()
        sensor = self.sensor
        points = []
        for i, (x, y, z, v) in enumerate(raw_points):
            snr, noise = (side[i][0] / 10.0, side[i][1] / 10.0) if side else (NAN, NAN)
            points.append(RadarPoint(now, sensor, frame_no, x, y, z, v, snr, noise))
        return MmwaveFrame(now, sensor, frame_no, tuple(points), version, platform, cpu,
                           subframe, tuple(types))

    def feed_eof(self) -> None:
        """The input ended: ``next_event()`` gives up a partial packet (counted as truncated)."""
        self._eof = True
