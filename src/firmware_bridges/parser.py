"""What every sans-IO parser shares: the NEED_DATA sentinel, counters and a bounded buffer.

A parser is fed bytes with ``feed(data)`` and drained with ``next_event()``,
which returns a frame/record or :data:`NEED_DATA`. ``events()`` drains all
complete ones. Garbage is counted in :class:`ParserStats` and skipped up to
the next frame marker; it never raises and never stops the stream. No parser
module imports serial, socket or can I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

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
