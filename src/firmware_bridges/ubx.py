"""u-blox UBX: binary framing and checksum (sans-IO), and records from NAV-PVT, HNR-PVT, ESF-MEAS.

A UBX frame is ``B5 62``, class, id, a little-endian payload length, the
payload and an 8-bit Fletcher checksum over class..payload. Framing is done
here; payload fields are decoded with pyubx2 in :func:`ubx_to_records`.

Resynchronisation: a length above ``max_payload`` marks a false sync (the two
bytes are skipped); a frame whose checksum fails is rejected and scanning
resumes two bytes after its sync, because its length field cannot be trusted.
It counts as ``truncated`` when a whole valid frame starts inside the span
its length claims (the sign of a cut frame), else as ``bad_checksum``; false
syncs inside a rejected span are not counted again. Bytes outside accepted
frames (including the rescanned body of a rejected one) count as
``skipped_bytes``. Every decision depends only on bytes already seen, so the
output does not depend on how the input was chunked.
"""

from __future__ import annotations

import datetime as dt
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

from pyubx2 import GET, UBXMessage
from pyubx2.ubxtypes_core import UBX_MSGIDS

from firmware_bridges.errors import FrameError
from firmware_bridges.parser import DEFAULT_MAX_BUFFER, NEED_DATA, BufferedInput, NeedData, ParserStats
from wire.schemas import FixQuality, GnssFix, Signal

log = logging.getLogger(__name__)

SYNC = b"\xb5\x62"
HEADER_LEN = 6
#: Largest payload accepted by default; receivers' navigation output stays far below it.
MAX_PAYLOAD = 8192

Take = Literal["frame", "need_data", "bad_checksum", "truncated", "garbage", "unsupported"]

NAV, ESF, HNR = 0x01, 0x10, 0x28
NAV_PVT, ESF_MEAS, HNR_PVT = (NAV, 0x07), (ESF, 0x02), (HNR, 0x00)
NAN = float("nan")


@dataclass(frozen=True, slots=True)
class UbxMessage:
    """One UBX frame that passed its checksum: class, id and raw payload."""

    msg_class: int
    msg_id: int
    payload: bytes

    def __post_init__(self) -> None:
        if not (0 <= self.msg_class <= 255 and 0 <= self.msg_id <= 255):
            raise ValueError(f"UBX class and id are bytes, got {self.msg_class}, {self.msg_id}")
        if len(self.payload) > 0xFFFF:
            raise ValueError(f"UBX payload of {len(self.payload)} bytes exceeds 65535")

    @property
    def identity(self) -> str:
        """pyubx2's name for the message, e.g. ``NAV-PVT``; ``UBX-0xCC-0xII`` if unknown."""
        name = UBX_MSGIDS.get(bytes((self.msg_class, self.msg_id)))
        return name if name else f"UBX-0x{self.msg_class:02X}-0x{self.msg_id:02X}"

    def encode(self) -> bytes:
        return encode_ubx(self.msg_class, self.msg_id, self.payload)

    @classmethod
    def decode(cls, frame: bytes) -> UbxMessage:
        """Strict decoding of exactly one frame; :class:`FrameError` names what is wrong."""
        if len(frame) < HEADER_LEN + 2 or frame[:2] != SYNC:
            raise FrameError(f"not a UBX frame: {frame[:8].hex(' ')}")
        length = frame[4] | frame[5] << 8
        if len(frame) != HEADER_LEN + length + 2:
            raise FrameError(f"UBX length field says {length} payload bytes, frame holds "
                             f"{len(frame) - HEADER_LEN - 2}")
        if fletcher8(frame[2:-2]) != frame[-2:]:
            raise FrameError(f"UBX checksum {frame[-2:].hex()} does not match "
                             f"{fletcher8(frame[2:-2]).hex()}")
        return cls(frame[2], frame[3], bytes(frame[HEADER_LEN:-2]))


def fletcher8(data: bytes | bytearray) -> bytes:
    """The UBX checksum (CK_A, CK_B) of ``data`` (class, id, length and payload)."""
    return bytes((sum(data) & 0xFF, sum(accumulate(data)) & 0xFF))


def encode_ubx(msg_class: int, msg_id: int, payload: bytes = b"") -> bytes:
    """A complete UBX frame (for tests and simulators)."""
    if not (0 <= msg_class <= 255 and 0 <= msg_id <= 255):
        raise ValueError(f"UBX class and id are bytes, got {msg_class}, {msg_id}")
    if len(payload) > 0xFFFF:
        raise ValueError(f"UBX payload of {len(payload)} bytes exceeds 65535")
    body = struct.pack("<BBH", msg_class, msg_id, len(payload)) + payload
    return SYNC + body + fletcher8(body)


