"""What every sans-IO parser shares: the NEED_DATA sentinel, counters and a bounded buffer.

A parser is fed bytes with ``feed(data)`` and drained with ``next_event()``,
which returns a frame/record or :data:`NEED_DATA`. ``events()`` drains all
complete ones. Garbage is counted in :class:`ParserStats` and skipped up to
the next frame marker; it never raises and never stops the stream. No parser
module imports serial, socket or can I/O.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

T_co = TypeVar("T_co", covariant=True)


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData.NEED_DATA
NeedData = _NeedData

#: Default bound of a parser's input buffer: far above any frame, far below a memory problem.
DEFAULT_MAX_BUFFER = 64 * 1024


@dataclass(slots=True)
class ParserStats:
    """Counters every parser keeps. ``skipped_bytes`` counts bytes discarded while resynchronising."""

    frames: int = 0
    bad_checksum: int = 0
    truncated: int = 0
    skipped_bytes: int = 0
    buffer_overflows: int = 0
    unsupported: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: ParserStats) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


class Parser(Protocol[T_co]):
    stats: ParserStats

    def feed(self, data: bytes) -> None: ...

    def next_event(self) -> T_co | NeedData: ...


class BufferedInput:
    """The bounded input buffer of a binary or line parser.

    Unparsed bytes are ``_buf[_pos:]``. ``feed`` compacts what was consumed, appends, and when
    more than ``max_buffer`` bytes are held (a caller feeding without draining) drops the oldest
    ones, counting them in ``stats.buffer_overflows`` and ``stats.skipped_bytes``. A parser that
    keeps offsets into the buffer overrides :meth:`_shifted` to move them.
    """

    #: Names the protocol in log lines.
    protocol = "parser"
    stats: ParserStats

    def _init_buffer(self, max_buffer: int) -> None:
        self._max_buffer = max_buffer
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes held and not yet consumed."""
        return len(self._buf) - self._pos

    def _shifted(self, n: int) -> None:
        """``n`` bytes were removed from the front of the buffer."""

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._eof = False
        buf = self._buf
        if self._pos:
            n = self._pos
            del buf[:n]
            self._pos = 0
            self._shifted(n)
        buf += data
        excess = len(buf) - self._max_buffer
        if excess > 0:
            del buf[:excess]
            self._shifted(excess)
            self.stats.buffer_overflows += 1
            self.stats.skipped_bytes += excess
            log.warning("%s input buffer full: dropped %d oldest bytes", self.protocol, excess)


def events(parser: Parser[T_co]) -> Iterator[T_co]:
    """Yield every complete event a parser holds now."""
    while True:
        ev = parser.next_event()
        if ev is NEED_DATA:
            return
        yield ev


def parse_all(parser: Parser[Any], data: bytes, chunk: int = 4096) -> list[Any]:
    """Feed ``data`` in chunks and collect every event (for files and tests)."""
    out: list[Any] = []
    for i in range(0, len(data), chunk):
        parser.feed(data[i : i + chunk])
        out.extend(events(parser))
    return out
