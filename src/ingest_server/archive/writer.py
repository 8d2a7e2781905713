"""Writing MCAP segments with foxglove-sdk: one writer process per file, zstd chunks, fsync.

A worker owns one open segment at a time, ``segments/YYYY-MM-DD/<utc>-w<worker>-<ns>.mcap``
under the data directory, so no two processes ever write one file. Messages are logged on
foxglove-sdk channels (one per agent and stream, topic ``/{agent}/{stream}``, see
:mod:`ingest_server.archive.foxglove_schemas`); :meth:`SegmentWriter.sync` ends the current
chunk (``MCAPWriter.flush()``) and fsyncs the file: that is the durability point after which
the index commit and the acks follow.

foxglove-sdk numbers the messages of each channel 1, 2, 3... per file; the writer counts the
same numbers so each batch's ``msg_first..msg_last`` can go into the index, and recovery and
readers take exactly the messages of indexed batches.

:class:`ArchiveWriter` adds rotation by duration and size and the bookkeeping of a segment's
time range, size and counts.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import foxglove
from foxglove.mcap import MCAPCompression, MCAPWriteOptions

from ingest_server.archive.foxglove_schemas import ChannelSpec, Messages
from ingest_server.errors import ArchiveError
from ingest_server.index.queries import Index, SegmentUpdate

log = logging.getLogger(__name__)

SEGMENTS_DIR = "segments"
PROFILE = "cvis"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a batch's messages went: channel topic and MCAP sequence numbers (inclusive)."""

    topic: str
    msg_first: int
    msg_last: int
    log_first_ns: int
    log_last_ns: int


class ChannelSet:
    """foxglove-sdk channels of one worker, created on first use, shared by its segments."""

    def __init__(self) -> None:
        self.context = foxglove.Context()
        self._channels: dict[str, foxglove.Channel] = {}

    def get(self, topic: str, spec: ChannelSpec, metadata: dict[str, str]) -> foxglove.Channel:
        ch = self._channels.get(topic)
        if ch is None:
            ch = foxglove.Channel(topic, schema=spec.schema, message_encoding=spec.message_encoding,
                                  context=self.context, metadata=metadata)
            self._channels[topic] = ch
        return ch


