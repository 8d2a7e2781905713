"""The spool: the crash-safe on-disk store of encoded batches, the system's write-ahead log.

One SQLite database in WAL mode (``spool.db`` in the spool directory). A batch is inserted in
one transaction together with any source checkpoints it completes, and deleted only when an
:class:`wire.control.Ack` covers its seq. SQLite's transactions make a ``kill -9`` or power cut
leave either the whole batch or none of it; each row also carries the CRC-32 of its bytes, checked
on every read, so a batch damaged on disk is dropped and counted (``corrupt``), never sent.

Bounded by a byte budget (the sum of stored batch sizes). When a batch does not fit, batches are
evicted by priority class: rank 0 (camera) first, then radar points, radar objects, GNSS,
signals, raw CAN and events last; oldest first within a class. Only batches of the incoming
batch's class or lower are evicted for it; if that is not enough, the incoming batch itself is
dropped. Every eviction is counted per stream (batches, records, bytes) in the same transaction,
so the counters are exact across restarts.

Disk full (SQLite's "database or disk is full", or an I/O error from a full file system):
the batch is kept in a bounded in-memory store instead (evicting by the same priority rule
within it), sent from there, and written to disk again once the disk accepts writes.

The class is thread-safe (one connection behind a lock); the agent calls it from one worker
thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import SpoolError
from edge_agent.seqstore import DEFAULT_BLOCK, SeqStore

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.db"
SPOOL_VERSION = 1
#: Number of priority ranks (see edge_agent.config.PRIORITY_CLASSES).
RANKS = 7
#: While the disk is full, writing from memory to disk is retried this often.
DISK_RETRY_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order, never reused
    stream   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    rank     INTEGER NOT NULL,     -- eviction rank: 0 is evicted first and sent last
    records  INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    first_ns INTEGER NOT NULL,
    last_ns  INTEGER NOT NULL,
    crc      INTEGER NOT NULL,     -- CRC-32 of data
    data     BLOB NOT NULL,
    UNIQUE (stream, seq)
);
CREATE INDEX IF NOT EXISTS batch_by_rank ON batch (rank, id);
CREATE TABLE IF NOT EXISTS eviction (
    stream  TEXT PRIMARY KEY,
    batches INTEGER NOT NULL,
    records INTEGER NOT NULL,
    bytes   INTEGER NOT NULL,
    corrupt INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS checkpoint (
    source TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"""

_SET_CHECKPOINT = (
    "INSERT INTO checkpoint VALUES (?, ?) ON CONFLICT(source) DO UPDATE SET value=excluded.value"
)


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    """A stored batch as handed to the uplink. ``row`` is None for one held in memory."""

    row: int | None
    stream: str
    seq: int
    rank: int
    records: int
    data: bytes

    @property
    def key(self) -> tuple[str, int]:
        return (self.stream, self.seq)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(slots=True)
class StreamCounts:
    batches: int = 0
    records: int = 0
    bytes: int = 0

    def add(self, batches: int, records: int, nbytes: int) -> None:
        self.batches += batches
        self.records += records
        self.bytes += nbytes

    def as_dict(self) -> dict[str, int]:
        return {"batches": self.batches, "records": self.records, "bytes": self.bytes}


@dataclass(slots=True)
class _MemBatch:
    stream: str
    seq: int
    rank: int
    records: int
    first_ns: int
    last_ns: int
    data: bytes
    checkpoints: dict[str, str] = field(default_factory=dict)
    handed: bool = False


def _disk_trouble(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR) or (code & 0xFF) == sqlite3.SQLITE_IOERR
    msg = str(exc).lower()
    return "disk is full" in msg or "disk i/o" in msg


