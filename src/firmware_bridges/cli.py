"""``cvis parse`` and ``cvis simulate-device``: the integrator's tools for device bytes.

``cvis parse FILE`` decodes a capture and prints one JSON object per record
(``"schema"`` plus the record's fields; ``gnss.fix`` also has ``"time"`` as
ISO 8601 UTC) and the parsers' counters on stderr.

``cvis simulate-device gnss|radar|slcan`` opens a pty, prints its slave path
as the first line of stdout, and streams realistic bytes into it until the
log ends (or forever with ``--loop``) or SIGINT/SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import gzip
import json
import logging
import math
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import IO, Any, Protocol

from rich.console import Console
from rich.progress import Progress

from firmware_bridges.errors import BridgeError, ConfigError
from firmware_bridges.parser import ParserStats, events
from wire.schemas import SCHEMAS, CanFrame

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "nmea", "ubx", "slcan", "candump", "mmwave")
#: Bytes looked at to guess the protocol.
SNIFF_BYTES = 1024
#: Bytes read from a capture at a time.
READ_CHUNK = 64 * 1024
#: Largest gpsd-style ``#`` comment header skipped at the start of a capture.
MAX_HEADER = 64 * 1024

_RECORD_SCHEMA = {s.record: s.name for s in SCHEMAS.values()}
_CANDUMP_LINE = re.compile(rb"^\s*\(\d+\.\d+\)\s+\S+\s+[0-9A-Fa-f]{3,8}#", re.M)
_SLCAN_LINE = re.compile(rb"(?:^|\r)[tTrRdDbB][0-9A-Fa-f]{4,}(?=\r)")
_NMEA_LINE = re.compile(rb"[$!][A-Z]{2}[A-Z0-9]{2,6},[^\r\n]*\*[0-9A-Fa-f]{2}")
_MMWAVE_MAGIC = b"\x02\x01\x04\x03\x06\x05\x08\x07"
_UBX_SYNC = b"\xb5\x62"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "parse",
        help="decode a device capture and print one JSON record per line",
        description="Decode a capture (NMEA, UBX, SLCAN, candump, TI mmWave) into wire records, "
        "one JSON object per line on stdout; the parsers' counters go to stderr.",
    )
    p.add_argument("file", type=Path, help="the capture (plain or gzip)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="auto",
                   help="what the file holds (default: guess from its first KiB)")
    p.add_argument("--dbc", type=Path, help="CAN input: also decode vehicle.signals with this DBC")
    p.add_argument("--dbc-channel", action="append", default=None, metavar="CHANNEL",
                   help="with --dbc: decode only frames of this channel (repeatable; a DBC "
                   "describes one bus)")
    p.add_argument("--channel", default=None, help="SLCAN input: channel name for the frames")
    p.set_defaults(func=run_parse)

    s = sub.add_parser(
        "simulate-device",
        help="play a GNSS receiver, TI mmWave radar or SLCAN adapter on a pty",
        description="Open a pseudo-terminal, print its path as the first line, and stream "
        "realistic device bytes into it until the log ends (or --loop) or Ctrl-C / SIGTERM.",
    )
    s.add_argument("device", choices=("gnss", "radar", "slcan"))
    s.add_argument("--log", type=Path, default=None,
                   help="gnss: raw NMEA/UBX capture; slcan: candump -L log "
                   "(default: a real capture shipped with cvis)")
    s.add_argument("--speed", type=float, default=1.0, help="time scale: 2 = twice as fast")
    s.add_argument("--loop", action="store_true", help="start the log again when it ends")
    s.add_argument("--link", type=Path, default=None,
                   help="also create this symlink to the pty (a stable path across restarts)")
    s.add_argument("--channel", default="can0",
                   help="slcan: the candump channel the adapter sees ('all' for every one)")
    s.add_argument("--open", action="store_true",
                   help="slcan: stream at once, without waiting for the O command")
    s.add_argument("--rate", type=float, default=10.0, help="radar: frames per second (1-100)")
    s.add_argument("--frames", type=int, default=None, help="radar: stop after this many frames")
    s.set_defaults(func=run_simulate)


# cvis parse ----------------------------------------------------------------------------------


class CaptureDecoder(Protocol):
    """Bytes of one protocol in, wire records out; ``counters`` for the stderr summary."""

    def feed(self, data: bytes) -> Iterable[Any]: ...

    def finish(self) -> Iterable[Any]: ...

    def counters(self) -> dict[str, dict[str, int]]: ...


class CanDecoder:
    """candump or SLCAN text -> can.frames (and vehicle.signals with a DBC)."""

    def __init__(self, protocol: str, dbc: Path | None, channel: str | None,
                 dbc_channels: list[str] | None = None) -> None:
        self.protocol = protocol
        self.replies = Counter[str]()
        if protocol == "candump":
            from firmware_bridges.candump import CandumpParser

            self.parser: Any = CandumpParser()
        else:
            from firmware_bridges.slcan import SlcanParser

            self.parser = SlcanParser(channel or "slcan0")
        self.signals: Any = None
        self.tracks: Any = None
        if dbc is not None:
            from firmware_bridges.can_objects import ToyotaTrackDecoder
            from firmware_bridges.can_signals import SignalDecoder, load_dbc

            db = load_dbc(dbc)
            self.signals = SignalDecoder(db, channels=dbc_channels or None)
            if any(m.name.startswith("TRACK_A_") for m in db.messages):
                # A radar DBC: also emit the object list as radar.objects records.
                self.tracks = ToyotaTrackDecoder(db)

    def _drain(self) -> Iterator[Any]:
        sig = self.signals
        for ev in events(self.parser):
            if isinstance(ev, CanFrame):
                yield ev
                if sig is not None:
                    yield from sig.decode(ev)
                if self.tracks is not None:
                    yield from self.tracks.decode(ev)
            else:
                self.replies["ok" if getattr(ev, "ok", False) else "bell"] += 1

    def feed(self, data: bytes) -> Iterable[Any]:
        self.parser.feed(data)
        return list(self._drain())

    def finish(self) -> Iterable[Any]:
        flush = getattr(self.parser, "flush", None)
        if flush is not None:
            flush()
        out = list(self._drain())
        if self.tracks is not None:
            out.extend(self.tracks.flush())
        return out

    def counters(self) -> dict[str, dict[str, int]]:
        out = {self.protocol: self.parser.stats.as_dict()}
        if self.replies:
            out["slcan replies"] = dict(self.replies)
        if self.signals is not None:
            stats = self.signals.stats
            out["signals"] = _stats_dict(stats)
            out["signals"]["decode_errors"] = sum(stats.decode_errors.values())
        if self.tracks is not None:
            out["radar tracks"] = _stats_dict(self.tracks.stats)
        return out


class GnssDecoder:
    """A receiver's port: NMEA, UBX and RTCM3 interleaved -> gnss.fix (and ESF signals).

    ``keep`` limits which protocols' records are printed (``--protocol nmea``
    or ``ubx``); the demultiplexer still frames everything so that one
    protocol's bytes are not counted as the other's garbage.
    """

    def __init__(self, keep: frozenset[str]) -> None:
        from firmware_bridges.gnss_demux import GnssDemux
        from firmware_bridges.nmea import GnssFixBuilder

        self.keep = keep
        self.demux = GnssDemux()
        self.builder = GnssFixBuilder()
        self.decode_errors = 0
        self.kinds = Counter[str]()

    def _drain(self) -> Iterator[Any]:
        from firmware_bridges.errors import FrameError
        from firmware_bridges.nmea import NmeaSentence
        from firmware_bridges.ubx import UbxMessage, ubx_to_records

        for ev in events(self.demux):
            if isinstance(ev, NmeaSentence):
                self.kinds["nmea"] += 1
                fixes = self.builder.add(ev)
                if "nmea" in self.keep:
                    yield from fixes
            elif isinstance(ev, UbxMessage):
                self.kinds["ubx"] += 1
                try:
                    recs = ubx_to_records(ev)
                except FrameError as exc:
                    self.decode_errors += 1
                    log.debug("%s", exc)
                    continue
                if "ubx" in self.keep:
                    yield from recs
            else:
                self.kinds["rtcm3"] += 1

    def feed(self, data: bytes) -> Iterable[Any]:
        self.demux.feed(data)
        return list(self._drain())

    def finish(self) -> Iterable[Any]:
        feed_eof = getattr(self.demux, "feed_eof", None)
        if feed_eof is not None:
            feed_eof()
        out = list(self._drain())
        if "nmea" in self.keep:
            out.extend(self.builder.flush())
        return out

    def counters(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        out["demux"] = self.demux.stats.as_dict()
        for proto, stats in self.demux.protocol_stats.items():
            if any(stats.as_dict().values()):
                out[proto] = stats.as_dict()
        out["messages"] = dict(self.kinds)
        out["nmea fix builder"] = _stats_dict(self.builder.stats)
        if self.decode_errors:
            out["ubx payload errors"] = {"count": self.decode_errors}
        return out


class MmwaveDecoder:
    """TI mmWave UART output -> radar.points."""

    def __init__(self) -> None:
        from firmware_bridges.mmwave import MmwaveParser

        self.parser = MmwaveParser()
        self.frames = 0

    def _drain(self) -> Iterator[Any]:
        for ev in events(self.parser):
            self.frames += 1
            yield from _mmwave_points(ev)

    def feed(self, data: bytes) -> Iterable[Any]:
        self.parser.feed(data)
        return list(self._drain())

    def finish(self) -> Iterable[Any]:
        feed_eof = getattr(self.parser, "feed_eof", None)
        if feed_eof is not None:
            feed_eof()
        return list(self._drain())

    def counters(self) -> dict[str, dict[str, int]]:
        return {"mmwave": self.parser.stats.as_dict()}


def _mmwave_points(frame: Any) -> list[Any]:
    points = getattr(frame, "points", None)
    if callable(points):
        return list(points())
    return list(points or ())


def _stats_dict(stats: Any) -> dict[str, int]:
    if isinstance(stats, ParserStats):
        return stats.as_dict()
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return {k: v for k, v in dataclasses.asdict(stats).items() if isinstance(v, int)}
    if isinstance(stats, dict):
        return {k: v for k, v in stats.items() if isinstance(v, int)}
    return {}


def sniff_protocol(head: bytes) -> str:
    """Guess a capture's protocol from its first bytes (``ConfigError`` if nothing fits)."""
    head = head[:SNIFF_BYTES]
    if _MMWAVE_MAGIC in head:
        return "mmwave"
    if _CANDUMP_LINE.search(head):
        return "candump"
    if _SLCAN_LINE.search(head):
        return "slcan"
    if _UBX_SYNC in head:
        return "ubx"
    if _NMEA_LINE.search(head):
        return "nmea"
    raise ConfigError(
        "cannot tell the protocol from the first KiB (no NMEA sentence, UBX sync, candump or "
        "SLCAN line, or mmWave magic word); pass --protocol"
    )


