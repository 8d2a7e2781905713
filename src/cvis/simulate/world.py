"""Actors as pure functions of scenario time: vehicles on lanes, walking VRUs, an RSU that sees them.

Every vehicle's motion is precomputed from its script as pieces of constant
acceleration (speed never below 0, ``until_speed`` respected), so its pose at
any time is exact and cheap: the same function gives the published states
and the ground truth the report checks warnings against.
"""

from __future__ import annotations

import bisect
import math
import zlib
from dataclasses import dataclass

from cvis.simulate.errors import ScenarioError
from cvis.simulate.roads import Road
from cvis.simulate.scenario import Scenario, VehicleSpec, VruSpec
from wire.envelope import TimeQuality
from wire.live_objects import ObjectList
from wire.schemas import ObjectClass, RoadsideObject
from wire.state import Brake, State, VehicleClass

_M_PER_DEG = 6_371_008.8 * math.pi / 180.0
PUBLISH_PERIOD_S = 0.1


@dataclass(frozen=True, slots=True)
class Pose:
    x: float
    y: float
    speed: float
    heading_deg: float  #: compass
    accel: float
    yaw_rate_dps: float  #: positive clockwise (heading increasing)


class Projection:
    """Local metres (x east, y north) around an origin to WGS84 and back."""

    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0, self.lon0 = lat0, lon0
        self._kx = _M_PER_DEG * math.cos(math.radians(lat0))

    def to_wgs84(self, x: float, y: float) -> tuple[float, float]:
        return self.lat0 + y / _M_PER_DEG, self.lon0 + x / self._kx


def _slot(agent: str) -> float:
    """A fixed publish phase within the 100 ms period, as independent agents would have."""
    return (zlib.crc32(agent.encode()) % 10) * 0.01


class Vehicle:
    def __init__(self, spec: VehicleSpec, road: Road, duration: float) -> None:
        self.id = spec.id
        self.road = road
        self.backward = spec.backward
        self.length, self.width = spec.length, spec.width
        self.appear = spec.appear
        self.slot = _slot(spec.id)
        self.s0 = spec.s
        self.offset0 = spec.offset if spec.offset is not None else road.lane_offset(spec.lane, spec.backward)
        self.leave = min((e.at for e in spec.events if e.leave), default=math.inf)
        self._pieces = _longitudinal(spec, duration)
        self._starts = [p[0] for p in self._pieces]
        self._lane_changes: list[tuple[float, float, float, float]] = []
        off = self.offset0
        for e in sorted(spec.events, key=lambda e: e.at):
            if e.lane is not None:
                target = road.lane_offset(e.lane, spec.backward)
                self._lane_changes.append((e.at, e.at + e.duration, off, target))
                off = target

    def active(self, t: float) -> bool:
        return self.appear <= t < self.leave

    def longitudinal(self, t: float) -> tuple[float, float, float]:
        """(distance driven, speed, acceleration) at ``t``."""
        i = bisect.bisect_right(self._starts, t) - 1
        t0, d0, v0, a = self._pieces[max(i, 0)]
        dt = t - t0
        return d0 + v0 * dt + 0.5 * a * dt * dt, v0 + a * dt, a

    def offset(self, t: float) -> tuple[float, float]:
        """(lateral offset left of the centreline, its rate) at ``t``."""
        off, rate = self.offset0, 0.0
        for t0, t1, o0, o1 in self._lane_changes:
            if t >= t1:
                off, rate = o1, 0.0
            elif t >= t0:
                f = (t - t0) / (t1 - t0)
                off, rate = o0 + f * (o1 - o0), (o1 - o0) / (t1 - t0)
        return off, rate

    def pose(self, t: float) -> Pose:
        d, v, a = self.longitudinal(t)
        off, rate = self.offset(t)
        s = self.road.advance(self.s0, d, self.offset0, self.backward)
        x, y, h, k = self.road.pose(s, off)
        if self.backward:
            h += math.pi
            k = -k
            rate = -rate
        slip = math.atan2(rate, v) if v > 0.1 else 0.0
        heading = (90.0 - math.degrees(h + slip)) % 360.0
        return Pose(x, y, v, heading, a, -math.degrees(v * k))


