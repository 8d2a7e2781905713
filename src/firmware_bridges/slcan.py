"""SLCAN (Lawicel ASCII) over a serial line: a sans-IO parser and the commands we send.

What a CAN adapter sends, one item per ``\\r``-terminated line:

* ``tIIILDD..`` standard data frame, ``TIIIIIIIILDD..`` extended, ``r``/``R``
  remote (no data bytes); ``L`` is the DLC digit. The CAN FD extension some
  adapters speak (CANable 2, slcan-fd firmware) is accepted too: ``d``/``D``
  FD frames, ``b``/``B`` FD with bit-rate switch, DLC digit 0-F.
* optionally four hex digits after the data: the adapter's millisecond
  timestamp (``Z1`` turns it on), which wraps at 60,000 (0-0xEA5F).
* ``\\r`` alone: the previous command succeeded; ``\\a`` (bell, no ``\\r``):
  it failed; ``z``/``Z``: a transmit command was queued; ``Vhhff``/``vxxxx``
  version, ``Nxxxx`` serial number, ``Fxx`` status flags.

Timestamps. ``timestamp_ns`` is the host receive time: ``clock_ns()`` read
once per :meth:`SlcanParser.feed` (one read from the port). The adapter's own
stamp is not Unix time and wraps every minute, so it is never used as a time
of day; it is used only to space the frames that arrived in one read: the
last stamped frame of a read gets the receive time and each earlier one is
placed before it by the stamp differences (taken modulo 60,000 ms). No frame
is placed before the last frame of the previous read, so times never go
backwards because of the back-filling (a host clock that is stepped back
still shows, and is not hidden).

Garbage (line noise, a half line after the port opened, a dropped byte)
never raises: the bytes are counted in ``stats.skipped_bytes`` (and
``truncated`` for a frame line that is too short) and parsing goes on with
the next line, or with the last frame marker inside a damaged line.
"""

from __future__ import annotations

import binascii
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from firmware_bridges.errors import ConfigError
from firmware_bridges.parser import NEED_DATA, NeedData, ParserStats
from wire.schemas.can_frames import BRS, ERROR, EXTENDED, FD, FD_LENGTHS, REMOTE, CanFrame

log = logging.getLogger(__name__)

#: Longest valid line: marker, 8 id digits, DLC digit, 64 data bytes in hex, 4 timestamp digits.
MAX_LINE = 1 + 8 + 1 + 2 * 64 + 4
#: The adapter's millisecond timestamp counts 0..59999 and wraps.
TIMESTAMP_WRAP_MS = 60_000

#: Bit rate -> the ``Sn`` command that selects it.
BITRATE_COMMANDS: dict[int, bytes] = {
    10_000: b"S0",
    20_000: b"S1",
    50_000: b"S2",
    100_000: b"S3",
    125_000: b"S4",
    250_000: b"S5",
    500_000: b"S6",
    800_000: b"S7",
    1_000_000: b"S8",
}

_HEX = b"0123456789abcdefABCDEF"
_NIBBLE = {c: int(chr(c), 16) for c in _HEX}
# Frame marker -> (flags, id digits). FD markers ``b``/``d``/``B``/``D`` are also hex
# digits, so they are recognised only at the start of a line.
_KINDS: dict[int, tuple[int, int]] = {
    ord("t"): (0, 3),
    ord("T"): (EXTENDED, 8),
    ord("r"): (REMOTE, 3),
    ord("R"): (EXTENDED | REMOTE, 8),
    ord("d"): (FD, 3),
    ord("D"): (FD | EXTENDED, 8),
    ord("b"): (FD | BRS, 3),
    ord("B"): (FD | BRS | EXTENDED, 8),
}
_RESYNC_MARKERS = (b"t", b"T", b"r", b"R")
_BELL = 7
_LF = 10
# Replies: first byte -> total line length (including the letter); "F" carries hex.
_REPLIES: dict[int, int] = {ord("z"): 1, ord("Z"): 1, ord("V"): 5, ord("v"): 5, ord("N"): 5, ord("F"): 3}


@dataclass(frozen=True, slots=True)
class SlcanReply:
    """The adapter's answer to a command: ``ok`` False is the bell.

    ``text`` is the reply line without its terminator: ``""`` for a bare
    acknowledgement, ``"z"``/``"Z"`` for a queued transmit, ``"V1013"`` for a
    version, ``"NA1B2"`` for a serial number, ``"F00"`` for status flags.
    """

    ok: bool
    text: str


_ACK = SlcanReply(True, "")
_BELL_REPLY = SlcanReply(False, "")

# A parsed frame before its time is known: (flags, arbitration_id, dlc, data, stamp_ms or -1).
_Pending = tuple[int, int, int, bytes, int]


