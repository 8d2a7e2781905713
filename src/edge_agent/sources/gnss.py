"""A GNSS receiver on a serial port: NMEA 0183 and u-blox UBX (RTCM3 interleaved is skipped).

Bytes come from ``firmware_bridges.serial_transport.SerialTransport`` (which reopens a lost
port with backoff), are split by ``GnssDemux``, and become records: NMEA sentences through
``GnssFixBuilder`` (one fix per epoch), UBX NAV-PVT / HNR-PVT through ``ubx_to_records``
(fixes) and ESF-MEAS (signals such as ``esf.gyro_z_dps``). Capture time is the agent clock when
the epoch's first bytes arrived.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from edge_agent.errors import SourceError
from edge_agent.sources.base import Source, SourceContext, SourceOptions
from firmware_bridges.errors import BridgeError
from wire.columns import TableSchema
from wire.schemas import GNSS_FIX, VEHICLE_SIGNALS, GnssFix

log = logging.getLogger(__name__)


class GnssOptions(SourceOptions):
    #: Serial port or URL (/dev/ttyACM0, a pty, socket://host:port).
    port: str
    baudrate: int = Field(default=9600, gt=0)
    stream: str | None = None
    signals_stream: str = "signals"


class GnssSource(Source):
    Options = GnssOptions

    def __init__(self, name: str, options: Any, ctx: SourceContext) -> None:
        super().__init__(name, options, ctx)
        self.fix_stream = options.stream or name

    def streams(self) -> dict[str, TableSchema]:
        o: GnssOptions = self.options  # type: ignore[assignment]
        return {self.fix_stream: GNSS_FIX, o.signals_stream: VEHICLE_SIGNALS}

    async def run(self) -> None:
        from firmware_bridges.gnss_demux import GnssDemux
        from firmware_bridges.nmea import GnssFixBuilder, NmeaSentence
        from firmware_bridges.serial_transport import SerialTransport
        from firmware_bridges.ubx import UbxMessage, ubx_to_records

        o: GnssOptions = self.options  # type: ignore[assignment]
        clock = self.ctx.clock
        demux = GnssDemux()
        builder = GnssFixBuilder(clock_ns=clock.now_ns)
        try:
            async with SerialTransport(o.port, o.baudrate) as port:
                self.stats.extra["transport"] = port.stats.as_dict
                self.stats.extra["connected"] = lambda: port.connected
                self.stats.extra["parser"] = demux.stats.as_dict
                async for chunk in port:
                    demux.feed(chunk)
                    while True:
                        ev = demux.next_event()
                        if isinstance(ev, NmeaSentence):
                            recs: list[Any] = builder.add(ev)
                        elif isinstance(ev, UbxMessage):
                            try:
                                recs = ubx_to_records(ev, clock.now_ns)
                            except BridgeError as exc:
                                self.stats.errors += 1
                                log.debug("gnss %s: %s", self.name, exc)
                                continue
                        elif hasattr(ev, "msg_type"):
                            continue  # RTCM3 corrections: not ours to archive
                        else:
                            break
                        for r in recs:
                            self.emit(self.fix_stream if isinstance(r, GnssFix) else o.signals_stream, r)
        except BridgeError as exc:
            raise SourceError(f"GNSS source {self.name}: {exc}") from exc
        raise SourceError(f"GNSS port {o.port} closed")
