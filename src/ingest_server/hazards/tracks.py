"""Latest state, path history and a spatial index of every vehicle and roadside object.

Times are server clock (agent time plus the agent's clock offset). A state
is dropped, and counted by reason, when it is:

- ``stale``: older than ``freshness.max_age_ms`` when it arrives (a warning
  computed from it would be late; the next state comes in 100 ms anyway);
- ``future``: stamped more than ``freshness.max_future_ms`` after arrival;
- ``out_of_order``: not newer than the vehicle's last accepted state;
- ``jump``: implies moving faster than ``freshness.max_speed_mps`` since the
  last accepted state. After ``reset_after_jumps`` such states in a row (or a
  silence longer than ``track_timeout_s``) the track restarts from the new
  position, so a vehicle whose GNSS really jumped is not ignored forever;
- ``capacity``: a new vehicle while ``max_tracks`` are tracked.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from ingest_server.hazards.config import HazardConfig
from ingest_server.hazards.geometry import M_PER_DEG, move, offset_m, unit
from wire.schemas import RoadsideObject
from wire.state import Brake, State
from wire.topics import tile_of

#: Grid cell edge in degrees (about 220 m north-south).
CELL_DEG = 0.002
_BRAKE_FLAGS = Brake.APPLIED | Brake.HARD_BRAKING
_MAX_EXTRAPOLATION_S = 0.5


class Rejected(Exception):
    """A live message was dropped; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True, eq=False)
class Track:
    """One vehicle: its latest accepted state, path history and derived flags."""

    agent: str
    t_ns: int
    lat: float
    lon: float
    speed: float
    heading: float
    accel: float
    yaw_rate_dps: float
    length: float
    width: float
    elevation: float
    brake: Brake
    tile: str
    trail: deque[tuple[int, float, float]]
    cell: tuple[int, int] = (0, 0)
    ue: float = 0.0  #: east component of the heading's unit vector
    un: float = 1.0  #: north component
    decel_since_ns: int | None = None
    braking_hard: bool = False
    leader: str | None = None
    jumps: int = 0
    slot: int = -1  #: row in the table's arrays

    def displacement(self, t_ns: int) -> tuple[float, float, float]:
        """(east m, north m, speed) of the extrapolation to ``t_ns`` (at most 0.5 s)."""
        dt = (t_ns - self.t_ns) * 1e-9
        if -1e-3 < dt < 1e-3:
            return 0.0, 0.0, self.speed
        dt = max(-_MAX_EXTRAPOLATION_S, min(_MAX_EXTRAPOLATION_S, dt))
        speed = max(0.0, self.speed + self.accel * dt)
        dist = 0.5 * (self.speed + speed) * dt
        return self.ue * dist, self.un * dist, speed

    def at(self, t_ns: int) -> tuple[float, float, float]:
        """(lat, lon, speed) extrapolated to ``t_ns`` along the heading (at most 0.5 s)."""
        dt = (t_ns - self.t_ns) * 1e-9
        if dt == 0.0:
            return self.lat, self.lon, self.speed
        dt = max(-_MAX_EXTRAPOLATION_S, min(_MAX_EXTRAPOLATION_S, dt))
        speed = max(0.0, self.speed + self.accel * dt)
        dist = 0.5 * (self.speed + speed) * dt
        ue, un = unit(self.heading)
        lat, lon = move(self.lat, self.lon, ue * dist, un * dist)
        return lat, lon, speed

    def curvature(self, max_curvature: float) -> float:
        """1/m, positive to the left, from the yaw rate (clockwise-positive headings)."""
        if self.speed < 2.0:
            return 0.0
        k = -math.radians(self.yaw_rate_dps) / self.speed
        return max(-max_curvature, min(max_curvature, k))


@dataclass(slots=True, eq=False)
class ObjectTrack:
    """A vulnerable road user (or other object) seen by a roadside unit."""

    key: str  #: ``rsu#object_id``
    rsu: str
    t_ns: int
    lat: float
    lon: float
    speed: float
    heading: float
    object_class: int
    length: float
    width: float
    cell: tuple[int, int] = (0, 0)

    def at(self, t_ns: int) -> tuple[float, float]:
        dt = max(-_MAX_EXTRAPOLATION_S, min(_MAX_EXTRAPOLATION_S, (t_ns - self.t_ns) * 1e-9))
        ue, un = unit(self.heading)
        return move(self.lat, self.lon, ue * self.speed * dt, un * self.speed * dt)


#: Columns of :attr:`TrackTable.cols` (one row per vehicle slot, all float64).
(C_LAT, C_LON, C_HEADING, C_UE, C_UN, C_SPEED, C_T, C_BRAKING, C_LEADER, C_CURVATURE,
 C_OWNED) = range(11)
