"""Hazard benchmark: end-to-end warning latency with 100, 300 and 1000 simulated vehicles.

For each fleet size, on a managed Mosquitto: hazard workers (``cvis hazards``, one process
each, tiles split between them when there are several) and the traffic simulator
(``cvis simulate traffic --scenario mixed``, its own process) publishing every vehicle's
``state/1`` at 10 Hz in real time, plus an RSU's object list. The ``mixed`` scenario fills two
two-way ring roads with background traffic and adds the scripted conflicts of the NHTSA,
hard-brake, intersection and pedestrian scenarios, with their expected warnings.

Latency is measured as the issue asks: from a state sample's capture time at the source
vehicle (the simulator stamps it with the wall clock just before publishing) to the warning's
receipt by the simulator's subscriber, through Mosquitto. Also reported per fleet: states/s
offered and evaluated, states the worker dropped as stale (it fell behind) or from its queue,
worker CPU (one core = 100 %, from ``wait4``), missed and spurious expected warnings. The
machine is shared (simulator, broker and workers compete for its cores), so figures are noisy.

    python bench/hazards.py [--fleets 100 300 1000] [--seconds 12] [--workers 1] [--json]

``--json`` prints one JSON object on the last line, with ``vehicles``, ``p50_ms``, ``p99_ms``,
``missed`` and ``spurious`` for the largest fleet, and every run under ``runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# This folder holds a bench named wire.py; keep it from shadowing the wire package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from cvis.broker import ManagedBroker
from cvis.simulate import scenario as scenarios
from cvis.simulate.world import World
from wire.topics import tile_of

PY = sys.executable


def scenario_tiles(vehicles: int) -> list[str]:
    """Tiles the mixed scenario's actors drive through, west to east."""
    world = World(scenarios.load("mixed"), vehicles)
    tiles: set[str] = set()
    for v in world.vehicles:
        for t in (0.0, world.scenario.duration / 2, world.scenario.duration):
            p = v.pose(t)
            tiles.add(tile_of(*world.projection.to_wgs84(p.x, p.y)))
    for r in world.rsus:
        tiles.add(tile_of(*world.projection.to_wgs84(r.x, r.y)))

    def west_to_east(tile: str) -> tuple[float, str]:
        j = tile.index("e") if "e" in tile[1:] else tile.index("w")
        lon = int(tile[j + 1:]) * (1 if tile[j] == "e" else -1)
        return lon, tile

    return sorted(tiles, key=west_to_east)


def start_worker(broker: ManagedBroker, tiles: list[str], stats: Path) -> subprocess.Popen[str]:
    cmd = [PY, "-m", "cvis", "-q", "hazards", "--broker", broker.url, "--stats-every", "0",
           "--stats-json", str(stats)]
    if tiles:
        cmd += ["--tiles", *tiles]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "hazard worker on" not in line:
        proc.kill()
        proc.wait()
        raise SystemExit(f"hazard worker did not start: {line!r}")
    return proc


def stop_worker(proc: subprocess.Popen[str]) -> float:
    """SIGTERM, reap; returns the worker's CPU seconds (user + system)."""
    proc.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    if proc.stdout:
        proc.stdout.close()
    return usage.ru_utime + usage.ru_stime


def run_fleet(broker: ManagedBroker, vehicles: int, seconds: float, workers: int,
              tmp: Path) -> dict[str, Any]:
    tiles = scenario_tiles(vehicles) if workers > 1 else []
    # Contiguous west-to-east groups, so workers share only the neighbour tiles at their borders.
    groups = ([tiles[i * len(tiles) // workers:(i + 1) * len(tiles) // workers]
               for i in range(workers)] if workers > 1 else [[]])
    stats_files = [tmp / f"stats-{vehicles}-{i}.json" for i in range(workers)]
    procs = [start_worker(broker, g, f) for g, f in zip(groups, stats_files, strict=True)]
    try:
        sim = subprocess.run(
            [PY, "-m", "cvis", "-q", "simulate", "traffic", "--scenario", "mixed", "--vehicles",
             str(vehicles), "--broker", broker.url, "--duration", str(seconds), "--json"],
            capture_output=True, text=True, timeout=seconds + 120,
        )
    finally:
        cpu = [stop_worker(p) for p in procs]
    lines = sim.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"simulator produced no report (exit {sim.returncode}): {sim.stderr[-2000:]}")
    report = json.loads(lines[-1])
    stats = [json.loads(f.read_text()) for f in stats_files]
    evaluated = sum(s["states"] for s in stats)
    dropped: dict[str, int] = {}
    for s in stats:
        for k, v in s["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
    return {
        "vehicles": vehicles, "workers": workers, "seconds": seconds,
        "states_sent": report["states"], "states_per_s": round(report["states"] / seconds),
        "evaluated_per_s": round(evaluated / seconds),
        "dropped_stale": dropped.get("stale", 0),
        "dropped_queue": sum(s["queue_dropped"] for s in stats),
        "worker_cpu_pct": round(100 * sum(cpu) / seconds, 1),
        "worker_busy_pct": round(100 * sum(s["busy_s"] for s in stats) / seconds, 1),
        "warnings": report["warnings"], "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"],
        "max_ms": report["max_ms"], "missed": report["missed"], "spurious": report["spurious"],
        "publish_behind_ms_max": report.get("publish_behind_ms_max"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleets", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--seconds", type=float, default=12.0, help="run length per fleet (scenario: 12 s)")
    ap.add_argument("--workers", type=int, default=1, help="hazard worker processes, tiles split")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    console = Console(stderr=args.json)
    runs = []
    with tempfile.TemporaryDirectory(prefix="cvis-bench-hazards-") as tmp, \
            ManagedBroker(data_dir=Path(tmp) / "broker") as broker:
        for n in args.fleets:
            console.print(f"[bold]{n} vehicles[/] for {args.seconds:g} s ...")
            runs.append(run_fleet(broker, n, args.seconds, args.workers, Path(tmp)))
            time.sleep(1.0)
    table = Table(title=f"hazards: mixed traffic, {args.workers} worker process(es), 10 Hz states")
    cols = [("vehicles", "vehicles"), ("states/s", "states_per_s"), ("evaluated/s", "evaluated_per_s"),
            ("stale drops", "dropped_stale"), ("queue drops", "dropped_queue"),
            ("worker CPU %", "worker_cpu_pct"), ("busy %", "worker_busy_pct"),
            ("warnings", "warnings"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("max ms", "max_ms"),
            ("missed", "missed"), ("spurious", "spurious")]
    for title, _ in cols:
        table.add_column(title, justify="right")
    for r in runs:
        table.add_row(*("-" if r[k] is None else f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k])
                        for _, k in cols))
    console.print(table)
    last = runs[-1]
    if args.json:
        print(json.dumps({"vehicles": last["vehicles"], "p50_ms": last["p50_ms"],
                          "p99_ms": last["p99_ms"], "missed": last["missed"],
                          "spurious": last["spurious"], "runs": runs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
