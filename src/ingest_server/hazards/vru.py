"""VRUCW: a pedestrian or cyclist from an RSU's object list in a vehicle's predicted path.

In the vehicle's path frame (its predicted arc), the object moves at constant
velocity and the vehicle at its speed (one braking to a stop short of the
object never reaches it). The vehicle is warned when, within
``vru.horizon_s``, the object will be inside the corridor swept by the
vehicle: longitudinally within half the vehicle's length plus
``vru.margin_m`` of its centre and laterally within half its width plus
``vru.margin_m``. An object standing or walking off that corridor (a parked
bicycle, a pedestrian on the pavement) is never warned about.
"""

from __future__ import annotations

import math

from ingest_server.hazards.config import PathConfig, VruConfig
from ingest_server.hazards.episodes import Finding
from ingest_server.hazards.geometry import INF, offset_m, path_coords, to_frame, unit
from ingest_server.hazards.tracks import ObjectTrack, Track
from wire.warning import Severity, WarningType


def _interval(p0: float, v: float, half: float, t_end: float) -> tuple[float, float] | None:
    """Times in [0, t_end] when |p0 + v t| <= half."""
    if abs(v) < 1e-9:
        return (0.0, t_end) if abs(p0) <= half else None
    t1, t2 = (-half - p0) / v, (half - p0) / v
    lo, hi = max(0.0, min(t1, t2)), min(t_end, max(t1, t2))
    return (lo, hi) if lo <= hi else None


def assess(vehicle: Track, obj: ObjectTrack, t_ns: int, source_ns: int, cfg: VruConfig,
           path: PathConfig, active: bool) -> Finding | None:
    vlat, vlon, vv = vehicle.at(t_ns)
    if vv < cfg.min_speed_mps:
        return None
    olat, olon = obj.at(t_ns)
    east, north = offset_m(vlat, vlon, olat, olon)
    fwd, left = to_frame(east, north, vehicle.heading)
    along, lateral = path_coords(fwd, left, vehicle.curvature(path.max_curvature))
    horizon = cfg.horizon_s + (0.5 if active else 0.0)
    if along < -vehicle.length or along > vv * horizon + 20.0:
        return None
    oe, on = unit(obj.heading)
    o_fwd, o_left = to_frame(oe * obj.speed, on * obj.speed, vehicle.heading)
    half_len = 0.5 * vehicle.length + cfg.margin_m + 0.5 * max(obj.length, obj.width)
    half_wid = 0.5 * vehicle.width + cfg.margin_m
    # Relative longitudinal motion: the object's own minus the vehicle's.
    lon_iv = _interval(along, o_fwd - vv, half_len, horizon)
    lat_iv = _interval(lateral, o_left, half_wid, horizon)
    if lon_iv is None or lat_iv is None:
        return None
    t_hit = max(lon_iv[0], lat_iv[0])
    if t_hit > min(lon_iv[1], lat_iv[1]):
        return None
    if vehicle.accel < 0.0:
        stop = vv * vv / (-2.0 * vehicle.accel)
        if stop < along - half_len:
            return None  # braking to a stop short of it
    if not math.isfinite(t_hit) or t_hit == INF:
        return None
    return Finding(
        WarningType.VRUCW, vehicle.agent, (obj.key,),
        Severity.ALERT if t_hit <= cfg.alert_s else Severity.WARNING,
        olat, olon, ttc_s=t_hit, source_ns=source_ns,
    )