def make_decoder(protocol: str, dbc: Path | None = None, channel: str | None = None,
                 dbc_channels: list[str] | None = None) -> Any:
    if dbc is not None and protocol not in ("candump", "slcan"):
        raise ConfigError(f"--dbc decodes CAN input; the capture is {protocol}")
    if protocol in ("candump", "slcan"):
        return CanDecoder(protocol, dbc, channel, dbc_channels)
    if protocol == "nmea":
        return GnssDecoder(frozenset({"nmea"}))
    if protocol == "ubx":
        return GnssDecoder(frozenset({"nmea", "ubx"}))
    if protocol == "mmwave":
        return MmwaveDecoder()
    raise ConfigError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS[1:])})")


def record_json(record: Any) -> dict[str, Any]:
    """A wire record as a JSON-ready dict: ``schema`` first, bytes as hex, NaN as null."""
    schema = _RECORD_SCHEMA.get(type(record))
    if schema is None:
        raise ConfigError(f"{type(record).__name__} is not a wire record")
    out: dict[str, Any] = {"schema": schema}
    for f in dataclasses.fields(record):
        v = getattr(record, f.name)
        if isinstance(v, bytes):
            v = v.hex()
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        out[f.name] = v
    if schema == "gnss.fix":
        out["time"] = iso_utc(record.time_utc_ns)
    return out


