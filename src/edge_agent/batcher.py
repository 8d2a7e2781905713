"""Per-stream batchers and the batch encoder.

A :class:`Batcher` collects one stream's records. Its batch closes on whichever comes first:
``max_age_s`` since its first record (measured on the monotonic clock, so a wall-clock jump
neither closes a batch early nor holds it open), ``max_records`` or ``max_mb`` of estimated
record bytes. Records keep their arrival order; sequence numbers are assigned when a batch is
encoded, in closing order, so the wire order never depends on the wall clock.

A batcher also carries *checkpoints*: a source marks how far it has captured (for example the
line of a replayed log), and the mark is stored in the spool in the same transaction as the
batch that holds those records, so a restarted source resumes exactly after what is safe.

If batches cannot be closed as fast as records arrive (a stalled disk), a batcher holds at most
``HARD_LIMIT_FACTOR`` times its limits and then drops its oldest records, counting them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config import BatchConfig
from wire.columns import TableSchema
from wire.envelope import Batch, TimeQuality, encode_batch
from wire.schemas import CAMERA_JPEG

log = logging.getLogger(__name__)

HARD_LIMIT_FACTOR = 4
#: Estimated bytes per record of schemas whose records have no large field.
RECORD_BYTES = {
    "can.frames": 24,
    "vehicle.signals": 24,
    "gnss.fix": 72,
    "radar.points": 40,
    "radar.objects": 56,
    "roadside.objects": 64,
    "signal.phase": 40,
    "event": 256,
    "health": 1024,
}


def record_size(schema: TableSchema, record: Any) -> int:
    """Estimated encoded size of a record (exact payload size for camera frames)."""
    if schema is CAMERA_JPEG:
        return len(record.jpeg) + 48
    return RECORD_BYTES.get(schema.name, 64)


@dataclass(slots=True)
class PendingBatch:
    """A closed batch, not yet encoded: what the encoder needs."""

    stream: str
    schema: TableSchema
    rank: int
    records: list[Any]
    codec: str
    zstd_level: int
    checkpoints: dict[str, str] = field(default_factory=dict)


class Batcher:
    def __init__(self, stream: str, schema: TableSchema, config: BatchConfig, rank: int) -> None:
        self.stream = stream
        self.schema = schema
        self.rank = rank
        self.max_age_s = config.max_age_s
        self.max_records = config.max_records
        self.max_bytes = int(config.max_mb * 1024 * 1024)
        self.codec = config.codec or ("none" if schema is CAMERA_JPEG else "zstd")
        self.zstd_level = config.zstd_level
        self._records: list[Any] = []
        self._bytes = 0
        self._opened: float | None = None
        self._checkpoints: dict[str, str | tuple[int, str]] = {}
        self.batches_out = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._records)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def add(self, record: Any, size: int) -> bool:
        """Add a record; True when the batch is full and should be closed now."""
        records = self._records
        if not records:
            self._opened = time.monotonic()
        records.append(record)
        self._bytes += size
        n = len(records)
        if n >= self.max_records or self._bytes >= self.max_bytes:
            if n > self.max_records * HARD_LIMIT_FACTOR or (
                self._bytes > self.max_bytes * HARD_LIMIT_FACTOR and n > 1
            ):
                self._drop_oldest()
            return True
        return False

    def _drop_oldest(self) -> None:
        n = max(1, len(self._records) // 4)
        del self._records[:n]
        self._bytes = sum(record_size(self.schema, r) for r in self._records)
        self.dropped += n
        log.error("batcher %s: batches are not closing fast enough; dropped %d oldest records",
                  self.stream, n)

    def mark(self, source: str, position: str | tuple[int, str]) -> None:
        """Note that ``source`` has captured up to ``position`` (stored with the next batch).

        A tuple ``(index, rest)`` stands for the text ``f"{index}|{rest}"``; it is formatted
        only when the batch closes, so a source can mark every record cheaply.
        """
        self._checkpoints[source] = position

    def due(self, now_mono: float) -> bool:
        if not self._records:
            return False
        assert self._opened is not None
        return (
            now_mono - self._opened >= self.max_age_s
            or len(self._records) >= self.max_records
            or self._bytes >= self.max_bytes
        )

    def take(self) -> PendingBatch | None:
        """Close the batch (None if it holds neither records nor checkpoints)."""
        if not self._records and not self._checkpoints:
            return None
        checkpoints = {
            k: v if isinstance(v, str) else f"{v[0]}|{v[1]}" for k, v in self._checkpoints.items()
        }
        out = PendingBatch(self.stream, self.schema, self.rank, self._records, self.codec,
                           self.zstd_level, checkpoints)
        self._records = []
        self._bytes = 0
        self._opened = None
        self._checkpoints = {}
        if out.records:
            self.batches_out += 1
        return out


def encode(
    pending: PendingBatch,
    agent: str,
    seq: int,
    *,
    clock_offset_ns: int,
    time_quality: TimeQuality,
) -> Batch:
    """Encode a closed batch with the wire codecs."""
    table = pending.schema.table(pending.records)
    return encode_batch(
        agent, pending.stream, table, seq, clock_offset_ns=clock_offset_ns,
        time_quality=time_quality, codec_name=pending.codec, level=pending.zstd_level,
    )
