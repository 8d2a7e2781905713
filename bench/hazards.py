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
worker CPU while the simulator runs (one core = 100 %) and per state offered, the simulator's and the
broker's CPU (they share the machine with the worker), the CPU everything else on the machine
used meanwhile ("other", from ``/proc/stat``), missed and spurious expected warnings.
The machine is shared (simulator, broker and workers compete for its cores, and other work may
run there too), so figures are noisy: compare CPU per state more than latency.

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


def stop_worker(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    if proc.stdout:
        proc.stdout.close()


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a running process has used so far (Linux ``/proc``)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read(4096).rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all processes of the machine have used so far (``/proc/stat``, all cores)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_simulator(cmd: list[str], timeout: float) -> tuple[str, str, int, float]:
    """Run the simulator; returns (stdout, stderr, exit code, CPU seconds it used)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return out.read(), err.read(), proc.returncode, usage.ru_utime + usage.ru_stime


def run_fleet(broker: ManagedBroker, vehicles: int, seconds: float, workers: int,
              tmp: Path) -> dict[str, Any]:
    tiles = scenario_tiles(vehicles) if workers > 1 else []
    # Contiguous west-to-east groups, so workers share only the neighbour tiles at their borders.
    groups = ([tiles[i * len(tiles) // workers:(i + 1) * len(tiles) // workers]
               for i in range(workers)] if workers > 1 else [[]])
    stats_files = [tmp / f"stats-{vehicles}-{i}.json" for i in range(workers)]
    procs = [start_worker(broker, g, f) for g, f in zip(groups, stats_files, strict=True)]
    broker_cpu0 = process_cpu_s(broker.pid)
    busy0 = machine_busy_s()
    worker_cpu0 = [process_cpu_s(p.pid) for p in procs]  # not their start-up
    try:
        sim_out, sim_err, sim_code, sim_cpu = run_simulator(
            [PY, "-m", "cvis", "-q", "simulate", "traffic", "--scenario", "mixed", "--vehicles",
             str(vehicles), "--broker", broker.url, "--duration", str(seconds), "--json"],
            timeout=seconds + 120)
    finally:
        busy = machine_busy_s() - busy0
        broker_cpu = process_cpu_s(broker.pid) - broker_cpu0
        worker_cpu = sum(process_cpu_s(p.pid) - c0 for p, c0 in zip(procs, worker_cpu0, strict=True))
        for p in procs:
            stop_worker(p)
    lines = sim_out.strip().splitlines()
    if not lines:
        raise SystemExit(f"simulator produced no report (exit {sim_code}): {sim_err[-2000:]}")
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
        "worker_cpu_pct": round(100 * worker_cpu / seconds, 1),
        "worker_busy_pct": round(100 * sum(s["busy_s"] for s in stats) / seconds, 1),
        "worker_cpu_us_per_state": round(1e6 * worker_cpu / max(1, report["states"]), 1),
        "simulator_cpu_pct": round(100 * sim_cpu / seconds, 1),
        "broker_cpu_pct": round(100 * broker_cpu / seconds, 1),
        # Everything else on the machine meanwhile (the bench itself, other work): the machine
        # has os.cpu_count() cores, so this shows how much of them the run really had.
        "other_cpu_pct": round(100 * (busy - worker_cpu - sim_cpu - broker_cpu) / seconds, 1),
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
    table = Table(title=f"hazards: mixed traffic, {args.workers} worker process(es), 10 Hz states, "
                        f"{os.cpu_count()} cores")
    cols = [("vehicles", "vehicles"), ("states/s", "states_per_s"), ("evaluated/s", "evaluated_per_s"),
            ("stale drops", "dropped_stale"), ("queue drops", "dropped_queue"),
            ("worker CPU %", "worker_cpu_pct"), ("worker us/state", "worker_cpu_us_per_state"),
            ("busy %", "worker_busy_pct"), ("simulator CPU %", "simulator_cpu_pct"),
            ("broker CPU %", "broker_cpu_pct"), ("other CPU %", "other_cpu_pct"),
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
