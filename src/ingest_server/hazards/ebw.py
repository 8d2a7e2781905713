"""EBW, emergency brake warning: a vehicle ahead on the same road and direction brakes hard.

Hard braking (tracked in :class:`~ingest_server.hazards.tracks.TrackTable`)
starts above ``ebw.min_speed_mps`` when the deceleration exceeds
``ebw.decel_mps2`` for ``ebw.hold_s``, or at once when the brake flag comes
with ``ebw.flag_decel_mps2``; it ends when the deceleration eases below
``ebw.release_mps2`` or the vehicle stops. Vehicles *behind* the braking one,
within ``ebw.range_m`` along their path and ``ebw.lateral_m`` of it (same lane
by default), moving, are warned; vehicles ahead of it, beside it, oncoming or
farther away are not.
"""

from __future__ import annotations

from ingest_server.hazards.config import EbwConfig, PathConfig
from ingest_server.hazards.episodes import Finding
from ingest_server.hazards.paths import Relation
from ingest_server.hazards.tracks import Track
from wire.warning import Severity, WarningType

#: A range/range-rate TTC beyond this says nothing; it is left out of the warning.
_MAX_TTC_S = 10.0
#: ALERT when the follower is less than this time gap behind the braking vehicle.
_ALERT_HEADWAY_S = 1.0


def assess(follower: Track, braking: Track, rel: Relation, source_ns: int, cfg: EbwConfig,
           path: PathConfig) -> Finding | None:
    """``rel`` is the braking vehicle seen from the follower."""
    if not braking.braking_hard or follower.speed < cfg.follower_min_speed_mps:
        return None
    if not (0.0 < rel.along <= cfg.range_m and rel.heading_diff <= path.same_direction_deg):
        return None
    if abs(rel.lateral) > cfg.lateral_m:
        return None
    gap = rel.along - 0.5 * (follower.length + braking.length)
    closing = rel.ego_speed - rel.target_speed_along
    ttc = gap / closing if closing > 0.1 and gap > 0 else None
    if ttc is not None and ttc > _MAX_TTC_S:
        ttc = None
    return Finding(
        WarningType.EBW, follower.agent, (braking.agent,),
        Severity.ALERT if gap < _ALERT_HEADWAY_S * rel.ego_speed else Severity.WARNING,
        rel.target_lat, rel.target_lon, ttc_s=ttc, source_ns=source_ns,
    )
