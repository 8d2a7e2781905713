"""Replay of recorded captures as if they were live devices: candump logs and GNSS logs.

Parsing is firmware_bridges' (``candump.read_candump``, ``GnssDemux``, ``GnssFixBuilder``,
``ubx_to_records``, ``SignalDecoder``, ``ToyotaTrackDecoder``; GNSS epochs are cut by
``firmware_bridges.replay.gnss_timeline``). Pacing keeps the log's own spacing divided by
``speed`` (``speed = 0``: as fast as possible) with a coarse :class:`Pacer` that does not wake the
event loop for every one of 2,000 CAN frames a second.

Capture time: a record is stamped ``base + (t_log - t_log_first)``, where ``base`` is the
wall-clock time at which the run's replays started (shared by every replay source, so a CAN
log and a video line up). The log's own clock (a CAN log's boot-time seconds) is never used as
UTC; the spacing is kept exactly, whatever the speed, so triggers see the recorded dynamics.

Resuming: every raw record marks its position; the mark is stored in the spool with the batch
that holds the record (see :mod:`edge_agent.batcher`). After a crash the source starts again
right after the last stored position with the same ``base``, so no raw frame is lost or captured
twice. Derived records near the crash may be missing (decoded signals of the last unstored
batch) or repeated (the GNSS fix of the epoch in progress).
A replay that already reached its end in this spool emits nothing (``from_start = true``
replays it again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from edge_agent.errors import SourceError
from edge_agent.sources.base import Source, SourceContext, SourceOptions
from edge_agent.sources.can import CanDecodingOptions, CanFrames
from firmware_bridges.errors import BridgeError
from wire.columns import TableSchema
from wire.schemas import GNSS_FIX, VEHICLE_SIGNALS, CanFrame, GnssFix, Signal

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a replay stands: which file, the index of the last captured item, the time base."""

    file: str
    index: int
    base_ns: int
    first_log_ns: int

    def encode(self) -> str:
        return f"{self.index}|{self.base_ns}|{self.first_log_ns}|{self.file}"

    @classmethod
    def decode(cls, text: str | None) -> Position | None:
        if not text:
            return None
        try:
            index, base, first, file = text.split("|", 3)
            return cls(file, int(index), int(base), int(first))
        except ValueError:
            log.warning("replay: ignoring an unreadable checkpoint %r", text[:80])
            return None


def file_identity(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as exc:
        raise SourceError(f"capture {path} is not readable: {exc.strerror or exc}") from exc
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


class _ReplayOptions(SourceOptions):
    path: Path
    #: Multiple of real time; 0 replays as fast as possible.
    speed: float = Field(default=1.0, ge=0)
    #: Ignore a stored position and replay from the first record.
    from_start: bool = False

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"capture file {v} does not exist")
        return v


class _ReplaySource(Source):
    finite = True

    async def _start(self, path: Path) -> tuple[Position, int]:
        """(position to stamp with, first index to emit)."""
        ident = file_identity(path)
        opts = self.options
        assert isinstance(opts, _ReplayOptions)
        stored = None if opts.from_start else Position.decode(await self.ctx.checkpoint(self.name))
        if stored is not None and stored.file == ident:
            log.info("replay %s: resuming %s after item %d", self.name, path.name, stored.index)
            return stored, stored.index + 1
        return Position(ident, -1, self.ctx.replay_base_ns, 0), 0


class CanReplayOptions(_ReplayOptions, CanDecodingOptions):
    pass


class CanReplaySource(_ReplaySource):
    """A candump ``-L`` log: raw frames, DBC-decoded signals, optionally radar tracks."""

    Options = CanReplayOptions

    def __init__(self, name: str, options: Any, ctx: SourceContext) -> None:
        super().__init__(name, options, ctx)
        o: CanReplayOptions = options
        self.frames = CanFrames(self, o.stream or name, o)

    def streams(self) -> dict[str, TableSchema]:
        return self.frames.streams()

    async def run(self) -> None:
        from firmware_bridges.candump import CandumpParser, read_candump

        o: CanReplayOptions = self.options  # type: ignore[assignment]
        pos, first = await self._start(o.path)
        parser = CandumpParser()
        raw, sig_stream, radar_stream = self.frames.raw_stream, o.signals_stream, o.radar_stream
        decoder, tracks = self.frames.decoder, self.frames.tracks
        emit, emit_many, mark, ready = self.emit, self.emit_many, self.ctx.mark, self.ctx.ready
        name, base = self.name, pos.base_ns
        rest = ""
        pacer = Pacer(o.speed)
        first_log: int | None = None
        try:
            for i, f in enumerate(read_candump(o.path, parser=parser)):
                if first_log is None:
                    first_log = f.timestamp_ns
                    rest = f"{base}|{first_log}|{pos.file}"
                if i < first:
                    continue
                delta = f.timestamp_ns - first_log
                await pacer.at(delta)
                frame = restamp(f, base + delta)
                emit(raw, frame)
                if decoder is not None:
                    sigs = decoder.decode(frame)
                    if sigs:
                        emit_many(sig_stream, sigs)
                if tracks is not None:
                    objs = tracks.decode(frame)
                    if objs:
                        emit_many(radar_stream, objs)
                mark(raw, name, (i, rest))
                if not i & 63:
                    await ready()  # a file can wait: never outrun the batchers
        except BridgeError as exc:
            raise SourceError(f"replay {name}: {exc}") from exc
        self.stats.extra["parser"] = parser.stats.as_dict()
        if decoder is not None:
            self.stats.extra["undecoded_ids"] = decoder.stats.unknown_id


