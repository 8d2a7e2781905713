"""FCW, forward collision warning: the leader on the ego's path is closing too fast.

The leader is the nearest vehicle ahead in the ego's lane (see
:mod:`~ingest_server.hazards.paths`). Two times to collision are computed on
the bumper-to-bumper gap:

- ``ttc``: range / range-rate, as NHTSA measures it;
- ``ttc_accel``: with both vehicles' current accelerations, neither reversing.

The ego is warned when ``ttc_accel <= fcw.ttc_accel_s``, or when
``ttc <= fcw.ttc_s`` and the accelerations still lead to contact (so a
driver already braking enough to stop short is not nagged). An open episode
lasts until both exceed their threshold plus ``clear_margin_s``.
"""

from __future__ import annotations

from ingest_server.hazards.config import FcwConfig, PathConfig
from ingest_server.hazards.episodes import Finding
from ingest_server.hazards.geometry import INF, time_to_collision
from ingest_server.hazards.paths import Relation
from ingest_server.hazards.tracks import Track
from wire.warning import Severity, WarningType


def is_leader_candidate(rel: Relation, cfg: FcwConfig, path: PathConfig) -> bool:
    return (
        0.0 < rel.along <= cfg.range_m
        and rel.heading_diff <= path.same_direction_deg
        and rel.in_lane(path.lane_half_width_m)
    )


def times_to_collision(ego: Track, lead: Track, rel: Relation, cfg: FcwConfig) -> tuple[float, float, float]:
    """(gap m, range/range-rate TTC s, TTC with accelerations s)."""
    gap = rel.along - 0.5 * (ego.length + lead.length)
    v_lead = rel.target_speed_along
    closing = rel.ego_speed - v_lead
    if gap <= 0.0:
        return gap, 0.0, 0.0
    ttc = gap / closing if closing >= cfg.min_closing_mps else INF
    ttc_accel = time_to_collision(gap, rel.ego_speed, ego.accel, v_lead, lead.accel, cfg.horizon_s)
    return gap, ttc, ttc_accel


def assess(ego: Track, lead: Track, rel: Relation, source_ns: int, cfg: FcwConfig,
           path: PathConfig, active: bool) -> Finding | None:
    """``rel`` is the lead seen from the ego; ``active`` when an episode is open (hysteresis)."""
    if not is_leader_candidate(rel, cfg, path) or rel.ego_speed < cfg.min_speed_mps:
        return None
    _, ttc, ttc_accel = times_to_collision(ego, lead, rel, cfg)
    margin = cfg.clear_margin_s if active else 0.0
    warn = ttc_accel <= cfg.ttc_accel_s + margin or (
        ttc <= cfg.ttc_s + margin and ttc_accel < INF
    )
    if not warn:
        return None
    shown = min(ttc, ttc_accel)
    return Finding(
        WarningType.FCW, ego.agent, (lead.agent,),
        Severity.ALERT if shown <= cfg.alert_ttc_s else Severity.WARNING,
        rel.target_lat, rel.target_lon, ttc_s=shown, source_ns=source_ns,
    )
