"""Reading the archive with the ``mcap`` package: by agent, stream and time, exactly once.

The index says which batches match a query and where their messages are (segment, channel
topic, message sequence range). :class:`ArchiveReader` opens each segment involved, reads
the matching channels (a finished segment through its summary and chunk indexes, a segment
still being written record by record up to its last complete chunk) and yields only the
messages of indexed batches, so a message written by a worker that crashed before its index
commit, or an orphan duplicate, is never returned. Messages come merged across segments in
log-time order.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Channel, Message, Schema

from ingest_server.archive.foxglove_schemas import (
    CAN_SCHEMA_NAME,
    CanFramesMessage,
    decode_can_frames,
)
from ingest_server.archive.recovery import scan_segment
from ingest_server.errors import ArchiveError
from ingest_server.index.queries import BatchRow, Index

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    schema: Schema | None
    channel: Channel
    message: Message

    @property
    def log_time(self) -> int:
        return int(self.message.log_time)


def _iter_segment(path: Path, ranges: dict[str, list[tuple[int, int]]],
                  start_ns: int | None, end_ns: int | None) -> Iterator[ArchivedMessage]:
    """Messages of ``path`` on the topics of ``ranges`` whose sequence is covered, by log time."""
    topics = sorted(ranges)

    def wanted(ch: Channel, m: Message) -> bool:
        if start_ns is not None and m.log_time < start_ns:
            return False
        if end_ns is not None and m.log_time > end_ns:
            return False
        return any(lo <= m.sequence <= hi for lo, hi in ranges.get(ch.topic, ()))

    if not path.exists():
        raise ArchiveError(f"segment {path} is missing")
    with open(path, "rb") as f:
        try:
            reader = make_reader(f)
            summary = reader.get_summary()
        except (McapError, ValueError, OSError, EOFError):
            summary = None
        if summary is not None:
            try:
                for schema, ch, m in reader.iter_messages(
                    topics=topics, start_time=start_ns,
                    end_time=None if end_ns is None else end_ns + 1, log_time_order=True,
                ):
                    if wanted(ch, m):
                        yield ArchivedMessage(schema, ch, m)
                return
            except McapError as exc:
                raise ArchiveError(f"segment {path}: {exc}") from exc
    # No summary: a segment still being written (or cut off); read what is complete.
    msgs, _ = scan_segment(path)
    picked = [ArchivedMessage(s, c, m) for s, c, m in msgs if c.topic in ranges and wanted(c, m)]
    picked.sort(key=lambda a: a.log_time)
    yield from picked


class ArchiveReader:
    """Queries over one archive (a data directory and its index)."""

    def __init__(self, data_dir: Path, index: Index) -> None:
        self.data_dir = data_dir
        self.index = index

    def batches(self, *, agent: str | None = None, stream: str | None = None,
                start_ns: int | None = None, end_ns: int | None = None) -> list[BatchRow]:
        return self.index.batch_rows(agent=agent, stream=stream, start_ns=start_ns, end_ns=end_ns)

    def messages(self, *, agent: str | None = None, stream: str | None = None,
                 start_ns: int | None = None, end_ns: int | None = None,
                 rows: list[BatchRow] | None = None, clip: bool = True,
                 ) -> Iterator[ArchivedMessage]:
        """Every archived message of matching batches, merged across segments by log time.

        With ``clip`` only messages whose own log time is in range; without, every message of
        every batch that overlaps the range (a CAN batch is one message for many frames).
        """
        if rows is None:
            rows = self.batches(agent=agent, stream=stream, start_ns=start_ns, end_ns=end_ns)
        by_segment: dict[str, dict[str, list[tuple[int, int]]]] = {}
        for r in rows:
            by_segment.setdefault(r.segment_path, {}).setdefault(r.topic, []).append(
                (r.msg_first, r.msg_last))
        iters = [
            _iter_segment(self.data_dir / path, ranges, start_ns if clip else None,
                          end_ns if clip else None)
            for path, ranges in sorted(by_segment.items())
        ]
        yield from heapq.merge(*iters, key=lambda a: a.log_time)

    def can_batches(self, *, agent: str | None = None, stream: str | None = None,
                    start_ns: int | None = None, end_ns: int | None = None,
                    rows: list[BatchRow] | None = None) -> Iterator[CanFramesMessage]:
        """Decoded ``cvis.CanFrames`` messages of matching batches (whole), in log-time order."""
        for am in self.messages(agent=agent, stream=stream, start_ns=start_ns, end_ns=end_ns,
                                rows=rows, clip=False):
            if am.schema is not None and am.schema.name == CAN_SCHEMA_NAME:
                yield decode_can_frames(am.message.data)

