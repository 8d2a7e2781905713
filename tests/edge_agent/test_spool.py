"""The spool on a real SQLite file: priorities, eviction counters, checksums, disk full, seqs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.config import PRIORITY_CLASSES
from edge_agent.errors import SpoolError
from edge_agent.spool import SPOOL_FILE, Spool
from tests.edge_agent.conftest import camera_batch, can_batch
from wire.envelope import Batch
from wire.schemas import CanFrame

AGENT = "veh-spool"
CAMERA, GNSS, SIGNALS, CAN, EVENTS = (PRIORITY_CLASSES.index(n) for n in
                                      ("camera", "gnss", "signals", "can", "events"))


def put(spool: Spool, stream: str, rank: int, data: bytes, records: int = 1, **kw: object) -> bool:
    seq = spool.next_seq(stream)
    b = Batch.decode(data)
    return spool.put(stream, seq, rank, records or b.count, b.first_ns, b.last_ns, data, **kw)  # type: ignore[arg-type]


def test_put_take_ack_and_ids_never_reused(tmp_path: Path, can_frames: list[CanFrame]) -> None:
    spool = Spool(tmp_path, AGENT, budget_bytes=10 * 2**20)
    try:
        for i in range(3):
            data = can_batch(AGENT, can_frames[i * 100:(i + 1) * 100], spool.next_seq("can"))
            assert spool.put("can", i, CAN, 100, 0, 1, data)
        got = spool.take(10, 2**30)
        assert [b.seq for b in got] == [0, 1, 2]
        assert spool.take(10, 2**30) == []  # each batch is handed out once until rewound
        assert spool.ack({"can": [(0, 2)]}) == 3
        assert spool.pending_batches == 0
        # After every row is deleted, new rows must still be handed out (rowids are not reused).
        data = can_batch(AGENT, can_frames[:10], 3)
        assert spool.put("can", 3, CAN, 10, 0, 1, data)
        assert [b.seq for b in spool.take(10, 2**30)] == [3]
        spool.rewind(None)
        assert [b.seq for b in spool.take(10, 2**30)] == [3]
    finally:
        spool.close()


def test_sends_highest_priority_first(tmp_path: Path, can_frames: list[CanFrame], jpegs: list[bytes]) -> None:
    spool = Spool(tmp_path, AGENT, budget_bytes=50 * 2**20)
    try:
        put(spool, "camera.front", CAMERA, camera_batch(AGENT, jpegs, 0), 8)
        put(spool, "can", CAN, can_batch(AGENT, can_frames[:500], 0), 500)
        put(spool, "camera.front", CAMERA, camera_batch(AGENT, jpegs, 1), 8)
        put(spool, "events", EVENTS, can_batch(AGENT, can_frames[:5], 0, "events"), 5)
        put(spool, "can", CAN, can_batch(AGENT, can_frames[500:900], 1), 400)
        order = [(b.stream, b.seq) for b in spool.take(10, 2**30)]
        assert order == [("events", 0), ("can", 0), ("can", 1), ("camera.front", 0), ("camera.front", 1)]
        # The byte window stops a take early (but always hands out at least one batch).
        spool.rewind(None)
        assert len(spool.take(10, 1)) == 1
    finally:
        spool.close()


def test_eviction_follows_priority_and_counts_exactly(
    tmp_path: Path, can_frames: list[CanFrame], jpegs: list[bytes]
) -> None:
    cam = camera_batch(AGENT, jpegs, 0)
    can = can_batch(AGENT, can_frames[:2000], 0)
    budget = 3 * len(cam) + 2 * len(can)
    spool = Spool(tmp_path, AGENT, budget_bytes=budget)
    try:
        for _ in range(3):
            put(spool, "camera.front", CAMERA, cam, 8)
        put(spool, "can", CAN, can, 2000)
        put(spool, "can", CAN, can, 2000)
        assert spool.evicted() == {}
        # One more CAN batch: the oldest camera batch goes, nothing else.
        put(spool, "can", CAN, can, 2000)
        ev = spool.evicted()
        assert set(ev) == {"camera.front"}
        assert (ev["camera.front"].batches, ev["camera.front"].records) == (1, 8)
        put(spool, "can", CAN, can, 2000)  # fits in the room the camera batch left
        assert spool.evicted()["camera.front"].batches == 1
        left = {(s, q) for s, q, *_ in spool.rows()}
        assert left == {("camera.front", 1), ("camera.front", 2)} | {("can", i) for i in range(4)}
        # A camera batch displaces the oldest camera batch, never CAN.
        put(spool, "camera.front", CAMERA, cam, 8)
        assert spool.evicted()["camera.front"].batches == 2
        assert {q for s, q, *_ in spool.rows() if s == "camera.front"} == {2, 3}
        # A camera batch bigger than all camera data cannot displace CAN: it is dropped, counted.
        big = camera_batch(AGENT, jpegs * 4, 0)
        assert not put(spool, "camera.front", CAMERA, big, 32)
        ev = spool.evicted()["camera.front"]
        assert (ev.batches, ev.records) == (3, 8 + 8 + 32)
        assert "can" not in spool.evicted()
        assert spool.stats()["bytes"] <= budget
    finally:
        spool.close()
    # Counters are in the database: exact across a restart.
    again = Spool(tmp_path, AGENT, budget_bytes=budget)
    try:
        ev = again.evicted()["camera.front"]
        assert (ev.batches, ev.records) == (3, 48)
        assert again.stats()["streams"]["can"]["records"] == 8000
    finally:
        again.close()


def test_seq_numbers_never_repeat_across_restarts(tmp_path: Path) -> None:
    used: set[int] = set()
    for _ in range(4):
        spool = Spool(tmp_path, AGENT, budget_bytes=2**20, seq_block=10)
        try:
            for _ in range(13):  # more than a block per run
                n = spool.next_seq("can")
                assert n not in used
                used.add(n)
        finally:
            spool.close()
    assert len(used) == 52


def test_seq_block_is_durable_before_use(tmp_path: Path) -> None:
    """After a crash (no close), a second process starts above every seq the first could use."""
    spool = Spool(tmp_path, AGENT, budget_bytes=2**20, seq_block=100)
    handed = [spool.next_seq("gnss") for _ in range(7)]
    # Another connection sees the reservation without the first ever closing.
    conn = sqlite3.connect(tmp_path / SPOOL_FILE)
    (reserved,) = conn.execute("SELECT reserved FROM seq_block WHERE stream='gnss'").fetchone()
    conn.close()
    assert reserved > max(handed)
    spool.close()


def test_corrupt_batch_is_dropped_not_sent(tmp_path: Path, can_frames: list[CanFrame]) -> None:
    spool = Spool(tmp_path, AGENT, budget_bytes=2**24)
    try:
        for i in range(3):
            assert spool.put("can", i, CAN, 100, 0, 1, can_batch(AGENT, can_frames[:100], i))
        # Damage the middle batch's bytes on disk behind the spool's back.
        conn = sqlite3.connect(tmp_path / SPOOL_FILE)
        conn.execute("UPDATE batch SET data = substr(data, 1, 40) || x'00' || substr(data, 42) WHERE seq = 1")
        conn.commit()
        conn.close()
        got = spool.take(10, 2**30)
        assert [b.seq for b in got] == [0, 2]
        assert spool.stats()["corrupt"] == {"can": 1}
        for b in got:
            Batch.decode(b.data).table()  # what is sent is intact
    finally:
        spool.close()


def test_checkpoint_is_stored_with_its_batch(tmp_path: Path, can_frames: list[CanFrame]) -> None:
    spool = Spool(tmp_path, AGENT, budget_bytes=2**24)
    try:
        assert spool.checkpoint("can") is None
        spool.put("can", 0, CAN, 10, 0, 1, can_batch(AGENT, can_frames[:10], 0), {"can": "9|x"})
        assert spool.checkpoint("can") == "9|x"
    finally:
        spool.close()


def test_other_agents_spool_is_refused(tmp_path: Path) -> None:
    Spool(tmp_path, AGENT, budget_bytes=2**20).close()
    with pytest.raises(SpoolError, match="belongs to agent"):
        Spool(tmp_path, "someone-else", budget_bytes=2**20)


def test_disk_full_keeps_capturing_in_memory(tmp_path: Path, can_frames: list[CanFrame]) -> None:
    """SQLite's 'database or disk is full' (a capped file): batches wait in memory, then go to disk."""
    data = [can_batch(AGENT, can_frames[i * 1000:(i + 1) * 1000], i) for i in range(20)]
    spool = Spool(tmp_path, AGENT, budget_bytes=2**30, max_file_bytes=48 * 1024,
                  memory_bytes=sum(len(d) for d in data))
    try:
        for i, d in enumerate(data):
            assert spool.put("can", i, CAN, 1000, 0, 1, d)
        st = spool.stats()
        assert st["disk_full"] and st["memory_batches"] > 0 and st["disk_errors"] > 0
        assert st["batches"] == 20
        # Everything is still sent: memory first, then disk.
        got = spool.take(100, 2**30)
        assert sorted(b.seq for b in got) == list(range(20))
        # The server acknowledges what is on disk; the freed pages take the memory batches,
        # round after round, until nothing waits in memory. Nothing is lost on the way.
        acked: list[int] = []
        for _ in range(20):
            on_disk = [q for _, q, *_ in spool.rows()]
            spool.ack({"can": [(q, q) for q in on_disk]})
            acked += on_disk
            spool._retry_at = 0.0  # do not wait for the retry interval in a test
            spool.flush_memory()
            if not spool.stats()["memory_batches"]:
                break
        acked += [q for _, q, *_ in spool.rows()]
        assert sorted(acked) == list(range(20))
        assert not spool.disk_full
        assert spool.evicted() == {}
    finally:
        spool.close()


def test_memory_fallback_is_bounded_and_evicts_by_priority(
    tmp_path: Path, can_frames: list[CanFrame], jpegs: list[bytes]
) -> None:
    cam = camera_batch(AGENT, jpegs, 0)
    can = can_batch(AGENT, can_frames[:1000], 0)
    spool = Spool(tmp_path, AGENT, budget_bytes=2**30, max_file_bytes=64 * 1024,
                  memory_bytes=len(cam) + 2 * len(can))
    try:
        # Fill the capped file first, so what follows goes to memory.
        seq = 0
        while not spool.disk_full:
            spool.put("can", seq, CAN, 1000, 0, 1, can_batch(AGENT, can_frames[:1000], seq))
            seq += 1
        assert spool.put("camera.front", 0, CAMERA, 8, 0, 1, cam)
        assert spool.put("can", seq, CAN, 1000, 0, 1, can)
        assert spool.put("can", seq + 1, CAN, 1000, 0, 1, can)  # pushes the camera batch out
        assert spool.stats()["memory_bytes"] <= len(cam) + 2 * len(can)
        assert spool.evicted()["camera.front"].batches == 1
        assert "can" not in spool.evicted()
    finally:
        spool.close()
