"""Radar object lists over CAN into ``radar.objects`` records.

Two radars:

* **Toyota (Denso) tracks**, decoded with a DBC (opendbc's ``toyota_adas.dbc``):
  ``TRACK_A_i`` (0x210 + i) carries a track's distance, lateral offset,
  relative speed and flags, ``TRACK_B_i`` (0x220 + i) its score. A and B of
  one cycle carry the same ``COUNTER``; both end in a Toyota checksum. One
  :class:`RadarObject` is emitted per track per cycle when its B arrives (or
  alone, with a NaN probability, when the B never comes). ``LAT_DIST`` is
  positive to the right, so ``y = -LAT_DIST`` (the record's y points left).
  ``valid`` is ``VALID`` and a distance below 255 m (the radar parks empty
  slots at 327 m). ``REL_ACCEL`` has no published unit, so ``ax`` is NaN.
* **Continental ARS408** object list, from the bit layout in Continental's
  ARS408 technical documentation: ``Object_0_Status`` (0x60A: number of
  objects, measurement counter) opens a cycle, then ``Object_1_General``
  (0x60B: distances, relative speeds), ``Object_2_Quality`` (0x60C:
  probability of existence, measurement state) and ``Object_3_Extended``
  (0x60D: acceleration, class, length, width), one per object. Quality and
  extended messages are optional (the radar's configuration). A sensor id
  1-7 shifts every id by 0x10 per step. :func:`encode_ars408_objects` is the
  inverse, for simulators and tests.

All ARS408 signals are big-endian ("Motorola"); here each field is given as
(first bit counted from the most significant bit of byte 0, width, factor,
offset) and read from the frame as one 64-bit big-endian integer.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import cantools
from cantools.database.can import Database

from firmware_bridges.can_signals import toyota_checksum
from firmware_bridges.errors import ConfigError
from wire.schemas.can_frames import ERROR, EXTENDED, REMOTE, CanFrame
from wire.schemas.records import ObjectClass, RadarObject

log = logging.getLogger(__name__)

NAN = float("nan")


@dataclass(slots=True)
class ObjectListStats:
    frames: int = 0
    objects: int = 0
    cycles: int = 0
    bad_checksum: int = 0
    truncated: int = 0
    decode_errors: int = 0
    unknown_id: int = 0
    #: Toyota: an A without its B or a B without its A. ARS408: a message outside a cycle.
    unpaired: int = 0
    other_channel: int = 0
    not_data: int = 0


def _accept(stats: ObjectListStats, frame: CanFrame, channels: frozenset[str] | None) -> bool:
    stats.frames += 1
    if channels is not None and frame.channel not in channels:
        stats.other_channel += 1
        return False
    if frame.flags & (REMOTE | ERROR):
        stats.not_data += 1
        return False
    return True


# -- Toyota TRACK_A / TRACK_B ---------------------------------------------------------------

_TRACK_NAME = re.compile(r"TRACK_([AB])_(\d+)$")
_A_SIGNALS = ("LONG_DIST", "LAT_DIST", "REL_SPEED", "VALID", "NEW_TRACK")
#: Toyota radars park unused track slots beyond this distance.
TOYOTA_MAX_DIST_M = 255.0


class ToyotaTrackDecoder:
    """Toyota TRACK_A_i / TRACK_B_i frames -> one RadarObject per track and cycle.

    ``db`` is a cantools database holding the TRACK messages (for example
    ``load_dbc('toyota_adas.dbc')``). ``object_id`` is the track slot i.
    Frames failing the Toyota checksum are counted and dropped.
    """

    def __init__(
        self,
        db: Database,
        *,
        sensor: str = "toyota_radar",
        channels: Collection[str] | None = None,
        verify_checksum: bool = True,
        valid_only: bool = False,
    ) -> None:
        self.sensor = sensor
        self.stats = ObjectListStats()
        self._channels = frozenset(channels) if channels is not None else None
        self._verify = verify_checksum
        self._valid_only = valid_only
        # frame id -> (is_a, slot, message, has_checksum)
        self._ids: dict[int, tuple[bool, int, cantools.database.can.Message, bool]] = {}
        slots_a: set[int] = set()
        slots_b: set[int] = set()
        for m in db.messages:
            match = _TRACK_NAME.match(m.name)
            if match is None or m.is_extended_frame:
                continue
            is_a = match.group(1) == "A"
            slot = int(match.group(2))
            names = {s.name for s in m.signals}
            if is_a:
                missing = [s for s in _A_SIGNALS if s not in names]
                if missing:
                    raise ConfigError(f"{m.name} in the DBC lacks signals {', '.join(missing)}")
                slots_a.add(slot)
            else:
                slots_b.add(slot)
            self._ids[m.frame_id] = (is_a, slot, m, "CHECKSUM" in names)
        if not slots_a:
            raise ConfigError("the DBC has no TRACK_A_<n> messages (is it toyota_adas.dbc?)")
        self._has_b = slots_b
        # slot -> (timestamp_ns, decoded TRACK_A values)
        self._pending: dict[int, tuple[int, dict[str, float]]] = {}

    def decode(self, frame: CanFrame) -> list[RadarObject]:
        stats = self.stats
        if not _accept(stats, frame, self._channels):
            return []
        entry = self._ids.get(frame.arbitration_id) if not frame.flags & EXTENDED else None
        if entry is None:
            stats.unknown_id += 1
            return []
        is_a, slot, message, has_checksum = entry
        data = frame.data
        if len(data) < message.length:
            stats.truncated += 1
            return []
        if self._verify and has_checksum and toyota_checksum(frame.arbitration_id, data) != data[-1]:
            stats.bad_checksum += 1
            return []
        try:
            decoded = message.decode(data, decode_choices=False)
            values = {k: float(v) for k, v in decoded.items()}  # type: ignore[union-attr,arg-type]
        except (cantools.database.Error, ValueError, TypeError, IndexError) as exc:
            stats.decode_errors += 1
            log.debug("cannot decode %s: %s", message.name, exc)
            return []
        out: list[RadarObject] = []
        if is_a:
            stale = self._pending.pop(slot, None)
            if stale is not None:  # its TRACK_B never came
                stats.unpaired += 1
                self._add(out, slot, stale[0], stale[1], None)
            if slot in self._has_b:
                self._pending[slot] = (frame.timestamp_ns, values)
            else:
                self._add(out, slot, frame.timestamp_ns, values, None)
            return out
        pending = self._pending.pop(slot, None)
        if pending is None:
            stats.unpaired += 1
            return out
        a_ts, a = pending
        if "COUNTER" in a and "COUNTER" in values and a["COUNTER"] != values["COUNTER"]:
            stats.unpaired += 2  # A and B of different cycles
            self._add(out, slot, a_ts, a, None)
            return out
        self._add(out, slot, a_ts, a, values)
        return out

    def flush(self) -> list[RadarObject]:
        """Emit every track still waiting for its TRACK_B."""
        out: list[RadarObject] = []
        for slot, (ts, a) in sorted(self._pending.items()):
            self.stats.unpaired += 1
            self._add(out, slot, ts, a, None)
        self._pending.clear()
        return out

    def _add(
        self, out: list[RadarObject], slot: int, ts: int, a: dict[str, float], b: dict[str, float] | None
    ) -> None:
        dist = float(a["LONG_DIST"])
        valid = bool(a["VALID"]) and dist < TOYOTA_MAX_DIST_M
        if self._valid_only and not valid:
            return
        score = b.get("SCORE") if b is not None else None
        out.append(
            RadarObject(
                timestamp_ns=ts,
                sensor=self.sensor,
                object_id=slot,
                x=dist,
                y=0.0 - float(a["LAT_DIST"]),
                vx=float(a["REL_SPEED"]),
                vy=NAN,
                ax=NAN,
                length=NAN,
                width=NAN,
                object_class=int(ObjectClass.UNKNOWN),
                probability=float(score) / 100.0 if score is not None else NAN,
                is_new=bool(a["NEW_TRACK"]),
                valid=valid,
            )
        )
        self.stats.objects += 1


# -- Continental ARS408 ----------------------------------------------------------------------

ARS408_STATUS = 0x60A
ARS408_GENERAL = 0x60B
ARS408_QUALITY = 0x60C
ARS408_EXTENDED = 0x60D

# name -> (first bit from the MSB of byte 0, width, factor, offset)
_Field = tuple[int, int, float, float]
_STATUS_FIELDS: dict[str, _Field] = {
    "NofObjects": (0, 8, 1, 0),
    "MeasCounter": (8, 16, 1, 0),
    "InterfaceVersion": (24, 4, 1, 0),
}
_GENERAL_FIELDS: dict[str, _Field] = {
    "ID": (0, 8, 1, 0),
    "DistLong": (8, 13, 0.2, -500.0),
    "DistLat": (21, 11, 0.2, -204.6),
    "VrelLong": (32, 10, 0.25, -128.0),
    "VrelLat": (42, 9, 0.25, -64.0),
    "DynProp": (53, 3, 1, 0),
    "RCS": (56, 8, 0.5, -64.0),
}
_QUALITY_FIELDS: dict[str, _Field] = {
    "ID": (0, 8, 1, 0),
    "DistLong_rms": (8, 5, 1, 0),
    "DistLat_rms": (13, 5, 1, 0),
    "VrelLong_rms": (18, 5, 1, 0),
    "VrelLat_rms": (23, 5, 1, 0),
    "ArelLong_rms": (28, 5, 1, 0),
    "ArelLat_rms": (33, 5, 1, 0),
    "Orientation_rms": (38, 5, 1, 0),
    "ProbOfExist": (48, 3, 1, 0),
    "MeasState": (51, 3, 1, 0),
}
_EXTENDED_FIELDS: dict[str, _Field] = {
    "ID": (0, 8, 1, 0),
    "ArelLong": (8, 11, 0.01, -10.0),
    "ArelLat": (19, 9, 0.01, -2.5),
    "Class": (29, 3, 1, 0),
    "OrientationAngle": (32, 10, 0.4, -180.0),
    "Length": (48, 8, 0.2, 0.0),
    "Width": (56, 8, 0.2, 0.0),
}
_LENGTHS = {ARS408_STATUS: 4, ARS408_GENERAL: 8, ARS408_QUALITY: 7, ARS408_EXTENDED: 8}

#: Obj_ProbOfExist code -> the top of its band (0 invalid, <25%, <50%, <75%, <90%, <99%, <99.9%, <=100%).
PROB_OF_EXIST = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0)
#: Obj_MeasState codes.
MEAS_DELETED, MEAS_NEW, MEAS_MEASURED, MEAS_PREDICTED, MEAS_DELETED_MERGE, MEAS_NEW_MERGE = range(6)
_ARS_CLASS = (
    ObjectClass.POINT,
    ObjectClass.CAR,
    ObjectClass.TRUCK,
    ObjectClass.PEDESTRIAN,
    ObjectClass.MOTORCYCLE,
    ObjectClass.BICYCLE,
    ObjectClass.WIDE,
    ObjectClass.UNKNOWN,  # 7: reserved
)
_CLASS_TO_ARS = {int(c): i for i, c in enumerate(_ARS_CLASS)}
_CLASS_TO_ARS[int(ObjectClass.BUS)] = 2  # the ARS408 has no bus class: truck is nearest
_CLASS_TO_ARS[int(ObjectClass.ANIMAL)] = 7


def _unpack(data: bytes, fields: dict[str, _Field]) -> dict[str, float]:
    v = int.from_bytes(data[:8].ljust(8, b"\0"), "big")
    out: dict[str, float] = {}
    for name, (start, width, factor, offset) in fields.items():
        raw = (v >> (64 - start - width)) & ((1 << width) - 1)
        out[name] = raw * factor + offset if factor != 1 or offset else raw
    return out


def _pack(values: dict[str, float], fields: dict[str, _Field], length: int, what: str) -> bytes:
    v = 0
    for name, (start, width, factor, offset) in fields.items():
        value = values.get(name, offset)
        if not math.isfinite(value):
            raise ConfigError(f"ARS408 {what}: {name} is {value}")
        raw = round((value - offset) / factor)
        if not 0 <= raw < (1 << width):
            lo = offset
            hi = ((1 << width) - 1) * factor + offset
            raise ConfigError(f"ARS408 {what}: {name} = {value} is outside {lo:g}..{hi:g}")
        v |= raw << (64 - start - width)
    return v.to_bytes(8, "big")[:length]


class _Ars408Cycle:
    __slots__ = ("counter", "extended", "general", "n", "quality", "ts")

    def __init__(self, ts: int, n: int, counter: int) -> None:
        self.ts = ts
        self.n = n
        self.counter = counter
        self.general: dict[int, dict[str, float]] = {}
        self.quality: dict[int, dict[str, float]] = {}
        self.extended: dict[int, dict[str, float]] = {}


class Ars408Decoder:
    """Continental ARS408 object list frames -> one list of RadarObjects per measurement cycle.

    A cycle's objects are emitted as soon as all of them (with their quality
    and extended messages, if the radar sent those last cycle) are in, or else
    when the next 0x60A opens a new cycle, or on :meth:`flush`. Every object
    carries the cycle's 0x60A timestamp. Without quality messages ``valid`` is
    True and ``probability`` NaN; without extended ones ``ax``, ``length``,
    ``width`` are NaN and the class unknown.
    """

    def __init__(
        self,
        *,
        sensor: str = "ars408",
        sensor_id: int = 0,
        channels: Collection[str] | None = None,
    ) -> None:
        if not 0 <= sensor_id <= 7:
            raise ConfigError(f"ARS408 sensor id {sensor_id} is outside 0-7")
        self.sensor = sensor
        self.stats = ObjectListStats()
        self._channels = frozenset(channels) if channels is not None else None
        self._base = 0x10 * sensor_id
        self._cycle: _Ars408Cycle | None = None
        self._expect_quality: bool | None = None
        self._expect_extended: bool | None = None

    def decode(self, frame: CanFrame) -> list[RadarObject]:
        stats = self.stats
        if not _accept(stats, frame, self._channels):
            return []
        kind = frame.arbitration_id - self._base
        if frame.flags & EXTENDED or kind not in _LENGTHS:
            stats.unknown_id += 1
            return []
        data = frame.data
        if len(data) < _LENGTHS[kind]:
            stats.truncated += 1
            return []
        if kind == ARS408_STATUS:
            out = self._close() if self._cycle is not None else []
            st = _unpack(data, _STATUS_FIELDS)
            self._cycle = _Ars408Cycle(frame.timestamp_ns, int(st["NofObjects"]), int(st["MeasCounter"]))
            if self._cycle.n == 0:
                out.extend(self._close())
            return out
        cycle = self._cycle
        if cycle is None:
            stats.unpaired += 1
            return []
        if kind == ARS408_GENERAL:
            g = _unpack(data, _GENERAL_FIELDS)
            cycle.general[int(g["ID"])] = g
        elif kind == ARS408_QUALITY:
            q = _unpack(data, _QUALITY_FIELDS)
            cycle.quality[int(q["ID"])] = q
        else:
            e = _unpack(data, _EXTENDED_FIELDS)
            cycle.extended[int(e["ID"])] = e
        n = cycle.n
        if (
            len(cycle.general) >= n
            and self._expect_quality is not None
            and self._expect_extended is not None
            and (not self._expect_quality or len(cycle.quality) >= n)
            and (not self._expect_extended or len(cycle.extended) >= n)
        ):
            return self._close()
        return []

    def flush(self) -> list[RadarObject]:
        """Emit the open cycle as it stands (end of a capture)."""
        return self._close() if self._cycle is not None else []

    def _close(self) -> list[RadarObject]:
        cycle = self._cycle
        assert cycle is not None
        self._cycle = None
        self.stats.cycles += 1
        if cycle.n:
            self._expect_quality = bool(cycle.quality)
            self._expect_extended = bool(cycle.extended)
        out: list[RadarObject] = []
        for oid, g in cycle.general.items():
            q = cycle.quality.get(oid)
            e = cycle.extended.get(oid)
            if q is not None:
                state = int(q["MeasState"])
                valid = state not in (MEAS_DELETED, MEAS_DELETED_MERGE)
                is_new = state in (MEAS_NEW, MEAS_NEW_MERGE)
                prob = PROB_OF_EXIST[int(q["ProbOfExist"])]
            else:
                valid, is_new, prob = True, False, NAN
            out.append(
                RadarObject(
                    timestamp_ns=cycle.ts,
                    sensor=self.sensor,
                    object_id=oid,
                    x=g["DistLong"],
                    y=g["DistLat"],
                    vx=g["VrelLong"],
                    vy=g["VrelLat"],
                    ax=e["ArelLong"] if e is not None else NAN,
                    length=e["Length"] if e is not None else NAN,
                    width=e["Width"] if e is not None else NAN,
                    object_class=int(_ARS_CLASS[int(e["Class"])]) if e is not None else 0,
                    probability=prob,
                    is_new=is_new,
                    valid=valid,
                )
            )
        self.stats.objects += len(out)
        return out


def _prob_code(p: float) -> int:
    if math.isnan(p):
        return 7
    if p <= 0:
        return 0
    for code in range(1, 8):
        if p <= PROB_OF_EXIST[code] + 1e-9:
            return code
    return 7


def encode_ars408_objects(
    objects: Sequence[RadarObject],
    *,
    timestamp_ns: int | None = None,
    meas_counter: int = 0,
    channel: str = "can0",
    sensor_id: int = 0,
    quality: bool = True,
    extended: bool = True,
    interface_version: int = 1,
) -> list[CanFrame]:
    """One ARS408 measurement cycle as CAN frames: 0x60A, then 0x60B, 0x60C, 0x60D per object.

    Values are rounded to the radar's resolution; one outside its range (or
    a NaN position or speed) is a :class:`ConfigError`. NaN ``vy``, ``ax``,
    ``length``, ``width`` are sent as 0. ``valid`` False is sent as measurement
    state "deleted", ``is_new`` as "new"; the probability as the smallest
    band that holds it (NaN: the top band).
    """
    if not 0 <= sensor_id <= 7:
        raise ConfigError(f"ARS408 sensor id {sensor_id} is outside 0-7")
    if len(objects) > 255:
        raise ConfigError(f"ARS408 lists at most 255 objects, not {len(objects)}")
    ids = [o.object_id for o in objects]
    if len(set(ids)) != len(ids) or any(not 0 <= i <= 255 for i in ids):
        raise ConfigError("ARS408 object ids must be distinct and within 0-255")
    if timestamp_ns is None:
        timestamp_ns = objects[0].timestamp_ns if objects else 0
    base = 0x10 * sensor_id
    status = _pack(
        {"NofObjects": len(objects), "MeasCounter": meas_counter & 0xFFFF,
         "InterfaceVersion": interface_version},
        _STATUS_FIELDS, 4, "Object_0_Status",
    )
    frames = [CanFrame(timestamp_ns, channel, base + ARS408_STATUS, 0, 4, status)]
    generals: list[CanFrame] = []
    qualities: list[CanFrame] = []
    extendeds: list[CanFrame] = []
    for o in objects:
        what = f"object {o.object_id}"
        for name, value in (("x", o.x), ("y", o.y), ("vx", o.vx)):
            if math.isnan(value):
                raise ConfigError(f"ARS408 {what}: {name} is NaN")
        g = _pack(
            {"ID": o.object_id, "DistLong": o.x, "DistLat": o.y, "VrelLong": o.vx,
             "VrelLat": _or_zero(o.vy), "DynProp": 0, "RCS": 0.0},
            _GENERAL_FIELDS, 8, what,
        )
        generals.append(CanFrame(timestamp_ns, channel, base + ARS408_GENERAL, 0, 8, g))
        if quality:
            state = MEAS_DELETED if not o.valid else (MEAS_NEW if o.is_new else MEAS_MEASURED)
            q = _pack(
                {"ID": o.object_id, "ProbOfExist": _prob_code(o.probability), "MeasState": state},
                _QUALITY_FIELDS, 7, what,
            )
            qualities.append(CanFrame(timestamp_ns, channel, base + ARS408_QUALITY, 0, 7, q))
        if extended:
            e = _pack(
                {"ID": o.object_id, "ArelLong": _or_zero(o.ax), "ArelLat": 0.0,
                 "Class": _CLASS_TO_ARS.get(o.object_class, 7), "OrientationAngle": 0.0,
                 "Length": _or_zero(o.length), "Width": _or_zero(o.width)},
                _EXTENDED_FIELDS, 8, what,
            )
            extendeds.append(CanFrame(timestamp_ns, channel, base + ARS408_EXTENDED, 0, 8, e))
    return frames + generals + qualities + extendeds


def _or_zero(v: float) -> float:
    return 0.0 if math.isnan(v) else v


__all__ = [
    "ARS408_EXTENDED",
    "ARS408_GENERAL",
    "ARS408_QUALITY",
    "ARS408_STATUS",
    "PROB_OF_EXIST",
    "Ars408Decoder",
    "ObjectListStats",
    "ToyotaTrackDecoder",
    "encode_ars408_objects",
]
