"""``state/1``: the live plane's kinematic state, BSM-like, in a fixed 47-byte struct.

Units follow the BSM / CSAE practice: position 1e-7 degree, elevation 0.1 m,
speed 0.02 m/s, heading 0.0125 degree, acceleration 0.01 m/s², yaw rate
0.01 degree/s, steering 0.1 degree, size 1 cm. Values are rounded to those
units on encode; out-of-range values are a :class:`ValidationError`.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass

from wire.envelope import TimeQuality
from wire.errors import DecodeError, SchemaError, ValidationError

STATE_VERSION = 1
KIND_STATE = 1
_FMT = struct.Struct("<BBHqiBiihHHhhhhBHHBH")
STATE_SIZE = _FMT.size


class Brake(enum.IntFlag):
    NONE = 0
    APPLIED = 1
    ABS_ACTIVE = 2
    TRACTION_CONTROL = 4
    STABILITY_CONTROL = 8
    HAZARD_LIGHTS = 16
    HARD_BRAKING = 32


class VehicleClass(enum.IntEnum):
    UNKNOWN = 0
    PASSENGER_CAR = 1
    TRUCK = 2
    BUS = 3
    MOTORCYCLE = 4
    EMERGENCY = 5
    ROADSIDE_UNIT = 10


@dataclass(frozen=True, slots=True)
class State:
    """A vehicle's kinematic state at ``timestamp_ns`` (agent clock, UTC ns)."""

    timestamp_ns: int
    lat: float
    lon: float
    speed_mps: float
    heading_deg: float
    seq: int = 0
    clock_offset_us: int = 0
    time_quality: TimeQuality = TimeQuality.FREE_RUNNING
    elevation_m: float = 0.0
    accel_mps2: float = 0.0
    lat_accel_mps2: float = 0.0
    yaw_rate_dps: float = 0.0
    steering_deg: float = 0.0
    brake: Brake = Brake.NONE
    length_m: float = 4.5
    width_m: float = 1.8
    vehicle_class: VehicleClass = VehicleClass.PASSENGER_CAR
    pos_accuracy_m: float = float("nan")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lat) and -90 <= self.lat <= 90):
            raise ValidationError(f"state: latitude {self.lat} out of range")
        if not (math.isfinite(self.lon) and -180 <= self.lon <= 180):
            raise ValidationError(f"state: longitude {self.lon} out of range")
        if not (math.isfinite(self.speed_mps) and 0 <= self.speed_mps <= 655):
            raise ValidationError(f"state: speed {self.speed_mps} m/s out of range 0-655")
        if not math.isfinite(self.heading_deg):
            raise ValidationError("state: heading is not finite")

    def encode(self) -> bytes:
        acc = self.pos_accuracy_m
        try:
            return _FMT.pack(
                STATE_VERSION,
                KIND_STATE,
                self.seq & 0xFFFF,
                self.timestamp_ns,
                self.clock_offset_us,
                int(self.time_quality),
                round(self.lat * 1e7),
                round(self.lon * 1e7),
                _clamp(round(self.elevation_m * 10), -32768, 32767),
                round(self.speed_mps / 0.02),
                round((self.heading_deg % 360.0) / 0.0125) % 28800,
                _clamp(round(self.accel_mps2 * 100), -32768, 32767),
                _clamp(round(self.lat_accel_mps2 * 100), -32768, 32767),
                _clamp(round(self.yaw_rate_dps * 100), -32768, 32767),
                _clamp(round(self.steering_deg * 10), -32768, 32767),
                int(self.brake) & 0xFF,
                _clamp(round(self.length_m * 100), 0, 65535),
                _clamp(round(self.width_m * 100), 0, 65535),
                int(self.vehicle_class) & 0xFF,
                65535 if math.isnan(acc) else _clamp(round(acc * 100), 0, 65534),
            )
        except struct.error as exc:
            raise ValidationError(f"state: value out of range: {exc}") from exc

    @classmethod
    def decode(cls, data: bytes) -> State:
        if len(data) != STATE_SIZE:
            raise DecodeError(f"state/1 message must be {STATE_SIZE} bytes, got {len(data)}")
        (ver, kind, seq, ts, off_us, tq, lat, lon, elev, speed, heading, acc, lacc, yaw, steer,
         brake, length, width, vclass, pacc) = _FMT.unpack(data)
        if ver != STATE_VERSION or kind != KIND_STATE:
            raise SchemaError(f"not a state/1 message (version {ver}, kind {kind})")
        try:
            return cls(
                timestamp_ns=ts,
                lat=lat / 1e7,
                lon=lon / 1e7,
                speed_mps=speed * 0.02,
                heading_deg=heading * 0.0125,
                seq=seq,
                clock_offset_us=off_us,
                time_quality=TimeQuality(tq) if tq in TimeQuality._value2member_map_ else TimeQuality.UNKNOWN,
                elevation_m=elev / 10,
                accel_mps2=acc / 100,
                lat_accel_mps2=lacc / 100,
                yaw_rate_dps=yaw / 100,
                steering_deg=steer / 10,
                brake=Brake(brake & 0x3F),
                length_m=length / 100,
                width_m=width / 100,
                vehicle_class=(VehicleClass(vclass) if vclass in VehicleClass._value2member_map_
                               else VehicleClass.UNKNOWN),
                pos_accuracy_m=float("nan") if pacc == 65535 else pacc / 100,
            )
        except ValidationError as exc:
            raise DecodeError(f"state/1: {exc}") from exc


def _clamp(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else hi if v > hi else v