class Spool:
    """Crash-safe, budgeted store of encoded batches; see the module docstring."""

    def __init__(
        self,
        directory: Path | str,
        agent_id: str,
        *,
        budget_bytes: int,
        memory_bytes: int = 64 * 1024 * 1024,
        max_file_bytes: int | None = None,
        synchronous: str = "full",
        seq_block: int = DEFAULT_BLOCK,
    ) -> None:
        if budget_bytes <= 0 or memory_bytes <= 0:
            raise ValueError("spool budgets must be positive")
        self.directory = Path(directory)
        self.agent_id = agent_id
        self.budget_bytes = budget_bytes
        self.memory_bytes = memory_bytes
        self._lock = threading.RLock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.directory}: {exc}") from exc
        self.path = self.directory / SPOOL_FILE
        self._conn = self._open(synchronous, max_file_bytes)
        self._seq = SeqStore(self._conn, seq_block)
        self._streams: dict[str, StreamCounts] = {}
        self._evicted: dict[str, StreamCounts] = {}
        self._corrupt: dict[str, int] = {}
        self._pending_evictions: dict[str, StreamCounts] = {}
        self._memory: dict[tuple[str, int], _MemBatch] = {}
        self._memory_size = 0
        self._cursor = [-1] * RANKS
        self.disk_full = False
        self.disk_errors = 0
        self._retry_at = 0.0
        self._load_counts()

    # opening

    def _open(self, synchronous: str, max_file_bytes: int | None) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError(f"spool {self.path}: SQLite refused WAL mode ({mode})")
            conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            conn.execute("PRAGMA journal_size_limit=67108864")
            conn.executescript(_SCHEMA)
            if max_file_bytes is not None:
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count={max(16, max_file_bytes // page)}")
            row = conn.execute("SELECT value FROM meta WHERE key='agent'").fetchone()
            if row is None:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO meta VALUES ('agent', ?), ('version', ?)",
                             (self.agent_id, str(SPOOL_VERSION)))
                conn.execute("COMMIT")
            elif row[0] != self.agent_id:
                raise SpoolError(
                    f"spool {self.path} belongs to agent {row[0]!r}, not {self.agent_id!r}: "
                    "use another spool directory"
                )
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise SpoolError(f"spool {self.path} is unusable: {exc}") from exc
        except SpoolError:
            conn.close()
            raise
        return conn

    def _load_counts(self) -> None:
        for stream, n, recs, nbytes in self._conn.execute(
            "SELECT stream, COUNT(*), SUM(records), SUM(size) FROM batch GROUP BY stream"
        ):
            self._streams[stream] = StreamCounts(n, recs or 0, nbytes or 0)
        for stream, b, r, nb, corrupt in self._conn.execute(
            "SELECT stream, batches, records, bytes, corrupt FROM eviction"
        ):
            self._evicted[stream] = StreamCounts(b, r, nb)
            if corrupt:
                self._corrupt[stream] = corrupt
        if self._streams:
            log.info("spool: %s holds %d batches (%d bytes) from before",
                     self.path, self.pending_batches, self.pending_bytes)

    def close(self) -> None:
        with self._lock:
            if self._memory:
                self.flush_memory()
            if self._memory:
                log.error("spool: closing with %d batches only in memory (disk full); they are lost",
                          len(self._memory))
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("spool: checkpoint at close failed: %s", exc)
            self._conn.close()

    # sequence numbers and checkpoints

    def next_seq(self, stream: str) -> int:
        with self._lock:
            return self._seq.next(stream)

    def checkpoint(self, source: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM checkpoint WHERE source=?", (source,)).fetchone()
            return None if row is None else str(row[0])

    def set_checkpoint(self, source: str, value: str) -> None:
        with self._lock:
            self._conn.execute(_SET_CHECKPOINT, (source, value))

    # writing

    @property
    def pending_bytes(self) -> int:
        return sum(c.bytes for c in self._streams.values())

    @property
    def pending_batches(self) -> int:
        return sum(c.batches for c in self._streams.values()) + len(self._memory)

    def put(
        self,
        stream: str,
        seq: int,
        rank: int,
        records: int,
        first_ns: int,
        last_ns: int,
        data: bytes,
        checkpoints: Mapping[str, str] | None = None,
    ) -> bool:
        """Store a batch; False if it was dropped (it alone exceeds the budget or what may go)."""
        if not 0 <= rank < RANKS:
            raise ValueError(f"rank {rank} out of range")
        cps = dict(checkpoints or {})
        with self._lock:
            if self._memory and time.monotonic() >= self._retry_at:
                self.flush_memory()
            if not self._memory:
                try:
                    return self._put_disk(stream, seq, rank, records, first_ns, last_ns, data, cps)
                except sqlite3.Error as exc:
                    if not _disk_trouble(exc):
                        raise SpoolError(f"spool write failed: {exc}") from exc
                    self._on_disk_full(exc)
            return self._put_memory(_MemBatch(stream, seq, rank, records, first_ns, last_ns, data, cps))

    def _put_disk(
        self, stream: str, seq: int, rank: int, records: int, first_ns: int, last_ns: int,
        data: bytes, cps: dict[str, str],
    ) -> bool:
        size = len(data)
        conn = self._conn
        victims: list[tuple[int, str, int, int]] = []
        keep = True
        over = self.pending_bytes + size - self.budget_bytes
        if size > self.budget_bytes:
            keep = False
        elif over > 0:
            freed = 0
            cur = conn.execute(
                "SELECT id, stream, records, size FROM batch WHERE rank <= ? ORDER BY rank, id", (rank,)
            )
            try:
                for row, s, recs, sz in cur:
                    victims.append((row, s, recs, sz))
                    freed += sz
                    if freed >= over:
                        break
            finally:
                cur.close()
            if freed < over:
                victims, keep = [], False
        conn.execute("BEGIN IMMEDIATE")
        try:
            drops: dict[str, StreamCounts] = {}
            for row, s, recs, sz in victims:
                conn.execute("DELETE FROM batch WHERE id=?", (row,))
                drops.setdefault(s, StreamCounts()).add(1, recs, sz)
            if keep:
                conn.execute(
                    "INSERT INTO batch (stream, seq, rank, records, size, first_ns, last_ns, crc, data) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (stream, seq, rank, records, size, first_ns, last_ns, zlib.crc32(data), data),
                )
            else:
                drops.setdefault(stream, StreamCounts()).add(1, records, size)
            for s, c in self._pending_evictions.items():
                drops.setdefault(s, StreamCounts()).add(c.batches, c.records, c.bytes)
            for s, c in drops.items():
                self._count_eviction_sql(s, c)
            for source, value in cps.items():
                conn.execute(_SET_CHECKPOINT, (source, value))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._pending_evictions.clear()
        for _, s, recs, sz in victims:
            self._streams[s].add(-1, -recs, -sz)
        if victims:
            log.warning("spool: budget of %d bytes reached; evicted %d batches (%s)",
                        self.budget_bytes, len(victims), _summary(victims))
        if keep:
            self._streams.setdefault(stream, StreamCounts()).add(1, records, size)
        else:
            self._evicted.setdefault(stream, StreamCounts()).add(1, records, size)
            log.warning("spool: dropped new %s batch seq %d (%d bytes): no room within the budget",
                        stream, seq, size)
        for _, s, recs, sz in victims:
            self._evicted.setdefault(s, StreamCounts()).add(1, recs, sz)
        if self.disk_full:
            self.disk_full = False
            log.info("spool: disk accepts writes again")
        return keep

    def _count_eviction_sql(self, stream: str, c: StreamCounts) -> None:
        self._conn.execute(
            "INSERT INTO eviction (stream, batches, records, bytes) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(stream) DO UPDATE SET batches = batches + excluded.batches, "
            "records = records + excluded.records, bytes = bytes + excluded.bytes",
            (stream, c.batches, c.records, c.bytes),
        )

    def _on_disk_full(self, exc: sqlite3.Error) -> None:
        self.disk_errors += 1
        self._retry_at = time.monotonic() + DISK_RETRY_S
        if not self.disk_full:
            log.error("spool: cannot write %s (%s); holding batches in memory (up to %d bytes)",
                      self.path, exc, self.memory_bytes)
        self.disk_full = True

    def _put_memory(self, mb: _MemBatch) -> bool:
        size = len(mb.data)
        over = self._memory_size + size - self.memory_bytes
        victims: list[_MemBatch] = []
        freed = 0
        if over > 0 and size <= self.memory_bytes:
            for cand in sorted(self._memory.values(), key=lambda m: m.rank):
                if cand.rank > mb.rank:
                    break
                victims.append(cand)
                freed += len(cand.data)
                if freed >= over:
                    break
        if over > 0 and freed < over:
            self._evict_memory_counted(mb.stream, mb.records, size)
            log.warning("spool: dropped new %s batch seq %d: memory fallback full", mb.stream, mb.seq)
            return False
        for v in victims:
            del self._memory[(v.stream, v.seq)]
            self._memory_size -= len(v.data)
            self._evict_memory_counted(v.stream, v.records, len(v.data))
        self._memory[(mb.stream, mb.seq)] = mb
        self._memory_size += size
        return True

    def _evict_memory_counted(self, stream: str, records: int, nbytes: int) -> None:
        self._evicted.setdefault(stream, StreamCounts()).add(1, records, nbytes)
        self._pending_evictions.setdefault(stream, StreamCounts()).add(1, records, nbytes)

    def flush_memory(self) -> int:
        """Move batches held in memory to disk; returns how many moved (stops at the first failure)."""
        moved = 0
        with self._lock:
            for key, mb in list(self._memory.items()):
                try:
                    self._put_disk(mb.stream, mb.seq, mb.rank, mb.records, mb.first_ns, mb.last_ns,
                                   mb.data, mb.checkpoints)
                except sqlite3.IntegrityError:
                    pass  # already on disk
                except sqlite3.Error as exc:
                    if not _disk_trouble(exc):
                        raise SpoolError(f"spool write failed: {exc}") from exc
                    self._on_disk_full(exc)
                    break
                del self._memory[key]
                self._memory_size -= len(mb.data)
                moved += 1
            if moved:
                log.info("spool: wrote %d batches from memory to disk", moved)
        return moved

    # reading (uplink)

    def take(
        self, limit: int, max_bytes: int, skip: Container[tuple[str, int]] = frozenset()
    ) -> list[SpooledBatch]:
        """The next batches to send, highest priority first, oldest first within a class.

        Each batch is handed out once until :meth:`rewind`; ``skip`` (batches in flight) is
        passed over. A batch whose CRC does not match is deleted and counted as corrupt.
        """
        out: list[SpooledBatch] = []
        total = 0
        with self._lock:
            for mb in self._memory.values():
                if len(out) >= limit or (out and total + len(mb.data) > max_bytes):
                    return out
                if mb.handed or (mb.stream, mb.seq) in skip:
                    continue
                mb.handed = True
                out.append(SpooledBatch(None, mb.stream, mb.seq, mb.rank, mb.records, mb.data))
                total += len(mb.data)
            for rank in range(RANKS - 1, -1, -1):
                while len(out) < limit:
                    rows = self._conn.execute(
                        "SELECT id, stream, seq, records, crc, CAST(data AS BLOB) FROM batch "
                        "WHERE rank = ? AND id > ? ORDER BY id LIMIT ?",
                        (rank, self._cursor[rank], max(1, limit - len(out))),
                    ).fetchall()
                    if not rows:
                        break
                    for row, stream, seq, recs, crc, data in rows:
                        if out and total + len(data) > max_bytes:
                            return out
                        self._cursor[rank] = row
                        if (stream, seq) in skip:
                            continue
                        if zlib.crc32(data) != crc:
                            self._drop_corrupt(row, stream, seq, recs, len(data))
                            continue
                        out.append(SpooledBatch(row, stream, seq, rank, recs, bytes(data)))
                        total += len(data)
                        if len(out) >= limit:
                            return out
        return out

    def rewind(self, batches: Iterable[SpooledBatch] | None = None) -> None:
        """Hand out again: everything (``None``, after a reconnect) or just ``batches``."""
        with self._lock:
            if batches is None:
                self._cursor = [-1] * RANKS
                for mb in self._memory.values():
                    mb.handed = False
                return
            for b in batches:
                if b.row is None:
                    held = self._memory.get(b.key)
                    if held is not None:
                        held.handed = False
                else:
                    self._cursor[b.rank] = min(self._cursor[b.rank], b.row - 1)

    def _drop_corrupt(self, row: int, stream: str, seq: int, records: int, size: int) -> None:
        log.error("spool: batch %s seq %d failed its checksum; dropped (counted as corrupt)", stream, seq)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute("DELETE FROM batch WHERE id=?", (row,))
            self._conn.execute(
                "INSERT INTO eviction (stream, batches, records, bytes, corrupt) VALUES (?, 0, 0, 0, 1) "
                "ON CONFLICT(stream) DO UPDATE SET corrupt = corrupt + 1",
                (stream,),
            )
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._streams[stream].add(-1, -records, -size)
        self._corrupt[stream] = self._corrupt.get(stream, 0) + 1

    # acknowledgements

    def ack(self, ranges: Mapping[str, Iterable[tuple[int, int]]]) -> int:
        """Delete every batch the ranges cover; returns how many were deleted."""
        deleted = 0
        with self._lock:
            for stream, rs in ranges.items():
                rs = list(rs)
                for lo, hi in rs:
                    for key in [k for k in self._memory if k[0] == stream and lo <= k[1] <= hi]:
                        mb = self._memory.pop(key)
                        self._memory_size -= len(mb.data)
                        deleted += 1
                if stream not in self._streams or not rs:
                    continue
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    gone = []
                    for lo, hi in rs:
                        gone += self._conn.execute(
                            "DELETE FROM batch WHERE stream=? AND seq BETWEEN ? AND ? "
                            "RETURNING records, size",
                            (stream, lo, hi),
                        ).fetchall()
                    self._conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    if not _disk_trouble(exc):
                        raise SpoolError(f"spool delete failed: {exc}") from exc
                    self._on_disk_full(exc)
                    continue  # the acked batches stay until the next ack: resent, acked again
                for recs, size in gone:
                    self._streams[stream].add(-1, -recs, -size)
                deleted += len(gone)
        return deleted

    # reporting

    def stats(self) -> dict[str, Any]:
        with self._lock:
            try:
                file_bytes = sum(
                    os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal")) if p.exists()
                )
            except OSError:
                file_bytes = -1
            return {
                "batches": self.pending_batches,
                "bytes": self.pending_bytes + self._memory_size,
                "budget_bytes": self.budget_bytes,
                "file_bytes": file_bytes,
                "memory_batches": len(self._memory),
                "memory_bytes": self._memory_size,
                "disk_full": self.disk_full,
                "disk_errors": self.disk_errors,
                "streams": {s: c.as_dict() for s, c in self._streams.items() if c.batches},
                "evicted": {s: c.as_dict() for s, c in self._evicted.items()},
                "corrupt": dict(self._corrupt),
            }

    def evicted(self) -> dict[str, StreamCounts]:
        with self._lock:
            return {s: StreamCounts(c.batches, c.records, c.bytes) for s, c in self._evicted.items()}

    def rows(self) -> list[tuple[str, int, int, bytes, int]]:
        """Every stored batch as (stream, seq, records, data, crc), for checks and tools."""
        with self._lock:
            return [
                (s, q, r, bytes(d), c)
                for s, q, r, d, c in self._conn.execute(
                    "SELECT stream, seq, records, CAST(data AS BLOB), crc FROM batch ORDER BY id"
                )
            ]


def _summary(victims: list[tuple[int, str, int, int]]) -> str:
    per: dict[str, int] = {}
    for _, s, _, _ in victims:
        per[s] = per.get(s, 0) + 1
    return ", ".join(f"{s}: {n}" for s, n in sorted(per.items()))

