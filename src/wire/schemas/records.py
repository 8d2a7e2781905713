"""Record schemas other than raw CAN: one frozen dataclass and one table schema each.

Units are SI unless the field name says otherwise; angles are degrees;
``timestamp_ns`` is capture time in UTC ns from the agent's clock. A float
field that a device did not report is NaN.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from wire.columns import TableSchema

# vehicle.signals/1 -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signal:
    """One decoded vehicle signal sample (long format: name, value)."""

    timestamp_ns: int
    name: str
    value: float


VEHICLE_SIGNALS = TableSchema("vehicle.signals", 1, Signal,
                              {"timestamp_ns": "i8", "name": "str", "value": "f8"})

# camera.jpeg/1 -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CameraFrame:
    timestamp_ns: int
    camera: str
    frame_index: int
    width: int
    height: int
    jpeg: bytes


CAMERA_JPEG = TableSchema(
    "camera.jpeg", 1, CameraFrame,
    {"timestamp_ns": "i8", "camera": "str", "frame_index": "i8", "width": "u2", "height": "u2",
     "jpeg": "bytes"},
)

# radar.points/1 (TI mmWave style detected points) ------------------------------------------


@dataclass(frozen=True, slots=True)
class RadarPoint:
    timestamp_ns: int
    sensor: str
    frame: int
    x: float
    y: float
    z: float
    doppler: float
    snr_db: float
    noise_db: float


RADAR_POINTS = TableSchema(
    "radar.points", 1, RadarPoint,
    {"timestamp_ns": "i8", "sensor": "str", "frame": "u4", "x": "f4", "y": "f4", "z": "f4",
     "doppler": "f4", "snr_db": "f4", "noise_db": "f4"},
)

# radar.objects/1 (tracked object lists: Toyota TRACK_A/B, ARS408 0x60B/0x60D) ---------------


class ObjectClass(enum.IntEnum):
    UNKNOWN = 0
    CAR = 1
    TRUCK = 2
    BUS = 3
    MOTORCYCLE = 4
    BICYCLE = 5
    PEDESTRIAN = 6
    ANIMAL = 7
    POINT = 8
    WIDE = 9


@dataclass(frozen=True, slots=True)
class RadarObject:
    """A radar track in the sensor frame: x forward, y left, metres and m/s."""

    timestamp_ns: int
    sensor: str
    object_id: int
    x: float
    y: float
    vx: float
    vy: float
    ax: float
    length: float
    width: float
    object_class: int
    probability: float
    is_new: bool
    valid: bool


RADAR_OBJECTS = TableSchema(
    "radar.objects", 1, RadarObject,
    {"timestamp_ns": "i8", "sensor": "str", "object_id": "u2", "x": "f4", "y": "f4", "vx": "f4",
     "vy": "f4", "ax": "f4", "length": "f4", "width": "f4", "object_class": "u1",
     "probability": "f4", "is_new": "bool", "valid": "bool"},
)

# gnss.fix/1 --------------------------------------------------------------------------------


class FixQuality(enum.IntEnum):
    """NMEA GGA fix quality."""

    NONE = 0
    GPS = 1
    DGPS = 2
    PPS = 3
    RTK_FIXED = 4
    RTK_FLOAT = 5
    DEAD_RECKONING = 6
    MANUAL = 7
    SIMULATION = 8


@dataclass(frozen=True, slots=True)
class GnssFix:
    """A position fix. ``time_utc_ns`` is the receiver's own UTC time of the fix (0 if unknown)."""

    timestamp_ns: int
    time_utc_ns: int
    lat: float
    lon: float
    alt_m: float
    speed_mps: float
    course_deg: float
    fix_quality: int
    satellites: int
    hdop: float
    h_acc_m: float = float("nan")
    v_acc_m: float = float("nan")


GNSS_FIX = TableSchema(
    "gnss.fix", 1, GnssFix,
    {"timestamp_ns": "i8", "time_utc_ns": "i8", "lat": "f8", "lon": "f8", "alt_m": "f4",
     "speed_mps": "f4", "course_deg": "f4", "fix_quality": "u1", "satellites": "u1",
     "hdop": "f4", "h_acc_m": "f4", "v_acc_m": "f4"},
    delta=("timestamp_ns", "time_utc_ns"),
)

# roadside.objects/1 (an RSU's perceived objects, WGS84) ------------------------------------


@dataclass(frozen=True, slots=True)
class RoadsideObject:
    timestamp_ns: int
    object_id: int
    object_class: int
    lat: float
    lon: float
    speed_mps: float
    heading_deg: float
    length_m: float
    width_m: float
    confidence: float


ROADSIDE_OBJECTS = TableSchema(
    "roadside.objects", 1, RoadsideObject,
    {"timestamp_ns": "i8", "object_id": "u4", "object_class": "u1", "lat": "f8", "lon": "f8",
     "speed_mps": "f4", "heading_deg": "f4", "length_m": "f4", "width_m": "f4",
     "confidence": "f4"},
)

# signal.phase/1 (SPaT-like) ----------------------------------------------------------------


class LightState(enum.IntEnum):
    UNKNOWN = 0
    DARK = 1
    RED = 2
    RED_YELLOW = 3
    GREEN = 4
    YELLOW = 5
    FLASHING_YELLOW = 6
    FLASHING_RED = 7


@dataclass(frozen=True, slots=True)
class SignalPhase:
    """One signal group's state; ``min_end_ns``/``max_end_ns`` are UTC ns (0 if unknown)."""

    timestamp_ns: int
    intersection: str
    signal_group: int
    state: int
    min_end_ns: int
    max_end_ns: int


SIGNAL_PHASE = TableSchema(
    "signal.phase", 1, SignalPhase,
    {"timestamp_ns": "i8", "intersection": "str", "signal_group": "u2", "state": "u1",
     "min_end_ns": "i8", "max_end_ns": "i8"},
)

# event/1 -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened at the edge: a trigger, a manual tag, a takeover, a fault."""

    timestamp_ns: int
    kind: str
    source: str
    attrs: dict[str, Any] = field(default_factory=dict)


EVENT = TableSchema("event", 1, Event,
                    {"timestamp_ns": "i8", "kind": "str", "source": "str", "attrs": "obj"})

# health/1 ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Health:
    """An agent's health snapshot (published retained on its health topic)."""

    timestamp_ns: int
    online: bool
    uptime_s: float
    sources: dict[str, Any] = field(default_factory=dict)
    spool: dict[str, Any] = field(default_factory=dict)
    uplink: dict[str, Any] = field(default_factory=dict)
    clock: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)


HEALTH = TableSchema(
    "health", 1, Health,
    {"timestamp_ns": "i8", "online": "bool", "uptime_s": "f8", "sources": "obj", "spool": "obj",
     "uplink": "obj", "clock": "obj", "system": "obj"},
)