def restamp(f: CanFrame, timestamp_ns: int) -> CanFrame:
    """``f`` with another capture time, without validating the frame again (it was, when parsed)."""
    out = object.__new__(CanFrame)
    for name, value in (("timestamp_ns", timestamp_ns), ("channel", f.channel),
                        ("arbitration_id", f.arbitration_id), ("flags", f.flags), ("dlc", f.dlc),
                        ("data", f.data)):
        object.__setattr__(out, name, value)
    return out


class Pacer:
    """Paces a replay by its log time: ``await at(ns_since_first)``.

    Sleeps only when more than ``SLACK_S`` ahead of schedule, so a 2 kHz CAN log wakes the event
    loop at most a few hundred times a second instead of once per frame (records keep their
    log time whatever the wake-up). A replay behind schedule yields every ``YIELD_EVERY`` items
    so the rest of the agent keeps running. ``speed`` 0 means as fast as possible.
    """

    SLACK_S = 0.02
    YIELD_EVERY = 256

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._start: float | None = None
        self._first_ns = 0
        self._n = 0

    async def at(self, log_ns: int) -> None:
        """Wait until ``log_ns`` is due; the schedule starts at the first item paced (a resumed
        replay starts its schedule where it resumes)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._start is None:
            self._start = now
            self._first_ns = log_ns
        if self.speed > 0:
            ahead = self._start + (log_ns - self._first_ns) / 1e9 / self.speed - now
            if ahead > self.SLACK_S:
                self._n = 0
                await asyncio.sleep(ahead)
                return
        self._n += 1
        if self._n >= self.YIELD_EVERY:
            self._n = 0
            await asyncio.sleep(0)


class GnssReplayOptions(_ReplayOptions):
    stream: str | None = None
    #: UBX ESF measurements become signals on this stream.
    signals_stream: str = "signals"


class GnssReplaySource(_ReplaySource):
    """A raw GNSS capture (NMEA, UBX and RTCM3 interleaved), paced by the receiver's epochs."""

    Options = GnssReplayOptions

    def __init__(self, name: str, options: Any, ctx: SourceContext) -> None:
        super().__init__(name, options, ctx)
        self.fix_stream = options.stream or name

    def streams(self) -> dict[str, TableSchema]:
        o: GnssReplayOptions = self.options  # type: ignore[assignment]
        return {self.fix_stream: GNSS_FIX, o.signals_stream: VEHICLE_SIGNALS}

    async def run(self) -> None:
        from firmware_bridges.gnss_demux import GnssDemux
        from firmware_bridges.nmea import GnssFixBuilder, NmeaSentence
        from firmware_bridges.replay import gnss_timeline, read_capture, strip_comment_header
        from firmware_bridges.ubx import UbxMessage, ubx_to_records

        o: GnssReplayOptions = self.options  # type: ignore[assignment]
        pos, first = await self._start(o.path)
        try:
            epochs = gnss_timeline(strip_comment_header(read_capture(o.path)))
        except BridgeError as exc:
            raise SourceError(f"replay {self.name}: {exc}") from exc
        if not epochs:
            return
        first_log_ns = round(epochs[0][0] * 1e9)
        base, ident = pos.base_ns, pos.file
        now = {"ns": base}
        demux = GnssDemux()
        builder = GnssFixBuilder(clock_ns=lambda: now["ns"])
        fix_stream, sig_stream = self.fix_stream, o.signals_stream
        items = [(t, (i, chunk)) for i, (t, chunk) in enumerate(epochs) if i >= first]

        def records() -> Iterator[GnssFix | Signal]:
            while True:
                ev = demux.next_event()
                if isinstance(ev, NmeaSentence):
                    yield from builder.add(ev)
                elif isinstance(ev, UbxMessage):
                    try:
                        yield from ubx_to_records(ev, now["ns"])
                    except BridgeError as exc:
                        log.debug("replay %s: %s", self.name, exc)
                elif not hasattr(ev, "msg_type"):
                    return  # NEED_DATA (RTCM3 frames are skipped)

        last_i = first - 1
        rest = f"{base}|{first_log_ns}|{ident}"
        pacer = Pacer(o.speed)
        for t, (i, chunk) in items:
            log_ns = round(t * 1e9) - first_log_ns
            await pacer.at(log_ns)
            now["ns"] = base + log_ns
            demux.feed(chunk)
            self._emit_records(records(), fix_stream, sig_stream)
            # Earlier epochs are complete once this one's bytes are in; this one too when the
            # builder has already emitted its fix (it learns where the receiver's cycle ends).
            # Marking an emitted epoch as done keeps a restart from sending its fix twice.
            done = i if not builder.pending else last_i
            if done >= first:
                self.ctx.mark(fix_stream, self.name, (done, rest))
            last_i = i
            await self.ctx.ready()
        demux.feed_eof()
        self._emit_records(iter(builder.flush()), fix_stream, sig_stream)
        if last_i >= first:
            self.ctx.mark(fix_stream, self.name, (last_i, rest))
        self.stats.extra["parser"] = demux.stats.as_dict()

    def _emit_records(self, recs: Iterator[GnssFix | Signal], fix_stream: str, sig_stream: str) -> None:
        for r in recs:
            if isinstance(r, GnssFix):
                self.emit(fix_stream, r)
            else:
                self.emit(sig_stream, r)