class SlcanParser:
    """Sans-IO SLCAN parser: ``feed(bytes)``, then ``next_event()`` until ``NEED_DATA``.

    Events are :class:`~wire.schemas.CanFrame` (on ``channel``) and
    :class:`SlcanReply`. Complete lines are parsed as soon as they are fed;
    only the incomplete last line is kept, and at most :data:`MAX_LINE` bytes
    of it (``buffered`` says how many). Parsed events wait in a queue until
    drained, so a caller holds no more events than it fed bytes for.
    """

    def __init__(
        self,
        channel: str = "slcan0",
        clock_ns: Callable[[], int] = time.time_ns,
        *,
        max_line: int = MAX_LINE,
    ) -> None:
        if max_line < MAX_LINE:
            raise ConfigError(f"max_line {max_line} is below the longest SLCAN line ({MAX_LINE})")
        self.channel = channel
        self.stats = ParserStats()
        self._clock = clock_ns
        self._max_line = max_line
        self._tail = b""
        self._events: deque[CanFrame | SlcanReply] = deque()
        self._last_ts: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete line (never more than ``max_line``)."""
        return len(self._tail)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        now = self._clock()
        buf = self._tail + bytes(data) if self._tail else bytes(data)
        if b"\a" in buf:
            # The bell ends a reply on its own (no CR follows it).
            buf = buf.replace(b"\a", b"\a\r")
        lines = buf.split(b"\r")
        tail = lines.pop()
        if len(tail) > self._max_line:
            drop = len(tail) - self._max_line
            self.stats.skipped_bytes += drop
            self.stats.buffer_overflows += 1
            log.debug("slcan %s: %d bytes without a line end dropped", self.channel, drop)
            tail = tail[drop:]
        self._tail = tail
        if lines:
            self._parse(lines, now)

    def next_event(self) -> CanFrame | SlcanReply | NeedData:
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    # -- parsing -------------------------------------------------------------------------

    def _parse(self, lines: list[bytes], now: int) -> None:
        stats = self.stats
        kinds = _KINDS
        items: list[_Pending | SlcanReply] = []
        append = items.append
        stamped = False
        for line in lines:
            if not line:
                append(_ACK)
                continue
            if line[-1] == _BELL:
                if len(line) > 1:
                    stats.skipped_bytes += len(line) - 1
                append(_BELL_REPLY)
                continue
            if line[0] == _LF:
                # Tolerate CR LF line ends from adapters that send them.
                line = line.lstrip(b"\n")
                if not line:
                    append(_ACK)
                    continue
            kind = kinds.get(line[0])
            if kind is not None:
                fr = self._frame(line, kind)
                if fr is None:
                    fr = self._resync(line)
                if fr is not None:
                    if fr[4] >= 0:
                        stamped = True
                    append(fr)
                continue
            reply = self._reply(line)
            if reply is not None:
                append(reply)
                continue
            fr = self._resync(line)
            if fr is not None:
                if fr[4] >= 0:
                    stamped = True
                append(fr)
        self._emit(items, now, stamped)

    def _frame(self, line: bytes, kind: tuple[int, int]) -> _Pending | None:
        """Parse one frame line, or return None (counting nothing: the caller resyncs)."""
        flags, digits = kind
        n = len(line)
        dlc_at = 1 + digits
        if n <= dlc_at:
            return None
        dlc = _NIBBLE.get(line[dlc_at], -1)
        if dlc < 0:
            return None
        if flags & FD:
            length = FD_LENGTHS[dlc]
        elif dlc > 8:
            return None
        else:
            length = 0 if flags & REMOTE else dlc
        end = dlc_at + 1 + 2 * length
        if n == end:
            stamp = -1
        elif n == end + 4:
            stamp = -2
        else:
            return None
        body = line[1:]
        if body.translate(None, _HEX):
            return None
        arb = int(line[1:dlc_at], 16)
        if arb > (0x1FFFFFFF if digits == 8 else 0x7FF):
            return None
        if stamp == -2:
            stamp = int(line[end:], 16)
        data = binascii.a2b_hex(line[dlc_at + 1 : end]) if length else b""
        return (flags, arb, dlc, data, stamp)

    def _resync(self, line: bytes) -> _Pending | None:
        """A damaged line: try from its last frame marker, count what is thrown away."""
        stats = self.stats
        pos = max(line.rfind(m) for m in _RESYNC_MARKERS)
        if pos > 0:
            fr = self._frame(line[pos:], _KINDS[line[pos]])
            if fr is not None:
                stats.skipped_bytes += pos
                return fr
        kind = _KINDS.get(line[0])
        if kind is not None and len(line) < self._min_length(line, kind):
            stats.truncated += 1
        stats.skipped_bytes += len(line) + 1
        return None

    @staticmethod
    def _min_length(line: bytes, kind: tuple[int, int]) -> int:
        flags, digits = kind
        dlc_at = 1 + digits
        if len(line) <= dlc_at:
            return dlc_at + 1
        dlc = _NIBBLE.get(line[dlc_at], 0)
        if flags & FD:
            return dlc_at + 1 + 2 * FD_LENGTHS[dlc]
        return dlc_at + 1 + (0 if flags & REMOTE else 2 * min(dlc, 8))

    def _reply(self, line: bytes) -> SlcanReply | None:
        size = _REPLIES.get(line[0])
        if size is None or len(line) != size:
            return None
        if line[0] == ord("F") and line[1:].translate(None, _HEX):
            return None
        if not line.isalnum():
            return None
        return SlcanReply(True, line.decode("ascii"))

    def _emit(self, items: list[_Pending | SlcanReply], now: int, stamped: bool) -> None:
        channel = self.channel
        events = self._events
        last = self._last_ts
        # A host clock stepped back since the last read disables the floor.
        floor = last if last is not None and last <= now else None
        times: dict[int, int] = {}
        if stamped:
            # Back-fill: the last stamped frame of this read arrived at `now`; earlier
            # ones are spaced before it by the adapter's (wrapping) millisecond stamps.
            t_next = now
            s_next = -1
            for i in range(len(items) - 1, -1, -1):
                it = items[i]
                if type(it) is tuple and it[4] >= 0:
                    s = it[4]
                    t = now if s_next < 0 else t_next - ((s_next - s) % TIMESTAMP_WRAP_MS) * 1_000_000
                    if floor is not None and t < floor:
                        t = floor
                    times[i] = t
                    t_next, s_next = t, s
        frames = 0
        for i, it in enumerate(items):
            if type(it) is tuple:
                flags, arb, dlc, data, stamp = it
                ts = times[i] if stamp >= 0 else now
                events.append(CanFrame(ts, channel, arb, flags, dlc, data))
                frames += 1
            else:
                events.append(it)  # type: ignore[arg-type]
        if frames:
            self.stats.frames += frames
            self._last_ts = now


# -- encoders -----------------------------------------------------------------------------


def adapter_timestamp_ms(timestamp_ns: int) -> int:
    """The stamp an adapter with timestamps on would put on a frame at ``timestamp_ns``."""
    return (timestamp_ns // 1_000_000) % TIMESTAMP_WRAP_MS


def encode_frame(frame: CanFrame, *, timestamp_ms: int | None = None) -> bytes:
    """One frame as the adapter sends it (or as we send it to transmit), ending in ``\\r``.

    Error frames and classic frames with a DLC above 8 have no SLCAN form
    (:class:`ConfigError`); the FD error state indicator and the TX flag are not carried.
    """
    flags = frame.flags
    if flags & ERROR:
        raise ConfigError("SLCAN has no form for CAN error frames")
    ext = flags & EXTENDED
    if flags & FD:
        if flags & BRS:
            marker = b"B" if ext else b"b"
        else:
            marker = b"D" if ext else b"d"
    elif frame.dlc > 8:
        raise ConfigError(f"SLCAN carries DLC 0-8 for classic CAN frames, not {frame.dlc}")
    elif flags & REMOTE:
        marker = b"R" if ext else b"r"
    else:
        marker = b"T" if ext else b"t"
    out = marker + (b"%08X%X" if ext else b"%03X%X") % (frame.arbitration_id, frame.dlc)
    if frame.data:
        out += binascii.b2a_hex(frame.data).upper()
    if timestamp_ms is not None:
        if not 0 <= timestamp_ms < TIMESTAMP_WRAP_MS:
            raise ConfigError(f"SLCAN timestamp {timestamp_ms} ms is outside 0-{TIMESTAMP_WRAP_MS - 1}")
        out += b"%04X" % timestamp_ms
    return out + b"\r"


def encode_frames(frames: Iterable[CanFrame], *, timestamps: bool = False) -> bytes:
    """Many frames as one adapter byte stream; with ``timestamps`` each carries its ms stamp."""
    if timestamps:
        return b"".join(
            encode_frame(f, timestamp_ms=adapter_timestamp_ms(f.timestamp_ns)) for f in frames
        )
    return b"".join(encode_frame(f) for f in frames)


def cmd_open() -> bytes:
    """Open the channel (normal mode)."""
    return b"O\r"


def cmd_listen_only() -> bytes:
    """Open the channel listen-only: receive, never acknowledge or transmit."""
    return b"L\r"


def cmd_close() -> bytes:
    return b"C\r"


def cmd_bitrate(bitrate: int) -> bytes:
    """``S0``-``S8`` for 10 kbit/s .. 1 Mbit/s; send it while the channel is closed."""
    try:
        return BITRATE_COMMANDS[bitrate] + b"\r"
    except KeyError:
        known = ", ".join(str(b) for b in BITRATE_COMMANDS)
        raise ConfigError(f"SLCAN has no bit rate {bitrate} (choose one of {known})") from None


def cmd_timestamps(on: bool) -> bytes:
    """Turn the adapter's millisecond timestamps on (``Z1``) or off (``Z0``)."""
    return b"Z1\r" if on else b"Z0\r"


def cmd_version() -> bytes:
    return b"V\r"


def cmd_serial() -> bytes:
    return b"N\r"


def cmd_status() -> bytes:
    return b"F\r"
