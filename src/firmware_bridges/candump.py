"""candump ``-L`` log files: a sans-IO line parser, a formatter/writer and a streaming reader.

A line is ``(SECONDS.FRACTION) CHANNEL FRAME`` with an optional fourth token
``R`` (received) or ``T`` (sent by this node, python-can writes it); FRAME is
(can-utils ``lib.c`` notation):

* ``123#0011AA`` standard id (3 hex digits), ``1234ABCD#..`` extended (8);
* ``123#R`` / ``123#R5`` remote frame, with an optional DLC digit;
* ``123##1DDDD`` CAN FD, the hex digit after ``##`` holds BRS (1) and ESI (2);
* ``20000080#..`` an error frame: 8 digits with the error flag 0x20000000
  (stored as an error frame whose id is the error class, extended form);
* ``123#1122334455667788_C`` a classic frame whose raw DLC is 9-15.

``timestamp_ns`` is the log's decimal seconds converted exactly (the digits
are parsed as integers, no float rounding), unless the parser was given a
``clock_ns``, in which case it is the host receive time (one reading per
``feed``). :func:`format_frame` writes microseconds (six digits), as candump
does, without zero-padding the seconds, so every line of a candump or
python-can log comes back byte for byte. A bad line is skipped and counted
(``stats.skipped_bytes``); a damaged line that holds the start of another
(a lost newline) is parsed from its last ``(``.
"""

from __future__ import annotations

import binascii
import gzip
import io
import logging
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from firmware_bridges.errors import ConfigError, FrameError
from firmware_bridges.parser import NEED_DATA, NeedData, ParserStats
from wire.schemas.can_frames import BRS, ERROR, ESI, EXTENDED, FD, FD_LENGTHS, REMOTE, TX, CanFrame

log = logging.getLogger(__name__)

#: Default bound of one line; the longest valid line (CAN FD, 64 bytes) is under 200 bytes.
DEFAULT_MAX_LINE = 512
#: Bytes read from a file at a time.
READ_CHUNK = 64 * 1024
#: Longest channel name accepted (Linux allows 15; converted logs use longer ones).
MAX_CHANNEL = 64

CAN_ERR_FLAG = 0x20000000
_NS = 1_000_000_000
_HEX_HASH = b"0123456789abcdefABCDEF#"
_HEX = b"0123456789abcdefABCDEF"
_FD_LEN_SET = frozenset(FD_LENGTHS)
_MAX_CACHED_CHANNELS = 256
_GZIP_MAGIC = b"\x1f\x8b"


