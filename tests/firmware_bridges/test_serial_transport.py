"""SerialTransport over real ptys, TCP sockets and loop://, with the real simulators and parsers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from firmware_bridges.candump import read_candump
from firmware_bridges.errors import ConfigError, TransportError
from firmware_bridges.gnss_demux import GnssDemux
from firmware_bridges.nmea import GnssFixBuilder, NmeaSentence
from firmware_bridges.parser import events, parse_all
from firmware_bridges.pty_device import PtyDevice
from firmware_bridges.replay import read_capture, strip_comment_header
from firmware_bridges.serial_transport import Backoff, SerialTransport
from firmware_bridges.simulators import GnssSimulator, SlcanSimulator
from firmware_bridges.slcan import SlcanParser, SlcanReply, cmd_bitrate, cmd_open, cmd_timestamps
from wire.schemas import CanFrame, GnssFix

T = TypeVar("T")
FAST = Backoff(0.01, 0.05)


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def gnss_fixes(data: bytes) -> tuple[list[GnssFix], int]:
    """Fixes and sentence count from the real parsers, fed the whole capture at once."""
    demux, builder = GnssDemux(), GnssFixBuilder(clock_ns=lambda: 0)
    fixes: list[GnssFix] = []
    sentences = 0
    for ev in parse_all(demux, data):
        if isinstance(ev, NmeaSentence):
            sentences += 1
            fixes.extend(builder.add(ev))
    fixes.extend(builder.flush())
    return fixes, sentences


def fix_key(f: GnssFix) -> tuple[int, float, float, float]:
    return f.time_utc_ns, f.lat, f.lon, f.alt_m


# pty end to end -------------------------------------------------------------------------------


def test_gnss_simulator_through_pty_and_serial_transport_gives_the_capture_fixes(
    shared_data: Path,
) -> None:
    capture = read_capture(shared_data / "gnss/gpsd/bu353s4.log")
    want, sentences = gnss_fixes(strip_comment_header(capture))
    assert len(want) == 25

    async def main() -> tuple[list[GnssFix], SerialTransport]:
        demux, builder = GnssDemux(), GnssFixBuilder(clock_ns=lambda: 0)
        got: list[GnssFix] = []
        seen = 0
        async with PtyDevice() as dev:
            sim = GnssSimulator(capture, speed=25.0)
            async with SerialTransport(dev.slave_path, 9600, read_size=256) as port:
                task = asyncio.create_task(sim.run(dev))
                async for chunk in port:
                    assert 0 < len(chunk) <= 256
                    demux.feed(chunk)
                    for ev in events(demux):
                        if isinstance(ev, NmeaSentence):
                            seen += 1
                            got.extend(builder.add(ev))
                    if seen == sentences:
                        break
                await task
        got.extend(builder.flush())
        return got, port

    got, port = run(main())
    assert [fix_key(f) for f in got] == [fix_key(f) for f in want]
    assert port.stats.bytes_in == len(strip_comment_header(capture))
    assert port.stats.reconnects == 0 and port.stats.errors == 0


def test_slcan_simulator_through_pty_answers_commands_and_streams_the_log(
    shared_data: Path,
) -> None:
    log_path = shared_data / "can/toyota_rav4_comma2k19_seg40.log.gz"
    want: list[CanFrame] = []
    for f in read_candump(log_path):
        if f.channel == "can0":
            want.append(f)
            if len(want) == 3000:
                break

    async def main() -> tuple[list[CanFrame], list[SlcanReply], SlcanSimulator]:
        parser = SlcanParser("slcan0")
        frames: list[CanFrame] = []
        replies: list[SlcanReply] = []
        async with PtyDevice() as dev:
            sim = SlcanSimulator(lambda: iter(want), speed=50.0)
            task = asyncio.create_task(sim.run(dev))
            async with SerialTransport(dev.slave_path) as port:
                await port.write(cmd_bitrate(500_000) + cmd_timestamps(True) + cmd_open())
                async for chunk in port:
                    parser.feed(chunk)
                    for ev in events(parser):
                        if isinstance(ev, CanFrame):
                            frames.append(ev)
                        elif isinstance(ev, SlcanReply):
                            replies.append(ev)
                    if len(frames) == len(want):
                        break
            await task
        return frames, replies, sim

    frames, replies, sim = run(main())
    assert replies == [SlcanReply(True, "")] * 3  # S6, Z1, O each acknowledged with CR
    assert sim.state.is_open and sim.state.timestamps and sim.state.bitrate_command == b"S6"
    assert [(f.arbitration_id, f.flags, f.dlc, f.data) for f in frames] == [
        (f.arbitration_id, f.flags, f.dlc, f.data) for f in want
    ]
    # adapter timestamps were on: the parser spaces frames by them, never backwards
    ts = [f.timestamp_ns for f in frames]
    assert ts == sorted(ts)


def test_transport_reopens_after_the_pty_disappears_and_comes_back(
    tmp_path: Path, shared_data: Path
) -> None:
    link = tmp_path / "ttyGNSS"
    capture = read_capture(shared_data / "gnss/gpsd/bu353s4.log")

    async def device_session(stop: asyncio.Event) -> None:
        async with PtyDevice(link) as dev:
            sim = GnssSimulator(capture, speed=20.0, loop=True)
            task = asyncio.create_task(sim.run(dev))
            await stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_for(cond: Any) -> None:
        while not cond():
            await asyncio.sleep(0.01)

    async def main() -> tuple[SerialTransport, list[str], int]:
        sentences: list[str] = []
        stop1, stop2 = asyncio.Event(), asyncio.Event()
        dev1 = asyncio.create_task(device_session(stop1))
        await wait_for(link.exists)
        async with SerialTransport(str(link), backoff=FAST) as port:

            async def consume() -> None:
                demux = GnssDemux()
                async for chunk in port:
                    demux.feed(chunk)
                    sentences.extend(e.raw for e in events(demux) if isinstance(e, NmeaSentence))

            consumer = asyncio.create_task(consume())
            await wait_for(lambda: len(sentences) >= 10)
            stop1.set()
            await dev1  # the pty hangs up; its node and the link disappear
            assert not link.exists()
            await wait_for(lambda: port.stats.open_failures >= 2)  # retrying, not dead
            assert not port.connected
            before = len(sentences)
            dev2 = asyncio.create_task(device_session(stop2))
            await wait_for(lambda: len(sentences) >= before + 10)
            stop2.set()
            await dev2
            await port.aclose()
            await consumer  # iteration ends cleanly on close
        return port, sentences, before

    port, sentences, before = run(main())
    assert before >= 10 and len(sentences) >= before + 10
    assert all(s.startswith("$GP") for s in sentences)
    assert port.stats.reconnects == 1
    assert port.stats.errors == 1
    assert port.stats.open_failures >= 2
    assert port.stats.opens == 2


# other URLs ----------------------------------------------------------------------------------


def test_loop_url_is_read_by_a_worker_thread_and_echoes_writes() -> None:
    sent = b"$GPTXT,01,01,02,hello*00\r\n" * 10

    async def main() -> bytes:
        got = b""
        async with SerialTransport("loop://", read_size=64) as port:
            await port.write(sent)
            async for chunk in port:
                assert len(chunk) <= 64
                got += chunk
                if len(got) >= len(sent):
                    break
        return got

    assert run(main()) == sent


def test_socket_url_reconnects_when_the_peer_drops_the_connection() -> None:
    async def main() -> tuple[list[bytes], SerialTransport]:
        accepted: list[int] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            writer.write(b"session %d\n" % len(accepted))
            await writer.drain()
            if len(accepted) == 1:
                writer.close()  # the remote serial server goes away
                await writer.wait_closed()
                return
            cmd = await reader.readline()
            writer.write(b"echo " + cmd)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port_no = server.sockets[0].getsockname()[1]
        lines: list[bytes] = []
        async with server, SerialTransport(f"socket://127.0.0.1:{port_no}", backoff=FAST) as port:
            buf = b""
            async for chunk in port:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    lines.append(line)
                    if line == b"session 2":
                        await port.write(b"hello\n")
                if len(lines) == 3:
                    break
        return lines, port

    lines, port = run(main())
    assert lines == [b"session 1", b"session 2", b"echo hello"]
    assert port.stats.reconnects == 1 and port.stats.errors == 1
    assert port.stats.bytes_out == len(b"hello\n")


def test_a_missing_device_is_retried_then_given_up_only_when_asked(tmp_path: Path) -> None:
    missing = tmp_path / "ttyUSB9"

    async def main() -> SerialTransport:
        port = SerialTransport(str(missing), backoff=FAST, max_attempts=3)
        with pytest.raises(TransportError, match="gave up after 3 failed opens"):
            async with port:
                async for _ in port:
                    pass
        return port

    port = run(main())
    assert port.stats.open_failures == 4  # the first open on enter, then three retries
    assert port.stats.opens == 0


def test_a_url_pyserial_does_not_know_is_a_config_error() -> None:
    async def main() -> None:
        async with SerialTransport("nosuch://device"):
            pass

    with pytest.raises(ConfigError, match="nosuch"):
        run(main())


def test_write_to_a_disconnected_port_is_a_transport_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with SerialTransport(str(tmp_path / "absent"), backoff=FAST) as port:
            assert not port.connected
            await port.write(b"O\r")

    with pytest.raises(TransportError, match="not connected"):
        run(main())


# backoff and the pty device ------------------------------------------------------------------


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    b = Backoff(0.1, 2.0, factor=2.0, jitter=0.5, rng=random.Random(3))
    delays = [b.next_delay() for _ in range(12)]
    for n, d in enumerate(delays):
        nominal = min(2.0, 0.1 * 2**n)
        assert nominal * 0.5 <= d <= nominal
    assert len(set(delays[6:])) > 1  # capped delays still differ: jitter
    b.reset()
    assert 0.05 <= b.next_delay() <= 0.1
    with pytest.raises(ConfigError):
        Backoff(1.0, 0.5)


def test_pty_device_without_a_reader_keeps_a_bounded_queue_and_counts_drops() -> None:
    async def main() -> PtyDevice:
        async with PtyDevice(max_pending=4096) as dev:
            block = bytes(range(256)) * 16
            for _ in range(200):  # 800 KiB: more than the kernel and our queue hold
                dev.write(block)
            assert dev.pending <= 4096
            return dev

    dev = run(main())
    assert dev.stats.bytes_dropped > 0
    assert dev.stats.bytes_written + dev.stats.bytes_dropped <= 200 * 4096
    assert dev.stats.bytes_written + dev.stats.bytes_dropped + 4096 >= 200 * 4096


def test_pty_device_passes_binary_bytes_and_cr_untouched() -> None:
    payload = bytes(range(256)) + b"\r\n\r\x03\x04\x1a"

    async def main() -> tuple[bytes, bytes]:
        async with PtyDevice() as dev:
            fd = os.open(dev.slave_path, os.O_RDWR | os.O_NOCTTY)
            try:
                dev.write(payload)
                got = b""
                while len(got) < len(payload):
                    await asyncio.sleep(0.005)
                    with contextlib.suppress(BlockingIOError):
                        os.set_blocking(fd, False)
                        got += os.read(fd, 4096)
                os.write(fd, b"V\r")
                cmd = await dev.read()
            finally:
                os.close(fd)
        return got, cmd

    got, cmd = run(main())
    assert got == payload
    assert cmd == b"V\r"


def test_pty_link_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    target = tmp_path / "not-a-link"
    target.write_text("keep me")
    with pytest.raises(ConfigError, match="not a symlink"):
        PtyDevice(target).open()
    assert target.read_text() == "keep me"

