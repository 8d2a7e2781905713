"""The quarantine: refused messages, counted by reason and kept (bounded) for inspection.

Every refused message is counted under its reason (see :data:`validate.REASONS`) and its
first ``keep_bytes`` bytes are kept with the topic, the reason and the error text. The
worker keeps the newest ``max_entries`` in memory and writes new entries to the index at each
flush, where the table is trimmed to the same bound; nothing refused is ever archived.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_TOPIC_CHARS = 256
MAX_DETAIL_CHARS = 1024


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    received_ns: int
    worker: int
    topic: str
    agent: str | None
    reason: str
    detail: str
    size: int
    head: bytes


class Quarantine:
    """Counters by reason plus a ring of the newest refused messages."""

    def __init__(self, worker: int, max_entries: int = 1000, keep_bytes: int = 1024) -> None:
        self.worker = worker
        self.keep_bytes = keep_bytes
        self.counts: collections.Counter[str] = collections.Counter()
        self._entries: collections.deque[QuarantineEntry] = collections.deque(maxlen=max_entries)
        self._unsaved: collections.deque[QuarantineEntry] = collections.deque(maxlen=max_entries)
        self._unsaved_counts: collections.Counter[str] = collections.Counter()

    def add(
        self, received_ns: int, topic: str, payload: bytes, reason: str, detail: str,
        agent: str | None = None,
    ) -> QuarantineEntry:
        entry = QuarantineEntry(
            received_ns=received_ns,
            worker=self.worker,
            topic=topic[:MAX_TOPIC_CHARS],
            agent=agent,
            reason=reason,
            detail=detail[:MAX_DETAIL_CHARS],
            size=len(payload),
            head=bytes(payload[: self.keep_bytes]),
        )
        self.counts[reason] += 1
        self._unsaved_counts[reason] += 1
        if self._entries.maxlen:
            self._entries.append(entry)
            self._unsaved.append(entry)
        if self.counts[reason] == 1 or self.counts[reason] % 1000 == 0:
            log.warning("quarantine: %s from %r (%d bytes): %s [%d so far]",
                        reason, entry.topic, entry.size, entry.detail, self.counts[reason])
        return entry

    def __iter__(self) -> Iterator[QuarantineEntry]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def take_unsaved(self) -> tuple[list[QuarantineEntry], dict[str, int]]:
        """Entries and count increments not yet written to the index (the caller writes them)."""
        entries = list(self._unsaved)
        counts = dict(self._unsaved_counts)
        self._unsaved.clear()
        self._unsaved_counts.clear()
        return entries, counts
