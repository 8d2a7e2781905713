"""Device simulators: the SLCAN adapter's command table, the radar script, and the real
``cvis simulate-device`` process on a pty, stopped by signals."""

from __future__ import annotations

import asyncio
import math
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from firmware_bridges.errors import ConfigError
from firmware_bridges.gnss_demux import GnssDemux
from firmware_bridges.mmwave import MmwaveFrame, MmwaveParser
from firmware_bridges.nmea import NmeaSentence
from firmware_bridges.parser import events, parse_all
from firmware_bridges.pty_device import PtyDevice
from firmware_bridges.replay import read_capture
from firmware_bridges.serial_transport import SerialTransport
from firmware_bridges.simulators import (
    BELL,
    OK,
    GnssSimulator,
    RadarScene,
    RadarSimulator,
    SlcanSimulator,
    Target,
)
from firmware_bridges.slcan import SlcanParser, SlcanReply
from wire.schemas import CanFrame

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# SLCAN adapter -------------------------------------------------------------------------------


def test_slcan_adapter_answers_commands_as_the_lawicel_manual_says() -> None:
    sim = SlcanSimulator(lambda: [])
    a = sim.answer
    assert a(b"C") == BELL  # already closed
    assert a(b"S9") == BELL  # no such bit rate
    assert a(b"S4") == OK and sim.state.bitrate_command == b"S4"
    assert a(b"Z1") == OK and sim.state.timestamps
    assert a(b"V") == b"V1013\r"
    assert a(b"N") == b"NCV01\r"
    assert a(b"F") == b"F00\r"
    assert a(b"t1230") == BELL  # transmit while closed
    assert a(b"O") == OK and sim.state.is_open
    assert a(b"O") == BELL  # already open
    assert a(b"S6") == BELL  # bit rate only while closed
    assert a(b"Z0") == BELL  # timestamps only while closed
    assert a(b"t12321122") == b"z\r"
    assert a(b"T1ABCDEF01FF") == b"Z\r"
    assert a(b"r1238") == b"z\r"
    assert a(b"t12331122") == BELL  # DLC 3 but 2 data bytes
    assert a(b"X") == BELL
    assert a(b"") == OK
    assert a(b"C") == OK and not sim.state.is_open
    assert a(b"L") == OK and sim.state.listen_only
    assert a(b"t1230") == BELL  # listen-only never transmits
    assert sim.state.transmitted == 3
    assert sim.state.errors == 9


def test_slcan_simulator_waits_for_open_and_streams_from_the_start() -> None:
    frames = [CanFrame.make(int(i * 1e6), "can0", 0x100 + i, bytes([i])) for i in range(50)]

    async def main() -> tuple[list[Any], SlcanSimulator]:
        parser = SlcanParser()
        got: list[Any] = []
        async with PtyDevice() as dev:
            sim = SlcanSimulator(lambda: frames, speed=math.inf)
            task = asyncio.create_task(sim.run(dev))
            async with SerialTransport(dev.slave_path) as port:
                await asyncio.sleep(0.1)  # the bus "waits" while the channel is closed
                assert sim.frames_sent == 0
                await port.write(b"V\rO\r")
                async for chunk in port:
                    parser.feed(chunk)
                    got.extend(events(parser))
                    if len(got) == 52:
                        break
            await task
        return got, sim

    got, sim = run(main())
    assert got[:2] == [SlcanReply(True, "V1013"), SlcanReply(True, "")]
    assert [f.arbitration_id for f in got[2:]] == [0x100 + i for i in range(50)]
    assert sim.frames_sent == 50


# Radar ---------------------------------------------------------------------------------------


def test_radar_frames_parse_and_points_follow_the_kinematic_script() -> None:
    sim = RadarSimulator(rate_hz=20.0)
    data = b"".join(sim.frame_bytes(n) for n in range(100))
    parser = MmwaveParser("front")
    frames: list[MmwaveFrame] = parse_all(parser, data)
    assert parser.stats.frames == 100 and parser.stats.skipped_bytes == 0
    assert [f.frame for f in frames] == list(range(100))
    lead = sim.scene.targets[0]  # the car ahead, closing at 4 m/s from 45 m
    for f in frames:
        t = f.frame / 20.0
        x, y = lead.at(t, sim.scene.max_range)
        near = [p for p in f.points if math.hypot(p.x - x, p.y - y) < 1.5]
        assert len(near) >= lead.points - 1
        assert all(p.doppler < -3.5 for p in near)  # approaching: negative radial speed
        assert all(p.snr_db > 0 and p.noise_db > 0 for p in f.points)
    ys = [min(p.y for p in f.points if abs(p.x) < 1.5) for f in frames]
    assert ys[0] > ys[-1] + 15  # 5 s at 4 m/s: the lead car came 20 m closer


