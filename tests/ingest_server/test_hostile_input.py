"""Hostile input through a real broker: refused, counted by reason, quarantined (bounded),
nothing stored, and the worker keeps serving a well-behaved agent meanwhile."""

from __future__ import annotations

import dataclasses
import os
import time
import zlib
from pathlib import Path

import msgpack
import paho.mqtt.client as mqtt
import pytest
import zstandard
from paho.mqtt.enums import CallbackAPIVersion

from cvis.broker import ManagedBroker
from ingest_server.errors import Rejected
from ingest_server.index.queries import Index
from ingest_server.validate import REASONS, validate
from tests.ingest_server.conftest import ThreadedWorker, make_config
from tests.ingest_server.publisher import AgentPublisher, can_batches, can_frames
from wire import codec
from wire.envelope import Batch, encode_batch
from wire.limits import Limits
from wire.schemas import CAN_FRAMES, GNSS_FIX, GnssFix

LIMITS = Limits(max_encoded_bytes=512 * 1024, max_decoded_bytes=4 * 1024 * 1024,
                max_field_bytes=512 * 1024)


def _good(shared_data: Path, agent: str = "veh1", seq: int = 10) -> Batch:
    return encode_batch(agent, "can", CAN_FRAMES.table(can_frames(shared_data)[:200]), seq)


def _bomb(good: Batch, declared: bool) -> Batch:
    """64 MiB of zeros in a few kilobytes, with or without a declared content size."""
    zeros = b"\0" * (64 * 1024 * 1024)
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=declared)
    if declared:
        payload = cctx.compress(zeros)
    else:
        c = cctx.compressobj()
        payload = c.compress(zeros) + c.flush()
    return dataclasses.replace(good, payload=payload, crc32=zlib.crc32(zeros))


def hostile_messages(shared_data: Path) -> list[tuple[str, bytes, str]]:
    """(topic, payload, expected reason) for every kind of bad input."""
    good = _good(shared_data)
    raw = msgpack.unpackb(good.encode(), raw=False)
    unknown = dict(raw, sv=99)
    bad_crc = dataclasses.replace(good, crc32=(good.crc32 + 1) % 2**32)
    fix = GnssFix(46_408_000_000_000, 0, 37.7, -122.4, 30.0, 8.0, 2.0, 1, 9, 0.9)
    wrong_schema = encode_batch("veh1", "can", GNSS_FIX.table([fix]), 999)
    before_1970 = dataclasses.replace(good, clock_offset_ns=-(10**20) // 1000)
    return [
        ("cvis/v1/veh2/batch/can", good.encode(), "agent_mismatch"),
        ("cvis/v1/veh1/batch/gnss", good.encode(), "stream_mismatch"),
        ("cvis/v1/veh1/batch/can/extra", good.encode(), "bad_topic"),
        ("cvis/v1/veh1/batch/time/request", good.encode(), "bad_topic"),
        ("cvis/v1/veh1/batch/can", os.urandom(600 * 1024), "oversize"),
        ("cvis/v1/veh1/batch/can", _bomb(good, True).encode(), "limit"),
        ("cvis/v1/veh1/batch/can", _bomb(good, False).encode(), "limit"),
        ("cvis/v1/veh1/batch/can", b"\xc1\xff garbage \x00" * 10, "bad_envelope"),
        ("cvis/v1/veh1/batch/can", msgpack.packb([1, 2, 3]), "bad_envelope"),
        ("cvis/v1/veh1/batch/can", msgpack.packb(unknown, use_bin_type=True), "unknown_schema"),
        ("cvis/v1/veh1/batch/can", bad_crc.encode(), "bad_payload"),
        ("cvis/v1/veh1/batch/can", before_1970.encode(), "bad_time"),
        ("cvis/v1/veh1/batch/can", wrong_schema.encode(), "schema_mismatch"),
    ]


#: Cases validate() decides alone; schema_mismatch needs the index (the worker checks it).
_PURE_CASES = 12


@pytest.mark.parametrize("case", range(_PURE_CASES))
def test_validate_names_the_reason(shared_data: Path, case: int) -> None:
    topic, payload, reason = hostile_messages(shared_data)[case]
    assert reason in REASONS and reason != "schema_mismatch"
    with pytest.raises(Rejected) as exc:
        validate(topic, payload, LIMITS, codec.NO_DICTIONARIES)
    assert exc.value.reason == reason
    assert exc.value.detail


def test_validate_accepts_a_good_batch(shared_data: Path) -> None:
    good = _good(shared_data)
    vb = validate("cvis/v1/veh1/batch/can", good.encode(), LIMITS)
    assert vb.key == ("veh1", "can", good.seq)
    assert vb.table.n == 200


def test_hostile_input_is_refused_counted_and_quarantined(
    tmp_path: Path, broker: ManagedBroker, index_url: str, shared_data: Path
) -> None:
    cfg = make_config(tmp_path / "data", broker, index_url,
                      ingest__max_encoded_mb=0.5, ingest__max_decoded_mb=4.0,
                      quarantine__max_entries=8, quarantine__keep_bytes=64)
    good = can_batches("veh1", can_frames(shared_data)[:20_000])
    hostile = hostile_messages(shared_data)
    expected: dict[str, int] = {}
    for _, _, reason in hostile:
        expected[reason] = expected.get(reason, 0) + 1
    with ThreadedWorker(cfg) as tw:
        pub = AgentPublisher(broker.host, broker.port, "veh1", good, window=8).start()
        attacker = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="attacker")
        attacker.connect(broker.host, broker.port)
        attacker.loop_start()
        try:
            # The good agent's stream exists first, so a batch of another schema on it is a
            # schema mismatch (not the stream's first schema).
            deadline = time.monotonic() + 20
            while not pub.acked and time.monotonic() < deadline:
                time.sleep(0.01)
            for topic, payload, _ in hostile:
                attacker.publish(topic, payload, qos=1).wait_for_publish(10)
            assert pub.done.wait(60), f"{len(pub.acked)} of {len(good)} good batches acked"
            deadline = time.monotonic() + 20
            while tw.worker.quarantine.total < len(hostile) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            attacker.disconnect()
            attacker.loop_stop()
            pub.stop()
        counts = dict(tw.worker.quarantine.counts)
        kept = list(tw.worker.quarantine)
    assert counts == expected
    assert len(kept) == 8  # bounded: the newest 8 of 13
    assert all(len(e.head) <= 64 for e in kept)
    assert pub.acked == {(b.stream, b.seq) for b in good}
    index = Index.open(cfg.resolved_index_url, migrate=False)
    try:
        assert index.count_batches() == len(good)  # nothing refused was stored
        assert index.reject_totals() == expected
        rows = index.quarantine_entries(100)
        assert len(rows) == 8
        assert {r["reason"] for r in rows} <= set(expected)
        assert [s["stream"] for s in index.stream_summary()] == ["can"]
    finally:
        index.close()