def take_frame(buf: bytes | bytearray, start: int,
               max_payload: int = MAX_PAYLOAD) -> tuple[Take, int, UbxMessage | None]:
    """Try to decode one frame whose sync is at ``buf[start]`` (see :func:`nmea.take_sentence`)."""
    n = len(buf)
    if n - start < HEADER_LEN:
        return "need_data", start, None
    length = buf[start + 4] | buf[start + 5] << 8
    if length > max_payload:
        return "garbage", start + 2, None
    end = start + HEADER_LEN + length + 2
    if n < end:
        return "need_data", start, None
    body = bytes(buf[start + 2 : end - 2])
    if sum(body) & 0xFF == buf[end - 2] and sum(accumulate(body)) & 0xFF == buf[end - 1]:
        return "frame", end, UbxMessage(body[0], body[1], body[4:])
    # A cut frame is usually followed by a whole one inside the span its length claimed.
    inner = buf.find(SYNC, start + 2, end)
    while inner >= 0:
        if _valid_within(buf, inner, end):
            return "truncated", inner, None
        inner = buf.find(SYNC, inner + 1, end)
    return "bad_checksum", start + 2, None


def claimed_end(buf: bytes | bytearray, start: int) -> int:
    """Where the frame at ``start`` ends if its length field is right (header must be present)."""
    return start + HEADER_LEN + (buf[start + 4] | buf[start + 5] << 8) + 2


def _valid_within(buf: bytes | bytearray, start: int, limit: int) -> bool:
    """True if a complete frame with a good checksum starts at ``start`` and ends by ``limit``."""
    if limit - start < HEADER_LEN + 2:
        return False
    end = claimed_end(buf, start)
    if end > limit:
        return False
    return fletcher8(buf[start + 2 : end - 2]) == buf[end - 2 : end]


