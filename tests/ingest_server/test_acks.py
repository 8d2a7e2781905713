"""Selective acks: one message per agent, ranges per stream, split at the wire's range limit."""

from __future__ import annotations

from ingest_server.acks import AckBook
from wire.control import MAX_ACK_RANGES, Ack


def test_acks_group_by_agent_and_collapse_ranges() -> None:
    book = AckBook()
    for seq in (1, 2, 3, 7, 3):
        book.add("veh1", "can", seq)
    book.add("veh1", "gnss", 0)
    book.add("veh2", "can", 9)
    assert len(book) == 6
    out = book.messages(123)
    assert [t for t, _ in out] == ["cvis/v1/veh1/ack", "cvis/v1/veh2/ack"]
    ack = Ack.decode(out[0][1].encode())
    assert ack.ranges == {"can": ((1, 3), (7, 7)), "gnss": ((0, 0),)} and ack.server_time_ns == 123
    assert len(book) == 0 and book.messages(0) == []


def test_acks_split_past_the_range_limit() -> None:
    book = AckBook()
    n = MAX_ACK_RANGES + 10
    for i in range(n):
        book.add("veh1", "can", 2 * i)  # every other seq: one range each
    book.add("veh1", "gnss", 5)
    out = book.messages(0)
    assert len(out) == 2
    covered = [(s, lo) for _, ack in out for s, rs in ack.ranges.items() for lo, _ in rs]
    assert len(covered) == n + 1
    assert {lo for s, lo in covered if s == "can"} == {2 * i for i in range(n)}