N_COLS = 11


@dataclass(frozen=True, slots=True)
class Around:
    """Neighbours of one vehicle: slots, their rows of :attr:`TrackTable.cols`, and raw geometry
    (east, north, squared distance, heading difference in degrees) before any extrapolation."""

    slots: np.ndarray
    rows: np.ndarray
    de: np.ndarray
    dn: np.ndarray
    d2: np.ndarray
    diff: np.ndarray


def cell_of(lat: float, lon: float) -> tuple[int, int]:
    return math.floor(lat / CELL_DEG), math.floor(lon / CELL_DEG)


K = TypeVar("K", int, str)


@dataclass(slots=True)
class SpatialGrid(Generic[K]):
    """Keys bucketed by grid cell, for "who is within r metres" queries."""

    cells: dict[tuple[int, int], set[K]] = field(default_factory=dict)

    def add(self, key: K, cell: tuple[int, int]) -> None:
        self.cells.setdefault(cell, set()).add(key)

    def remove(self, key: K, cell: tuple[int, int]) -> None:
        bucket = self.cells.get(cell)
        if bucket is not None:
            bucket.discard(key)
            if not bucket:
                del self.cells[cell]

    def near(self, lat: float, lon: float, radius_m: float) -> list[K]:
        ci, cj = cell_of(lat, lon)
        cell_m = CELL_DEG * M_PER_DEG
        di = math.ceil(radius_m / cell_m)
        dj = math.ceil(radius_m / (cell_m * max(math.cos(math.radians(lat)), 0.01)))
        cells = self.cells
        out: list[K] = []
        for i in range(ci - di, ci + di + 1):
            for j in range(cj - dj, cj + dj + 1):
                bucket = cells.get((i, j))
                if bucket:
                    out.extend(bucket)
        return out


