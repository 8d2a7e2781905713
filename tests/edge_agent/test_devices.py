"""Device sources through real ptys: an SLCAN adapter, a GNSS receiver and a TI mmWave radar,
played by firmware_bridges' simulators, read by the agent's CAN, GNSS and radar sources."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.config import config_from_dict
from firmware_bridges.pty_device import PtyDevice
from firmware_bridges.simulators import GnssSimulator, RadarSimulator, SlcanSimulator
from tests.edge_agent.conftest import spool_batches, until
from wire.schemas import CanFrame

CAN_N = 3000
RADAR_FRAMES = 30


@pytest.mark.timeout(120)
def test_slcan_gnss_and_radar_devices(can_frames: list[CanFrame], drive_nmea: Path, tmp_path: Path) -> None:
    head = can_frames[:CAN_N]

    async def main() -> dict[str, int]:
        async with PtyDevice() as can_pty, PtyDevice() as gnss_pty, PtyDevice() as radar_pty:
            slcan_sim = SlcanSimulator(lambda: head, speed=10)
            gnss_sim = GnssSimulator(drive_nmea.read_bytes(), speed=20)
            radar_sim = RadarSimulator(rate_hz=20, speed=2, frames=RADAR_FRAMES)
            cfg = config_from_dict({
                "agent_id": "veh-devices", "broker": {"url": "mqtt://127.0.0.1:9"},
                "spool": {"dir": str(tmp_path / "spool")}, "drain_timeout_s": 0,
                "sources": [
                    {"type": "can", "name": "can", "adapter": "slcan", "port": can_pty.path,
                     "bitrate": 500000},
                    {"type": "gnss", "name": "gnss", "port": gnss_pty.path},
                    {"type": "radar", "name": "radar", "kind": "mmwave", "port": radar_pty.path},
                ],
            }, {})
            async with Agent(cfg) as agent:
                src = {s.name: s for s in agent.sources}
                sims = [asyncio.create_task(slcan_sim.run(can_pty)),
                        asyncio.create_task(gnss_sim.run(gnss_pty)),
                        asyncio.create_task(radar_sim.run(radar_pty))]
                try:
                    await until(lambda: src["can"].stats.records.get("can", 0) >= CAN_N
                                and src["gnss"].stats.records.get("gnss", 0) >= 570
                                and radar_sim.frames_sent >= RADAR_FRAMES
                                and src["radar"].stats.records.get("radar", 0) > 0, 90, "every device")
                    await asyncio.sleep(0.3)  # the radar's last frame
                finally:
                    for t in sims:
                        t.cancel()
                    await asyncio.gather(*sims, return_exceptions=True)
                assert slcan_sim.state.is_open and slcan_sim.state.bitrate_command == b"S6"
                await agent.stop_sources()
                await agent.flush()
                return {n: sum(s.stats.records.values()) for n, s in src.items()}

    counts = asyncio.run(main())
    got: dict[str, list] = {}
    for b in spool_batches(tmp_path / "spool", "veh-devices"):
        got.setdefault(b.stream, []).extend(b.table().records())
    # Raw CAN: every frame the adapter sent, bit for bit, in order (stamped with the agent clock).
    assert [(f.arbitration_id, f.flags, f.data) for f in got["can"]] == [
        (f.arbitration_id, f.flags, f.data) for f in head]
    assert {f.channel for f in got["can"]} == {"can"}
    # GNSS: the drive's fixes.
    fixes = got["gnss"]
    assert len(fixes) >= 570 and all(37.71 < f.lat < 37.74 for f in fixes)
    # Radar: points of every frame the sensor sent.
    points = got["radar"]
    assert {p.frame for p in points} == set(range(RADAR_FRAMES))
    assert counts["radar"] == len(points)


@pytest.mark.timeout(60)
def test_python_can_bus_with_dbc_signals(
    can_frames: list[CanFrame], shared_data: Path, tmp_path: Path
) -> None:
    import can

    from firmware_bridges.can_transport import message_from_frame
    from tests.edge_agent.captures import CAN_DBC

    frames = [f for f in can_frames[:4000] if f.channel == "can0"]

    async def main() -> None:
        cfg = config_from_dict({
            "agent_id": "veh-vcan", "broker": {"url": "mqtt://127.0.0.1:9"},
            "spool": {"dir": str(tmp_path / "spool")}, "drain_timeout_s": 0,
            "sources": [{"type": "can", "name": "can0", "interface": "virtual", "channel": "cvis-test-vcan",
                         "bitrate": None, "dbc": str(shared_data / CAN_DBC),
                         "signals": {"WHEEL_SPEEDS": 0, "SPEED.SPEED": 0}}],
        }, {})
        async with Agent(cfg) as agent:
            (src,) = agent.sources
            sender = can.Bus(interface="virtual", channel="cvis-test-vcan")
            try:
                await asyncio.sleep(0.5)  # let the agent's bus open
                for f in frames:
                    sender.send(message_from_frame(f))
                await until(lambda: src.stats.records.get("can0", 0) >= len(frames), 30, "the frames")
            finally:
                sender.shutdown()
            await agent.stop_sources()
            await agent.flush()

    asyncio.run(main())
    got: dict[str, list] = {}
    for b in spool_batches(tmp_path / "spool", "veh-vcan"):
        got.setdefault(b.stream, []).extend(b.table().records())
    assert [(f.arbitration_id, f.data) for f in got["can0"]] == [(f.arbitration_id, f.data) for f in frames]
    names = {s.name for s in got["signals"]}
    assert {"SPEED.SPEED", "WHEEL_SPEEDS.WHEEL_SPEED_FL"} <= names
    speeds = [s.value for s in got["signals"] if s.name == "SPEED.SPEED"]
    assert all(25 < v < 45 for v in speeds)  # km/h at the start of the drive (about 8 m/s)


@pytest.mark.timeout(60)
def test_a_missing_device_is_retried_and_reported_while_others_carry_on(
    short_can_log: Path, tmp_path: Path
) -> None:
    async def main() -> dict:
        cfg = config_from_dict({
            "agent_id": "veh-missing", "broker": {"url": "mqtt://127.0.0.1:9"},
            "spool": {"dir": str(tmp_path / "spool")}, "drain_timeout_s": 0,
            "sources": [{"type": "gnss", "name": "gnss", "port": str(tmp_path / "no-such-tty")},
                        {"type": "replay_can", "name": "can", "path": str(short_can_log), "speed": 0}],
        }, {})
        async with Agent(cfg) as agent:
            src = {s.name: s for s in agent.sources}
            await until(lambda: src["can"].stats.state == "finished"
                        and src["gnss"].stats.as_dict().get("transport", {}).get("open_failures", 0) >= 2,
                        30, "the replay to end and the GNSS port to fail twice")
            assert agent.spool is not None
            return agent._health(True, agent.spool.stats()).sources

    sources = asyncio.run(main())
    assert sources["can"]["state"] == "finished" and sources["can"]["records"]["can"] == 20_000
    gnss = sources["gnss"]
    assert gnss["connected"] is False and gnss["transport"]["open_failures"] >= 2
    assert gnss["records"] == {}
