"""Live plane: state/1 at 10 Hz from the drive's GNSS and CAN speed; warnings logged with latency."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from cvis.broker import ManagedBroker
from edge_agent.agent import Agent
from edge_agent.config import config_from_dict
from tests.edge_agent.ack_server import AckingServer
from tests.edge_agent.captures import CAN_DBC
from tests.edge_agent.conftest import until
from wire.envelope import TimeQuality
from wire.topics import tile_of, warning_topic
from wire.warning import HazardWarning, Severity, WarningType

AGENT = "veh-live"


def test_live_state_and_warnings(
    broker: ManagedBroker, shared_data: Path, short_can_log: Path, drive_nmea: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = config_from_dict({
        "agent_id": AGENT, "broker": {"url": broker.url}, "spool": {"dir": str(tmp_path / "spool")},
        "sources": [
            {"type": "replay_can", "name": "can", "path": str(short_can_log),
             "dbc": str(shared_data / CAN_DBC), "dbc_channels": ["can0"], "signals": {"SPEED.SPEED": 0}},
            {"type": "replay_gnss", "name": "gnss", "path": str(drive_nmea)},
        ],
        "live": {"speed_mps": {"signal": "SPEED.SPEED", "scale": 1 / 3.6}},
        "drain_timeout_s": 0,
    }, {})

    async def main(server: AckingServer) -> None:
        async with Agent(cfg) as agent:
            await until(lambda: len(server.received.live) >= 30, 30, "30 live states")
            await until(lambda: agent.clock.quality is TimeQuality.SERVER_SYNCED, 30, "clock sync")
            now = time.time_ns()
            w = HazardWarning(WarningType.FCW, Severity.WARNING, AGENT, ("veh-ahead",), 37.7215, -122.4723,
                              issued_ns=now - 10_000_000, expires_ns=now + 2_000_000_000, episode=7,
                              ttc_s=2.4, source_ns=now - 60_000_000)
            server.client.publish(warning_topic(AGENT), w.encode(), qos=1)
            assert agent.live is not None
            await until(lambda: agent.live.warnings == 1, 30, "the warning")
            await agent.stop_sources()

    caplog.set_level(logging.INFO, logger="edge_agent.live")
    with AckingServer(broker.host, broker.port) as server:
        asyncio.run(main(server))
        with server.lock:
            states = [st for _, a, st in server.received.live if a == AGENT]
            tiles = set(server.received.live_tiles[AGENT])
        speeds = [s.value / 3.6 for s in server.records(AGENT, "signals") if s.name == "SPEED.SPEED"]
    # Positions are the drive's (CA-280 near San Francisco), on the tile their topic names.
    assert all(37.71 < s.lat < 37.74 and -122.48 < s.lon < -122.46 for s in states)
    assert tiles == {tile_of(s.lat, s.lon) for s in states}
    # Speed is the CAN speed (0.02 m/s resolution), not GNSS.
    assert all(any(abs(s.speed_mps - v) <= 0.011 for v in speeds) for s in states[5:])
    steps = [(b.seq - a.seq) % 65536 for a, b in zip(states, states[1:], strict=False)]
    assert steps.count(1) >= len(steps) - 3  # consecutive states (QoS 0 may lose one)
    assert states[-1].time_quality is TimeQuality.SERVER_SYNCED
    # The warning was logged with its end-to-end latency (captured 60 ms before it was sent).
    msgs = [r.getMessage() for r in caplog.records if "FCW" in r.getMessage()]
    assert len(msgs) == 1 and "veh-ahead" in msgs[0] and "ttc 2.40 s" in msgs[0]
    e2e_ms = float(msgs[0].split("latency ")[1].split(" ms")[0])
    assert e2e_ms >= 50.0
