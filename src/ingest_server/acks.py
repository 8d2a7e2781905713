"""Selective acknowledgements: the seq ranges made durable by one flush, per agent and stream.

The worker adds the key of every batch that is durable after a flush (newly stored, or found
already stored: a duplicate is acked again) and then publishes one :class:`wire.control.Ack`
per agent on ``cvis/v1/{agent}/ack`` at QoS 1. An ack never holds more than
``wire.control.MAX_ACK_RANGES`` ranges; a larger set is split over several messages.
"""

from __future__ import annotations

from collections import defaultdict

from wire.control import MAX_ACK_RANGES, Ack, to_ranges
from wire.topics import ack_topic


class AckBook:
    """Keys to acknowledge after the current flush."""

    def __init__(self) -> None:
        self._seqs: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))

    def add(self, agent: str, stream: str, seq: int) -> None:
        self._seqs[agent][stream].add(seq)

    def __len__(self) -> int:
        return sum(len(s) for streams in self._seqs.values() for s in streams.values())

    def agents(self) -> list[str]:
        return sorted(self._seqs)

    def messages(self, server_time_ns: int) -> list[tuple[str, Ack]]:
        """``(topic, ack)`` pairs to publish; the book is emptied."""
        out: list[tuple[str, Ack]] = []
        for agent, streams in sorted(self._seqs.items()):
            pending: dict[str, tuple[tuple[int, int], ...]] = {}
            used = 0
            for stream, seqs in sorted(streams.items()):
                ranges = to_ranges(seqs)
                while ranges:
                    room = MAX_ACK_RANGES - used
                    if room == 0:
                        out.append((ack_topic(agent), Ack(pending, server_time_ns)))
                        pending, used = {}, 0
                        room = MAX_ACK_RANGES
                    part, ranges = ranges[:room], ranges[room:]
                    pending[stream] = pending.get(stream, ()) + part
                    used += len(part)
            if pending:
                out.append((ack_topic(agent), Ack(pending, server_time_ns)))
        self._seqs.clear()
        return out
