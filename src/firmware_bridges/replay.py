"""Replay of captures with their original timing, as async iterators.

:class:`Replay` takes ``(log_time_s, item)`` pairs (CAN frames from a
candump log, GNSS byte chunks, ...) and yields each item when its turn
comes: the spacing between items is the spacing in the log divided by
``speed`` (``math.inf``: as fast as possible). Timestamps that go backwards
(a clock jump in the log) count as no gap; ``max_gap_s`` caps long silences.
With ``loop=True`` the log starts again after ``lap_gap_s``.

GNSS logs carry no capture stamps, only the receiver's own time in the
messages. :func:`gnss_timeline` cuts a raw byte stream (NMEA, UBX and RTCM3
interleaved, as on a real port) into epochs and spaces them by the
receiver's time: NMEA UTC time of day (GGA, RMC, GNS, ZDA, GLL, ...) or UBX
iTOW (NAV-*, HNR-*). The cutting only finds message boundaries; every byte,
garbage included, is passed on untouched for the real parsers to judge.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from firmware_bridges.errors import ConfigError
from wire.schemas import CanFrame

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest capture file read into memory (after decompression).
DEFAULT_MAX_CAPTURE = 256 * 1024 * 1024
#: Items yielded back to back (when late) before the replay lets other tasks run.
_YIELD_EVERY = 256


def read_capture(path: Path | str, max_bytes: int = DEFAULT_MAX_CAPTURE) -> bytes:
    """The bytes of a capture file, gunzipped if it is gzip; at most ``max_bytes``."""
    p = Path(path)
    try:
        with open(p, "rb") as raw:
            magic = raw.read(2)
            raw.seek(0)
            stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
            data = stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(f"capture file {p} does not exist") from None
    except (OSError, EOFError) as exc:
        raise ConfigError(f"cannot read capture file {p}: {exc}") from exc
    if len(data) > max_bytes:
        raise ConfigError(f"capture file {p} is larger than {max_bytes} bytes")
    return data


@dataclass(slots=True)
class ReplayStats:
    items: int = 0
    laps: int = 0
    backward_steps: int = 0
    capped_gaps: int = 0


class Replay(Generic[T]):
    """Yield logged items with their original relative timing (scaled by ``speed``).

    ``source`` is an iterable of ``(log_time_s, item)``, or a callable
    returning a fresh one (needed with ``loop=True`` unless the iterable is
    a sequence). Timing is measured from the first item, on the event loop's
    monotonic clock; a consumer that falls behind gets the late items at once
    (the schedule does not slip), so the average rate stays right.
    """

    def __init__(
        self,
        source: Iterable[tuple[float, T]] | Callable[[], Iterable[tuple[float, T]]],
        *,
        speed: float = 1.0,
        loop: bool = False,
        lap_gap_s: float = 0.0,
        max_gap_s: float | None = None,
    ) -> None:
        if not speed > 0:
            raise ConfigError(f"replay speed must be > 0 (math.inf for no pacing), got {speed}")
        if lap_gap_s < 0 or (max_gap_s is not None and max_gap_s < 0):
            raise ConfigError("replay gaps must not be negative")
        if loop and not callable(source) and iter(source) is source:
            raise ConfigError("a looping replay needs a sequence or a callable, not an iterator")
        self._source = source
        self.speed = speed
        self.loop = loop
        self.lap_gap_s = lap_gap_s
        self.max_gap_s = max_gap_s
        self.stats = ReplayStats()
        self._it: Iterator[tuple[float, T]] | None = None
        self._prev: float | None = None
        self._elapsed = 0.0  # log seconds since the first item, gaps clamped
        self._start: float | None = None
        self._lap_items = 0
        self._unslept = 0

    def _open_lap(self) -> Iterator[tuple[float, T]]:
        src = self._source() if callable(self._source) else self._source
        return iter(src)

    def shift(self, seconds: float) -> None:
        """Delay the rest of the schedule (for example while a simulated adapter is closed)."""
        if self._start is not None:
            self._start += seconds

    @property
    def log_elapsed_s(self) -> float:
        """Log time replayed so far (across laps)."""
        return self._elapsed

    def __aiter__(self) -> Replay[T]:
        return self

    async def __anext__(self) -> T:
        loop = asyncio.get_running_loop()
        while True:
            if self._it is None:
                self._it = self._open_lap()
                self._lap_items = 0
            try:
                t, item = next(self._it)
            except StopIteration:
                self._it = None
                self.stats.laps += 1
                if not self.loop or self._lap_items == 0:
                    raise StopAsyncIteration from None
                self._prev = None
                self._elapsed += self.lap_gap_s
                continue
            break
        self._lap_items += 1
        if self._start is None:
            self._start = loop.time()
        elif self._prev is not None:
            gap = t - self._prev
            if gap < 0:
                self.stats.backward_steps += 1
                gap = 0.0
            elif self.max_gap_s is not None and gap > self.max_gap_s:
                self.stats.capped_gaps += 1
                gap = self.max_gap_s
            self._elapsed += gap
        self._prev = t
        self.stats.items += 1
        if not math.isinf(self.speed):
            delay = self._start + self._elapsed / self.speed - loop.time()
            if delay > 0:
                self._unslept = 0
                await asyncio.sleep(delay)
                return item
        self._unslept += 1
        if self._unslept >= _YIELD_EVERY:
            self._unslept = 0
            await asyncio.sleep(0)
        return item


def frame_timeline(frames: Iterable[CanFrame]) -> Iterator[tuple[float, CanFrame]]:
    """CAN frames (for example from a candump log) as ``(log_time_s, frame)`` pairs."""
    for f in frames:
        yield f.timestamp_ns / 1e9, f


# GNSS epochs ----------------------------------------------------------------------------------

#: NMEA sentence types (without talker) whose field N holds UTC hhmmss.ss.
_NMEA_TIME_FIELD = {b"GGA": 1, b"RMC": 1, b"GNS": 1, b"ZDA": 1, b"GST": 1, b"GBS": 1,
                    b"GRS": 1, b"GLL": 5}
#: UBX (class, id) -> offset of iTOW (ms of GPS week) in the payload, per the u-blox manuals.
_UBX_ITOW_OFFSET = {
    **{(0x01, i): 0 for i in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x11, 0x12, 0x20, 0x21,
                              0x22, 0x23, 0x24, 0x25, 0x26, 0x30, 0x35, 0x36, 0x43, 0x61)},
    (0x01, 0x13): 4, (0x01, 0x14): 4, (0x01, 0x3C): 4,  # HPPOSECEF, HPPOSLLH, RELPOSNED
    (0x28, 0x00): 0, (0x28, 0x01): 0,  # HNR-PVT, HNR-ATT
}
_UBX_MAX_PAYLOAD = 8192
_NMEA_MAX_LINE = 1024
#: A jump in receiver time larger than this (or backwards) re-anchors that clock.
_MAX_EPOCH_STEP_S = 60.0
_NO_TIME_EPOCH_S = 1.0


def strip_comment_header(data: bytes) -> bytes:
    """Drop the leading ``#`` comment lines gpsd's test logs start with (as gpsfake does)."""
    pos = 0
    while pos < len(data) and data[pos : pos + 1] == b"#":
        nl = data.find(b"\n", pos)
        if nl < 0:
            return b""
        pos = nl + 1
    return data[pos:]


