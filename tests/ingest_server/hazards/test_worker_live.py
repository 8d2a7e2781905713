"""End to end through a real Mosquitto: the simulator publishes at 10 Hz in real time, hazard
workers warn, the simulated vehicles receive. Latency is measured, not asserted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa

from cvis.broker import ManagedBroker
from cvis.simulate import scenario as scenarios
from cvis.simulate.run import run_live
from cvis.simulate.world import World
from ingest_server.hazards.errors import HazardConfigError, HazardConnectError
from ingest_server.hazards.record import WarningRecorder
from ingest_server.hazards.worker import HazardWorker
from wire.state import State
from wire.topics import live_topic, tile_of
from wire.warning import Status


def publish_burst(broker: ManagedBroker, messages: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cvis-test-burst")
    c.connect(broker.host, broker.port or 0)
    c.loop_start()
    try:
        infos = [c.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_nhtsa_case_live_with_recording(broker: ManagedBroker, tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    recorder = WarningRecorder(engine)
    world = World(scenarios.load("nhtsa_stopped_lead"))
    with HazardWorker(broker.url, recorder=recorder) as worker:
        # A burst of malformed and out-of-order live messages first: dropped, counted, harmless.
        # (Each on its own agent's topic: a worker keeps only the newest message per topic.)
        now = time.time_ns()
        tile = tile_of(37.7699, -122.4299)
        burst = [(live_topic(tile, f"noise{n}"), b"\x00" * n) for n in range(40)]
        old = State(timestamp_ns=now - 5 * 10**9, lat=37.7699, lon=-122.4299, speed_mps=1.0,
                    heading_deg=0.0).encode()
        burst += [(live_topic(tile, f"old{n}"), old) for n in range(20)]
        burst += [(live_topic(tile, f"rsu{n}"), b"\x01\x02junk") for n in range(20)]
        publish_burst(broker, burst)
        report = run_live(world, broker.url, duration=6.6, grace_s=0.5)
        stats = worker.stats()
    assert report.ok, report.as_dict()
    assert stats["dropped"]["malformed"] >= 60 and stats["dropped"]["stale"] >= 20
    (outcome,) = report.outcomes
    assert outcome.true_ttc is not None and outcome.true_ttc >= 2.1
    statuses = [r.warning.status for r in report.received]
    assert statuses[0] is Status.NEW and statuses[-1] is Status.END
    assert all(r.latency_ms is not None and r.latency_ms > 0
               for r in report.received if r.warning.status is not Status.END)
    assert report.percentile(99) is not None
    # Every warning sent is in the index.
    rows = [r.warning for r in recorder.fetch()]
    assert len(rows) == stats["published"] == len(report.received)
    assert {(w.episode, w.update) for w in rows} == {
        (r.warning.episode, r.warning.update) for r in report.received}
    engine.dispose()


def test_two_workers_split_by_tile(broker: ManagedBroker) -> None:
    world = World(scenarios.load("intersection"))
    pa, pb = world.by_id["a"].pose(2.2), world.by_id["b"].pose(2.2)
    tile_a = tile_of(*world.projection.to_wgs84(pa.x, pa.y))
    tile_b = tile_of(*world.projection.to_wgs84(pb.x, pb.y))
    assert tile_a != tile_b
    with HazardWorker(broker.url, tiles=[tile_a]) as wa, HazardWorker(broker.url, tiles=[tile_b]) as wb:
        report = run_live(world, broker.url, duration=4.0, grace_s=0.5)
        stats_a, stats_b = wa.stats(), wb.stats()
    assert report.ok, report.as_dict()
    new = sorted((r.warning.target, r.warning.counterparts) for r in report.received
                 if r.warning.status is Status.NEW)
    assert new == [("a", ("b",)), ("b", ("a",))]  # each warned once, by its own tile's worker
    assert stats_a["published"] > 0 and stats_b["published"] > 0
    assert stats_a["published"] + stats_b["published"] == len(report.received)


def test_worker_start_errors_are_clear(own_broker: ManagedBroker) -> None:
    with pytest.raises(HazardConfigError, match="invalid tile"):
        HazardWorker(own_broker.url, tiles=["north"])
    with pytest.raises(HazardConfigError, match="mqtt://"):
        HazardWorker("http://localhost:1")
    port = own_broker.port
    own_broker.stop()
    w = HazardWorker(f"mqtt://127.0.0.1:{port}")
    with pytest.raises(HazardConnectError, match="cannot connect"):
        w.start(timeout=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("cvis-hazards")]


def test_worker_resubscribes_after_broker_restart(own_broker: ManagedBroker) -> None:
    world = World(scenarios.load("nhtsa_stopped_lead"))
    with HazardWorker(own_broker.url) as worker:
        own_broker.stop()
        own_broker.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not worker.connected():
            time.sleep(0.05)
        assert worker.connected()
        # The warning still comes: the subscriptions were renewed on reconnect.
        report = run_live(world, own_broker.url, duration=5.0, grace_s=0.5)
    assert [o.status for o in report.outcomes] == ["ok"]