class CandumpParser:
    """Sans-IO candump ``-L`` parser: ``feed(bytes)``, ``next_event()`` -> CanFrame or NEED_DATA.

    Complete lines are parsed when fed; at most ``max_line`` bytes of an
    unfinished line are kept (``buffered``). Call :meth:`flush` at the end of
    a file: an unterminated last line is counted as truncated, not guessed at.
    Parsed frames wait in a queue until drained.
    """

    def __init__(
        self, clock_ns: Callable[[], int] | None = None, *, max_line: int = DEFAULT_MAX_LINE
    ) -> None:
        if max_line < 64:
            raise ConfigError(f"max_line {max_line} is too small for a candump line")
        self.stats = ParserStats()
        self._clock = clock_ns
        self._max_line = max_line
        self._tail = b""
        self._events: deque[CanFrame] = deque()
        self._channels: dict[bytes, str] = {}

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished line (never more than ``max_line``)."""
        return len(self._tail)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        buf = self._tail + bytes(data) if self._tail else bytes(data)
        lines = buf.split(b"\n")
        tail = lines.pop()
        if len(tail) > self._max_line:
            drop = len(tail) - self._max_line
            self.stats.skipped_bytes += drop
            self.stats.buffer_overflows += 1
            log.debug("candump: %d bytes without a newline dropped", drop)
            tail = tail[drop:]
        self._tail = tail
        if lines:
            self._parse(lines, self._clock() if self._clock is not None else None)

    def flush(self) -> None:
        """End of input: an unfinished last line is dropped and counted as truncated."""
        if self._tail.strip():
            self.stats.truncated += 1
            self.stats.skipped_bytes += len(self._tail)
            log.warning("candump: last line has no newline, dropped (%d bytes)", len(self._tail))
        self._tail = b""

    def next_event(self) -> CanFrame | NeedData:
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    # -- parsing -------------------------------------------------------------------------

    def _parse(self, lines: list[bytes], now: int | None) -> None:
        events = self._events
        append = events.append
        channels = self._channels
        good = 0
        for line in lines:
            # Hot path: "(S.UUUUUU) ch III#DD.." with hex-only frame text.
            parts = line.split()
            if len(parts) == 3:
                ts, chb, fr = parts
                try:
                    if ts[0] == 40 and ts[-1] == 41 and not fr.translate(None, _HEX_HASH):
                        dot = ts.find(b".")
                        digits = ts[1:dot] + ts[dot + 1 : -1]
                        if dot > 1 and len(ts) - dot == 8 and digits.isdigit():
                            h = fr.find(b"#")
                            rest = fr[h + 1 :]
                            if (h == 3 or h == 8) and b"#" not in rest and len(rest) <= 16:
                                arb = int(fr[:h], 16)
                                if h == 3:
                                    flags = 0
                                    ok = arb <= 0x7FF
                                else:
                                    flags = EXTENDED
                                    ok = arb <= 0x1FFFFFFF
                                ch = channels.get(chb)
                                if ok and ch is not None:
                                    payload = binascii.a2b_hex(rest)
                                    t = int(digits) * 1000 if now is None else now
                                    append(CanFrame(t, ch, arb, flags, len(payload), payload))
                                    good += 1
                                    continue
                except ValueError:
                    pass
            frame = self._slow(line, parts, now)
            if frame is not None:
                append(frame)
                good += 1
        self.stats.frames += good

    def _slow(self, line: bytes, parts: list[bytes], now: int | None) -> CanFrame | None:
        """Every line the hot path did not take: other notations, blank lines, garbage."""
        if not parts:
            return None  # blank line
        frame = self._line(parts, now)
        if frame is not None:
            return frame
        # A lost newline glues a damaged line to the start of the next one.
        pos = line.rfind(b"(")
        if pos > 0:
            frame = self._line(line[pos:].split(), now)
            if frame is not None:
                self.stats.skipped_bytes += pos
                return frame
        if len(parts) < 3 and line.lstrip().startswith(b"("):
            self.stats.truncated += 1
        self.stats.skipped_bytes += len(line) + 1
        return None

    def _line(self, parts: list[bytes], now: int | None) -> CanFrame | None:
        try:
            return self._parse_parts(parts, now)
        except ValueError:  # bad hex or number, or a frame CanFrame refuses
            return None

    def _parse_parts(self, parts: list[bytes], now: int | None) -> CanFrame | None:
        flags = 0
        if len(parts) == 4:
            if parts[3] == b"T":
                flags = TX
            elif parts[3] != b"R":
                return None
        elif len(parts) != 3:
            return None
        ts, chb, fr = parts[0], parts[1], parts[2]
        if len(ts) < 4 or ts[0] != 40 or ts[-1] != 41:
            return None
        sec, dot, frac = ts[1:-1].partition(b".")
        if not (dot and sec.isdigit() and frac.isdigit()):
            return None
        t = int(sec) * _NS + int(frac[:9].ljust(9, b"0")) if now is None else now
        ch = self._channel(chb)
        if ch is None:
            return None
        h = fr.find(b"#")
        if h not in (3, 8) or fr[:h].translate(None, _HEX):
            return None
        arb = int(fr[:h], 16)
        if h == 8:
            if arb & CAN_ERR_FLAG:
                flags |= ERROR | EXTENDED
                arb &= ~CAN_ERR_FLAG
            else:
                flags |= EXTENDED
        rest = fr[h + 1 :]
        if rest[:1] in (b"R", b"r"):
            # Remote: optional DLC digit 0-8, then an optional raw DLC "_X" after an 8.
            body = rest[1:]
            dlc = 0
            if body:
                dlc = int(body[:1], 16)
                if dlc > 8 or body[:1].translate(None, _HEX):
                    return None
                if len(body) > 1:
                    if dlc != 8 or len(body) != 3 or body[1:2] != b"_":
                        return None
                    dlc = int(body[2:], 16)
            return CanFrame(t, ch, arb, flags | REMOTE, dlc, b"")
        if rest[:1] == b"#":
            if len(rest) < 2:
                return None
            fd_flags = int(rest[1:2], 16)
            flags |= FD | (BRS if fd_flags & 1 else 0) | (ESI if fd_flags & 2 else 0)
            payload = _hex_data(rest[2:])
            if len(payload) not in _FD_LEN_SET:
                return None
            return CanFrame(t, ch, arb, flags, FD_LENGTHS.index(len(payload)), payload)
        raw_dlc = -1
        if b"_" in rest:
            rest, _, dlc_text = rest.partition(b"_")
            if len(dlc_text) != 1:
                return None
            raw_dlc = int(dlc_text, 16)
        payload = _hex_data(rest)
        n = len(payload)
        if n > 8:
            return None
        if raw_dlc >= 0:
            if n != 8 or raw_dlc < 9:
                return None
            return CanFrame(t, ch, arb, flags, raw_dlc, payload)
        return CanFrame(t, ch, arb, flags, n, payload)

    def _channel(self, chb: bytes) -> str | None:
        ch = self._channels.get(chb)
        if ch is not None:
            return ch
        if len(chb) > MAX_CHANNEL or not chb.isascii() or not chb.decode("ascii").isprintable():
            return None
        ch = chb.decode("ascii")
        if len(self._channels) < _MAX_CACHED_CHANNELS:
            self._channels[chb] = ch
        return ch


def _hex_data(text: bytes) -> bytes:
    if b"." in text:  # cansend's optional byte separators
        text = text.replace(b".", b"")
    return binascii.a2b_hex(text)


# -- writing ------------------------------------------------------------------------------


def format_frame(frame: CanFrame) -> str:
    """One frame as a candump ``-L`` line (no newline); the inverse of the parser."""
    ts = frame.timestamp_ns
    if ts < 0:
        raise ConfigError(f"candump cannot write a negative timestamp ({ts} ns)")
    channel = frame.channel
    if not channel or not channel.isprintable() or " " in channel:
        raise ConfigError(f"candump cannot write channel name {channel!r}")
    flags = frame.flags
    arb = frame.arbitration_id
    if flags & ERROR:
        ident = f"{arb | CAN_ERR_FLAG:08X}"
    elif flags & EXTENDED:
        ident = f"{arb:08X}"
    else:
        ident = f"{arb:03X}"
    dlc = frame.dlc
    if flags & REMOTE:
        if dlc == 0:
            body = "R"
        elif dlc <= 8:
            body = f"R{dlc}"
        else:
            body = f"R8_{dlc:X}"
    elif flags & FD:
        fd_flags = (1 if flags & BRS else 0) | (2 if flags & ESI else 0)
        body = f"#{fd_flags:X}{frame.data.hex().upper()}"
    elif dlc > 8:
        body = f"{frame.data.hex().upper()}_{dlc:X}"
    else:
        body = frame.data.hex().upper()
    sec, rem = divmod(ts, _NS)
    line = f"({sec}.{rem // 1000:06d}) {channel} {ident}#{body}"
    return line + " T" if flags & TX else line


class CandumpWriter:
    """Writes frames as candump ``-L`` lines to a text or binary file object."""

    def __init__(self, fp: IO[str] | IO[bytes]) -> None:
        self._fp = fp
        self._text = isinstance(fp, io.TextIOBase) or (
            not isinstance(fp, (io.RawIOBase, io.BufferedIOBase)) and "b" not in getattr(fp, "mode", "")
        )
        self.frames = 0

    def write(self, frame: CanFrame) -> None:
        line = format_frame(frame) + "\n"
        if self._text:
            self._fp.write(line)  # type: ignore[call-overload]
        else:
            self._fp.write(line.encode("ascii"))  # type: ignore[arg-type]
        self.frames += 1

    def write_all(self, frames: Iterator[CanFrame] | list[CanFrame]) -> None:
        for frame in frames:
            self.write(frame)


# -- reading files -------------------------------------------------------------------------


def read_candump(
    path: str | os.PathLike[str],
    max_line: int = DEFAULT_MAX_LINE,
    *,
    parser: CandumpParser | None = None,
    chunk_size: int = READ_CHUNK,
) -> Iterator[CanFrame]:
    """Stream the frames of a candump log, plain or gzip (by magic bytes or ``.gz``).

    Memory stays bounded by ``chunk_size`` and ``max_line`` whatever the file
    size. Pass a ``parser`` to read its counters afterwards. A gzip file cut
    short (a recording that lost power) ends the stream with the frames read
    so far and counts ``truncated``; a corrupt one raises :class:`FrameError`.
    """
    p = Path(path)
    if parser is None:
        parser = CandumpParser(max_line=max_line)
    try:
        raw = p.open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot open candump log {p}: {exc.strerror or exc}") from exc
    with raw:
        magic = raw.read(2)
        raw.seek(0)
        stream: IO[bytes] = (
            gzip.GzipFile(fileobj=raw, mode="rb") if magic == _GZIP_MAGIC else raw  # type: ignore[assignment]
        )
        if p.suffix == ".gz" and magic != _GZIP_MAGIC:
            log.warning("%s ends in .gz but is not gzip; reading it as plain text", p)
        with stream:
            while True:
                try:
                    chunk = stream.read(chunk_size)
                except EOFError:
                    parser.stats.truncated += 1
                    log.warning("%s: gzip stream is cut short; ending with the frames read", p)
                    break
                except (gzip.BadGzipFile, zlib.error, OSError) as exc:
                    raise FrameError(f"{p}: corrupt gzip stream ({exc})") from exc
                if not chunk:
                    break
                parser.feed(chunk)
                while True:
                    ev = parser.next_event()
                    if ev is NEED_DATA:
                        break
                    yield ev
        parser.flush()
