"""A live CAN bus: python-can (socketcan, virtual, ...) or a Lawicel SLCAN adapter on a serial port.

Raw frames go to the raw stream losslessly; with a DBC, the signals named in ``signals``
(``"MESSAGE.SIGNAL"`` or ``"MESSAGE"`` -> highest rate in Hz, 0 = every frame) go to the signals
stream, decoded by ``firmware_bridges.can_signals.SignalDecoder``. Transports
(``CanBusTransport``, ``SerialTransport``) reopen a lost device with backoff on their own; a
device that cannot be configured raises, and the source supervisor retries it.

SLCAN: the adapter is closed, set to ``bitrate``, and opened (``C``, ``Sn``, ``O``); after the
serial port comes back from a loss the same commands are sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edge_agent.errors import SourceError
from edge_agent.sources.base import Source, SourceContext, SourceOptions
from firmware_bridges.errors import BridgeError
from wire.columns import TableSchema
from wire.schemas import CAN_FRAMES, RADAR_OBJECTS, VEHICLE_SIGNALS, CanFrame

log = logging.getLogger(__name__)


class CanDecodingOptions(SourceOptions):
    """What becomes of the frames, for a live CAN source and a candump replay alike."""

    #: Stream of raw frames (default: the source's name).
    stream: str | None = None
    dbc: Path | None = None
    #: "MESSAGE.SIGNAL" or "MESSAGE" -> highest rate in Hz (0 = every frame); default every signal.
    signals: dict[str, float] | None = None
    #: Buses the DBC describes (a DBC belongs to one bus); default every channel.
    dbc_channels: list[str] | None = None
    signals_stream: str = "signals"
    #: A radar object list on CAN (Toyota TRACK_A/B, toyota_adas.dbc), and the buses it is on.
    radar_dbc: Path | None = None
    radar_channels: list[str] | None = None
    radar_stream: str = "radar.objects"


class CanOptions(CanDecodingOptions):
    adapter: Literal["python-can", "slcan"] = "python-can"
    #: python-can interface (socketcan, virtual, pcan, ...) and channel (can0).
    interface: str = "socketcan"
    channel: str = "can0"
    #: SLCAN: the serial port or URL (/dev/ttyACM0, a pty) and its baud rate.
    port: str | None = None
    baudrate: int = Field(default=115200, gt=0)
    #: CAN bit rate (SLCAN sets it; python-can passes it to the interface).
    bitrate: int | None = Field(default=500_000, gt=0)


class CanFrames:
    """What a CAN source does with each frame: raw, decoded signals, radar tracks."""

    def __init__(self, source: Source, raw_stream: str, o: CanDecodingOptions) -> None:
        from firmware_bridges.can_signals import SignalDecoder, load_dbc

        self.source = source
        self.raw_stream = raw_stream
        self.signals_stream = o.signals_stream
        self.radar_stream = o.radar_stream
        self.decoder: Any = None
        self.tracks: Any = None
        try:
            if o.dbc is not None:
                self.decoder = SignalDecoder(load_dbc(o.dbc), o.signals, channels=o.dbc_channels)
            if o.radar_dbc is not None:
                from firmware_bridges.can_objects import ToyotaTrackDecoder

                self.tracks = ToyotaTrackDecoder(load_dbc(o.radar_dbc), sensor=source.name,
                                                 channels=o.radar_channels)
        except BridgeError as exc:
            raise SourceError(f"source {source.name}: {exc}") from exc

    def streams(self) -> dict[str, TableSchema]:
        out: dict[str, TableSchema] = {self.raw_stream: CAN_FRAMES}
        if self.decoder is not None:
            out[self.signals_stream] = VEHICLE_SIGNALS
        if self.tracks is not None:
            out[self.radar_stream] = RADAR_OBJECTS
        return out

    def handle(self, frame: CanFrame) -> None:
        self.source.emit(self.raw_stream, frame)
        if self.decoder is not None:
            self.source.emit_many(self.signals_stream, self.decoder.decode(frame))
        if self.tracks is not None:
            self.source.emit_many(self.radar_stream, self.tracks.decode(frame))


class CanSource(Source):
    Options = CanOptions

    def __init__(self, name: str, options: Any, ctx: SourceContext) -> None:
        super().__init__(name, options, ctx)
        o: CanOptions = options
        if o.adapter == "slcan" and not o.port:
            raise SourceError(f"source {name}: an SLCAN adapter needs 'port'")
        self.frames = CanFrames(self, o.stream or name, o)
        self._close_sent = False  # the next SLCAN reply answers the "C" that starts configuration

    def streams(self) -> dict[str, TableSchema]:
        return self.frames.streams()

    async def run(self) -> None:
        o: CanOptions = self.options  # type: ignore[assignment]
        try:
            if o.adapter == "slcan":
                await self._run_slcan(o)
            else:
                await self._run_python_can(o)
        except BridgeError as exc:
            raise SourceError(f"CAN source {self.name}: {exc}") from exc

    async def _run_python_can(self, o: CanOptions) -> None:
        from firmware_bridges.can_transport import CanBusTransport

        async with CanBusTransport(o.interface, o.channel, bitrate=o.bitrate) as bus:
            self.stats.extra.update(transport=bus.stats.as_dict, connected=lambda: bus.connected)
            async for frame in bus:
                self.frames.handle(frame)
        raise SourceError(f"CAN bus {o.interface}:{o.channel} closed")

    async def _run_slcan(self, o: CanOptions) -> None:
        from firmware_bridges import slcan
        from firmware_bridges.serial_transport import SerialTransport

        assert o.port is not None
        parser = slcan.SlcanParser(channel=o.stream or self.name, clock_ns=self.ctx.clock.now_ns)
        async with SerialTransport(o.port, o.baudrate) as port:
            self.stats.extra.update(transport=port.stats.as_dict, connected=lambda: port.connected,
                                    parser=parser.stats.as_dict)
            # The adapter sends nothing until it is opened, so (re)configure it from a
            # companion task whenever the port has been (re)opened.
            keeper = asyncio.create_task(self._keep_configured(port, o), name=f"cvis-slcan-{self.name}")
            try:
                async for chunk in port:
                    parser.feed(chunk)
                    while True:
                        ev = parser.next_event()
                        if isinstance(ev, CanFrame):
                            self.frames.handle(ev)
                        elif isinstance(ev, slcan.SlcanReply):
                            first, self._close_sent = self._close_sent, False
                            if not ev.ok and first:
                                # The configuration starts with "C"; a closed adapter refuses it.
                                log.debug("can %s: adapter was already closed", self.name)
                            elif not ev.ok:
                                self.stats.errors += 1
                                log.warning("can %s: adapter refused a command (%s)", self.name, ev.text)
                        else:
                            break
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
        raise SourceError(f"SLCAN port {o.port} closed")

    async def _keep_configured(self, port: Any, o: CanOptions) -> None:
        from firmware_bridges import slcan

        cmds = slcan.cmd_close()
        if o.bitrate:
            cmds += slcan.cmd_bitrate(o.bitrate)
        cmds += slcan.cmd_open()
        configured = -1
        while True:
            if port.connected and port.stats.opens != configured:
                try:
                    self._close_sent = True
                    await port.write(cmds)
                except BridgeError as exc:
                    log.warning("can %s: cannot configure the adapter: %s", self.name, exc)
                else:
                    configured = port.stats.opens
                    log.info("can %s: SLCAN adapter on %s opened at %s bit/s", self.name, o.port, o.bitrate)
            await asyncio.sleep(0.2)
