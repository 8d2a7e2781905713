"""Device simulators that stream realistic bytes into a :class:`PtyDevice`.

* :class:`GnssSimulator` replays a real receiver capture (NMEA, UBX and
  RTCM3 as they came off the port) epoch by epoch with the receiver's own
  timing (see :func:`firmware_bridges.replay.gnss_timeline`).
* :class:`SlcanSimulator` is a Lawicel/SLCAN adapter on a bus that carries a
  real candump log: it answers the adapter commands (``O``/``L``, ``C``,
  ``S0``-``S8``, ``V``, ``N``, ``F``, ``Z0``/``Z1``, transmit) with CR or the
  bell as the Lawicel manual says, and while the channel is open it sends the
  log's frames as SLCAN lines with their original spacing.
* :class:`RadarSimulator` is a TI mmWave sensor: it moves a few targets
  (a car ahead closing in, an oncoming car, a crossing pedestrian, a cyclist)
  with constant velocity and sends one UART frame of detected points per tick.

Each ``run(device)`` coroutine streams until its log ends (unless looping)
or it is cancelled; cancelling is a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from firmware_bridges.errors import ConfigError
from firmware_bridges.mmwave import encode_mmwave_frame
from firmware_bridges.pty_device import PtyDevice
from firmware_bridges.replay import Replay, frame_timeline, gnss_timeline, strip_comment_header
from firmware_bridges.slcan import BITRATE_COMMANDS, adapter_timestamp_ms, encode_frame
from wire.schemas import CanFrame

log = logging.getLogger(__name__)

#: Bytes of client commands kept while waiting for a CR (an adapter's small line buffer).
MAX_COMMAND = 64


# GNSS ----------------------------------------------------------------------------------------


class GnssSimulator:
    """A GNSS receiver replaying a raw capture with its epoch timing."""

    def __init__(self, capture: bytes, *, speed: float = 1.0, loop: bool = False) -> None:
        data = strip_comment_header(capture)
        if not data:
            raise ConfigError("the GNSS capture is empty (after its comment header)")
        self.timeline = gnss_timeline(data)
        self.replay = Replay(self.timeline, speed=speed, loop=loop, lap_gap_s=1.0)
        self.epochs_sent = 0

    async def run(self, device: PtyDevice) -> None:
        log.info("gnss simulator: %d epochs over %.1f s of receiver time",
                 len(self.timeline), self.timeline[-1][0] - self.timeline[0][0])
        async for chunk in self.replay:
            device.write(chunk)
            self.epochs_sent += 1
        await device.drain()


# SLCAN ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class AdapterState:
    """What a Lawicel adapter remembers between commands."""

    is_open: bool = False
    listen_only: bool = False
    timestamps: bool = False
    bitrate_command: bytes = b"S6"
    commands: int = 0
    errors: int = 0
    transmitted: int = 0


OK = b"\r"
BELL = b"\a"
VERSION = b"V1013"
SERIAL = b"NCV01"


class SlcanSimulator:
    """An SLCAN adapter on a replayed bus.

    ``frames`` returns the log's frames (called again for each lap with
    ``loop``). While the channel is closed the bus "waits": the replay is
    paused and resumes where it stopped when the host opens the channel, so
    a client always sees the log from its start. ``start_open`` opens the
    channel without an ``O`` command (handy with ``cat /dev/pts/N``).
    """

    def __init__(
        self,
        frames: Callable[[], Iterable[CanFrame]],
        *,
        speed: float = 1.0,
        loop: bool = False,
        start_open: bool = False,
    ) -> None:
        self.state = AdapterState(is_open=start_open)
        self.replay: Replay[CanFrame] = Replay(
            lambda: frame_timeline(frames()), speed=speed, loop=loop, max_gap_s=5.0
        )
        self.frames_sent = 0
        self.frames_skipped = 0
        self._opened = asyncio.Event()
        if start_open:
            self._opened.set()

    async def run(self, device: PtyDevice) -> None:
        commands = asyncio.create_task(self._serve_commands(device), name="slcan-commands")
        try:
            await self._stream(device)
            await device.drain()
        finally:
            commands.cancel()
            await asyncio.gather(commands, return_exceptions=True)

    async def _stream(self, device: PtyDevice) -> None:
        state = self.state
        loop = asyncio.get_running_loop()
        async for frame in self.replay:
            if not state.is_open:
                paused = loop.time()
                await self._opened.wait()
                self.replay.shift(loop.time() - paused)
            try:
                line = encode_frame(
                    frame,
                    timestamp_ms=adapter_timestamp_ms(frame.timestamp_ns) if state.timestamps else None,
                )
            except ConfigError:
                self.frames_skipped += 1  # error frames have no SLCAN form
                continue
            device.write(line)
            self.frames_sent += 1

    async def _serve_commands(self, device: PtyDevice) -> None:
        pending = b""
        while True:
            pending += await device.read()
            *lines, pending = pending.split(b"\r")
            if len(pending) > MAX_COMMAND:
                pending = b""
                self.state.errors += 1
                device.write(BELL)
            for line in lines:
                device.write(self.answer(line.strip(b"\n")))

    def answer(self, cmd: bytes) -> bytes:
        """The adapter's reply to one command line (without its CR)."""
        st = self.state
        st.commands += 1
        reply = self._answer(cmd)
        if reply == BELL:
            st.errors += 1
            log.debug("slcan simulator: rejected command %r", cmd)
        return reply

    def _answer(self, cmd: bytes) -> bytes:
        st = self.state
        if not cmd:
            return OK
        op = cmd[:1]
        if op in (b"O", b"L") and len(cmd) == 1:
            if st.is_open:
                return BELL
            st.is_open, st.listen_only = True, op == b"L"
            self._opened.set()
            log.info("slcan simulator: channel open (%s, %s)",
                     "listen-only" if st.listen_only else "normal", st.bitrate_command.decode())
            return OK
        if cmd == b"C":
            if not st.is_open:
                return BELL
            st.is_open = False
            self._opened.clear()
            log.info("slcan simulator: channel closed")
            return OK
        if op == b"S":
            if st.is_open or cmd not in BITRATE_COMMANDS.values():
                return BELL
            st.bitrate_command = cmd
            return OK
        if op == b"s":
            if st.is_open or len(cmd) != 5 or not _is_hex(cmd[1:]):
                return BELL
            return OK
        if cmd == b"V":
            return VERSION + OK
        if cmd == b"N":
            return SERIAL + OK
        if cmd == b"F":
            return b"F00" + OK
        if op == b"Z" and cmd in (b"Z0", b"Z1"):
            if st.is_open:
                return BELL
            st.timestamps = cmd == b"Z1"
            return OK
        if op in (b"t", b"T", b"r", b"R"):
            if not st.is_open or st.listen_only or not _valid_transmit(cmd):
                return BELL
            st.transmitted += 1
            return (b"z" if op in (b"t", b"r") else b"Z") + OK
        return BELL