def _nmea_time(line: bytes) -> float | None:
    star = line.find(b"*")
    body = line[1:star] if star > 0 else line[1:].rstrip(b"\r\n")
    fields = body.split(b",")
    addr = fields[0]
    if len(addr) < 5:
        return None
    idx = _NMEA_TIME_FIELD.get(addr[-3:])
    if idx is None or idx >= len(fields):
        return None
    f = fields[idx]
    if len(f) < 6 or not f[:6].isdigit():
        return None
    try:
        return int(f[0:2]) * 3600 + int(f[2:4]) * 60 + float(f[4:])
    except ValueError:
        return None


def _next_marker(data: bytes, pos: int) -> int:
    """Index of the next possible message start after ``pos`` (or len(data))."""
    best = len(data)
    for m in (b"$", b"!", b"\xb5\x62", b"\xd3"):
        i = data.find(m, pos, best)
        if i >= 0:
            best = i
    return best


def _split_messages(data: bytes) -> Iterator[tuple[int, int, str, float | None, bytes]]:
    """(start, end, domain, receiver time s, nmea address) for each message-ish piece."""
    n = len(data)
    pos = 0
    while pos < n:
        b = data[pos]
        if b in (0x24, 0x21):  # $ !
            nl = data.find(b"\n", pos, pos + _NMEA_MAX_LINE)
            end = n if nl < 0 else nl + 1
            if nl < 0 and n - pos > _NMEA_MAX_LINE:
                end = _next_marker(data, pos + 1)
            line = data[pos:end]
            comma = line.find(b",")
            addr = line[1:comma] if comma > 0 else b""
            yield pos, end, "nmea", _nmea_time(line), addr
            pos = end
        elif b == 0xB5 and data[pos + 1 : pos + 2] == b"\x62" and pos + 6 <= n:
            length = data[pos + 4] | data[pos + 5] << 8
            if length > _UBX_MAX_PAYLOAD:
                end = _next_marker(data, pos + 1)
                yield pos, end, "other", None, b""
                pos = end
                continue
            end = min(n, pos + 8 + length)
            t = None
            off = _UBX_ITOW_OFFSET.get((data[pos + 2], data[pos + 3]))
            if off is not None and length >= off + 4 and pos + 10 + off <= n:
                t = int.from_bytes(data[pos + 6 + off : pos + 10 + off], "little") / 1000.0
            yield pos, end, "ubx", t, b""
            pos = end
        elif b == 0xD3 and pos + 3 <= n and data[pos + 1] & 0xFC == 0:
            length = (data[pos + 1] & 0x03) << 8 | data[pos + 2]
            end = min(n, pos + 6 + length)
            yield pos, end, "rtcm3", None, b""
            pos = end
        else:
            end = _next_marker(data, pos + 1)
            yield pos, end, "other", None, b""
            pos = end