class SegmentWriter:
    """One MCAP file being written."""

    def __init__(self, path: Path, channels: ChannelSet, *, chunk_bytes: int = 4 << 20,
                 compression_level: int = 0) -> None:
        self.path = path
        self._channels = channels
        opts = MCAPWriteOptions(
            compression=MCAPCompression.Zstd, profile=PROFILE, chunk_size=chunk_bytes,
            compression_level=compression_level, compression_threads=0,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = foxglove.open_mcap(str(path), context=channels.context,
                                              writer_options=opts)
        except Exception as exc:  # foxglove raises its own FoxgloveError
            raise ArchiveError(f"cannot create segment {path}: {exc}") from exc
        self._fd = os.open(path, os.O_RDONLY)
        fsync_dir(path.parent)
        self._seq: dict[str, int] = {}
        self.messages = 0
        self.closed = False

    def write(self, topic: str, spec: ChannelSpec, metadata: dict[str, str],
              messages: Messages) -> tuple[int, int]:
        """Log messages on ``topic``; returns the first and last MCAP sequence numbers used."""
        ch = self._channels.get(topic, spec, metadata)
        first = self._seq.get(topic, 0) + 1
        for data, log_time in messages:
            ch.log(data, log_time=log_time)
        last = first + len(messages) - 1
        self._seq[topic] = last
        self.messages += len(messages)
        return first, last

    def sync(self) -> int:
        """End the chunk, write it out and fsync; returns the file size."""
        try:
            self._writer.flush()
            os.fsync(self._fd)
            return os.fstat(self._fd).st_size
        except Exception as exc:
            raise ArchiveError(f"cannot flush segment {self.path}: {exc}") from exc

    def close(self) -> int:
        """Write the summary and footer, fsync; returns the final size."""
        if self.closed:
            return os.path.getsize(self.path)
        self.closed = True
        try:
            self._writer.close()
            os.fsync(self._fd)
            return os.fstat(self._fd).st_size
        except Exception as exc:
            raise ArchiveError(f"cannot close segment {self.path}: {exc}") from exc
        finally:
            os.close(self._fd)


class ArchiveWriter:
    """A worker's current segment, rotated by duration and size, registered in the index."""

    def __init__(
        self,
        data_dir: Path,
        worker: int,
        index: Index,
        *,
        max_duration_s: float = 600.0,
        max_bytes: int = 512 << 20,
        chunk_bytes: int = 4 << 20,
        compression_level: int = 0,
    ) -> None:
        self.data_dir = data_dir
        self.worker = worker
        self.index = index
        self.max_duration_s = max_duration_s
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes
        self.compression_level = compression_level
        self.channels = ChannelSet()
        self.segment: SegmentWriter | None = None
        self.segment_id: int | None = None
        self._opened = 0.0
        self._start_ns: int | None = None
        self._end_ns: int | None = None
        self._batches = 0
        self._size = 0
        #: Messages written in this segment whose batch another worker stored first.
        self.orphans = 0

    def _new_path(self) -> Path:
        now = datetime.now(UTC)
        rel = Path(SEGMENTS_DIR) / now.strftime("%Y-%m-%d") / (
            f"{now.strftime('%Y%m%dT%H%M%S')}-w{self.worker}-{time.time_ns()}.mcap")
        return rel

    def _open(self) -> SegmentWriter:
        rel = self._new_path()
        # Row first: a file never exists without its row, so recovery finds every file.
        self.segment_id = self.index.open_segment(self.worker, str(rel))
        self.segment = SegmentWriter(self.data_dir / rel, self.channels,
                                     chunk_bytes=self.chunk_bytes,
                                     compression_level=self.compression_level)
        self._opened = time.monotonic()
        self._start_ns = self._end_ns = None
        self._batches = 0
        self._size = 0
        self.orphans = 0
        log.info("archive: worker %d opened segment %s", self.worker, rel)
        return self.segment

    def write(self, topic: str, spec: ChannelSpec, metadata: dict[str, str],
              messages: Messages) -> Placed:
        seg = self.segment or self._open()
        first, last = seg.write(topic, spec, metadata, messages)
        times = [t for _, t in messages]
        lo, hi = (min(times), max(times)) if times else (0, 0)
        if times:
            self._start_ns = lo if self._start_ns is None else min(self._start_ns, lo)
            self._end_ns = hi if self._end_ns is None else max(self._end_ns, hi)
        self._batches += 1
        return Placed(topic, first, last, lo, hi)

    def sync(self) -> SegmentUpdate | None:
        """Make everything written so far durable; the segment's new stats for the index."""
        if self.segment is None or self.segment_id is None:
            return None
        self._size = self.segment.sync()
        return self.update()

    def update(self) -> SegmentUpdate | None:
        if self.segment is None or self.segment_id is None:
            return None
        return SegmentUpdate(self.segment_id, self._start_ns, self._end_ns, self._size,
                             self.segment.messages, self._batches)

    def due(self) -> bool:
        """Whether the open segment has reached its duration or size."""
        if self.segment is None:
            return False
        return (time.monotonic() - self._opened >= self.max_duration_s
                or self._size >= self.max_bytes)

    def close(self) -> None:
        """Finish the open segment (footer, fsync), compact out orphans, mark it closed."""
        from ingest_server.archive.recovery import rewrite_segment

        seg, seg_id = self.segment, self.segment_id
        if seg is None or seg_id is None:
            return
        self.segment = None
        self.segment_id = None
        size = seg.close()
        ranges = self.index.segment_ranges(seg_id)
        n_batches = sum(len(v) for v in ranges.values())
        if not n_batches:
            seg.path.unlink(missing_ok=True)
            self.index.delete_segment(seg_id)
            log.info("archive: worker %d removed segment %s (nothing stored in it)",
                     self.worker, seg.path.name)
            return
        update = SegmentUpdate(seg_id, self._start_ns, self._end_ns, size, seg.messages, n_batches)
        if self.orphans:
            result = rewrite_segment(seg.path, ranges)
            update = SegmentUpdate(seg_id, result.start_ns, result.end_ns, result.bytes,
                                   result.messages, n_batches)
            log.info("archive: segment %s compacted, %d duplicate messages dropped",
                     seg.path.name, result.dropped)
        self.index.close_segment(update)
        log.info("archive: worker %d closed segment %s (%d batches, %d messages, %d bytes)",
                 self.worker, seg.path.name, n_batches, update.messages, update.bytes)