def _is_hex(b: bytes) -> bool:
    return bool(b) and all(c in b"0123456789abcdefABCDEF" for c in b)


def _valid_transmit(cmd: bytes) -> bool:
    ext = cmd[:1] in (b"T", b"R")
    digits = 8 if ext else 3
    if len(cmd) < 2 + digits or not _is_hex(cmd[1 : 2 + digits]):
        return False
    dlc = int(cmd[1 + digits : 2 + digits], 16)
    if dlc > 8:
        return False
    want = 2 + digits + (0 if cmd[:1] in (b"r", b"R") else 2 * dlc)
    return len(cmd) == want and (len(cmd) == 2 + digits or _is_hex(cmd[2 + digits :]))


# Radar ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A scripted mover in the radar frame (TI convention: x right, y forward, metres, m/s)."""

    name: str
    x: float
    y: float
    vx: float
    vy: float
    points: int
    rcs_db: float

    def at(self, t: float, max_range: float, max_lateral: float = 10.0) -> tuple[float, float]:
        """Position after ``t`` s; a target that leaves the field of view re-enters from its start."""
        lap = self.lap_time(max_range, max_lateral)
        if math.isfinite(lap) and lap > 0:
            t = t % lap
        return self.x + self.vx * t, self.y + self.vy * t

    def lap_time(self, max_range: float, max_lateral: float) -> float:
        """Seconds from the start until the target leaves the field of view."""
        times = [math.inf]
        if self.vy < 0:
            times.append((self.y - 1.0) / -self.vy)
        elif self.vy > 0:
            times.append((max_range - self.y) / self.vy)
        if self.vx > 0:
            times.append((max_lateral - self.x) / self.vx)
        elif self.vx < 0:
            times.append((self.x + max_lateral) / -self.vx)
        return min(times)


