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

Per accepted state the table derives, once, what every pair evaluation needs
(heading unit vector, path curvature, grid cell, tile), and it keeps the
leader relation both ways (``leader`` and ``followers``) so a vehicle's
followers are found without scanning its neighbours.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ingest_server.hazards.config import HazardConfig
from ingest_server.hazards.geometry import M_PER_DEG, move, offset_m, unit
from wire.schemas import RoadsideObject
from wire.state import Brake, State
from wire.topics import TILE_DEG, tile_of

#: Grid cell edge in degrees (about 220 m north-south; a tile holds 5 x 5 cells). Smaller cells
#: fit a 150 m query more tightly but cost more lookups than the extra candidates they save
#: (a candidate outside the query's latitude band is rejected in about 0.1 us).
CELL_DEG = 0.002
#: Width of the heading sectors that split each grid cell's vehicles (24 sectors).
SECTOR_DEG = 15.0
N_SECTORS = int(360.0 // SECTOR_DEG)
#: Up to this many roadside objects, a query compares their cells instead of probing the grid.
_SCAN_OBJECTS = 32
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
    sector: int = 0  #: heading sector (:func:`heading_sector`), its part of the cell
    tile_ij: tuple[int, int] = (0, 0)  #: tile indexes of ``tile``
    ue: float = 0.0  #: east component of the heading's unit vector
    un: float = 1.0  #: north component
    k: float = 0.0  #: path curvature (1/m, positive left), as :meth:`curvature` gives it
    decel_since_ns: int | None = None
    braking_hard: bool = False
    owned: bool = True  #: its tile is owned by the engine (as of its last evaluation)
    leader: Track | None = None  #: the vehicle it follows (FCW), as of its last evaluation
    followers: dict[Track, None] = field(default_factory=dict)  #: tracks whose leader it is
    jumps: int = 0

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


def cell_of(lat: float, lon: float) -> tuple[int, int]:
    return math.floor(lat / CELL_DEG), math.floor(lon / CELL_DEG)


def cell_span(lat: float, lon: float, radius_m: float) -> tuple[int, int, int, int]:
    """First and last cell rows and columns overlapping the square of side 2 * ``radius_m``
    around a point (slightly larger, so rounding never leaves out a cell that matters)."""
    dlat = radius_m / M_PER_DEG * 1.000001
    dlon = radius_m / (M_PER_DEG * max(math.cos(math.radians(lat)), 0.01)) * 1.000001
    return (math.floor((lat - dlat) / CELL_DEG), math.floor((lat + dlat) / CELL_DEG),
            math.floor((lon - dlon) / CELL_DEG), math.floor((lon + dlon) / CELL_DEG))


def heading_sector(heading_deg: float) -> int:
    """The :data:`SECTOR_DEG` sector of a heading (0 for [0, 15) degrees, 1 for [15, 30), ...)."""
    return int((heading_deg % 360.0) // SECTOR_DEG) % N_SECTORS


def sectors_beyond(heading_deg: float, max_diff_deg: float) -> frozenset[int]:
    """Sectors in which every heading differs from ``heading_deg`` by more than ``max_diff_deg``.

    A neighbour query that needs only headings within ``max_diff_deg`` of its own skips them:
    with the defaults (crossing up to 150 degrees) that is oncoming traffic, half of a two-way
    road. The bounds are kept a hair inside, so rounding never skips a heading that counts.
    """
    if max_diff_deg >= 180.0 - SECTOR_DEG:
        return frozenset()
    h = heading_deg % 360.0
    first = math.floor((h + max_diff_deg) / SECTOR_DEG + 1e-7) + 1  # starts beyond h + max
    last = math.floor((h + 360.0 - max_diff_deg) / SECTOR_DEG - 1e-7) - 1  # ends before h - max
    return frozenset(k % N_SECTORS for k in range(first, last + 1))


K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class SpatialGrid(Generic[K]):
    """Keys bucketed by grid cell and, within a cell, by a part number (for vehicles, their
    heading sector), for "who is within r metres" queries.

    Buckets are dicts used as ordered sets, so a query lists keys in a repeatable order.
    """

    cells: dict[tuple[int, int], dict[int, dict[K, None]]] = field(default_factory=dict)

    def add(self, key: K, cell: tuple[int, int], part: int = 0) -> None:
        parts = self.cells.get(cell)
        if parts is None:
            self.cells[cell] = {part: {key: None}}
            return
        bucket = parts.get(part)
        if bucket is None:
            parts[part] = {key: None}
        else:
            bucket[key] = None

    def remove(self, key: K, cell: tuple[int, int], part: int = 0) -> None:
        parts = self.cells.get(cell)
        if parts is None:
            return
        bucket = parts.get(part)
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:
                del parts[part]
                if not parts:
                    del self.cells[cell]

    def buckets(self, lat: float, lon: float, radius_m: float,
                skip: frozenset[int] = frozenset()) -> list[dict[K, None]]:
        """The buckets (but those of the parts in ``skip``) of every cell that overlaps the
        square around the circle."""
        i0, i1, j0, j1 = cell_span(lat, lon, radius_m)
        get = self.cells.get
        out = []
        for i in range(i0, i1 + 1):
            for j in range(j0, j1 + 1):
                parts = get((i, j))
                if parts:
                    for part, bucket in parts.items():
                        if part not in skip:
                            out.append(bucket)
        return out

    def near(self, lat: float, lon: float, radius_m: float) -> list[K]:
        return [key for bucket in self.buckets(lat, lon, radius_m) for key in bucket]


class TrackTable:
    """Every vehicle's track and every RSU object, indexed by position."""

    def __init__(self, config: HazardConfig) -> None:
        self.config = config
        self.vehicles: dict[str, Track] = {}
        self.objects: dict[str, ObjectTrack] = {}
        self._rsu_objects: dict[str, set[str]] = {}
        self.vehicle_grid: SpatialGrid[Track] = SpatialGrid()
        self._max_curvature = config.path.max_curvature
        self._object_grid: SpatialGrid[str] = SpatialGrid()

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
            reach = f.max_speed_mps * dt + f.jump_slack_m
            if e * e + n * n > reach * reach and dt < f.track_timeout_s:
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
            tr.sector = heading_sector(tr.heading)
            tr.tile_ij = (math.floor(tr.lat / TILE_DEG), math.floor(tr.lon / TILE_DEG))
            tr.trail.append((t, tr.lat, tr.lon))
            self.vehicles[agent] = tr
            self.vehicle_grid.add(tr, tr.cell, tr.sector)
        else:
            tr.t_ns, tr.lat, tr.lon = t, state.lat, state.lon
            tr.speed, tr.heading, tr.accel = state.speed_mps, state.heading_deg, state.accel_mps2
            tr.yaw_rate_dps, tr.elevation, tr.brake = state.yaw_rate_dps, state.elevation_m, state.brake
            tr.length, tr.width = state.length_m or tr.length, state.width_m or tr.width
            tr.jumps = 0
            cell = (math.floor(tr.lat / CELL_DEG), math.floor(tr.lon / CELL_DEG))
            sector = int((tr.heading % 360.0) // SECTOR_DEG) % N_SECTORS
            if cell != tr.cell or sector != tr.sector:
                self.vehicle_grid.remove(tr, tr.cell, tr.sector)
                self.vehicle_grid.add(tr, cell, sector)
                tr.cell, tr.sector = cell, sector
            tile_ij = (math.floor(tr.lat / TILE_DEG), math.floor(tr.lon / TILE_DEG))
            if tile_ij != tr.tile_ij:
                tr.tile_ij = tile_ij
                tr.tile = tile_of(tr.lat, tr.lon)
            self._extend_trail(tr)
        h = math.radians(tr.heading)
        tr.ue, tr.un = math.sin(h), math.cos(h)  # as geometry.unit
        tr.k = tr.curvature(self._max_curvature)
        self._update_braking(tr)
        return tr

    def set_leader(self, tr: Track, leader: Track | None) -> None:
        old = tr.leader
        if old is leader:
            return
        if old is not None:
            old.followers.pop(tr, None)
        if leader is not None:
            leader.followers[tr] = None
        tr.leader = leader

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
        self.vehicle_grid.remove(tr, tr.cell, tr.sector)
        del self.vehicles[tr.agent]
        self.set_leader(tr, None)
        for f in tr.followers:
            f.leader = None
        tr.followers.clear()

    def vehicles_near(self, lat: float, lon: float, radius_m: float, t_ns: int) -> list[Track]:
        """Tracks within about ``radius_m`` whose state is fresh relative to ``t_ns``."""
        max_age = self.config.freshness.max_age_ms * 1e6
        return [tr for tr in self.vehicle_grid.near(lat, lon, radius_m)
                if abs(t_ns - tr.t_ns) <= max_age]

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
        """Fresh objects in the grid cells within about ``radius_m`` (as ``SpatialGrid.near``)."""
        max_age = self.config.freshness.max_age_ms * 1e6
        if len(self.objects) > _SCAN_OBJECTS:
            found: list[ObjectTrack] = [self.objects[k]
                                        for k in self._object_grid.near(lat, lon, radius_m)]
        else:  # few objects (the usual case): compare their cells instead of probing cells
            i0, i1, j0, j1 = cell_span(lat, lon, radius_m)
            found = [ot for ot in self.objects.values()
                     if i0 <= ot.cell[0] <= i1 and j0 <= ot.cell[1] <= j1]
        return [ot for ot in found if abs(t_ns - ot.t_ns) <= max_age]

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