def gnss_timeline(data: bytes) -> list[tuple[float, bytes]]:
    """Cut a raw GNSS byte stream into epochs: ``[(log_time_s, bytes), ...]``.

    Each receiver clock (NMEA UTC time of day, UBX iTOW) is anchored where it
    first appears; a message whose clock says "later" starts a new epoch at
    that later time. Messages without a time (GSV, GSA, ESF-MEAS, RTCM3,
    garbage) stay in the current epoch. A log with no time at all is paced at
    one epoch per second, an epoch ending when its first sentence repeats.
    The chunks concatenate back to exactly ``data``.
    """
    out: list[tuple[float, bytes]] = []
    cur_t = 0.0
    cur_start = 0
    anchors: dict[str, tuple[float, float]] = {}  # domain -> (receiver time, log time)
    last: dict[str, float] = {}
    any_time = False
    first_addr: bytes | None = None
    cur_messages = 0

    def cut(at: int, new_t: float) -> None:
        nonlocal cur_start, cur_t, cur_messages, first_addr
        if at > cur_start:
            out.append((cur_t, data[cur_start:at]))
        cur_start, cur_t, cur_messages, first_addr = at, new_t, 0, None

    for start, _end, domain, t, addr in _split_messages(data):
        if t is not None:
            any_time = True
            if domain not in anchors:
                anchors[domain] = (t, cur_t)
            else:
                step = t - last[domain]
                if step < 0 or step > _MAX_EPOCH_STEP_S:
                    anchors[domain] = (t, cur_t + _NO_TIME_EPOCH_S)  # rollover or jump
            last[domain] = t
            rt0, lt0 = anchors[domain]
            when = lt0 + (t - rt0)
            if when > cur_t + 1e-6:
                cut(start, when)
        elif not any_time and domain == "nmea" and addr:
            if first_addr is None:
                first_addr = addr
            elif addr == first_addr and cur_messages > 0:
                cut(start, cur_t + _NO_TIME_EPOCH_S)
                first_addr = addr
        cur_messages += 1
    if cur_start < len(data):
        out.append((cur_t, data[cur_start:]))
    return out
