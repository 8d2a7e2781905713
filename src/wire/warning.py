"""``warning/1``: a hazard warning sent to one vehicle on ``cvis/v1/{agent}/warning``.

A msgpack map with short keys, decoded within tight limits (a warning is a
few hundred bytes; anything much larger is garbage):

=========  =====================================================================
``v``      format version (1)
``type``   application: ``FCW``, ``EBW``, ``ICW`` or ``VRUCW`` (T/CSAE 53 Day-1 names)
``sev``    :class:`Severity` (1 advisory, 2 warning, 3 alert)
``st``     :class:`Status`: ``new`` (first of an episode), ``update``, ``end``
``tgt``    the warned agent (equals the topic's agent)
``cp``     counterpart ids: agent ids, or ``rsu#object`` for an RSU-seen object
``ttc``    time to collision in s (FCW, EBW, VRUCW; own arrival time for ICW) or nil
``dt``     ICW: difference of the two arrival times at the conflict point, s, or nil
``lat``    hazard position (the counterpart or the conflict point), WGS84 degrees
``lon``
``t``      issue time, server clock, UTC ns
``exp``    expiry, server clock, UTC ns: ignore the warning after this
``src``    capture time of the state sample that triggered it, server clock, UTC ns
``ep``     episode id (unique per issuing worker run); ``upd`` the update count (0 first)
=========  =====================================================================

Unknown extra keys are ignored, so a later minor version may add fields.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from wire import codec
from wire.errors import DecodeError, LimitError, SchemaError, TopicError, ValidationError
from wire.limits import KiB, Limits
from wire.topics import check_agent

WARNING_VERSION = 1
MAX_COUNTERPARTS = 16
MAX_COUNTERPART_CHARS = 160
#: A warning is a few hundred bytes; these bound what a peer can make us decode.
WARNING_LIMITS = Limits(
    max_encoded_bytes=4 * KiB,
    max_decoded_bytes=4 * KiB,
    max_records=MAX_COUNTERPARTS,
    max_field_bytes=256,
    max_string_chars=MAX_COUNTERPART_CHARS,
    max_map_entries=32,
)
_INT63 = 2**63


class WarningType(enum.Enum):
    FCW = "FCW"  #: forward collision warning
    EBW = "EBW"  #: emergency brake warning (a vehicle ahead brakes hard)
    ICW = "ICW"  #: intersection collision warning
    VRUCW = "VRUCW"  #: vulnerable road user collision warning


class Severity(enum.IntEnum):
    ADVISORY = 1
    WARNING = 2
    ALERT = 3  #: imminent: act now


class Status(enum.Enum):
    NEW = "new"
    UPDATE = "update"
    END = "end"


@dataclass(frozen=True, slots=True)
class HazardWarning:
    """One message of a warning episode for ``target``."""

    type: WarningType
    severity: Severity
    target: str
    counterparts: tuple[str, ...]
    lat: float
    lon: float
    issued_ns: int
    expires_ns: int
    episode: int
    update: int = 0
    status: Status = Status.NEW
    ttc_s: float | None = None
    time_diff_s: float | None = None
    source_ns: int = 0

    def __post_init__(self) -> None:
        try:
            check_agent(self.target)
        except TopicError as exc:
            raise ValidationError(f"warning target: {exc}") from exc
        if not 1 <= len(self.counterparts) <= MAX_COUNTERPARTS:
            raise ValidationError(f"warning needs 1-{MAX_COUNTERPARTS} counterparts")
        for cp in self.counterparts:
            if not isinstance(cp, str) or not 0 < len(cp) <= MAX_COUNTERPART_CHARS:
                raise ValidationError(f"warning counterpart {cp!r} is not a short id")
        if not (math.isfinite(self.lat) and -90 <= self.lat <= 90):
            raise ValidationError(f"warning latitude {self.lat} out of range")
        if not (math.isfinite(self.lon) and -180 <= self.lon <= 180):
            raise ValidationError(f"warning longitude {self.lon} out of range")
        for name in ("ttc_s", "time_diff_s"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValidationError(f"warning {name} must be a finite non-negative number")
        for name in ("issued_ns", "expires_ns", "source_ns"):
            if not 0 <= getattr(self, name) < _INT63:
                raise ValidationError(f"warning {name} out of range")
        if self.expires_ns < self.issued_ns:
            raise ValidationError("warning expires before it is issued")
        if not 0 <= self.episode < _INT63 or not 0 <= self.update < 2**32:
            raise ValidationError("warning episode id or update count out of range")

    def expired(self, now_ns: int) -> bool:
        return now_ns > self.expires_ns

    def encode(self) -> bytes:
        return codec.pack(
            {
                "v": WARNING_VERSION,
                "type": self.type.value,
                "sev": int(self.severity),
                "st": self.status.value,
                "tgt": self.target,
                "cp": list(self.counterparts),
                "ttc": self.ttc_s,
                "dt": self.time_diff_s,
                "lat": self.lat,
                "lon": self.lon,
                "t": self.issued_ns,
                "exp": self.expires_ns,
                "src": self.source_ns,
                "ep": self.episode,
                "upd": self.update,
            }
        )

    @classmethod
    def decode(cls, data: bytes, limits: Limits = WARNING_LIMITS) -> HazardWarning:
        """Parse a warning; malformed or oversized input is a :class:`DecodeError`."""
        if len(data) > limits.max_encoded_bytes:
            raise LimitError(f"warning of {len(data)} bytes exceeds {limits.max_encoded_bytes}")
        obj = codec.unpack(data, limits)
        if not isinstance(obj, dict):
            raise DecodeError("warning is not a map")
        v = obj.get("v")
        if not isinstance(v, int) or isinstance(v, bool):
            raise DecodeError("warning has no version")
        if v != WARNING_VERSION:
            raise SchemaError(f"unsupported warning version {v}")
        try:
            wtype = WarningType(_get(obj, "type", str))
            severity = Severity(_get(obj, "sev", int))
            status = Status(_get(obj, "st", str))
        except ValueError as exc:
            raise DecodeError(f"warning: {exc}") from exc
        cps = _get(obj, "cp", list)
        if not all(isinstance(c, str) for c in cps):
            raise DecodeError("warning: counterparts must be strings")
        try:
            return cls(
                type=wtype,
                severity=severity,
                target=_get(obj, "tgt", str),
                counterparts=tuple(cps),
                lat=_number(obj, "lat"),
                lon=_number(obj, "lon"),
                issued_ns=_get(obj, "t", int),
                expires_ns=_get(obj, "exp", int),
                episode=_get(obj, "ep", int),
                update=_get(obj, "upd", int),
                status=status,
                ttc_s=_optional_number(obj, "ttc"),
                time_diff_s=_optional_number(obj, "dt"),
                source_ns=_get(obj, "src", int),
            )
        except ValidationError as exc:
            raise DecodeError(f"warning: {exc}") from exc


def _get(obj: dict[str, Any], key: str, typ: type) -> Any:
    if key not in obj:
        raise DecodeError(f"warning lacks {key!r}")
    val = obj[key]
    if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        raise DecodeError(f"warning field {key!r} must be {typ.__name__}, got {type(val).__name__}")
    return val


def _number(obj: dict[str, Any], key: str) -> float:
    val = obj.get(key)
    if isinstance(val, bool) or not isinstance(val, int | float):
        raise DecodeError(f"warning field {key!r} must be a number")
    return float(val)


def _optional_number(obj: dict[str, Any], key: str) -> float | None:
    return None if obj.get(key) is None else _number(obj, key)
