"""Exports of an archive slice: MCAP (every stream, opens in Foxglove) or a candump ``-L`` log.

Both read through :class:`ingest_server.archive.reader.ArchiveReader`, so they hold each
stored batch exactly once whatever segments, workers and crashes it went through. The MCAP
slice keeps schemas, channels, log times, publish times and sequence numbers as archived. The
candump export writes the raw CAN frames of one agent with
:func:`firmware_bridges.candump.format_frame`, in capture order; timestamps are the agent's
capture times (``clock="capture"``, the default, so the log matches what the vehicle
recorded) or server times (``clock="server"``, capture time plus the batch's clock offset).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Literal

from mcap.writer import CompressionType, Writer

from firmware_bridges.candump import format_frame
from firmware_bridges.errors import BridgeError
from ingest_server.archive.reader import ArchiveReader
from ingest_server.archive.writer import PROFILE
from ingest_server.errors import QueryError
from ingest_server.index.queries import BatchRow
from wire.schemas import CanFrame

#: ``progress(done, total)`` in messages.
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ExportResult:
    messages: int
    batches: int
    bytes: int


def export_mcap(
    reader: ArchiveReader,
    out: Path,
    *,
    agent: str | None = None,
    stream: str | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    rows = reader.batches(agent=agent, stream=stream, start_ns=start_ns, end_ns=end_ns)
    if not rows:
        raise QueryError("nothing archived matches the query")
    total = sum(r.msg_last - r.msg_first + 1 for r in rows)
    tmp = out.with_name(out.name + ".part")
    try:
        size = _write_slice(reader, tmp, rows, start_ns, end_ns, total, progress)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    if progress:
        progress(total, total)
    return ExportResult(size[0], len(rows), size[1])


def _write_slice(reader: ArchiveReader, tmp: Path, rows: list[BatchRow], start_ns: int | None,
                 end_ns: int | None, total: int, progress: Progress | None) -> tuple[int, int]:
    schema_ids: dict[tuple[str, str, bytes], int] = {}
    channel_ids: dict[str, int] = {}
    n = 0
    with open(tmp, "wb") as f:
        w = Writer(f, compression=CompressionType.ZSTD)
        w.start(profile=PROFILE, library="cvis archive export")
        for am in reader.messages(start_ns=start_ns, end_ns=end_ns, rows=rows):
            ch = am.channel
            if ch.topic not in channel_ids:
                sid = 0
                if am.schema is not None:
                    key = (am.schema.name, am.schema.encoding, bytes(am.schema.data))
                    if key not in schema_ids:
                        schema_ids[key] = w.register_schema(*key)
                    sid = schema_ids[key]
                channel_ids[ch.topic] = w.register_channel(ch.topic, ch.message_encoding, sid,
                                                           dict(ch.metadata))
            m = am.message
            w.add_message(channel_ids[ch.topic], m.log_time, m.data, m.publish_time, m.sequence)
            n += 1
            if progress and (n % 256 == 0):
                progress(n, total)
        w.finish()
        return n, f.tell()


def can_frames(
    reader: ArchiveReader,
    *,
    agent: str | None = None,
    stream: str | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
    clock: Literal["capture", "server"] = "capture",
    progress: Progress | None = None,
) -> Iterator[CanFrame]:
    """The raw CAN frames of one agent in capture order, filtered by log (server) time."""
    rows = [r for r in reader.batches(agent=agent, stream=stream, start_ns=start_ns,
                                      end_ns=end_ns) if r.schema == "can.frames/1"]
    if not rows:
        raise QueryError("no raw CAN (can.frames/1) archived matches the query")
    agents = sorted({r.agent for r in rows})
    if len(agents) > 1:
        raise QueryError(f"a candump log holds one agent's buses; pass --agent (one of "
                         f"{', '.join(agents)})")
    total = sum(r.msg_last - r.msg_first + 1 for r in rows)
    by_stream: dict[str, list[BatchRow]] = {}
    for r in rows:
        by_stream.setdefault(r.stream, []).append(r)
    done = [0]

    def frames_of(stream_rows: list[BatchRow]) -> Iterator[CanFrame]:
        for msg in reader.can_batches(rows=stream_rows):
            off = msg.clock_offset_ns
            for f in msg.table.records():
                server = f.timestamp_ns + off
                if (start_ns is not None and server < start_ns) or (
                        end_ns is not None and server > end_ns):
                    continue
                yield f if clock == "capture" else replace(f, timestamp_ns=server)
            done[0] += 1
            if progress and done[0] % 64 == 0:
                progress(done[0], total)

    yield from heapq.merge(*(frames_of(v) for _, v in sorted(by_stream.items())),
                           key=lambda f: f.timestamp_ns)
    if progress:
        progress(total, total)


def export_candump(reader: ArchiveReader, out: IO[str], **query: object) -> int:
    """Write the frames of :func:`can_frames` as candump ``-L`` lines; returns the frame count."""
    n = 0
    for frame in can_frames(reader, **query):  # type: ignore[arg-type]
        try:
            out.write(format_frame(frame) + "\n")
        except BridgeError as exc:
            raise QueryError(f"cannot write frame as candump: {exc}") from exc
        n += 1
    return n
