"""CanBusTransport over python-can's virtual bus and its slcan interface on a simulated adapter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import can
import pytest

from firmware_bridges.can_transport import (
    CanBusTransport,
    CanClock,
    frame_from_message,
    message_from_frame,
)
from firmware_bridges.candump import read_candump
from firmware_bridges.errors import ConfigError
from firmware_bridges.pty_device import PtyDevice
from firmware_bridges.serial_transport import Backoff
from firmware_bridges.simulators import SlcanSimulator
from wire.schemas import CanFrame

T = TypeVar("T")
FAST = Backoff(0.01, 0.05)


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def real_frames(shared_data: Path, channel: str, n: int) -> list[CanFrame]:
    out = []
    for f in read_candump(shared_data / "can/toyota_rav4_comma2k19_seg40.log.gz"):
        if f.channel == channel:
            out.append(f)
            if len(out) == n:
                break
    return out


def key(f: CanFrame) -> tuple[int, int, int, bytes]:
    return f.arbitration_id, f.flags & 0x3F, f.dlc, f.data


def test_virtual_bus_round_trip_with_real_frames(shared_data: Path) -> None:
    frames = real_frames(shared_data, "can0", 500)
    extra = [
        CanFrame.make(0, "x", 0x18DAF110, b"\x02\x10\x03", is_extended=True),
        CanFrame.make(0, "x", 0x7DF, is_remote=True, dlc=8),
        CanFrame.make(0, "x", 0x123, bytes(range(12)), is_fd=True, bitrate_switch=True),
    ]
    sent = frames + extra

    async def main() -> tuple[list[CanFrame], list[can.Message], CanBusTransport]:
        got: list[CanFrame] = []
        peer = can.Bus(interface="virtual", channel="rt-test", fd=True)
        try:
            async with CanBusTransport("virtual", "rt-test", label="vcan0", fd=True) as bus:
                for f in sent:
                    peer.send(message_from_frame(f))
                async for frame in bus:
                    got.append(frame)
                    if len(got) == len(sent):
                        break
                for f in frames[:20]:
                    await bus.send(f)
            back = [peer.recv(1.0) for _ in range(20)]
        finally:
            peer.shutdown()
        return got, [m for m in back if m is not None], bus

    got, back, bus = run(main())
    assert [key(f) for f in got] == [key(f) for f in sent]
    assert {f.channel for f in got} == {"vcan0"}
    assert not any(f.flags & 64 for f in got)  # received, not transmitted by us
    now = time.time_ns()
    assert all(abs(f.timestamp_ns - now) < 60e9 for f in got)  # virtual stamps Unix time
    assert [(m.arbitration_id, bytes(m.data)) for m in back] == [
        (f.arbitration_id, f.data) for f in frames[:20]
    ]
    assert bus.stats.chunks_in == len(sent) and bus.stats.errors == 0
    assert bus.clock.stats.unix_stamps == len(sent)


def test_device_clock_stamps_are_mapped_to_host_time_keeping_their_spacing(
    shared_data: Path,
) -> None:
    # The comma log's stamps are the panda's boot-time clock (46408.58 s), like many adapters'.
    frames = real_frames(shared_data, "can1", 200)

    async def main() -> list[CanFrame]:
        got: list[CanFrame] = []
        peer = can.Bus(interface="virtual", channel="clock-test", preserve_timestamps=True)
        try:
            async with CanBusTransport("virtual", "clock-test", preserve_timestamps=True) as bus:
                for f in frames:
                    peer.send(message_from_frame(f))
                async for frame in bus:
                    got.append(frame)
                    if len(got) == len(frames):
                        break
        finally:
            peer.shutdown()
        return got

    before = time.time_ns()
    got = run(main())
    after = time.time_ns()
    assert before - 1e9 <= got[0].timestamp_ns <= after + 1e9
    gaps_log = [b.timestamp_ns - a.timestamp_ns for a, b in zip(frames, frames[1:], strict=False)]
    gaps_got = [b.timestamp_ns - a.timestamp_ns for a, b in zip(got, got[1:], strict=False)]
    assert all(abs(x - y) <= 1000 for x, y in zip(gaps_log, gaps_got, strict=True))


def test_can_clock_modes_and_resync() -> None:
    host = 1_700_000_000_000_000_000
    auto = CanClock()
    assert auto.to_ns(host / 1e9 + 0.5, host) == pytest.approx(host + 500_000_000, abs=1000)
    assert auto.stats.unix_stamps == 1
    boot = CanClock()
    assert boot.to_ns(100.0, host) == host
    assert boot.to_ns(100.25, host + 250_000_000) == host + 250_000_000
    assert boot.to_ns(100.30, host + 400_000_000) == host + 300_000_000  # device spacing wins
    assert boot.to_ns(5.0, host + 500_000_000) == host + 500_000_000  # device restarted its clock
    assert boot.stats.resyncs == 1 and boot.stats.mapped_stamps == 4
    assert CanClock("host").to_ns(100.0, host) == host
    assert CanClock("device").to_ns(100.0, host) == 100_000_000_000
    with pytest.raises(ConfigError):
        CanClock("gps")  # type: ignore[arg-type]


def test_message_conversion_keeps_flags_and_fixes_bad_lengths() -> None:
    f = CanFrame.make(123, "can0", 0x1ABCDEF0, b"\x01\x02", is_extended=True, is_tx=True)
    m = message_from_frame(f)
    assert m.is_extended_id and not m.is_rx
    back = frame_from_message(m, "can0", 123)
    assert back == f
    odd = can.Message(arbitration_id=0x10, is_extended_id=False, data=b"\x01\x02\x03", dlc=8,
                      check=False)
    assert frame_from_message(odd, "c", 0).dlc == 3
    fd = can.Message(arbitration_id=0x10, is_extended_id=False, is_fd=True, data=bytes(10))
    got = frame_from_message(fd, "c", 0)
    assert len(got.data) == 12 and got.dlc == 9


def test_unknown_interface_is_a_config_error() -> None:
    async def main() -> None:
        async with CanBusTransport("no-such-interface", "can0"):
            pass

    with pytest.raises(ConfigError, match="no-such-interface"):
        run(main())


def test_python_can_slcan_bus_on_the_simulated_adapter_reopens_after_unplug(
    tmp_path: Path, shared_data: Path
) -> None:
    link = tmp_path / "ttyACM0"
    frames = real_frames(shared_data, "can0", 400)

    async def adapter(stop: asyncio.Event) -> SlcanSimulator:
        async with PtyDevice(link) as dev:
            sim = SlcanSimulator(lambda: iter(frames), speed=20.0, loop=True)
            task = asyncio.create_task(sim.run(dev))
            await stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return sim

    async def wait_for(cond: Any) -> None:
        while not cond():
            await asyncio.sleep(0.01)

    async def main() -> tuple[list[CanFrame], CanBusTransport, SlcanSimulator, SlcanSimulator]:
        got: list[CanFrame] = []
        stop1, stop2 = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(adapter(stop1))
        await wait_for(link.exists)
        async with CanBusTransport(
            "slcan", str(link), bitrate=500_000, backoff=FAST, sleep_after_open=0
        ) as bus:

            async def consume() -> None:
                async for frame in bus:
                    got.append(frame)

            consumer = asyncio.create_task(consume())
            await wait_for(lambda: len(got) >= 100)
            stop1.set()
            sim1 = await first  # unplugged
            await wait_for(lambda: bus.stats.errors >= 1)
            n = len(got)
            second = asyncio.create_task(adapter(stop2))
            await wait_for(lambda: len(got) >= n + 100)
            stop2.set()
            sim2 = await second
            await bus.aclose()
            await consumer
        return got, bus, sim1, sim2

    got, bus, sim1, sim2 = run(main())
    # python-can sent C, S6, O to each adapter; each streamed the log from its start
    for sim in (sim1, sim2):
        assert sim.state.bitrate_command == b"S6"
        assert sim.frames_sent >= 100
    want = [key(f) for f in frames]
    assert [key(f) for f in got[:100]] == want[:100]
    assert bus.stats.reconnects == 1 and bus.stats.errors >= 1
    assert {f.channel for f in got} == {str(link)}
