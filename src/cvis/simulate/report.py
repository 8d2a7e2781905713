"""Checking received warnings against a scenario's expectations, and the report table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from cvis.simulate.scenario import ExpectSpec
from cvis.simulate.world import World
from wire.warning import HazardWarning, Status


@dataclass(frozen=True, slots=True)
class Received:
    """A warning as a simulated vehicle got it."""

    warning: HazardWarning
    sim_time: float  #: scenario time of issue
    latency_ms: float | None  #: source capture to receipt (None when run without a broker)


@dataclass(slots=True)
class Outcome:
    expect: ExpectSpec
    status: str = "missed"  #: ok, missed, early, late, low-ttc
    first: Received | None = None
    true_ttc: float | None = None
    true_gap: float | None = None
    episodes: int = 0


@dataclass(slots=True)
class Report:
    scenario: str
    vehicles: int
    duration: float
    outcomes: list[Outcome]
    spurious: list[Received]
    received: list[Received]
    states_sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def missed(self) -> int:
        return sum(1 for o in self.outcomes if o.status != "ok")

    @property
    def ok(self) -> bool:
        return self.missed == 0 and not self.spurious

    def latencies(self) -> list[float]:
        return sorted(r.latency_ms for r in self.received if r.latency_ms is not None)

    def percentile(self, q: float) -> float | None:
        lat = self.latencies()
        if not lat:
            return None
        return lat[min(len(lat) - 1, max(0, math.ceil(q / 100.0 * len(lat)) - 1))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "vehicles": self.vehicles, "duration_s": self.duration,
            "states": self.states_sent, "warnings": len(self.received),
            "missed": self.missed, "spurious": len(self.spurious),
            "p50_ms": self.percentile(50), "p99_ms": self.percentile(99),
            "max_ms": self.latencies()[-1] if self.latencies() else None,
            "expectations": [
                {"type": o.expect.type, "target": o.expect.target,
                 "counterpart": o.expect.counterpart, "status": o.status,
                 "issued_at": None if o.first is None else round(o.first.sim_time, 3),
                 "true_ttc_s": None if o.true_ttc is None or math.isinf(o.true_ttc) else round(o.true_ttc, 3),
                 "ttc_s": None if o.first is None else o.first.warning.ttc_s}
                for o in self.outcomes
            ],
            **self.extra,
        }

    def tables(self) -> list[Table]:
        t = Table(title=f"scenario {self.scenario}: {self.vehicles} vehicles, {self.duration:g} s")
        numeric = ("issued at", "true TTC", "warned TTC", "latency")
        for col in ("expected", "target", "counterpart", "result", *numeric):
            t.add_column(col, justify="right" if col in numeric else "left")
        for o in self.outcomes:
            r = o.first
            style = "green" if o.status == "ok" else "red"
            t.add_row(
                o.expect.type, o.expect.target, o.expect.counterpart, f"[{style}]{o.status}[/]",
                "-" if r is None else f"{r.sim_time:.2f} s",
                "-" if o.true_ttc is None or math.isinf(o.true_ttc) else f"{o.true_ttc:.2f} s",
                "-" if r is None or r.warning.ttc_s is None else f"{r.warning.ttc_s:.2f} s",
                "-" if r is None or r.latency_ms is None else f"{r.latency_ms:.1f} ms",
            )
        tables = [t]
        if self.spurious:
            s = Table(title=f"[red]{len(self.spurious)} spurious warnings[/]")
            for col in ("type", "target", "counterpart", "issued at", "ttc"):
                s.add_column(col)
            for r in self.spurious[:50]:
                w = r.warning
                s.add_row(w.type.value, w.target, ",".join(w.counterparts), f"{r.sim_time:.2f} s",
                          "-" if w.ttc_s is None else f"{w.ttc_s:.2f} s")
            tables.append(s)
        lat = self.latencies()
        summary = Table(title="summary")
        summary.add_column("states sent", justify="right")
        summary.add_column("warnings", justify="right")
        summary.add_column("missed", justify="right")
        summary.add_column("spurious", justify="right")
        summary.add_column("latency p50", justify="right")
        summary.add_column("p99", justify="right")
        summary.add_column("max", justify="right")
        p50, p99 = self.percentile(50), self.percentile(99)
        summary.add_row(str(self.states_sent), str(len(self.received)), str(self.missed),
                        str(len(self.spurious)),
                        "-" if p50 is None else f"{p50:.1f} ms", "-" if p99 is None else f"{p99:.1f} ms",
                        f"{lat[-1]:.1f} ms" if lat else "-")
        tables.append(summary)
        return tables


def evaluate(world: World, received: list[Received], states_sent: int = 0,
             duration: float | None = None) -> Report:
    """Match ``new`` warnings to expectations; every other new warning is spurious."""
    sc = world.scenario
    outcomes = [Outcome(e) for e in sc.expect]
    by_key: dict[tuple[str, str, str], Outcome] = {
        (e.type, e.target, e.counterpart): o for e, o in zip(sc.expect, outcomes, strict=True)
    }
    spurious: list[Received] = []
    for r in sorted(received, key=lambda r: r.sim_time):
        w = r.warning
        if w.status is not Status.NEW:
            continue
        cps = [world.object_names.get(c, c) for c in w.counterparts]
        o = next((by_key[k] for c in cps if (k := (w.type.value, w.target, c)) in by_key), None)
        if o is None:
            spurious.append(r)
            continue
        o.episodes += 1
        if o.first is None:
            o.first = r
            e = o.expect
            if e.type == "FCW" and e.target in world.by_id and e.counterpart in world.by_id:
                o.true_gap, o.true_ttc = world.range_and_ttc(e.target, e.counterpart, r.sim_time)
            if r.sim_time < e.after:
                o.status = "early"
            elif r.sim_time > e.before:
                o.status = "late"
            elif e.min_ttc is not None and (o.true_ttc is None or o.true_ttc < e.min_ttc):
                o.status = "low-ttc"
            else:
                o.status = "ok"
        elif o.episodes > o.expect.episodes:
            spurious.append(r)  # the same danger warned as a second episode
    return Report(sc.name, len(world.vehicles), duration if duration is not None else sc.duration,
                  outcomes, spurious, received, states_sent)
