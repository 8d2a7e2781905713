"""Traffic scenarios: TOML files with roads, scripted actors, background traffic and expectations.

A scenario names every actor, scripts what it does, and says which warnings
must follow (``[[expect]]``); any other warning is spurious. Built-in
scenarios ship in ``cvis/simulate/scenarios/``; ``--scenario`` takes one of
their names or a path. Example::

    name = "nhtsa_stopped_lead"
    origin = [37.7700, -122.4300]     # lat, lon of local (0, 0); x east, y north in metres
    duration = 8.0

    [[roads]]
    id = "main"
    start = [0.0, 0.0]
    heading = 90.0                     # compass degrees
    segments = [{ line = 600.0 }, { arc = 300.0, radius = 400.0 }]   # radius > 0 turns left
    lanes = 2                          # per direction
    two_way = true

    [[vehicles]]
    id = "sv"
    road = "main"
    lane = 1                           # 1 = next to the centreline
    s = 0.0                            # start along the road, m
    speed = 20.1
    events = [{ at = 2.0, accel = -2.94 }, { at = 4.0, lane = 2, duration = 3.0 }]

    [[expect]]
    type = "FCW"
    target = "sv"
    counterpart = "pov"
    before = 6.0                       # first warning no later than this (scenario time)
    min_ttc = 2.1                      # true range/range-rate TTC at issue at least this
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cvis.simulate.errors import ScenarioError

MAX_SCENARIO_BYTES = 1 << 20
_ID = r"^[A-Za-z0-9_-]{1,40}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentSpec(_Model):
    line: float | None = Field(default=None, gt=0)
    arc: float | None = Field(default=None, gt=0, description="arc length, m")
    radius: float | None = Field(default=None, description="arc radius, m; > 0 turns left, < 0 right")

    @model_validator(mode="after")
    def _one_kind(self) -> SegmentSpec:
        if (self.line is None) == (self.arc is None):
            raise ValueError("a segment is either {line = L} or {arc = L, radius = R}")
        if self.arc is not None and (self.radius is None or abs(self.radius) < 5):
            raise ValueError("an arc needs a radius of at least 5 m (negative turns right)")
        return self


class RoadSpec(_Model):
    id: str = Field(pattern=_ID)
    start: tuple[float, float] = (0.0, 0.0)
    heading: float = 90.0
    segments: list[SegmentSpec] = Field(min_length=1)
    lanes: int = Field(default=2, ge=1, le=6)
    lane_width: float = Field(default=3.5, gt=2, le=6)
    two_way: bool = True
    closed: bool = False


class EventSpec(_Model):
    at: float = Field(ge=0)
    accel: float | None = Field(default=None, ge=-12, le=6, description="m/s², held until changed")
    until_speed: float | None = Field(default=None, ge=0, description="accel ends at this speed")
    lane: int | None = Field(default=None, ge=1, le=6, description="change to this lane")
    duration: float = Field(default=3.0, gt=0, description="lane change time, s")
    leave: bool = False


class VehicleSpec(_Model):
    id: str = Field(pattern=_ID)
    road: str
    lane: int = Field(default=1, ge=1, le=6)
    backward: bool = False
    s: float = 0.0
    offset: float | None = Field(default=None, description="lateral offset in m instead of a lane (parked)")
    speed: float = Field(ge=0, le=70)
    length: float = Field(default=4.5, gt=0, le=30)
    width: float = Field(default=1.8, gt=0, le=4)
    appear: float = Field(default=0.0, ge=0, description="starts publishing at this time")
    events: list[EventSpec] = []


class VruSpec(_Model):
    id: str = Field(pattern=_ID)
    kind: Literal["pedestrian", "cyclist"] = "pedestrian"
    start: tuple[float, float]
    heading: float = 0.0
    speed: float = Field(default=0.0, ge=0, le=15)
    walk_from: float = Field(default=0.0, ge=0)
    walk_until: float = Field(default=1e9, ge=0)


class RsuSpec(_Model):
    id: str = Field(pattern=_ID)
    position: tuple[float, float]
    range: float = Field(default=80.0, gt=0)


class BackgroundSpec(_Model):
    """Filler traffic: equal speeds per lane, fixed headways, never in conflict."""

    roads: list[str] = []
    vehicles: int = Field(default=0, ge=0, description="how many unless --vehicles says otherwise")
    lane_speeds: list[float] = Field(default=[22.0, 26.0, 30.0], min_length=1)
    min_headway_s: float = Field(default=1.8, gt=0.5)


class ExpectSpec(_Model):
    type: Literal["FCW", "EBW", "ICW", "VRUCW"]
    target: str
    counterpart: str
    after: float = Field(default=0.0, ge=0, description="not before this scenario time")
    before: float = Field(description="first warning no later than this scenario time")
    min_ttc: float | None = Field(default=None, description="true range/range-rate TTC at issue, s")
    episodes: int = Field(default=1, ge=1, description="at most this many episodes")


class Scenario(_Model):
    name: str
    description: str = ""
    origin: tuple[float, float] = (37.7700, -122.4300)
    duration: float = Field(default=10.0, gt=0, le=3600)
    seed: int = 1
    roads: list[RoadSpec] = Field(min_length=1)
    vehicles: list[VehicleSpec] = []
    vrus: list[VruSpec] = []
    rsus: list[RsuSpec] = []
    background: BackgroundSpec = Field(default_factory=BackgroundSpec)
    expect: list[ExpectSpec] = []

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        roads = {r.id: r for r in self.roads}
        if len(roads) != len(self.roads):
            raise ValueError("road ids must be unique")
        ids = [v.id for v in self.vehicles] + [p.id for p in self.vrus] + [r.id for r in self.rsus]
        if len(set(ids)) != len(ids):
            raise ValueError("vehicle, vru and rsu ids must be unique")
        for v in self.vehicles:
            road = roads.get(v.road)
            if road is None:
                raise ValueError(f"vehicle {v.id!r}: unknown road {v.road!r}")
            if v.backward and not road.two_way:
                raise ValueError(f"vehicle {v.id!r}: road {v.road!r} is one-way")
            lanes = [v.lane] + [e.lane for e in v.events if e.lane is not None]
            if max(lanes) > road.lanes:
                raise ValueError(f"vehicle {v.id!r}: road {v.road!r} has {road.lanes} lanes")
        for name in self.background.roads:
            if name not in roads:
                raise ValueError(f"background: unknown road {name!r}")
        if self.vrus and not self.rsus:
            raise ValueError("vrus are seen only by an rsu: add [[rsus]]")
        known = {v.id for v in self.vehicles} | {p.id for p in self.vrus}
        for e in self.expect:
            for who in (e.target, e.counterpart):
                if who not in known:
                    raise ValueError(f"expect: unknown actor {who!r}")
            if e.after > e.before:
                raise ValueError(f"expect {e.type} {e.target}: 'after' is later than 'before'")
        return self


def builtin_names() -> list[str]:
    folder = resources.files("cvis.simulate") / "scenarios"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def loads(text: str, source: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        errs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'scenario'}: {e['msg']}" for e in exc.errors()
        )
        raise ScenarioError(f"{source}: {errs}") from exc


def load_file(path: Path) -> Scenario:
    try:
        size = path.stat().st_size
        if size > MAX_SCENARIO_BYTES:
            raise ScenarioError(f"{path}: {size} bytes, more than {MAX_SCENARIO_BYTES}")
        return loads(path.read_text(), str(path))
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from exc


def load(name_or_path: str) -> Scenario:
    """A built-in scenario by name, else a TOML file by path."""
    names = builtin_names()
    if name_or_path in names:
        res = resources.files("cvis.simulate") / "scenarios" / f"{name_or_path}.toml"
        return loads(res.read_text(), name_or_path)
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return load_file(path)
    raise ScenarioError(
        f"unknown scenario {name_or_path!r}: not a file and not one of {', '.join(names)}"
    )