class UbxParser(BufferedInput):
    """Sans-IO UBX framer: ``feed(bytes)``, then ``next_event()`` -> UbxMessage | NEED_DATA.

    ``max_buffer`` bounds the bytes held between calls (oldest dropped and
    counted in ``buffer_overflows`` when a caller feeds without draining).
    """

    protocol = "UBX"

    def __init__(self, *, max_payload: int = MAX_PAYLOAD,
                 max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        if not 0 <= max_payload <= 0xFFFF:
            raise ValueError(f"max_payload must be within 0..65535, got {max_payload}")
        if max_buffer < max_payload + HEADER_LEN + 2:
            raise ValueError(f"max_buffer ({max_buffer}) must hold one frame "
                             f"({max_payload + HEADER_LEN + 2})")
        self.stats = ParserStats()
        self._max_payload = max_payload
        self._init_buffer(max_buffer)
        self._rejected_end = 0  # end of the span claimed by the last rejected frame

    def _shifted(self, n: int) -> None:
        self._rejected_end -= n

    def next_event(self) -> UbxMessage | NeedData:
        buf, stats = self._buf, self.stats
        pos = self._pos
        while True:
            s = buf.find(SYNC, pos)
            if s < 0:
                # Keep a trailing B5: it may be the first half of the next sync.
                hold = buf.endswith(b"\xb5") and not self._eof
                stop = max(pos, len(buf) - 1 if hold else len(buf))
                stats.skipped_bytes += stop - pos
                self._pos = stop
                return NEED_DATA
            stats.skipped_bytes += s - pos
            outcome, pos, msg = take_frame(buf, s, self._max_payload)
            if msg is not None:
                stats.frames += 1
                self._pos = pos
                return msg
            if outcome == "need_data":
                if not self._eof:
                    self._pos = s
                    return NEED_DATA
                # The input ended inside this frame: give it up and rescan what follows it.
                outcome, pos = "truncated", s + 2
            if outcome == "garbage" or s < self._rejected_end:
                stats.skipped_bytes += pos - s
                continue
            if len(buf) - s >= HEADER_LEN:
                self._rejected_end = claimed_end(buf, s)
            if outcome == "bad_checksum":
                stats.bad_checksum += 1
            else:
                stats.truncated += 1

    def feed_eof(self) -> None:
        """The input ended: ``next_event()`` gives up a partial frame (counted as truncated)
        and still returns any whole frame found inside the span it claimed."""
        self._eof = True


# Records ---------------------------------------------------------------------------------

# ESF-MEAS data types (u-blox M8/F9 interface description, "ESF measurement data").
_ESF_SCALED: dict[int, tuple[str, float]] = {
    5: ("esf.gyro_z_dps", 2.0**-12),
    11: ("esf.speed_mps", 1e-3),
    12: ("esf.gyro_temp_c", 1e-2),
    13: ("esf.gyro_y_dps", 2.0**-12),
    14: ("esf.gyro_x_dps", 2.0**-12),
    16: ("esf.accel_x_mps2", 2.0**-10),
    17: ("esf.accel_y_mps2", 2.0**-10),
    18: ("esf.accel_z_mps2", 2.0**-10),
}
# Tick counters: bits 0-22 count, bit 23 set when moving backward.
_ESF_TICKS = {6: "fl", 7: "fr", 8: "rl", 9: "rr", 10: "speed"}


def _now(clock_ns: Callable[[], int] | int) -> int:
    return clock_ns if isinstance(clock_ns, int) else clock_ns()


def _utc_ns(m: Any) -> int:
    """UTC ns of a PVT solution from its date/time fields; 0 unless both are flagged valid."""
    if not (m.validDate and m.validTime):
        return 0
    try:
        t = dt.datetime(m.year, m.month, m.day, m.hour, m.min, m.second, tzinfo=dt.UTC)
    except ValueError:
        return 0
    return int(t.timestamp()) * 10**9 + int(m.nano)  # nano is signed: -1e9..1e9


def _quality(fix_type: int, fix_ok: int, diff: int, carrier: int) -> FixQuality:
    """u-blox fixType/flags -> NMEA-style fix quality."""
    if fix_type == 1:
        return FixQuality.DEAD_RECKONING
    if fix_type not in (2, 3, 4) or not fix_ok:
        return FixQuality.NONE
    if carrier == 2:
        return FixQuality.RTK_FIXED
    if carrier == 1:
        return FixQuality.RTK_FLOAT
    return FixQuality.DGPS if diff else FixQuality.GPS


def _pvt_fix(m: Any, now: int, quality: FixQuality, satellites: int) -> GnssFix:
    has_position = quality != FixQuality.NONE
    return GnssFix(
        timestamp_ns=now,
        time_utc_ns=_utc_ns(m),
        lat=float(m.lat) if has_position else NAN,
        lon=float(m.lon) if has_position else NAN,
        alt_m=m.hMSL / 1000.0 if has_position else NAN,
        speed_mps=m.gSpeed / 1000.0,
        course_deg=float(m.headMot),
        fix_quality=int(quality),
        satellites=min(max(int(satellites), 0), 255),
        hdop=NAN,
        h_acc_m=m.hAcc / 1000.0,
        v_acc_m=m.vAcc / 1000.0,
    )


def _esf_signals(m: Any, now: int) -> list[Signal]:
    out: list[Signal] = []
    for i in range(1, int(m.numMeas) + 1):
        raw = int(getattr(m, f"dataField_{i:02d}"))
        kind = int(getattr(m, f"dataType_{i:02d}"))
        scaled = _ESF_SCALED.get(kind)
        if scaled is not None:
            name, scale = scaled
            value = raw - (1 << 24) if raw & 0x800000 else raw  # 24-bit two's complement
            out.append(Signal(now, name, value * scale))
            continue
        wheel = _ESF_TICKS.get(kind)
        if wheel is not None:
            prefix = "esf.speed_tick" if wheel == "speed" else f"esf.wheel_tick_{wheel}"
            out.append(Signal(now, prefix, float(raw & 0x7FFFFF)))
            out.append(Signal(now, prefix + "_backward", float(raw >> 23 & 1)))
    return out


def ubx_to_records(msg: UbxMessage,
                   clock_ns: Callable[[], int] | int = time.time_ns) -> list[GnssFix | Signal]:
    """Records from one message: NAV-PVT and HNR-PVT -> GnssFix, ESF-MEAS -> Signal.

    ``clock_ns`` is the capture time in UTC ns, or a clock to read it from.
    Other messages give ``[]``. A payload of the wrong length for its type
    (or one pyubx2 cannot decode) raises :class:`FrameError`. In a GnssFix, ``alt_m`` is
    height above mean sea level, ``hdop`` is NaN (PVT messages carry only
    PDOP), HNR-PVT reports no satellite count (0), and position is NaN
    unless the receiver flags a valid fix.
    """
    key = (msg.msg_class, msg.msg_id)
    if key not in (NAV_PVT, HNR_PVT, ESF_MEAS):
        return []
    n = len(msg.payload)
    if key == ESF_MEAS:
        num_meas = (msg.payload[5] >> 3 & 0x1F) if n >= 6 else 0
        sizes: tuple[int, ...] = (8 + 4 * num_meas, 12 + 4 * num_meas)
    else:
        sizes = (84, 92) if key == NAV_PVT else (72,)
    if n not in sizes:
        raise FrameError(f"{msg.identity} payload of {n} bytes (expected "
                         f"{' or '.join(map(str, sizes))})")
    try:
        m = UBXMessage(msg.msg_class, msg.msg_id, GET, payload=msg.payload)
        now = _now(clock_ns)
        if key == NAV_PVT:
            q = _quality(m.fixType, m.gnssFixOk, m.diffSoln, m.carrSoln)
            return [_pvt_fix(m, now, q, m.numSV)]
        if key == HNR_PVT:
            q = _quality(m.gpsFix, m.GPSfixOK, m.DiffSoln, 0)
            return [_pvt_fix(m, now, q, 0)]
        return list(_esf_signals(m, now))
    except FrameError:
        raise
    except Exception as exc:  # pyubx2 raises its own and builtin errors on odd payloads
        raise FrameError(f"{msg.identity} payload of {len(msg.payload)} bytes does not "
                         f"decode: {exc}") from exc
