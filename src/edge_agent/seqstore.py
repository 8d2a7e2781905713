"""Per-(agent, stream) sequence numbers that never repeat, even across crashes.

Numbers are handed out from a block reserved in the spool database: the table ``seq_block``
holds, per stream, the first number *not* yet reserved. A block is committed before any number
from it is used, so after ``kill -9`` or power loss the agent starts above everything it could
have used (the rest of the old block is skipped, never reused). The next block is reserved when
half of the current one is used, so one write per ``block // 2`` batches, and a full disk at the
wrong moment rarely meets an exhausted block (if it does, numbering continues on a block held in
memory until a write succeeds; only a crash in that window could repeat numbers).

Used by :class:`edge_agent.spool.Spool` under its lock; not thread-safe on its own.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger(__name__)

DEFAULT_BLOCK = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS seq_block (
    stream   TEXT PRIMARY KEY,
    reserved INTEGER NOT NULL  -- every seq below this may have been used
)
"""


class SeqStore:
    def __init__(self, conn: sqlite3.Connection, block: int = DEFAULT_BLOCK) -> None:
        if block < 2:
            raise ValueError("sequence block must be at least 2")
        self._conn = conn
        self._block = block
        self._next: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        conn.execute(SCHEMA)
        for stream, reserved in conn.execute("SELECT stream, reserved FROM seq_block"):
            self._next[stream] = reserved
            self._reserved[stream] = reserved

    def next(self, stream: str) -> int:
        """The next sequence number of ``stream``; reserves a new block durably when needed."""
        n = self._next.get(stream, 0)
        reserved = self._reserved.get(stream, 0)
        if n >= reserved:
            try:
                self._reserve(stream, n + self._block)  # should succeed before n is used
            except sqlite3.Error as exc:
                # Disk full at the worst moment: keep capturing on a block held in memory only,
                # and persist it as soon as a write succeeds (the half-block rule below retries).
                # Only a crash before then could reuse these numbers.
                log.error("spool: cannot reserve seqs for %s (%s); using an unsaved block", stream, exc)
                self._reserved[stream] = n + self._block
        elif reserved - n <= self._block // 2:
            try:
                self._reserve(stream, reserved + self._block)
            except sqlite3.Error as exc:  # the current block still has room; retry later
                log.warning("spool: could not reserve the next seq block of %s yet: %s", stream, exc)
        self._next[stream] = n + 1
        return n

    def peek(self, stream: str) -> int:
        return self._next.get(stream, 0)

    def _reserve(self, stream: str, upto: int) -> None:
        conn = self._conn
        own_tx = not conn.in_transaction
        if own_tx:
            conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO seq_block(stream, reserved) VALUES (?, ?) "
                "ON CONFLICT(stream) DO UPDATE SET reserved = excluded.reserved",
                (stream, upto),
            )
            if own_tx:
                conn.execute("COMMIT")
        except BaseException:
            if own_tx and conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._reserved[stream] = upto
        if stream not in self._next:
            self._next[stream] = 0
