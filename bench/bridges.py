"""Throughput of the firmware_bridges parsers on the real captures, on one core.

    python bench/bridges.py [--repeat N] [--cpu K] [--json]

Each parser is fed its capture in serial-read-sized chunks (4 KiB; 64 KiB for
log files) and drained, as the transports do; the figure is items per second
of CPU time (``time.process_time``), best of ``--repeat`` runs, so other
processes on a shared machine disturb it less than wall time would (it is
still noisy: caches and frequency are shared). The process is pinned to one
CPU. Each is compared, in the same run, with a library's own reader on the
same bytes: python-can's candump reader (``can.io.CanutilsLogReader``) and
its SLCAN bus (``can.interfaces.slcan``, fed from memory so that only its
parsing is measured; on the first 500 kB, it is slow), pynmea2's
``NMEAStreamReader`` and pyubx2's ``UBXReader`` (with ``parsing=False``, which
frames but, unlike ours, does not verify checksums).

Captures: the comma2k19 RAV4 candump log (135,468 frames; as SLCAN text for
the SLCAN parser), every NMEA and UBX log in ../shared/data/gnss, and TI
mmWave packets from the radar simulator (there is no real mmWave capture).
Small inputs are repeated so that each run takes long enough to time.

Goal (issue 3): SLCAN and candump at least 160,000 frames/s (20x a saturated
1 Mbit/s CAN bus).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench/wire.py shares its name with the wire package: keep this folder off the import path.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import can
import pynmea2
import pyubx2
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from firmware_bridges.candump import CandumpParser, read_candump
from firmware_bridges.errors import FrameError
from firmware_bridges.gnss_demux import GnssDemux
from firmware_bridges.mmwave import MmwaveParser
from firmware_bridges.nmea import GnssFixBuilder, NmeaParser, NmeaSentence
from firmware_bridges.parser import NEED_DATA
from firmware_bridges.replay import read_capture, strip_comment_header
from firmware_bridges.simulators import RadarSimulator
from firmware_bridges.slcan import SlcanParser, encode_frames
from firmware_bridges.ubx import UbxParser, ubx_to_records

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CVIS_SHARED_DATA", ROOT.parent / "shared" / "data"))
CAN_LOG = SHARED / "can/toyota_rav4_comma2k19_seg40.log.gz"
NMEA_LOGS = ["bu353s4.log", "sirfstarv-nmea.log", "ublox-f9p-hpnmea.log",
             "ublox-zed-f9p-nmea.log", "ublox-neo-m9n-nmea.log"]
UBX_LOGS = ["gpsd/ublox-neo-m8n.log", "gpsd/ublox-zed-f9p-rtk.log", "gpsd/ublox-neo-m8l.log",
            "gpsd/ublox-neo-m8u.log", "pyubx2/pygpsdata-NAV.log", "pyubx2/pygpsdata-ESF.log",
            "pyubx2/pygpsdata-HNR.log", "pyubx2/pygpsdata-MIXED.log",
            "pyubx2/pygpsdata-RXMRAWX.log"]
SERIAL_CHUNK = 4096
FILE_CHUNK = 64 * 1024
GOAL_CAN_FPS = 160_000


@dataclass
class Result:
    key: str
    label: str
    unit: str
    items: int
    nbytes: int
    seconds: float
    baseline_label: str = ""
    baseline_items: int = 0
    baseline_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def baseline_rate(self) -> float:
        return self.baseline_items / self.baseline_seconds if self.baseline_seconds else 0.0


def best_of(repeat: int, fn: Callable[[], int]) -> tuple[int, float]:
    """(items, best CPU seconds) of ``repeat`` runs of ``fn``."""
    best = float("inf")
    items = 0
    for _ in range(repeat):
        gc.collect()
        t0 = time.process_time()
        items = fn()
        best = min(best, time.process_time() - t0)
    return items, best


def drain_count(parser: Any, data: bytes, chunk: int) -> int:
    n = 0
    nxt = parser.next_event
    for i in range(0, len(data), chunk):
        parser.feed(data[i : i + chunk])
        while nxt() is not NEED_DATA:
            n += 1
    return n


# inputs --------------------------------------------------------------------------------------


def load_inputs() -> dict[str, bytes]:
    can_text = read_capture(CAN_LOG)
    frames = list(read_candump(CAN_LOG))
    nmea = b"".join(strip_comment_header((SHARED / "gnss/gpsd" / n).read_bytes())
                    for n in NMEA_LOGS)
    ubx = b"".join(strip_comment_header((SHARED / "gnss" / n).read_bytes()) for n in UBX_LOGS)
    radar = RadarSimulator(rate_hz=20.0)
    mmwave = b"".join(radar.frame_bytes(n) for n in range(2000))
    return {
        "candump": can_text,
        "slcan": encode_frames(frames),
        "nmea": nmea * 10,
        "ubx": ubx * 10,
        "mmwave": mmwave,
    }


# baselines -----------------------------------------------------------------------------------


class _MemoryPort:
    """Stands in for the serial port under python-can's SlcanBus: bytes from memory, no I/O."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)
        self._left = len(data)

    @property
    def in_waiting(self) -> int:
        return self._left

    def read(self, n: int = 1) -> bytes:
        d = self._buf.read(n)
        self._left -= len(d)
        return d

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        pass

    def close(self) -> None:
        pass