DEFAULT_TARGETS = (
    Target("car ahead, closing", 0.3, 45.0, 0.0, -4.0, 5, 20.0),
    Target("oncoming car", -3.5, 80.0, 0.0, -14.0, 4, 18.0),
    Target("crossing pedestrian", -7.0, 14.0, 1.3, 0.0, 2, 0.0),
    Target("cyclist", 2.8, 18.0, 0.0, 4.5, 2, 5.0),
)


@dataclass(frozen=True, slots=True)
class SimPoint:
    """One detected point as the sensor reports it (TI convention), before encoding."""

    x: float
    y: float
    z: float
    doppler: float
    snr_db: float
    noise_db: float


class RadarScene:
    """The kinematic script: target positions at time ``t`` and the points they reflect."""

    def __init__(
        self,
        targets: Iterable[Target] = DEFAULT_TARGETS,
        *,
        max_range: float = 100.0,
        seed: int = 7,
    ) -> None:
        self.targets = tuple(targets)
        if not self.targets:
            raise ConfigError("a radar scene needs at least one target")
        self.max_range = max_range
        self._rng = random.Random(seed)

    def points(self, t: float) -> list[SimPoint]:
        rng = self._rng
        out: list[SimPoint] = []
        for tg in self.targets:
            x0, y0 = tg.at(t, self.max_range)
            r0 = math.hypot(x0, y0)
            radial = (x0 * tg.vx + y0 * tg.vy) / r0 if r0 > 0 else 0.0
            snr = tg.rcs_db + 40.0 - 40.0 * math.log10(max(r0, 1.0) / 5.0) / 2.0
            for _ in range(tg.points):
                x = x0 + rng.gauss(0.0, 0.25)
                y = y0 + rng.gauss(0.0, 0.25)
                z = rng.gauss(0.5, 0.2)
                out.append(SimPoint(
                    x=round(x, 3), y=round(y, 3), z=round(z, 3),
                    doppler=round(radial + rng.gauss(0.0, 0.05), 3),
                    snr_db=round(max(3.0, snr + rng.gauss(0.0, 1.5)), 1),
                    noise_db=round(10.0 + rng.gauss(0.0, 0.5), 1),
                ))
        return out


class RadarSimulator:
    """A TI mmWave sensor sending one UART frame of detected points per tick (10-20 Hz)."""

    def __init__(
        self,
        *,
        rate_hz: float = 10.0,
        speed: float = 1.0,
        frames: int | None = None,
        scene: RadarScene | None = None,
        encode: Callable[[int, int, list[SimPoint]], bytes] | None = None,
    ) -> None:
        if not 1.0 <= rate_hz <= 100.0:
            raise ConfigError(f"radar frame rate must be 1-100 Hz, got {rate_hz}")
        if not speed > 0:
            raise ConfigError(f"radar speed must be > 0, got {speed}")
        self.rate_hz = rate_hz
        self.speed = speed
        self.max_frames = frames
        self.scene = scene or RadarScene()
        self._encode = encode or encode_points_frame
        self.frames_sent = 0

    def frame_bytes(self, frame_number: int) -> bytes:
        """The UART bytes of frame ``frame_number`` (scene time ``frame_number / rate``)."""
        t = frame_number / self.rate_hz
        # the sensor's time field counts CPU cycles at 200 MHz (xWR1843/6843 R4F)
        cycles = int(t * 200e6) & 0xFFFFFFFF
        return self._encode(frame_number, cycles, self.scene.points(t))

    async def run(self, device: PtyDevice) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / (self.rate_hz * self.speed)
        start = loop.time()
        n = 0
        log.info("radar simulator: %d targets at %.0f Hz", len(self.scene.targets), self.rate_hz)
        while self.max_frames is None or n < self.max_frames:
            device.write(self.frame_bytes(n))
            self.frames_sent += 1
            n += 1
            delay = start + n * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await device.drain()


def encode_points_frame(frame_number: int, cycles: int, points: list[SimPoint]) -> bytes:
    """One TI mmWave UART packet (detected points + side info) holding ``points``."""
    return encode_mmwave_frame(
        frame_number,
        [(p.x, p.y, p.z, p.doppler, p.snr_db, p.noise_db) for p in points],
        time_cpu_cycles=cycles,
    )
