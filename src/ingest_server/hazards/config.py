"""Hazard configuration: one typed object, loaded from TOML, validated at start-up.

Defaults are chosen to meet the NHTSA FCW confirmation test (a warning at
TTC >= 2.1 s for a stopped lead approached at 20.1 m/s, >= 2.4 s for a lead
braking at 0.3 g from 20.1 m/s with a 30 m gap, >= 2.0 s for a lead at 8.9 m/s
approached at 20.1 m/s; TTC as range / range-rate) with margin for the 10 Hz
state rate, and to stay silent in ordinary traffic.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ingest_server.hazards.errors import HazardConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FreshnessConfig(_Section):
    """Which live messages are used at all (times are server clock)."""

    max_age_ms: float = Field(default=500.0, gt=0, description="drop states older than this on arrival")
    max_future_ms: float = Field(default=250.0, ge=0, description="drop states stamped this far ahead")
    max_speed_mps: float = Field(default=90.0, gt=0, description="a jump implying more is impossible")
    jump_slack_m: float = Field(default=5.0, ge=0, description="position noise allowed on top of it")
    reset_after_jumps: int = Field(default=5, ge=1, description="consecutive jumps that reset a track")
    track_timeout_s: float = Field(default=3.0, gt=0, description="forget a track silent this long")


class PathConfig(_Section):
    """Who is in whose lane: the ego's predicted arc and the target's path history."""

    lane_half_width_m: float = Field(default=1.75, gt=0, description="max lateral offset to be in lane")
    same_direction_deg: float = Field(default=30.0, gt=0, lt=90)
    max_curvature: float = Field(default=0.1, gt=0, description="1/m; clamps noisy yaw rates")
    trail_min_turn_deg: float = Field(default=5.0, ge=0, description="trail turn that makes it a curve")
    trail_max_lateral_m: float = Field(default=15.0, gt=0, description="consult trails this far off the arc")
    trail_spacing_m: float = Field(default=3.0, gt=0)
    trail_max_points: int = Field(default=80, ge=2)
    trail_max_age_s: float = Field(default=12.0, gt=0)


class FcwConfig(_Section):
    enabled: bool = True
    range_m: float = Field(default=150.0, gt=0)
    ttc_s: float = Field(default=2.7, gt=0, description="warn at range/range-rate TTC at or below this")
    ttc_accel_s: float = Field(default=2.7, gt=0, description="warn at TTC with accelerations at or below")
    alert_ttc_s: float = Field(default=1.5, gt=0, description="severity ALERT below this")
    clear_margin_s: float = Field(default=0.5, ge=0, description="hysteresis: an episode lasts to ttc+this")
    min_speed_mps: float = Field(default=4.0, ge=0, description="ego slower than this is never warned")
    min_closing_mps: float = Field(default=1.0, ge=0)
    horizon_s: float = Field(default=10.0, gt=0, description="TTC with accelerations looks this far")


class EbwConfig(_Section):
    enabled: bool = True
    decel_mps2: float = Field(default=4.0, gt=0, description="hard braking: deceleration beyond this...")
    hold_s: float = Field(default=0.2, ge=0, description="...held this long")
    flag_decel_mps2: float = Field(default=3.0, gt=0, description="with the brake flag, this suffices")
    release_mps2: float = Field(default=2.0, gt=0, description="braking ends below this deceleration")
    min_speed_mps: float = Field(default=5.0, ge=0, description="braking must start above this speed")
    range_m: float = Field(default=150.0, gt=0, description="vehicles behind within this are warned")
    lateral_m: float = Field(default=1.75, gt=0, description="1.75 = same lane; 5.5 = adjacent lanes too")
    follower_min_speed_mps: float = Field(default=3.0, ge=0)


class IcwConfig(_Section):
    enabled: bool = True
    min_angle_deg: float = Field(default=30.0, gt=0, lt=90, description="crossing: heading difference")
    max_angle_deg: float = Field(default=150.0, gt=90, lt=180)
    time_diff_s: float = Field(default=1.5, gt=0, description="arrival times differ by less than this")
    horizon_s: float = Field(default=4.0, gt=0, description="both arrive within this")
    alert_s: float = Field(default=2.0, gt=0)
    min_speed_mps: float = Field(default=1.0, ge=0)
    max_elevation_diff_m: float = Field(default=4.0, gt=0, description="more is an overpass")
    range_m: float = Field(default=150.0, gt=0)


class VruConfig(_Section):
    enabled: bool = True
    horizon_s: float = Field(default=4.0, gt=0)
    alert_s: float = Field(default=2.0, gt=0)
    margin_m: float = Field(default=1.0, ge=0, description="added to half the vehicle's width")
    min_speed_mps: float = Field(default=2.0, ge=0)
    min_confidence: float = Field(default=0.3, ge=0, le=1)
    range_m: float = Field(default=120.0, gt=0)
    classes: tuple[int, ...] = Field(default=(5, 6), description="ObjectClass values: bicycle, pedestrian")


class EpisodeConfig(_Section):
    """One warning per episode, updates while it lasts, a refractory period after it."""

    expiry_s: float = Field(default=1.0, gt=0, description="a warning is void this long after issue")
    update_interval_s: float = Field(default=0.5, gt=0, description="re-send while active (< expiry)")
    ttc_change_s: float = Field(default=0.5, gt=0, description="or when the TTC moved this much")
    clear_after_s: float = Field(default=0.35, gt=0, description="episode ends unconfirmed this long")
    refractory_s: float = Field(default=2.0, ge=0, description="no new episode of the same pair this long")
    max_episodes: int = Field(default=100_000, ge=1, description="bound on open episodes")

    @model_validator(mode="after")
    def _resend_before_expiry(self) -> EpisodeConfig:
        if self.update_interval_s >= self.expiry_s:
            raise ValueError("update_interval_s must be shorter than expiry_s, or an active "
                             "warning would expire between updates")
        return self


class HazardConfig(_Section):
    freshness: FreshnessConfig = Field(default_factory=FreshnessConfig)
    path: PathConfig = Field(default_factory=PathConfig)
    fcw: FcwConfig = Field(default_factory=FcwConfig)
    ebw: EbwConfig = Field(default_factory=EbwConfig)
    icw: IcwConfig = Field(default_factory=IcwConfig)
    vru: VruConfig = Field(default_factory=VruConfig)
    episodes: EpisodeConfig = Field(default_factory=EpisodeConfig)
    max_tracks: int = Field(default=50_000, ge=1, description="bound on vehicles and objects tracked")

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> HazardConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            errs = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise HazardConfigError(f"hazard config: {errs}") from exc

    @classmethod
    def loads(cls, text: str) -> HazardConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise HazardConfigError(f"hazard config is not valid TOML: {exc}") from exc
        return cls.from_mapping(data.get("hazards", data))

    @classmethod
    def load_file(cls, path: Path, max_bytes: int = 1 << 20) -> HazardConfig:
        try:
            if path.stat().st_size > max_bytes:
                raise HazardConfigError(f"{path}: larger than {max_bytes} bytes")
            return cls.loads(path.read_text())
        except OSError as exc:
            raise HazardConfigError(f"cannot read hazard config {path}: {exc}") from exc
