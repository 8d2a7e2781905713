"""Where a target is relative to an ego's path: along it, beside it, in its lane or not.

Two pieces of evidence, as in SAE J2945/1 target classification:

- the ego's *predicted path*: an arc from its position with the curvature its
  yaw rate and speed give (straight when it drives straight);
- the target's *path history* (trail): where the target itself has driven.
  When that trail passes the ego's position and bends (the target is already
  in a curve the ego has not yet entered, or has left one the ego is still
  in), the trail is the better witness of "same lane" than the arc.

A trail that passes the ego but does not bend is a lane change, not a curve:
then the arc decides, so a lead that moved to the next lane stops being the
leader even though its trail still runs through the ego's lane.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ingest_server.hazards.config import PathConfig
from ingest_server.hazards.geometry import angle_diff, offset_m, path_coords, project_on_polyline
from ingest_server.hazards.tracks import Track

#: Curvatures (1/m) this close mean both drive the same curve (or straight) ...
SAME_CURVE = 0.002
#: ... unless the ego's arc, carried to the target, disagrees with its heading by this (deg).
ARC_MISMATCH_DEG = 3.0


class Relation(NamedTuple):
    """A target seen from an ego at time ``t_ns`` (both extrapolated to it).

    A named tuple rather than a frozen dataclass: one is built for every pair evaluated, and a
    tuple is built three times faster.
    """

    along: float  #: metres from the ego's centre to the target's along the ego's path
    lateral: float  #: metres the target is off the ego's path, positive to the left
    heading_diff: float  #: degrees, 0-180
    ego_speed: float
    target_speed: float
    target_lat: float
    target_lon: float
    by_trail: bool = False

    def in_lane(self, half_width: float) -> bool:
        return abs(self.lateral) <= half_width

    @property
    def target_speed_along(self) -> float:
        """The target's speed component along the ego's heading."""
        return self.target_speed * math.cos(math.radians(self.heading_diff))


def relate(ego: Track, target: Track, t_ns: int, cfg: PathConfig) -> Relation:
    """``target`` seen from ``ego``, both extrapolated to ``t_ns``."""
    ee, en, ev = ego.displacement(t_ns)
    te, tn, tv = target.displacement(t_ns)
    east, north = offset_m(ego.lat, ego.lon, target.lat, target.lon)
    east += te - ee
    north += tn - en
    # (forward, left) in the ego's frame; headings are clockwise from north.
    fwd = east * ego.ue + north * ego.un
    left = north * ego.ue - east * ego.un
    k = ego.k  # the curvature with cfg.max_curvature, derived once per state by the track table
    along, lateral = path_coords(fwd, left, k)
    diff = angle_diff(ego.heading, target.heading)
    if (
        along > 0.0
        and diff <= cfg.same_direction_deg
        and abs(lateral) <= cfg.trail_max_lateral_m
        and (abs(k - target.k) > SAME_CURVE
             # the arc's heading at the target disagrees with the target's own heading
             or angle_diff(ego.heading - math.degrees(k * along), target.heading) > ARC_MISMATCH_DEG)
    ):
        by_trail = _trail_relation(ego.heading, east, north, te, tn, target, cfg, along)
        if by_trail is not None:
            return Relation(by_trail[0], by_trail[1], diff, ev, tv, target.lat, target.lon, True)
    return Relation(along, lateral, diff, ev, tv, target.lat, target.lon)


def _trail_relation(
    ego_heading: float, east: float, north: float, te: float, tn: float, target: Track,
    cfg: PathConfig, along_hint: float,
) -> tuple[float, float] | None:
    """(along, |lateral|) of the target relative to the ego via the target's bent trail.

    ``east, north`` is the target's (extrapolated) offset from the ego's
    extrapolated position; ``te, tn`` the target's extrapolation from its state.
    Only the newest part of the trail, back to a little beyond the ego, is used.
    """
    lat0, lon0 = target.lat, target.lon
    # Trail points relative to the ego's extrapolated position, newest first.
    base_e, base_n = east - te, north - tn
    pts: list[tuple[float, float]] = []
    travelled = 0.0
    prev: tuple[float, float] | None = None
    for _, la, lo in reversed(target.trail):
        de, dn = offset_m(lat0, lon0, la, lo)
        p = (base_e + de, base_n + dn)
        if prev is not None:
            travelled += math.hypot(p[0] - prev[0], p[1] - prev[1])
        pts.append(p)
        prev = p
        if travelled > along_hint + 30.0:
            break
    if len(pts) < 2:
        return None
    pts.reverse()
    foot = project_on_polyline(pts, 0.0, 0.0)
    if foot is None:
        return None
    lateral, along_to_end, seg_heading = foot
    if angle_diff(seg_heading, ego_heading) > cfg.same_direction_deg:
        return None
    if angle_diff(seg_heading, target.heading) < cfg.trail_min_turn_deg:
        return None  # straight trail: a lane change or a straight road; the arc decides
    last_e, last_n = pts[-1]
    return along_to_end + math.hypot(east - last_e, north - last_n), lateral
