"""Radar: a TI mmWave sensor on a serial port (detected points), or an object list on CAN.

``kind = "mmwave"``: UART bytes from ``SerialTransport`` parsed by
``firmware_bridges.mmwave.MmwaveParser`` into ``radar.points`` records (one packet per frame).
``kind = "toyota_tracks"``: a python-can bus carrying Toyota TRACK_A/B messages, decoded with a
DBC (``toyota_adas.dbc``) by ``ToyotaTrackDecoder``; ``kind = "ars408"``: a Continental ARS408
object list (0x60A/0x60B/0x60D) by ``Ars408Decoder``. Both give ``radar.objects`` records.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edge_agent.errors import SourceError
from edge_agent.sources.base import Source, SourceContext, SourceOptions
from firmware_bridges.errors import BridgeError
from wire.columns import TableSchema
from wire.schemas import RADAR_OBJECTS, RADAR_POINTS

log = logging.getLogger(__name__)


class RadarOptions(SourceOptions):
    kind: Literal["mmwave", "toyota_tracks", "ars408"] = "mmwave"
    #: mmwave: the sensor's data UART (or a pty).
    port: str | None = None
    baudrate: int = Field(default=921600, gt=0)
    #: CAN object lists: python-can interface and channel, and the DBC for Toyota tracks.
    interface: str = "socketcan"
    channel: str = "can1"
    bitrate: int | None = Field(default=500_000, gt=0)
    dbc: Path | None = None
    stream: str | None = None


class RadarSource(Source):
    Options = RadarOptions

    def __init__(self, name: str, options: Any, ctx: SourceContext) -> None:
        super().__init__(name, options, ctx)
        o: RadarOptions = options
        if o.kind == "mmwave" and not o.port:
            raise SourceError(f"source {name}: an mmWave radar needs 'port'")
        if o.kind == "toyota_tracks" and o.dbc is None:
            raise SourceError(f"source {name}: Toyota tracks need 'dbc' (toyota_adas.dbc)")
        self.stream = o.stream or name

    def streams(self) -> dict[str, TableSchema]:
        o: RadarOptions = self.options  # type: ignore[assignment]
        return {self.stream: RADAR_POINTS if o.kind == "mmwave" else RADAR_OBJECTS}

    async def run(self) -> None:
        o: RadarOptions = self.options  # type: ignore[assignment]
        try:
            if o.kind == "mmwave":
                await self._run_mmwave(o)
            else:
                await self._run_object_list(o)
        except BridgeError as exc:
            raise SourceError(f"radar {self.name}: {exc}") from exc

    async def _run_mmwave(self, o: RadarOptions) -> None:
        from firmware_bridges.mmwave import MmwaveFrame, MmwaveParser
        from firmware_bridges.serial_transport import SerialTransport

        assert o.port is not None
        parser = MmwaveParser(sensor=self.name, clock_ns=self.ctx.clock.now_ns)
        async with SerialTransport(o.port, o.baudrate) as port:
            self.stats.extra.update(transport=port.stats.as_dict, connected=lambda: port.connected,
                                    parser=parser.stats.as_dict)
            async for chunk in port:
                parser.feed(chunk)
                while isinstance(ev := parser.next_event(), MmwaveFrame):
                    self.emit_many(self.stream, ev.points)
        raise SourceError(f"radar port {o.port} closed")

    async def _run_object_list(self, o: RadarOptions) -> None:
        from firmware_bridges.can_objects import Ars408Decoder, ToyotaTrackDecoder
        from firmware_bridges.can_signals import load_dbc
        from firmware_bridges.can_transport import CanBusTransport

        decoder: Any
        if o.kind == "toyota_tracks":
            assert o.dbc is not None
            decoder = ToyotaTrackDecoder(load_dbc(o.dbc), sensor=self.name)
        else:
            decoder = Ars408Decoder(sensor=self.name)
        async with CanBusTransport(o.interface, o.channel, bitrate=o.bitrate) as bus:
            self.stats.extra.update(transport=bus.stats.as_dict, connected=lambda: bus.connected)
            async for frame in bus:
                self.emit_many(self.stream, decoder.decode(frame))
        raise SourceError(f"CAN bus {o.interface}:{o.channel} closed")
