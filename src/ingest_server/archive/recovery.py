"""Crash recovery and compaction of MCAP segments.

A worker killed mid-write leaves its open segment without a summary or footer, possibly with a
torn last chunk. On restart the worker (:func:`recover_worker`) reads each of its open segments
record by record up to the last complete, CRC-valid chunk, keeps exactly the messages of
batches that are in the index (those were acked or about to be; anything else was never acked
and will be resent by its agent), rewrites the file with a proper summary, and marks the
segment closed. The same rewrite drops orphans from a segment closed normally: messages of a
batch that another worker stored first.

The rewrite goes to ``<name>.rewrite`` and is renamed over the segment after an fsync, so a
crash during recovery leaves either the old file or the new one, and recovery simply runs again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.writer import CompressionType, Writer

from ingest_server.archive.writer import PROFILE, SEGMENTS_DIR, fsync_dir
from ingest_server.errors import ArchiveError
from ingest_server.index.queries import Index, SegmentUpdate

log = logging.getLogger(__name__)

#: No record of ours is near this size; a larger length field is corruption.
MAX_RECORD_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class RewriteResult:
    messages: int
    dropped: int
    bytes: int
    start_ns: int | None
    end_ns: int | None
    truncated: bool


def scan_segment(path: Path) -> tuple[list[tuple[Schema | None, Channel, Message]], bool]:
    """``(messages, truncated)``: the readable messages and whether a torn tail was dropped."""
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    out: list[tuple[Schema | None, Channel, Message]] = []
    truncated = False

    def take(records: list[Any]) -> None:
        for r in records:
            if isinstance(r, Schema):
                schemas[r.id] = r
            elif isinstance(r, Channel):
                channels[r.id] = r
            elif isinstance(r, Message):
                ch = channels.get(r.channel_id)
                if ch is None:
                    raise ArchiveError(f"{path}: message on unknown channel {r.channel_id}")
                out.append((schemas.get(ch.schema_id), ch, r))

    try:
        with open(path, "rb") as f:
            reader = StreamReader(f, emit_chunks=True, validate_crcs=True,
                                  record_size_limit=MAX_RECORD_BYTES)
            for rec in reader.records:
                if isinstance(rec, Chunk):
                    # Decode the whole chunk before taking any of it: a chunk is all or nothing.
                    take(breakup_chunk(rec, validate_crc=True))
                elif isinstance(rec, Schema | Channel | Message):
                    take([rec])
    except FileNotFoundError:
        raise
    except Exception as exc:  # EndOfFile, struct.error, CRC errors, zstd errors: a torn tail
        truncated = True
        log.debug("recovery: %s readable up to a torn tail (%s)", path, exc)
    return out, truncated


def _covered(ranges: dict[str, list[tuple[int, int]]], topic: str, seq: int) -> bool:
    return any(lo <= seq <= hi for lo, hi in ranges.get(topic, ()))


def rewrite_segment(path: Path, keep: dict[str, list[tuple[int, int]]]) -> RewriteResult:
    """Rewrite ``path`` keeping messages whose (topic, sequence) is in ``keep``.

    A missing file is written anew (empty), so the segment is a valid MCAP file either way.
    """
    try:
        messages, truncated = scan_segment(path)
    except FileNotFoundError:
        messages, truncated = [], True
    kept = [(s, c, m) for s, c, m in messages if _covered(keep, c.topic, m.sequence)]
    dropped = len(messages) - len(kept)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".rewrite")
    schema_ids: dict[int, int] = {}
    channel_ids: dict[int, int] = {}
    start = end = None
    with open(tmp, "wb") as f:
        w = Writer(f, compression=CompressionType.ZSTD, chunk_size=4 << 20)
        w.start(profile=PROFILE, library="cvis recovery")
        for schema, ch, m in kept:
            if ch.id not in channel_ids:
                sid = 0
                if schema is not None:
                    if schema.id not in schema_ids:
                        schema_ids[schema.id] = w.register_schema(schema.name, schema.encoding,
                                                                  schema.data)
                    sid = schema_ids[schema.id]
                channel_ids[ch.id] = w.register_channel(ch.topic, ch.message_encoding, sid,
                                                        dict(ch.metadata))
            w.add_message(channel_ids[ch.id], m.log_time, m.data, m.publish_time, m.sequence)
            start = m.log_time if start is None else min(start, m.log_time)
            end = m.log_time if end is None else max(end, m.log_time)
        w.finish()
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return RewriteResult(len(kept), dropped, size, start, end, truncated)


def recover_worker(data_dir: Path, worker: int, index: Index) -> int:
    """Recover every segment this worker left open; returns how many were recovered."""
    done = 0
    for seg in index.segments(worker=worker, state="open"):
        path = data_dir / seg.path
        ranges = index.segment_ranges(seg.id)
        stray = path.with_name(path.name + ".rewrite")
        with contextlib.suppress(FileNotFoundError):
            stray.unlink()
        n_batches = sum(len(v) for v in ranges.values())
        if not n_batches:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            index.delete_segment(seg.id)
            log.info("recovery: worker %d dropped segment %s (no batch was stored in it)",
                     worker, seg.path)
            done += 1
            continue
        result = rewrite_segment(path, ranges)
        expected = sum(max(0, hi - lo + 1) for v in ranges.values() for lo, hi in v)
        if result.messages != expected:
            log.error("recovery: segment %s holds %d of the %d messages its index rows "
                      "list; the file was damaged after it was acked", seg.path,
                      result.messages, expected)
        index.close_segment(SegmentUpdate(seg.id, result.start_ns, result.end_ns,
                                          result.bytes, result.messages, n_batches),
                            recovered=True)
        log.info("recovery: worker %d recovered segment %s: %d messages kept, %d unacked "
                 "dropped%s", worker, seg.path, result.messages, result.dropped,
                 ", torn tail cut" if result.truncated else "")
        done += 1
    # Leftovers of an interrupted rewrite elsewhere.
    seg_root = data_dir / SEGMENTS_DIR
    if seg_root.is_dir():
        for stray in seg_root.glob(f"*/*-w{worker}-*.mcap.rewrite"):
            stray.unlink()
    return done
