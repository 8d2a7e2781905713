"""``roadside.objects/1`` on the live plane: one RSU's current object list.

Published by a roadside unit on ``cvis/v1/live/{tile}/{agent}`` next to the
vehicles' 47-byte ``state/1`` messages, so a hazard worker must tell them
apart from the first bytes. Both start with ``(version, kind)``: ``state/1``
is ``01 01``, an object list is ``01 02`` followed by a msgpack map:

=======  ===================================================================
``t``    time of the list, agent clock, UTC ns
``off``  agent clock offset to the server, microseconds (server = agent + off)
``tq``   :class:`TimeQuality` of the agent clock
``seq``  list sequence number (wraps at 2**32)
``o``    the objects as a ``roadside.objects/1`` columnar table
=======  ===================================================================

Decoding is bounded by :data:`OBJECT_LIST_LIMITS` and validates every
object (finite WGS84 position, sane speed and heading).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from wire import codec
from wire.envelope import TimeQuality
from wire.errors import DecodeError, LimitError, SchemaError, ValidationError
from wire.limits import KiB, Limits
from wire.schemas import ROADSIDE_OBJECTS, RoadsideObject
from wire.state import KIND_STATE, STATE_SIZE, STATE_VERSION

LIVE_VERSION = 1
KIND_OBJECTS = 2
HEADER = bytes((LIVE_VERSION, KIND_OBJECTS))
MAX_OBJECTS = 512
#: Bounds for one object list (512 objects take about 20 KiB).
OBJECT_LIST_LIMITS = Limits(
    max_encoded_bytes=64 * KiB,
    max_decoded_bytes=64 * KiB,
    max_records=MAX_OBJECTS,
    max_field_bytes=32 * KiB,
    max_string_chars=64,
    max_map_entries=32,
)


class LiveKind(enum.Enum):
    STATE = "state/1"
    OBJECTS = "roadside.objects/1"


def live_kind(data: bytes) -> LiveKind:
    """Which live-plane message ``data`` is, from its first two bytes (and size for states)."""
    if len(data) >= 2 and data[0] == LIVE_VERSION:
        if data[1] == KIND_STATE and len(data) == STATE_SIZE and STATE_VERSION == LIVE_VERSION:
            return LiveKind.STATE
        if data[1] == KIND_OBJECTS:
            return LiveKind.OBJECTS
    head = data[:2].hex() or "nothing"
    raise DecodeError(f"not a live-plane message: starts with {head}, {len(data)} bytes")


@dataclass(frozen=True, slots=True)
class ObjectList:
    """An RSU's perceived objects at ``timestamp_ns`` (agent clock)."""

    timestamp_ns: int
    objects: tuple[RoadsideObject, ...]
    seq: int = 0
    clock_offset_us: int = 0
    time_quality: TimeQuality = TimeQuality.FREE_RUNNING

    def __post_init__(self) -> None:
        if len(self.objects) > MAX_OBJECTS:
            raise ValidationError(f"object list holds {len(self.objects)} objects (max {MAX_OBJECTS})")
        if not 0 <= self.timestamp_ns < 2**63:
            raise ValidationError("object list time out of range")
        if not -(2**62) <= self.clock_offset_us < 2**62:
            raise ValidationError("object list clock offset out of range")
        for o in self.objects:
            _check_object(o)

    def encode(self) -> bytes:
        table = ROADSIDE_OBJECTS.table(list(self.objects))
        return HEADER + codec.pack(
            {
                "t": self.timestamp_ns,
                "off": self.clock_offset_us,
                "tq": int(self.time_quality),
                "seq": self.seq & 0xFFFFFFFF,
                "o": ROADSIDE_OBJECTS.encode(table),
            }
        )

    @classmethod
    def decode(cls, data: bytes, limits: Limits = OBJECT_LIST_LIMITS) -> ObjectList:
        if len(data) > limits.max_encoded_bytes:
            raise LimitError(f"object list of {len(data)} bytes exceeds {limits.max_encoded_bytes}")
        if data[:2] != HEADER:
            raise SchemaError(f"not a roadside.objects/1 live message (starts with {data[:2].hex()})")
        obj = codec.unpack(data[2:], limits)
        if not isinstance(obj, dict):
            raise DecodeError("object list is not a map")
        for key in ("t", "off", "tq", "seq"):
            val = obj.get(key)
            if not isinstance(val, int) or isinstance(val, bool):
                raise DecodeError(f"object list field {key!r} must be an integer")
        table = ROADSIDE_OBJECTS.decode(obj.get("o"), limits)
        tq = obj["tq"]
        try:
            return cls(
                timestamp_ns=obj["t"],
                objects=tuple(table.records()),
                seq=obj["seq"],
                clock_offset_us=obj["off"],
                time_quality=TimeQuality(tq) if tq in TimeQuality._value2member_map_ else TimeQuality.UNKNOWN,
            )
        except ValidationError as exc:
            raise DecodeError(f"object list: {exc}") from exc


def _check_object(o: RoadsideObject) -> None:
    if not (math.isfinite(o.lat) and -90 <= o.lat <= 90 and math.isfinite(o.lon) and -180 <= o.lon <= 180):
        raise ValidationError(f"object {o.object_id}: position ({o.lat}, {o.lon}) is not WGS84")
    if not (math.isfinite(o.speed_mps) and 0 <= o.speed_mps <= 100):
        raise ValidationError(f"object {o.object_id}: speed {o.speed_mps} m/s out of range 0-100")
    if not math.isfinite(o.heading_deg):
        raise ValidationError(f"object {o.object_id}: heading is not finite")
    for name in ("length_m", "width_m", "confidence"):
        v = getattr(o, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValidationError(f"object {o.object_id}: {name} must be finite and non-negative")