def test_targets_reenter_the_field_of_view_instead_of_leaving_it() -> None:
    ped = Target("ped", -7.0, 14.0, 1.3, 0.0, 1, 0.0)
    for t in range(0, 120):
        x, y = ped.at(float(t), 100.0)
        assert -10.0 <= x <= 10.0 and y == 14.0
    with pytest.raises(ConfigError):
        RadarScene([])
    with pytest.raises(ConfigError):
        RadarSimulator(rate_hz=0.5)


def test_radar_simulator_through_a_pty_at_its_frame_rate() -> None:
    async def main() -> list[MmwaveFrame]:
        parser = MmwaveParser()
        got: list[MmwaveFrame] = []
        async with PtyDevice() as dev:
            sim = RadarSimulator(rate_hz=20.0, frames=8)
            async with SerialTransport(dev.slave_path, 921600) as port:
                task = asyncio.create_task(sim.run(dev))
                async for chunk in port:
                    parser.feed(chunk)
                    got.extend(events(parser))
                    if len(got) == 8:
                        break
                await task
        return got

    got = run(main())
    assert [f.frame for f in got] == list(range(8))
    assert all(len(f.points) == 13 for f in got)


# GNSS ----------------------------------------------------------------------------------------


def test_gnss_simulator_stops_at_the_end_of_its_log(shared_data: Path) -> None:
    capture = read_capture(shared_data / "gnss/gpsd/ublox-neo-m8n.log")

    async def main() -> GnssSimulator:
        async with PtyDevice() as dev:
            sim = GnssSimulator(capture, speed=math.inf)
            await sim.run(dev)
        return sim

    sim = run(main())
    assert sim.epochs_sent == len(sim.timeline) == 24
    with pytest.raises(ConfigError, match="empty"):
        GnssSimulator(b"# only a header\n")


# the real process ----------------------------------------------------------------------------


async def start_cli(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cvis", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 15)
    return proc, first.decode().strip()


async def stop_cli(proc: asyncio.subprocess.Process, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def test_cvis_simulate_device_gnss_prints_its_pty_and_stops_on_sigterm(tmp_path: Path) -> None:
    link = tmp_path / "gnss0"

    async def main() -> tuple[str, list[str], int, str]:
        proc, path = await start_cli("simulate-device", "gnss", "--speed", "10", "--loop",
                                     "--link", str(link))
        try:
            assert path.startswith("/dev/pts/")
            assert link.resolve() == Path(path)
            demux = GnssDemux()
            sentences: list[str] = []
            async with SerialTransport(path, 9600) as port:
                async for chunk in port:
                    demux.feed(chunk)
                    sentences.extend(e.raw for e in events(demux) if isinstance(e, NmeaSentence))
                    if len(sentences) >= 30:
                        break
        finally:
            code, err = await stop_cli(proc, signal.SIGTERM)
        return path, sentences, code, err

    path, sentences, code, err = run(main(), 40)
    assert code == 0, err
    assert not link.exists() and not Path(path).exists()
    assert all(s[0] == "$" for s in sentences)
    assert {s[3:6] for s in sentences} >= {"GSV", "RMC", "GSA"}


def test_cvis_simulate_device_slcan_streams_after_open_and_stops_on_sigint() -> None:
    async def main() -> tuple[list[CanFrame], int, str]:
        proc, path = await start_cli("simulate-device", "slcan", "--speed", "5")
        try:
            parser = SlcanParser()
            frames: list[CanFrame] = []
            async with SerialTransport(path) as port:
                await port.write(b"S6\rO\r")
                async for chunk in port:
                    parser.feed(chunk)
                    frames.extend(e for e in events(parser) if isinstance(e, CanFrame))
                    if len(frames) >= 200:
                        break
        finally:
            code, err = await stop_cli(proc, signal.SIGINT)
        return frames, code, err

    frames, code, err = run(main(), 40)
    assert code == 0, err
    # the default log's can0: the RAV4 powertrain bus, whose first frame is STEER_TORQUE_SENSOR
    assert frames[0].arbitration_id == 0x260
    assert {0x260, 0x2C1, 0x0B4}.issubset({f.arbitration_id for f in frames})


def test_cvis_simulate_device_rejects_a_missing_log(tmp_path: Path) -> None:
    async def main() -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cvis", "simulate-device", "gnss", "--log",
            str(tmp_path / "nope.log"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = run(main(), 30)
    assert code == 2 and out == ""
    assert "nope.log does not exist" in err