class TrackTable:
    """Every vehicle's track and every RSU object, indexed by position."""

    def __init__(self, config: HazardConfig) -> None:
        self.config = config
        self.vehicles: dict[str, Track] = {}
        self.objects: dict[str, ObjectTrack] = {}
        self._rsu_objects: dict[str, set[str]] = {}
        self._vehicle_grid: SpatialGrid[int] = SpatialGrid()
        self._object_grid: SpatialGrid[str] = SpatialGrid()
        # Every vehicle's latest state as a row (by slot) of one matrix, so a neighbour query
        # gathers all columns at once; see the C_* column numbers.
        self._slots: list[Track | None] = []
        self._free: list[int] = []
        self.cols = np.zeros((0, N_COLS))
        self._t0: int | None = None

    def __len__(self) -> int:
        return len(self.vehicles) + len(self.objects)

    # vehicles

    def update(self, agent: str, state: State, now_ns: int) -> Track:
        """Accept ``state`` for ``agent`` or raise :class:`Rejected`."""
        f = self.config.freshness
        t = state.timestamp_ns + state.clock_offset_us * 1000
        if now_ns - t > f.max_age_ms * 1e6:
            raise Rejected("stale")
        if t - now_ns > f.max_future_ms * 1e6:
            raise Rejected("future")
        tr = self.vehicles.get(agent)
        if tr is not None:
            if t <= tr.t_ns:
                raise Rejected("out_of_order")
            dt = (t - tr.t_ns) * 1e-9
            e, n = offset_m(tr.lat, tr.lon, state.lat, state.lon)
            if math.hypot(e, n) > f.max_speed_mps * dt + f.jump_slack_m and dt < f.track_timeout_s:
                tr.jumps += 1
                if tr.jumps < f.reset_after_jumps:
                    raise Rejected("jump")
                self._forget(tr)  # it really moved: start over from here
                tr = None
        if tr is None:
            if len(self) >= self.config.max_tracks:
                raise Rejected("capacity")
            tr = Track(
                agent=agent, t_ns=t, lat=state.lat, lon=state.lon, speed=state.speed_mps,
                heading=state.heading_deg, accel=state.accel_mps2,
                yaw_rate_dps=state.yaw_rate_dps, length=state.length_m or 4.5,
                width=state.width_m or 1.8, elevation=state.elevation_m, brake=state.brake,
                tile=tile_of(state.lat, state.lon),
                trail=deque(maxlen=self.config.path.trail_max_points),
            )
            tr.cell = cell_of(tr.lat, tr.lon)
            tr.ue, tr.un = unit(tr.heading)
            tr.trail.append((t, tr.lat, tr.lon))
            self.vehicles[agent] = tr
            self._claim_slot(tr)
            self._vehicle_grid.add(tr.slot, tr.cell)
        else:
            tr.t_ns, tr.lat, tr.lon = t, state.lat, state.lon
            tr.speed, tr.heading, tr.accel = state.speed_mps, state.heading_deg, state.accel_mps2
            tr.yaw_rate_dps, tr.elevation, tr.brake = state.yaw_rate_dps, state.elevation_m, state.brake
            tr.length, tr.width = state.length_m or tr.length, state.width_m or tr.width
            tr.jumps = 0
            tr.ue, tr.un = unit(tr.heading)
            cell = cell_of(tr.lat, tr.lon)
            if cell != tr.cell:
                self._vehicle_grid.remove(tr.slot, tr.cell)
                self._vehicle_grid.add(tr.slot, cell)
                tr.cell = cell
                tr.tile = tile_of(tr.lat, tr.lon)
            self._extend_trail(tr)
        self._update_braking(tr)
        self._store(tr)
        return tr

    def _claim_slot(self, tr: Track) -> None:
        if self._free:
            tr.slot = self._free.pop()
            self._slots[tr.slot] = tr
            return
        tr.slot = len(self._slots)
        self._slots.append(tr)
        if tr.slot >= len(self.cols):
            grown = np.zeros((max(256, 2 * len(self.cols)), N_COLS))
            grown[: len(self.cols)] = self.cols
            self.cols = grown
        self.cols[tr.slot, C_LEADER] = -1.0
        self.cols[tr.slot, C_OWNED] = 1.0

    def _store(self, tr: Track) -> None:
        if self._t0 is None:
            self._t0 = tr.t_ns
        row = self.cols[tr.slot]
        row[C_LAT], row[C_LON], row[C_HEADING] = tr.lat, tr.lon, tr.heading
        row[C_UE], row[C_UN], row[C_SPEED] = tr.ue, tr.un, tr.speed
        row[C_T] = (tr.t_ns - self._t0) * 1e-9
        row[C_BRAKING] = 1.0 if tr.braking_hard else 0.0
        row[C_CURVATURE] = tr.curvature(self.config.path.max_curvature)

    def set_leader(self, tr: Track, leader: Track | None) -> None:
        tr.leader = None if leader is None else leader.agent
        self.cols[tr.slot, C_LEADER] = -1.0 if leader is None else float(leader.slot)

    def set_owned(self, tr: Track, owned: bool) -> None:
        self.cols[tr.slot, C_OWNED] = 1.0 if owned else 0.0

    def track_at(self, slot: int) -> Track:
        tr = self._slots[slot]
        assert tr is not None
        return tr

    def around(self, x: Track, radius_m: float) -> Around | None:
        """Every other fresh vehicle within ``radius_m`` of ``x``, as arrays (raw states)."""
        slots = self._vehicle_grid.near(x.lat, x.lon, radius_m)
        if len(slots) < 2:
            return None
        slots.remove(x.slot)
        ix = np.array(slots, dtype=np.intp)
        rows = self.cols[ix]
        de = (rows[:, C_LON] - x.lon) * (M_PER_DEG * math.cos(math.radians(x.lat)))
        dn = (rows[:, C_LAT] - x.lat) * M_PER_DEG
        d2 = de * de + dn * dn
        t = (x.t_ns - (self._t0 or 0)) * 1e-9
        keep = (d2 <= radius_m * radius_m) & (
            np.abs(rows[:, C_T] - t) <= self.config.freshness.max_age_ms * 1e-3)
        if not keep.all():
            if not keep.any():
                return None
            ix, rows, de, dn, d2 = ix[keep], rows[keep], de[keep], dn[keep], d2[keep]
        diff = np.abs(rows[:, C_HEADING] - x.heading) % 360.0
        diff = np.minimum(diff, 360.0 - diff)
        return Around(ix, rows, de, dn, d2, diff)

    def _extend_trail(self, tr: Track) -> None:
        p = self.config.path
        _, la, lo = tr.trail[-1]
        e, n = offset_m(la, lo, tr.lat, tr.lon)
        if e * e + n * n >= p.trail_spacing_m * p.trail_spacing_m:
            tr.trail.append((tr.t_ns, tr.lat, tr.lon))
            oldest = tr.t_ns - int(p.trail_max_age_s * 1e9)
            while len(tr.trail) > 2 and tr.trail[0][0] < oldest:
                tr.trail.popleft()

    def _update_braking(self, tr: Track) -> None:
        """EBW's hard-braking state: onset by held deceleration or flag, release by easing."""
        c = self.config.ebw
        if tr.accel <= -c.decel_mps2:
            if tr.decel_since_ns is None:
                tr.decel_since_ns = tr.t_ns
        else:
            tr.decel_since_ns = None
        if tr.braking_hard:
            if tr.accel > -c.release_mps2 or tr.speed < 0.5:
                tr.braking_hard = False
            return
        if tr.speed < c.min_speed_mps:
            return
        held = tr.decel_since_ns is not None and tr.t_ns - tr.decel_since_ns >= c.hold_s * 1e9 - 1e6
        flagged = bool(tr.brake & _BRAKE_FLAGS) and tr.accel <= -c.flag_decel_mps2
        tr.braking_hard = held or flagged

    def _forget(self, tr: Track) -> None:
        self._vehicle_grid.remove(tr.slot, tr.cell)
        del self.vehicles[tr.agent]
        self._slots[tr.slot] = None
        self.cols[tr.slot] = 0.0
        self.cols[tr.slot, C_T] = -1e18  # never fresh
        self.cols[tr.slot, C_LEADER] = -1.0
        leaders = self.cols[:, C_LEADER]
        leaders[leaders == tr.slot] = -1.0
        self._free.append(tr.slot)

    def vehicles_near(self, lat: float, lon: float, radius_m: float, t_ns: int) -> list[Track]:
        """Tracks within about ``radius_m`` whose state is fresh relative to ``t_ns``."""
        max_age = self.config.freshness.max_age_ms * 1e6
        out = []
        for slot in self._vehicle_grid.near(lat, lon, radius_m):
            tr = self._slots[slot]
            if tr is not None and abs(t_ns - tr.t_ns) <= max_age:
                out.append(tr)
        return out

    # roadside objects

    def update_objects(self, rsu: str, t_list: int, objects: tuple[RoadsideObject, ...],
                       offset_ns: int, now_ns: int) -> list[ObjectTrack]:
        """Replace ``rsu``'s object list; returns the objects kept (VRU classes, confident)."""
        f = self.config.freshness
        t = t_list + offset_ns
        if now_ns - t > f.max_age_ms * 1e6:
            raise Rejected("stale")
        if t - now_ns > f.max_future_ms * 1e6:
            raise Rejected("future")
        v = self.config.vru
        old = self._rsu_objects.get(rsu, set())
        kept: list[ObjectTrack] = []
        seen: set[str] = set()
        for o in objects:
            if o.object_class not in v.classes or o.confidence < v.min_confidence:
                continue
            key = f"{rsu}#{o.object_id}"
            ot = self.objects.get(key)
            ts = o.timestamp_ns + offset_ns if o.timestamp_ns else t
            if ot is not None and ts < ot.t_ns:
                continue  # an older list than one already seen
            if ot is None:
                if len(self) >= self.config.max_tracks:
                    continue
                ot = ObjectTrack(key, rsu, ts, o.lat, o.lon, o.speed_mps, o.heading_deg,
                                 o.object_class, o.length_m, o.width_m)
                ot.cell = cell_of(o.lat, o.lon)
                self.objects[key] = ot
                self._object_grid.add(key, ot.cell)
            else:
                ot.t_ns, ot.lat, ot.lon = ts, o.lat, o.lon
                ot.speed, ot.heading, ot.object_class = o.speed_mps, o.heading_deg, o.object_class
                cell = cell_of(o.lat, o.lon)
                if cell != ot.cell:
                    self._object_grid.remove(key, ot.cell)
                    self._object_grid.add(key, cell)
                    ot.cell = cell
            seen.add(key)
            kept.append(ot)
        for key in old - seen:
            ot = self.objects.pop(key, None)
            if ot is not None:
                self._object_grid.remove(key, ot.cell)
        self._rsu_objects[rsu] = seen
        return kept

    def objects_near(self, lat: float, lon: float, radius_m: float, t_ns: int) -> list[ObjectTrack]:
        max_age = self.config.freshness.max_age_ms * 1e6
        out = []
        for key in self._object_grid.near(lat, lon, radius_m):
            ot = self.objects[key]
            if abs(t_ns - ot.t_ns) <= max_age:
                out.append(ot)
        return out

    # housekeeping

    def expire(self, now_ns: int) -> int:
        """Forget vehicles and objects silent for ``track_timeout_s``; returns how many."""
        limit = now_ns - int(self.config.freshness.track_timeout_s * 1e9)
        gone = [tr for tr in self.vehicles.values() if tr.t_ns < limit]
        for tr in gone:
            self._forget(tr)
        stale = [ot for ot in self.objects.values() if ot.t_ns < limit]
        for ot in stale:
            self._object_grid.remove(ot.key, ot.cell)
            del self.objects[ot.key]
            self._rsu_objects.get(ot.rsu, set()).discard(ot.key)
        return len(gone) + len(stale)