def python_can_slcan(data: bytes) -> int:
    bus: Any = can.Bus(interface="slcan", channel="loop://", sleep_after_open=0)
    try:
        bus.serialPortOrig.close()
        bus.serialPortOrig = _MemoryPort(data)
        n = 0
        while bus.recv(0) is not None:
            n += 1
        return n
    finally:
        bus.shutdown()


def python_can_candump(path: Path) -> int:
    n = 0
    for _ in can.io.CanutilsLogReader(path):
        n += 1
    return n


def pynmea2_stream(data: bytes) -> int:
    reader = pynmea2.NMEAStreamReader(errors="ignore")
    text = data.decode("ascii", errors="replace")
    n = 0
    for i in range(0, len(text), SERIAL_CHUNK):
        n += sum(1 for _ in reader.next(text[i : i + SERIAL_CHUNK]))
    return n


def pyubx2_reader(data: bytes, protfilter: int) -> int:
    """pyubx2's stream reader, framing and checksum only (``parsing=False``)."""
    reader = pyubx2.UBXReader(io.BytesIO(data), protfilter=protfilter,
                              quitonerror=pyubx2.ERR_IGNORE, parsing=False)
    n = 0
    for raw, _ in reader:
        if raw is None:
            break
        n += 1
    return n


# ours ----------------------------------------------------------------------------------------


def nmea_with_fixes(data: bytes) -> int:
    parser, builder = NmeaParser(), GnssFixBuilder(clock_ns=lambda: 0)
    n = 0
    for i in range(0, len(data), SERIAL_CHUNK):
        parser.feed(data[i : i + SERIAL_CHUNK])
        while (ev := parser.next_event()) is not NEED_DATA:
            n += 1
            assert isinstance(ev, NmeaSentence)
            builder.add(ev)
    return n


def ubx_with_records(data: bytes) -> int:
    parser = UbxParser()
    n = 0
    for i in range(0, len(data), SERIAL_CHUNK):
        parser.feed(data[i : i + SERIAL_CHUNK])
        while (ev := parser.next_event()) is not NEED_DATA:
            n += 1
            with contextlib.suppress(FrameError):
                ubx_to_records(ev, 0)
    return n


def run(repeat: int, console: Console, show_progress: bool) -> list[Result]:
    inputs = load_inputs()
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        plain_log = Path(tmp) / "rav4.log"
        plain_log.write_bytes(inputs["candump"])
        jobs: list[tuple[str, str, str, bytes, Callable[[], int], str, Callable[[], int] | None]] = [
            ("slcan", "SLCAN (SlcanParser)", "frames", inputs["slcan"],
             lambda: drain_count(SlcanParser(clock_ns=lambda: 0), inputs["slcan"], SERIAL_CHUNK),
             "python-can SlcanBus (first 500 kB)",
             lambda: python_can_slcan(inputs["slcan"][: 500_000])),
            ("candump", "candump -L (CandumpParser)", "frames", inputs["candump"],
             lambda: drain_count(CandumpParser(), inputs["candump"], FILE_CHUNK),
             "python-can CanutilsLogReader", lambda: python_can_candump(plain_log)),
            ("nmea", "NMEA framing (NmeaParser)", "sentences", inputs["nmea"],
             lambda: drain_count(NmeaParser(), inputs["nmea"], SERIAL_CHUNK),
             "pynmea2 NMEAStreamReader", lambda: pynmea2_stream(inputs["nmea"])),
            ("nmea_fix", "NMEA + gnss.fix (pynmea2 fields)", "sentences", inputs["nmea"],
             lambda: nmea_with_fixes(inputs["nmea"]), "", None),
            ("ubx", "UBX framing (UbxParser)", "messages", inputs["ubx"],
             lambda: drain_count(UbxParser(), inputs["ubx"], SERIAL_CHUNK),
             "pyubx2 UBXReader, UBX (no checksum check)",
             lambda: pyubx2_reader(inputs["ubx"], pyubx2.UBX_PROTOCOL)),
            ("gnss_demux", "NMEA+UBX+RTCM3 (GnssDemux)", "messages", inputs["ubx"],
             lambda: drain_count(GnssDemux(), inputs["ubx"], SERIAL_CHUNK),
             "pyubx2 UBXReader, all three (no checksum check)",
             lambda: pyubx2_reader(inputs["ubx"], pyubx2.UBX_PROTOCOL | pyubx2.NMEA_PROTOCOL
                                   | pyubx2.RTCM3_PROTOCOL)),
            ("ubx_records", "UBX + records (ubx_to_records)", "messages", inputs["ubx"],
             lambda: ubx_with_records(inputs["ubx"]), "", None),
            ("mmwave", "TI mmWave (MmwaveParser)", "frames", inputs["mmwave"],
             lambda: drain_count(MmwaveParser(clock_ns=lambda: 0), inputs["mmwave"],
                                 SERIAL_CHUNK),
             "", None),
        ]
        with Progress(console=console, transient=True, disable=not show_progress) as progress:
            task = progress.add_task("parsing", total=len(jobs))
            for key, label, unit, data, ours, base_label, base in jobs:
                progress.update(task, description=label)
                items, secs = best_of(repeat, ours)
                r = Result(key, label, unit, items, len(data), secs)
                if base is not None:
                    r.baseline_label = base_label
                    r.baseline_items, r.baseline_seconds = best_of(repeat, base)
                results.append(r)
                progress.advance(task)
    return results


