"""Plane geometry and kinematics for hazard evaluation, in metres and seconds.

Positions are WGS84; distances between two vehicles (at most a few hundred
metres) use a local equirectangular projection at their mean latitude, which
errs by centimetres at that range. Headings are degrees clockwise from north
(BSM convention). A vehicle frame is ``(forward, left)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EARTH_RADIUS_M = 6_371_008.8
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
INF = math.inf
_RAD = math.pi / 180.0


def offset_m(lat0: float, lon0: float, lat1: float, lon1: float) -> tuple[float, float]:
    """(east, north) in metres from point 0 to point 1."""
    dlon = lon1 - lon0
    if dlon > 180.0:
        dlon -= 360.0
    elif dlon < -180.0:
        dlon += 360.0
    return (dlon * M_PER_DEG * math.cos((lat0 + lat1) * 0.5 * _RAD), (lat1 - lat0) * M_PER_DEG)


def move(lat: float, lon: float, east: float, north: float) -> tuple[float, float]:
    """The point ``(east, north)`` metres from ``(lat, lon)``."""
    lat1 = lat + north / M_PER_DEG
    c = math.cos((lat + lat1) * 0.5 * _RAD)
    lon1 = lon + east / (M_PER_DEG * max(c, 1e-9))
    if lon1 > 180.0:
        lon1 -= 360.0
    elif lon1 < -180.0:
        lon1 += 360.0
    return lat1, lon1


def unit(heading_deg: float) -> tuple[float, float]:
    """(east, north) unit vector of a heading."""
    h = heading_deg * _RAD
    return math.sin(h), math.cos(h)


def to_frame(east: float, north: float, heading_deg: float) -> tuple[float, float]:
    """(forward, left) of a displacement seen from a vehicle heading ``heading_deg``."""
    s, c = unit(heading_deg)
    return east * s + north * c, north * s - east * c


def angle_diff(a_deg: float, b_deg: float) -> float:
    """Absolute difference of two headings, 0-180 degrees."""
    d = abs(a_deg - b_deg) % 360.0
    return 360.0 - d if d > 180.0 else d


def heading_of(east: float, north: float) -> float:
    return math.degrees(math.atan2(east, north)) % 360.0


def path_coords(fwd: float, left: float, curvature: float) -> tuple[float, float]:
    """(along, lateral) of a point relative to an arc from the origin heading forward.

    ``curvature`` is 1/radius, positive turning left. ``along`` is the arc
    length to the point's foot on the arc (negative behind), ``lateral`` the
    signed offset, positive to the left.
    """
    if abs(curvature) < 1e-5:
        return fwd, left
    if curvature < 0:
        s, d = path_coords(fwd, -left, -curvature)
        return s, -d
    r = 1.0 / curvature
    # Centre at (0, r); the arc starts at the origin going forward.
    vx, vy = fwd, left - r
    theta = math.atan2(vx, -vy)
    return theta * r, r - math.hypot(vx, vy)


def travel_time(distance: float, speed: float, accel: float) -> float:
    """Time to cover ``distance`` from ``speed`` at constant ``accel``; inf if it stops first."""
    if distance <= 0.0:
        return 0.0
    if abs(accel) < 1e-6:
        return distance / speed if speed > 1e-6 else INF
    disc = speed * speed + 2.0 * accel * distance
    if disc < 0.0:
        return INF  # decelerating to a stop before the distance
    return (-speed + math.sqrt(disc)) / accel


def _motion(pos0: float, speed: float, accel: float) -> list[tuple[float, float, float, float]]:
    """Pieces ``(t_from, c0, c1, c2)``: position = c0 + c1 t + c2 t² from t_from; stops stay put."""
    if accel < 0.0 and speed > 0.0:
        t_stop = -speed / accel
        stop_pos = pos0 + speed * t_stop + 0.5 * accel * t_stop * t_stop
        return [(0.0, pos0, speed, 0.5 * accel), (t_stop, stop_pos, 0.0, 0.0)]
    if speed <= 0.0 and accel <= 0.0:
        return [(0.0, pos0, 0.0, 0.0)]
    return [(0.0, pos0, speed, 0.5 * accel)]


def _stops_before(speed: float, accel: float, horizon: float) -> bool:
    """A vehicle braking to a stop within ``(0, horizon)``: its motion has two pieces there."""
    return accel < 0.0 and speed > 0.0 and -speed / accel < horizon


def _piece_at(pieces: Sequence[tuple[float, float, float, float]], t: float) -> tuple[float, float, float]:
    current = pieces[0]
    for p in pieces:
        if p[0] <= t:
            current = p
    return current[1], current[2], current[3]


def time_to_collision(
    gap: float, v_ego: float, a_ego: float, v_lead: float, a_lead: float, horizon: float
) -> float:
    """First time the ego's front reaches the lead's rear, with constant accelerations.

    Speeds never go negative: a braking vehicle stops and stays stopped (so a
    lead braking to a standstill is not predicted to reverse into the ego).
    Returns inf if there is no contact within ``horizon`` seconds.
    """
    if gap <= 0.0:
        return 0.0
    if not (_stops_before(v_ego, a_ego, horizon) or _stops_before(v_lead, a_lead, horizon)):
        # The common case: one piece of motion each over the horizon, so one quadratic
        # (the same coefficients the general loop below would find).
        e1, e2 = (0.0, 0.0) if v_ego <= 0.0 and a_ego <= 0.0 else (v_ego, 0.5 * a_ego)
        l1, l2 = (0.0, 0.0) if v_lead <= 0.0 and a_lead <= 0.0 else (v_lead, 0.5 * a_lead)
        root = _first_root(gap, l1 - e1, l2 - e2, 0.0, horizon)
        return INF if root is None else root
    ego = _motion(0.0, v_ego, a_ego)
    lead = _motion(gap, v_lead, a_lead)
    cuts = sorted({0.0, horizon, *(p[0] for p in ego + lead if 0.0 < p[0] < horizon)})
    for t0, t1 in zip(cuts, cuts[1:], strict=False):
        mid = 0.5 * (t0 + t1)
        e0, e1, e2 = _piece_at(ego, mid)
        l0, l1, l2 = _piece_at(lead, mid)
        # f(t) = lead - ego; f > 0 until contact.
        c0, c1, c2 = l0 - e0, l1 - e1, l2 - e2
        root = _first_root(c0, c1, c2, t0, t1)
        if root is not None:
            return root
    return INF


def _first_root(c0: float, c1: float, c2: float, t0: float, t1: float) -> float | None:
    """Smallest t in [t0, t1] where c0 + c1 t + c2 t² <= 0 (it is > 0 just before t0)."""
    if c0 + c1 * t0 + c2 * t0 * t0 <= 0.0:
        return t0
    roots: list[float] = []
    if abs(c2) < 1e-9:
        if abs(c1) > 1e-12:
            roots.append(-c0 / c1)
    else:
        disc = c1 * c1 - 4.0 * c2 * c0
        if disc >= 0.0:
            # The stable form: no cancellation when c2 is small next to c1.
            q = -0.5 * (c1 + math.copysign(math.sqrt(disc), c1))
            roots.append(q / c2)
            if q != 0.0:
                roots.append(c0 / q)
    for r in sorted(roots):
        if t0 <= r <= t1:
            return r
    return None


def ray_intersection(
    e0: float, n0: float, h0_deg: float, e1: float, n1: float, h1_deg: float
) -> tuple[float, float] | None:
    """Distances along two rays (point, heading) to where their lines cross; None if parallel."""
    u0, w0 = unit(h0_deg)
    u1, w1 = unit(h1_deg)
    det = u0 * (-w1) - w0 * (-u1)
    if abs(det) < 1e-6:
        return None
    de, dn = e1 - e0, n1 - n0
    s0 = (de * (-w1) - dn * (-u1)) / det
    s1 = (u0 * dn - w0 * de) / det
    return s0, s1


def project_on_polyline(
    points: Sequence[tuple[float, float]], pe: float, pn: float
) -> tuple[float, float, float] | None:
    """Foot of a point on a polyline (ordered old to new).

    Returns ``(lateral, along_to_end, segment_heading_deg)``: the distance
    from the point to the polyline, the polyline length from the foot to its
    newest point, and the heading of the segment holding the foot. None if
    the point does not project onto any segment.
    """
    best: tuple[float, int, float] | None = None  # (|lateral|, segment, fraction)
    for i in range(len(points) - 1):
        ae, an = points[i]
        be, bn = points[i + 1]
        se, sn = be - ae, bn - an
        ll = se * se + sn * sn
        if ll < 1e-9:
            continue
        f = ((pe - ae) * se + (pn - an) * sn) / ll
        if f < 0.0 or f > 1.0:
            continue
        lat = abs((pe - ae) * sn - (pn - an) * se) / math.sqrt(ll)
        if best is None or lat < best[0]:
            best = (lat, i, f)
    if best is None:
        return None
    lat, i, f = best
    (ae, an), (be, bn) = points[i], points[i + 1]
    seg_len = math.hypot(be - ae, bn - an)
    along = (1.0 - f) * seg_len
    for j in range(i + 1, len(points) - 1):
        along += math.hypot(points[j + 1][0] - points[j][0], points[j + 1][1] - points[j][1])
    return lat, along, heading_of(be - ae, bn - an)
