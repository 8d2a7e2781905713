"""``cvis simulate traffic``: drive a scenario's vehicles, check the warnings they get."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cvis.simulate import scenario as scenarios
from cvis.simulate.errors import SimulationError
from cvis.simulate.report import Report
from cvis.simulate.world import World


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("simulate", help="simulators for testing cvis")
    what = p.add_subparsers(dest="what", metavar="WHAT")
    what.required = True
    t = what.add_parser(
        "traffic",
        help="scripted vehicles and pedestrians publishing live state; checks the hazard warnings",
        description="Scenarios: " + ", ".join(scenarios.builtin_names()) + ", or a TOML file.",
    )
    t.add_argument("--scenario", required=True, metavar="NAME|FILE")
    t.add_argument("--vehicles", type=int, metavar="N",
                   help="total vehicles; those beyond the scripted ones are background traffic")
    t.add_argument("--broker", metavar="URL",
                   help="publish through this broker in real time (a hazard worker must run there); "
                        "without it the hazard engine runs in-process on simulated time")
    t.add_argument("--worker", action="store_true",
                   help="with --broker: also run a hazard worker in this process")
    t.add_argument("--duration", type=float, metavar="S", help="seconds (default: the scenario's)")
    t.add_argument("--json", action="store_true", help="print the report as JSON on the last line")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=args.json)
    try:
        sc = scenarios.load(args.scenario)
        world = World(sc, args.vehicles)
        duration = args.duration if args.duration is not None else sc.duration
        if duration <= 0:
            raise SimulationError("--duration must be positive")
        report = _simulate(world, duration, args, console)
    except SimulationError as exc:
        console.print(f"[red]cvis simulate traffic: {exc}[/]")
        return 2
    for table in report.tables():
        console.print(table)
    if args.json:
        print(json.dumps(report.as_dict()), flush=True)
    return 0 if report.ok else 1


def _simulate(world: World, duration: float, args: argparse.Namespace, console: Console) -> Report:
    from cvis.simulate.run import run_live, run_sync

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed:.0f}/{task.total:.0f} s"), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(f"{world.scenario.name}: {len(world.vehicles)} vehicles",
                                 total=duration)

        def step(t: float) -> None:
            progress.update(task, completed=min(t, duration))

        if args.broker is None:
            if args.worker:
                raise SimulationError("--worker needs --broker")
            from ingest_server.hazards.engine import HazardEngine

            return run_sync(world, HazardEngine(), duration, step)
        if not args.worker:
            return run_live(world, args.broker, duration, step)
        from ingest_server.hazards.errors import HazardError
        from ingest_server.hazards.worker import HazardWorker

        try:
            with HazardWorker(args.broker) as worker:
                report = run_live(world, args.broker, duration, step)
                report.extra["worker"] = worker.stats()
                return report
        except HazardError as exc:
            raise SimulationError(str(exc)) from exc