def render(results: list[Result], console: Console) -> None:
    table = Table(title="firmware_bridges parsers, one core, CPU time, best of runs")
    for col, kw in [("parser", {}), ("items", {"justify": "right"}),
                    ("MB", {"justify": "right"}), ("items/s", {"justify": "right"}),
                    ("MB/s", {"justify": "right"}), ("baseline", {}),
                    ("baseline items", {"justify": "right"}),
                    ("baseline items/s", {"justify": "right"}), ("x", {"justify": "right"})]:
        table.add_column(col, **kw)  # type: ignore[arg-type]
    for r in results:
        speedup = f"{r.rate / r.baseline_rate:.1f}" if r.baseline_rate else ""
        table.add_row(
            r.label, f"{r.items:,} {r.unit}", f"{r.nbytes / 1e6:.2f}", f"{r.rate:,.0f}",
            f"{r.nbytes / r.seconds / 1e6:.1f}", r.baseline_label,
            f"{r.baseline_items:,}" if r.baseline_rate else "",
            f"{r.baseline_rate:,.0f}" if r.baseline_rate else "", speedup,
        )
    console.print(table)
    for key in ("slcan", "candump"):
        r = next(x for x in results if x.key == key)
        verdict = "meets" if r.rate >= GOAL_CAN_FPS else "MISSES"
        console.print(f"{r.label}: {r.rate:,.0f} frames/s {verdict} the goal of "
                      f"{GOAL_CAN_FPS:,} ({r.rate / 8000:.0f}x a saturated 1 Mbit/s bus)")


def summary(results: list[Result]) -> dict[str, Any]:
    by = {r.key: r for r in results}
    out: dict[str, Any] = {
        "slcan_frames_per_s": round(by["slcan"].rate),
        "candump_frames_per_s": round(by["candump"].rate),
        "nmea_sentences_per_s": round(by["nmea"].rate),
        "nmea_fix_sentences_per_s": round(by["nmea_fix"].rate),
        "ubx_messages_per_s": round(by["ubx"].rate),
        "gnss_demux_messages_per_s": round(by["gnss_demux"].rate),
        "mmwave_frames_per_s": round(by["mmwave"].rate),
        "baseline_python_can_slcan_frames_per_s": round(by["slcan"].baseline_rate),
        "baseline_python_can_candump_frames_per_s": round(by["candump"].baseline_rate),
        "baseline_pynmea2_sentences_per_s": round(by["nmea"].baseline_rate),
        "baseline_pyubx2_messages_per_s": round(by["ubx"].baseline_rate),
        "ubx_records_messages_per_s": round(by["ubx_records"].rate),
        "baseline_pyubx2_all_protocols_messages_per_s": round(by["gnss_demux"].baseline_rate),
        "goal_can_frames_per_s": GOAL_CAN_FPS,
    }
    out["goal_met"] = (out["slcan_frames_per_s"] >= GOAL_CAN_FPS
                       and out["candump_frames_per_s"] >= GOAL_CAN_FPS)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per parser; the best counts")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the first allowed)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args(argv)
    if not CAN_LOG.is_file():
        print(f"bench: real captures not found under {SHARED}; set CVIS_SHARED_DATA",
              file=sys.stderr)
        return 2
    if hasattr(os, "sched_setaffinity"):
        cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    console = Console(stderr=args.json)
    if not console.is_terminal:
        console.width = 160
    results = run(max(1, args.repeat), console, console.is_terminal)
    render(results, console)
    if args.json:
        print(json.dumps(summary(results)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
