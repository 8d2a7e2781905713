"""ICW, intersection collision warning: two vehicles on crossing paths arrive together.

Paths cross when the headings differ by ``icw.min_angle_deg`` to
``icw.max_angle_deg`` (not same direction, not oncoming). The conflict point
is where the two heading lines meet; each vehicle's arrival time there uses
its speed and acceleration (one braking to a stop short of it never arrives).
Both are warned when both arrive within ``icw.horizon_s`` and their arrival
times differ by less than ``icw.time_diff_s``. A vehicle already past the
point by more than its own length plus the other's width has cleared it.
"""

from __future__ import annotations

from ingest_server.hazards.config import IcwConfig
from ingest_server.hazards.episodes import Finding
from ingest_server.hazards.geometry import (
    INF,
    angle_diff,
    move,
    offset_m,
    ray_intersection,
    travel_time,
    unit,
)
from ingest_server.hazards.tracks import Track
from wire.warning import Severity, WarningType


def assess(a: Track, b: Track, t_ns: int, source_ns: int, cfg: IcwConfig,
           active: bool) -> tuple[Finding, Finding] | None:
    diff = angle_diff(a.heading, b.heading)
    if not cfg.min_angle_deg <= diff <= cfg.max_angle_deg:
        return None
    if abs(a.elevation - b.elevation) > cfg.max_elevation_diff_m:
        return None
    alat, alon, av = a.at(t_ns)
    blat, blon, bv = b.at(t_ns)
    if av < cfg.min_speed_mps or bv < cfg.min_speed_mps:
        return None
    be, bn = offset_m(alat, alon, blat, blon)
    hit = ray_intersection(0.0, 0.0, a.heading, be, bn, b.heading)
    if hit is None:
        return None
    sa, sb = hit
    if sa < -(a.length + b.width) or sb < -(b.length + a.width):
        return None
    ta = travel_time(sa, av, a.accel) if sa > 0 else 0.0
    tb = travel_time(sb, bv, b.accel) if sb > 0 else 0.0
    horizon = cfg.horizon_s + (0.5 if active else 0.0)
    if ta == INF or tb == INF or max(ta, tb) > horizon:
        return None
    dt = abs(ta - tb)
    if dt >= cfg.time_diff_s + (0.3 if active else 0.0):
        return None
    ue, un = unit(a.heading)
    clat, clon = move(alat, alon, ue * sa, un * sa)
    fa = Finding(WarningType.ICW, a.agent, (b.agent,),
                 Severity.ALERT if ta <= cfg.alert_s else Severity.WARNING, clat, clon,
                 ttc_s=ta, time_diff_s=dt, source_ns=source_ns)
    fb = Finding(WarningType.ICW, b.agent, (a.agent,),
                 Severity.ALERT if tb <= cfg.alert_s else Severity.WARNING, clat, clon,
                 ttc_s=tb, time_diff_s=dt, source_ns=source_ns)
    return fa, fb
