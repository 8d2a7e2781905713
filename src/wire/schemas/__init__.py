"""Every record schema of the wire contract, by ``name/version``."""

from __future__ import annotations

from wire.columns import TableSchema
from wire.errors import SchemaError
from wire.schemas.can_frames import CAN_FRAMES, CanFrame
from wire.schemas.records import (
    CAMERA_JPEG,
    EVENT,
    GNSS_FIX,
    HEALTH,
    RADAR_OBJECTS,
    RADAR_POINTS,
    ROADSIDE_OBJECTS,
    SIGNAL_PHASE,
    VEHICLE_SIGNALS,
    CameraFrame,
    Event,
    FixQuality,
    GnssFix,
    Health,
    LightState,
    ObjectClass,
    RadarObject,
    RadarPoint,
    RoadsideObject,
    Signal,
    SignalPhase,
)

SCHEMAS: dict[str, TableSchema] = {
    s.key: s
    for s in (CAN_FRAMES, VEHICLE_SIGNALS, CAMERA_JPEG, RADAR_POINTS, RADAR_OBJECTS, GNSS_FIX,
              ROADSIDE_OBJECTS, SIGNAL_PHASE, EVENT, HEALTH)
}


def get_schema(name: str, version: int) -> TableSchema:
    """The schema ``name/version``; an unknown one is a :class:`SchemaError`."""
    try:
        return SCHEMAS[f"{name}/{version}"]
    except KeyError:
        known = ", ".join(sorted(SCHEMAS))
        raise SchemaError(f"unknown schema {name}/{version} (known: {known})") from None


__all__ = [
    "CAMERA_JPEG", "CAN_FRAMES", "EVENT", "GNSS_FIX", "HEALTH", "RADAR_OBJECTS", "RADAR_POINTS",
    "ROADSIDE_OBJECTS", "SCHEMAS", "SIGNAL_PHASE", "VEHICLE_SIGNALS", "CameraFrame", "CanFrame",
    "Event", "FixQuality", "GnssFix", "Health", "LightState", "ObjectClass", "RadarObject",
    "RadarPoint", "RoadsideObject", "Signal", "SignalPhase", "get_schema",
]