def _longitudinal(spec: VehicleSpec, duration: float) -> list[tuple[float, float, float, float]]:
    """Pieces (t0, distance0, speed0, accel) of constant acceleration from the script."""
    regimes = sorted(
        ((e.at, e.accel, e.until_speed) for e in spec.events if e.accel is not None),
        key=lambda r: r[0],
    )
    pieces: list[tuple[float, float, float, float]] = []
    t, d, v = 0.0, 0.0, spec.speed
    a, target = 0.0, None
    changes = [*regimes, (max(duration, 0.0) + 3600.0, 0.0, None)]
    for at, next_a, next_target in changes:
        # Run the current regime from t until ``at``, stopping or levelling off on the way.
        while t < at:
            pieces.append((t, d, v, a))
            hit = math.inf
            if a < 0:
                floor = target if target is not None and target < v else 0.0
                hit = (v - floor) / -a
            elif a > 0 and target is not None and target > v:
                hit = (target - v) / a
            end = min(at, t + hit)
            dt = end - t
            d, v = d + v * dt + 0.5 * a * dt * dt, max(0.0, v + a * dt)
            t = end
            if end < at:
                a = 0.0
        a, target = next_a, next_target
    return pieces or [(0.0, 0.0, spec.speed, 0.0)]


class Vru:
    def __init__(self, spec: VruSpec, object_id: int) -> None:
        self.id = spec.id
        self.object_id = object_id
        self.object_class = ObjectClass.PEDESTRIAN if spec.kind == "pedestrian" else ObjectClass.BICYCLE
        self.spec = spec
        h = math.radians(spec.heading)
        self._ux, self._uy = math.sin(h), math.cos(h)

    def position(self, t: float) -> tuple[float, float, float]:
        """(x, y, speed) at ``t``."""
        s = self.spec
        walked = max(0.0, min(t, s.walk_until) - s.walk_from) * s.speed
        moving = s.walk_from <= t < s.walk_until
        return s.start[0] + walked * self._ux, s.start[1] + walked * self._uy, s.speed if moving else 0.0


@dataclass(frozen=True, slots=True)
class Rsu:
    id: str
    x: float
    y: float
    range: float
    slot: float