def iso_utc(ns: int) -> str | None:
    """UTC ns as ISO 8601 with a ``Z`` (None for 0, "unknown")."""
    if not ns:
        return None
    sec, rem = divmod(ns, 1_000_000_000)
    t = dt.datetime.fromtimestamp(sec, dt.UTC).replace(tzinfo=None)
    return t.isoformat() + (f".{rem // 1000:06d}" if rem else "") + "Z"


@contextlib.contextmanager
def _open_capture(path: Path) -> Iterator[tuple[IO[bytes], IO[bytes]]]:
    """(the capture's bytes, gunzipped when it starts with the gzip magic; the raw file)."""
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise ConfigError(f"capture file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot open capture file {path}: {exc.strerror or exc}") from exc
    with raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield gz, raw  # type: ignore[misc]
        else:
            yield raw, raw


def _skip_comment_header(first: bytes) -> bytes:
    """Drop gpsd-style ``#`` comment lines at the start (within the first chunk)."""
    pos = 0
    while pos < len(first) and pos < MAX_HEADER and first[pos : pos + 1] == b"#":
        nl = first.find(b"\n", pos)
        if nl < 0:
            return b""
        pos = nl + 1
    return first[pos:]


def parse_capture(
    path: Path,
    protocol: str = "auto",
    dbc: Path | None = None,
    channel: str | None = None,
    emit: Callable[[Any], None] | None = None,
    dbc_channels: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[str, Counter[str], dict[str, dict[str, int]]]:
    """Decode ``path``; call ``emit`` per record. Returns (protocol, records per schema, counters).

    ``progress`` is called after each chunk with the bytes of the file read so far.
    """
    per_schema: Counter[str] = Counter()
    with _open_capture(path) as (fp, raw):
        try:
            first = _skip_comment_header(fp.read(READ_CHUNK))
        except (OSError, EOFError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if protocol == "auto":
            protocol = sniff_protocol(first)
        decoder = make_decoder(protocol, dbc, channel, dbc_channels)
        chunk = first
        while True:
            for rec in decoder.feed(chunk):
                per_schema[_RECORD_SCHEMA.get(type(rec), "?")] += 1
                if emit is not None:
                    emit(rec)
            try:
                chunk = fp.read(READ_CHUNK)
            except EOFError:
                log.warning("%s: compressed stream is cut short", path)
                break
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc}") from exc
            if not chunk:
                break
            if progress is not None:
                progress(raw.tell())
        for rec in decoder.finish():
            per_schema[_RECORD_SCHEMA.get(type(rec), "?")] += 1
            if emit is not None:
                emit(rec)
    return protocol, per_schema, decoder.counters()


def run_parse(args: argparse.Namespace) -> int:
    out = sys.stdout
    dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

    def emit(rec: Any) -> None:
        out.write(dumps(record_json(rec)))
        out.write("\n")

    err_console = Console(stderr=True)
    size = args.file.stat().st_size if args.file.is_file() else 0
    show = err_console.is_terminal and size > 4 * READ_CHUNK
    try:
        with Progress(console=err_console, transient=True, disable=not show) as bar:
            task = bar.add_task(f"parsing {args.file.name}", total=size)
            protocol, per_schema, counters = parse_capture(
                args.file, args.protocol, args.dbc, args.channel, emit, args.dbc_channel,
                progress=lambda done: bar.update(task, completed=done),
            )
        out.flush()
    except BrokenPipeError:
        # the reader (head, less) went away: not an error of ours
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except BridgeError as exc:
        print(f"cvis parse: {exc}", file=sys.stderr)
        return 2
    total = sum(per_schema.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(per_schema.items())) or "none"
    print(f"cvis parse: {args.file} ({protocol}): {total} records ({detail})", file=sys.stderr)
    for name, stats in counters.items():
        text = " ".join(f"{k}={v}" for k, v in stats.items())
        print(f"cvis parse:   {name}: {text}", file=sys.stderr)
    return 0


# cvis simulate-device -------------------------------------------------------------------------

DEFAULT_GNSS_LOG = Path("gnss/gpsd/ublox-neo-m9n-nmea.log")
DEFAULT_CAN_LOG = Path("can/toyota_rav4_comma2k19_seg40.log.gz")


def shared_data_dir() -> Path | None:
    """The real captures: ``$CVIS_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("CVIS_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def _default_log(rel: Path) -> Path:
    """The capture a simulator replays without ``--log``: the copy shipped for ``cvis demo``
    (so it works on any machine), else the shared data."""
    shipped = Path(str(resources.files("cvis") / "demo_captures" / rel.name))
    if shipped.is_file():
        return shipped
    base = shared_data_dir()
    if base is None or not (base / rel).is_file():
        raise ConfigError(f"no default capture {rel} (set CVIS_SHARED_DATA or pass --log)")
    return base / rel


def build_simulator(args: argparse.Namespace) -> Any:
    from firmware_bridges import simulators
    from firmware_bridges.replay import read_capture

    if not args.speed > 0:
        raise ConfigError(f"--speed must be > 0, got {args.speed}")
    if args.device == "gnss":
        path = args.log or _default_log(DEFAULT_GNSS_LOG)
        return simulators.GnssSimulator(read_capture(path), speed=args.speed, loop=args.loop)
    if args.device == "slcan":
        from firmware_bridges.candump import read_candump

        path = args.log or _default_log(DEFAULT_CAN_LOG)
        if not path.is_file():
            raise ConfigError(f"candump log {path} does not exist")
        channel = None if args.channel == "all" else args.channel

        def frames() -> Iterator[CanFrame]:
            for f in read_candump(path):
                if channel is None or f.channel == channel:
                    yield f

        return simulators.SlcanSimulator(frames, speed=args.speed, loop=args.loop,
                                         start_open=args.open)
    return simulators.RadarSimulator(rate_hz=args.rate, speed=args.speed, frames=args.frames)


async def simulate(args: argparse.Namespace, announce: Callable[[str], None]) -> int:
    from firmware_bridges.pty_device import PtyDevice

    sim = build_simulator(args)
    loop = asyncio.get_running_loop()
    async with PtyDevice(args.link) as device:
        announce(device.slave_path)
        task = asyncio.create_task(sim.run(device), name=f"simulate-{args.device}")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await asyncio.wait({task})
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if task.cancelled():
            log.info("%s simulator stopped by signal", args.device)
        else:
            task.result()  # re-raise a simulator failure
            log.info("%s simulator: end of log", args.device)
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    def announce(path: str) -> None:
        print(path, flush=True)

    try:
        return asyncio.run(simulate(args, announce))
    except BridgeError as exc:
        print(f"cvis simulate-device: {exc}", file=sys.stderr)
        return 2
