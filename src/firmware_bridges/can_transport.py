"""Async CAN transport over python-can buses (socketcan, slcan, virtual, ...).

``CanBusTransport`` yields :class:`wire.schemas.CanFrame` with ``async for``.
A socketcan bus is a kernel socket and is polled with ``loop.add_reader``;
every other interface (slcan reads a serial port byte by byte, virtual is a
queue) is read by one worker thread owned by the transport, in batches.

Timestamps: python-can gives seconds as a float, but from *whose* clock
depends on the interface: socketcan and virtual stamp Unix time, many USB
adapters stamp their own boot-relative hardware clock. :class:`CanClock`
keeps Unix stamps as they are and maps other stamps onto the host's clock
(offset fixed at the first frame, re-anchored and counted when the device
clock jumps), so every ``CanFrame.timestamp_ns`` is UTC ns.

A bus that fails (interface down, adapter unplugged) is closed, logged,
counted and reopened with the same capped, jittered backoff as the serial
transport; never fatal unless ``max_attempts`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import can

from firmware_bridges.errors import ConfigError, TransportError
from firmware_bridges.serial_transport import Backoff, Reopener, TransportStats
from wire.errors import ValidationError
from wire.schemas import CanFrame
from wire.schemas.can_frames import BRS, ESI, FD_LENGTHS, TX

log = logging.getLogger(__name__)

#: Frames taken from a bus in one go (one thread hop or one readiness event).
DEFAULT_BATCH = 512
#: How long the worker thread blocks in ``recv`` before it checks for shutdown.
THREAD_RECV_TIMEOUT = 0.1
#: Interfaces whose ``recv(timeout=0)`` never blocks and whose ``fileno`` is pollable.
POLLABLE_INTERFACES = frozenset({"socketcan"})

TimestampMode = Literal["auto", "device", "host"]


@dataclass(slots=True)
class CanClockStats:
    unix_stamps: int = 0
    mapped_stamps: int = 0
    host_stamps: int = 0
    resyncs: int = 0


class CanClock:
    """Turns python-can timestamps into UTC ns.

    ``host``: ignore the device stamp, use the host's receive time.
    ``device``: trust the device stamp as Unix time.
    ``auto`` (default): a stamp within ``unix_tolerance_s`` of the host clock
    is Unix time; any other (a hardware clock counting from boot) is mapped
    with a fixed offset taken at the first frame, which keeps the device's
    fine inter-frame timing. If the mapped time drifts more than
    ``resync_s`` from the host clock (device reset, clock jump) the offset is
    re-anchored and ``stats.resyncs`` counts it.
    """

    def __init__(
        self,
        mode: TimestampMode = "auto",
        *,
        unix_tolerance_s: float = 60.0,
        resync_s: float = 1.0,
    ) -> None:
        if mode not in ("auto", "device", "host"):
            raise ConfigError(f"timestamp mode must be auto, device or host, got {mode!r}")
        self.mode = mode
        self.unix_tolerance_ns = int(unix_tolerance_s * 1e9)
        self.resync_ns = int(resync_s * 1e9)
        self.stats = CanClockStats()
        self._offset_ns: int | None = None

    def reset(self) -> None:
        """Forget the offset (a reopened device may have restarted its clock)."""
        self._offset_ns = None

    def to_ns(self, device_ts: float, host_ns: int) -> int:
        if self.mode == "host" or device_ts <= 0:
            self.stats.host_stamps += 1
            return host_ns
        dev_ns = round(device_ts * 1e9)
        if self.mode == "device" or abs(dev_ns - host_ns) <= self.unix_tolerance_ns:
            self.stats.unix_stamps += 1
            return dev_ns
        if self._offset_ns is None:
            self._offset_ns = host_ns - dev_ns
        else:
            mapped = dev_ns + self._offset_ns
            if abs(mapped - host_ns) > self.resync_ns:
                self.stats.resyncs += 1
                log.info("CAN device clock jumped by %.3f s; re-anchoring",
                         (host_ns - mapped) / 1e9)
                self._offset_ns = host_ns - dev_ns
        self.stats.mapped_stamps += 1
        return dev_ns + self._offset_ns


def frame_from_message(msg: can.Message, channel: str, timestamp_ns: int) -> CanFrame:
    """A python-can ``Message`` as a :class:`CanFrame` (flags, DLC and payload checked)."""
    data = bytes(msg.data or b"")
    dlc = msg.dlc
    if msg.is_remote_frame:
        data = b""
    elif msg.is_fd:
        if len(data) not in FD_LENGTHS:
            data = data + bytes(next(n for n in FD_LENGTHS if n >= len(data)) - len(data))
        dlc = FD_LENGTHS.index(len(data))
    elif dlc != len(data):
        dlc = len(data)
    return CanFrame.make(
        timestamp_ns,
        channel,
        msg.arbitration_id,
        data,
        is_extended=msg.is_extended_id,
        is_remote=msg.is_remote_frame,
        is_error=msg.is_error_frame,
        is_fd=msg.is_fd,
        bitrate_switch=msg.bitrate_switch,
        error_state_indicator=msg.error_state_indicator,
        is_tx=not msg.is_rx,
        dlc=min(dlc, 15),
    )


def message_from_frame(frame: CanFrame) -> can.Message:
    """A :class:`CanFrame` as a python-can ``Message`` (for sending or for python-can writers)."""
    return can.Message(
        timestamp=frame.timestamp_ns / 1e9,
        arbitration_id=frame.arbitration_id,
        is_extended_id=frame.is_extended,
        is_remote_frame=frame.is_remote,
        is_error_frame=frame.is_error,
        is_fd=frame.is_fd,
        bitrate_switch=bool(frame.flags & BRS),
        error_state_indicator=bool(frame.flags & ESI),
        dlc=frame.dlc,
        data=frame.data,
        channel=frame.channel,
        is_rx=not frame.flags & TX,
        check=False,
    )


class CanBusTransport:
    """CAN frames from a python-can bus, as an async iterator of :class:`CanFrame`.

    ``async with CanBusTransport("socketcan", "can0") as bus: async for frame in bus: ...``
    ``label`` names the channel in the frames (default: ``channel``).
    ``bus_options`` go to ``can.Bus`` (for slcan, for example ``sleep_after_open``).
    """

    def __init__(
        self,
        interface: str,
        channel: str,
        *,
        bitrate: int | None = None,
        label: str | None = None,
        timestamps: TimestampMode = "auto",
        receive_own_messages: bool = False,
        batch: int = DEFAULT_BATCH,
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
        send_timeout: float = 1.0,
        **bus_options: Any,
    ) -> None:
        if not interface:
            raise ConfigError("CAN transport needs a python-can interface name")
        if not channel:
            raise ConfigError("CAN transport needs a channel")
        if not 1 <= batch <= 65536:
            raise ConfigError(f"batch must be in 1..65536, got {batch}")
        self.interface = interface
        self.channel = channel
        self.label = label or channel
        self.bitrate = bitrate
        self.receive_own_messages = receive_own_messages
        self.batch = batch
        self.send_timeout = send_timeout
        self.bus_options = bus_options
        self.clock = CanClock(timestamps)
        self.stats = TransportStats()
        self.invalid_frames = 0
        self._reopener = Reopener(f"CAN {interface}:{channel}", self.stats, backoff, max_attempts)
        self._bus: can.BusABC | None = None
        self._fd: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._ready: deque[CanFrame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._entered = False

    @property
    def connected(self) -> bool:
        return self._bus is not None

    # open / close ----------------------------------------------------------------------------

    def _open_once(self) -> can.BusABC:
        kwargs = dict(self.bus_options)
        if self.bitrate is not None:
            kwargs["bitrate"] = self.bitrate
        try:
            bus = can.Bus(
                interface=self.interface,
                channel=self.channel,
                receive_own_messages=self.receive_own_messages,
                **kwargs,
            )
        except (can.CanInterfaceNotImplementedError, ValueError, TypeError) as exc:
            raise ConfigError(f"CAN {self.interface}:{self.channel}: {exc}") from exc
        except (can.CanError, OSError) as exc:
            raise TransportError(f"cannot open CAN {self.interface}:{self.channel}: {exc}") from exc
        fd: int | None = None
        if self.interface in POLLABLE_INTERFACES:
            with contextlib.suppress(NotImplementedError, OSError):
                fd = bus.fileno()
        self._bus, self._fd = bus, fd
        self.clock.reset()
        return bus

    def _drop_bus(self) -> None:
        bus, self._bus, self._fd = self._bus, None, None
        if bus is not None:
            with contextlib.suppress(Exception):
                bus.shutdown()

    async def __aenter__(self) -> CanBusTransport:
        self._entered = True
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="can-io")
        try:
            await self._open_async()
        except TransportError as exc:
            self.stats.open_failures += 1
            log.warning("%s; will keep retrying", exc)
        except ConfigError:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
        else:
            self._reopener.opened()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._reopener.closing.set()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        executor, self._executor = self._executor, None
        if executor is not None:
            # the worker's recv returns within THREAD_RECV_TIMEOUT and sees the closing flag
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)
        self._drop_bus()

    # receiving -------------------------------------------------------------------------------

    def __aiter__(self) -> CanBusTransport:
        return self

    async def __anext__(self) -> CanFrame:
        if not self._entered:
            raise TransportError("use CanBusTransport as an async context manager")
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._reopener.closing.is_set():
                raise StopAsyncIteration
            if self._bus is None:
                await self._reopen()
                continue
            try:
                batch = await self._recv_batch(self._bus, self._fd)
            except (can.CanError, OSError, ValueError) as exc:
                if self._reopener.closing.is_set():
                    raise StopAsyncIteration from None
                self._reopener.lost(exc)
                self._drop_bus()
                continue
            self._convert(batch)

    async def _reopen(self) -> None:
        await self._reopener.reopen(self._open_async)

    async def _open_async(self) -> can.BusABC:
        # python-can's constructors may block (slcan sleeps after opening the port)
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._open_once)

    def _convert(self, batch: list[tuple[can.Message, int]]) -> None:
        for msg, host_ns in batch:
            try:
                frame = frame_from_message(msg, self.label, self.clock.to_ns(msg.timestamp, host_ns))
            except ValidationError as exc:
                self.invalid_frames += 1
                log.debug("dropping invalid CAN message %s: %s", msg, exc)
                continue
            self._ready.append(frame)
            self.stats.chunks_in += 1
            self.stats.bytes_in += len(frame.data)

    async def _recv_batch(self, bus: can.BusABC, fd: int | None) -> list[tuple[can.Message, int]]:
        if fd is None:
            assert self._executor is not None
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._blocking_recv, bus)
        while True:
            batch = self._drain(bus, None)
            if batch or self._reopener.closing.is_set():
                return batch
            await self._wait_readable(fd)

    def _blocking_recv(self, bus: can.BusABC) -> list[tuple[can.Message, int]]:
        msg = bus.recv(timeout=THREAD_RECV_TIMEOUT)
        if msg is None:
            return []
        return self._drain(bus, (msg, time.time_ns()))

    def _drain(
        self, bus: can.BusABC, first: tuple[can.Message, int] | None
    ) -> list[tuple[can.Message, int]]:
        out = [first] if first is not None else []
        while len(out) < self.batch:
            msg = bus.recv(timeout=0)
            if msg is None:
                break
            out.append((msg, time.time_ns()))
        return out

    async def _wait_readable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self._waiter = waiter
        loop.add_reader(fd, ready)
        try:
            await waiter
        finally:
            self._waiter = None
            loop.remove_reader(fd)

    # sending ---------------------------------------------------------------------------------

    async def send(self, frame: CanFrame) -> None:
        """Transmit one frame; :class:`TransportError` if the bus is down or does not take it."""
        bus = self._bus
        if bus is None or self._executor is None:
            raise TransportError(f"{self._reopener.what}: not connected")
        msg = message_from_frame(frame)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, bus.send, msg, self.send_timeout)
        except (can.CanError, OSError) as exc:
            raise TransportError(f"{self._reopener.what}: send failed: {exc}") from exc
        self.stats.bytes_out += len(frame.data)