class World:
    """Everything a scenario puts on the road, plus background traffic."""

    def __init__(self, scenario: Scenario, vehicles: int | None = None) -> None:
        self.scenario = scenario
        self.projection = Projection(*scenario.origin)
        self.roads = {
            r.id: Road(r.id, r.start[0], r.start[1], r.heading,
                       [(s.line, 0.0) if s.line is not None else (s.arc or 0.0, s.radius or 0.0)
                        for s in r.segments],
                       r.lanes, r.lane_width, r.two_way, r.closed)
            for r in scenario.roads
        }
        self.vehicles = [Vehicle(v, self.roads[v.road], scenario.duration) for v in scenario.vehicles]
        self.vehicles += self._background(vehicles)
        self.by_id = {v.id: v for v in self.vehicles}
        self.vrus = [Vru(p, i + 1) for i, p in enumerate(scenario.vrus)]
        self.rsus = [Rsu(r.id, r.position[0], r.position[1], r.range, _slot(r.id)) for r in scenario.rsus]
        #: counterpart id in a warning ("rsu#object") -> scenario VRU id
        self.object_names = {f"{r.id}#{p.object_id}": p.id for r in self.rsus for p in self.vrus}

    def _background(self, total: int | None) -> list[Vehicle]:
        sc = self.scenario
        bg = sc.background
        scripted = len(sc.vehicles)
        if total is not None and total < scripted:
            raise ScenarioError(f"scenario {sc.name!r} has {scripted} scripted vehicles; "
                                f"--vehicles {total} is fewer")
        n = bg.vehicles if total is None else total - scripted
        if n <= 0:
            return []
        lanes = []
        for name in bg.roads:
            road = self.roads[name]
            if not road.closed:
                raise ScenarioError(f"background road {name!r} must be closed (a ring)")
            for backward in (False, True) if road.two_way else (False,):
                for lane in range(1, road.lanes + 1):
                    speed = bg.lane_speeds[min(lane - 1, len(bg.lane_speeds) - 1)]
                    off = road.lane_offset(lane, backward)
                    k = 1.0 / road.segments[0].radius if road.segments[0].radius else 0.0
                    lane_len = road.length * (1.0 - k * off)
                    cap = int(lane_len // (speed * bg.min_headway_s))
                    lanes.append((name, backward, lane, speed, lane_len, cap))
        capacity = sum(c[-1] for c in lanes)
        if n > capacity:
            raise ScenarioError(f"scenario {sc.name!r} holds at most {capacity} background vehicles")
        counts = [0] * len(lanes)
        for _ in range(n):  # fill lanes in proportion to their capacity
            j = min(range(len(lanes)), key=lambda j: (counts[j] + 1) / max(lanes[j][-1], 1))
            counts[j] += 1
        out = []
        k = 0
        for (name, backward, lane, speed, _, _), count in zip(lanes, counts, strict=True):
            road = self.roads[name]
            for i in range(count):
                spec = VehicleSpec(id=f"bg{k:04d}", road=name, lane=lane, backward=backward,
                                   s=(i + 0.37 * lane) * road.length / count, speed=speed)
                out.append(Vehicle(spec, road, sc.duration))
                k += 1
        return out

    # messages

    def state(self, v: Vehicle, t: float, timestamp_ns: int, seq: int) -> tuple[State, float, float]:
        """(state, lat, lon) of ``v`` at scenario time ``t``."""
        p = v.pose(t)
        lat, lon = self.projection.to_wgs84(p.x, p.y)
        brake = Brake.APPLIED if p.accel < -0.5 else Brake.NONE
        st = State(
            timestamp_ns=timestamp_ns, lat=lat, lon=lon, speed_mps=p.speed,
            heading_deg=p.heading_deg, seq=seq, clock_offset_us=0,
            time_quality=TimeQuality.SERVER_SYNCED, accel_mps2=p.accel,
            yaw_rate_dps=p.yaw_rate_dps, brake=brake, length_m=v.length, width_m=v.width,
            vehicle_class=VehicleClass.PASSENGER_CAR, pos_accuracy_m=0.5,
        )
        return st, lat, lon

    def object_list(self, rsu: Rsu, t: float, timestamp_ns: int, seq: int) -> ObjectList:
        objs = []
        for p in self.vrus:
            x, y, speed = p.position(t)
            if math.hypot(x - rsu.x, y - rsu.y) > rsu.range:
                continue
            lat, lon = self.projection.to_wgs84(x, y)
            objs.append(RoadsideObject(
                timestamp_ns=timestamp_ns, object_id=p.object_id, object_class=int(p.object_class),
                lat=lat, lon=lon, speed_mps=speed, heading_deg=p.spec.heading % 360.0,
                length_m=0.6 if p.object_class is ObjectClass.PEDESTRIAN else 1.8, width_m=0.6,
                confidence=0.95,
            ))
        return ObjectList(timestamp_ns, tuple(objs), seq=seq, time_quality=TimeQuality.SERVER_SYNCED)

    # ground truth

    def range_and_ttc(self, a: str, b: str, t: float) -> tuple[float, float]:
        """True bumper gap (m) and range/range-rate TTC (s, inf if not closing) of two vehicles."""
        va, vb = self.by_id[a], self.by_id[b]

        def gap(tt: float) -> float:
            pa, pb = va.pose(tt), vb.pose(tt)
            return math.hypot(pa.x - pb.x, pa.y - pb.y) - 0.5 * (va.length + vb.length)

        g0 = gap(t)
        rate = (g0 - gap(t + 0.01)) / 0.01
        return g0, (g0 / rate if rate > 1e-6 else math.inf)
