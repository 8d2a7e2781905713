"""Small control messages of the archival plane: acks and NTP-style time sync.

``Ack`` travels server -> agent on ``cvis/v1/{agent}/ack`` (QoS 1) and lists,
per stream, inclusive seq ranges that are durably stored (archive flushed and
index committed). Acks are selective: several ingest workers each ack what
they stored, so ranges need not be contiguous.

Time sync uses four timestamps, as NTP does: the agent sends ``t1`` on
``time/request``, the server stamps receive ``t2`` and send ``t3`` on
``time/response``, the agent stamps ``t4`` on receipt. Then
``offset = ((t2 - t1) + (t3 - t4)) / 2`` (server = agent + offset) and
``delay = (t4 - t1) - (t3 - t2)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire import codec
from wire.errors import DecodeError, SchemaError, TopicError, ValidationError
from wire.limits import DEFAULT_LIMITS, Limits
from wire.topics import check_stream

CONTROL_VERSION = 1
MAX_ACK_RANGES = 4096


def _check_version(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DecodeError(f"{what} is not a map")
    v = obj.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise DecodeError(f"{what} has no version")
    if v != CONTROL_VERSION:
        raise SchemaError(f"unsupported {what} version {v}")
    return obj


def _int(obj: dict[str, Any], key: str, what: str) -> int:
    val = obj.get(key)
    if not isinstance(val, int) or isinstance(val, bool):
        raise DecodeError(f"{what}: {key!r} must be an integer")
    return val


@dataclass(frozen=True, slots=True)
class Ack:
    """Durably stored seq ranges (inclusive) per stream, as seen by one ingest worker."""

    ranges: dict[str, tuple[tuple[int, int], ...]]
    server_time_ns: int = 0

    def __post_init__(self) -> None:
        total = 0
        for stream, rs in self.ranges.items():
            try:
                check_stream(stream)
            except TopicError as exc:
                raise ValidationError(str(exc)) from exc
            for lo, hi in rs:
                if not 0 <= lo <= hi < 2**63:
                    raise ValidationError(f"ack range [{lo}, {hi}] for {stream!r} is invalid")
            total += len(rs)
        if total > MAX_ACK_RANGES:
            raise ValidationError(f"ack holds {total} ranges (max {MAX_ACK_RANGES})")

    def covers(self, stream: str, seq: int) -> bool:
        return any(lo <= seq <= hi for lo, hi in self.ranges.get(stream, ()))

    def encode(self) -> bytes:
        return codec.pack(
            {
                "v": CONTROL_VERSION,
                "t": self.server_time_ns,
                "acks": {s: [list(r) for r in rs] for s, rs in self.ranges.items()},
            }
        )

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> Ack:
        obj = _check_version(codec.unpack(data, limits), "ack")
        acks = obj.get("acks")
        if not isinstance(acks, dict):
            raise DecodeError("ack: 'acks' must be a map")
        ranges: dict[str, tuple[tuple[int, int], ...]] = {}
        for stream, rs in acks.items():
            if not isinstance(rs, list) or any(
                not isinstance(r, list) or len(r) != 2 or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in r)
                for r in rs
            ):
                raise DecodeError(f"ack: ranges for {stream!r} must be [lo, hi] integer pairs")
            ranges[stream] = tuple((r[0], r[1]) for r in rs)
        try:
            return cls(ranges, _int(obj, "t", "ack"))
        except ValidationError as exc:
            raise DecodeError(f"ack: {exc}") from exc


def to_ranges(seqs: list[int] | set[int]) -> tuple[tuple[int, int], ...]:
    """Collapse seq numbers into sorted inclusive ranges: {1,2,3,7} -> ((1,3),(7,7))."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class TimeRequest:
    request_id: int
    t1_ns: int

    def encode(self) -> bytes:
        return codec.pack({"v": CONTROL_VERSION, "id": self.request_id, "t1": self.t1_ns})

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> TimeRequest:
        obj = _check_version(codec.unpack(data, limits), "time request")
        return cls(_int(obj, "id", "time request"), _int(obj, "t1", "time request"))


@dataclass(frozen=True, slots=True)
class TimeResponse:
    request_id: int
    t1_ns: int
    t2_ns: int
    t3_ns: int

    def encode(self) -> bytes:
        return codec.pack(
            {"v": CONTROL_VERSION, "id": self.request_id, "t1": self.t1_ns, "t2": self.t2_ns,
             "t3": self.t3_ns}
        )

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> TimeResponse:
        obj = _check_version(codec.unpack(data, limits), "time response")
        w = "time response"
        return cls(_int(obj, "id", w), _int(obj, "t1", w), _int(obj, "t2", w), _int(obj, "t3", w))

    def offset_and_delay(self, t4_ns: int) -> tuple[int, int]:
        """(offset, round-trip delay) in ns; server time = agent time + offset."""
        offset = ((self.t2_ns - self.t1_ns) + (self.t3_ns - t4_ns)) // 2
        delay = (t4_ns - self.t1_ns) - (self.t3_ns - self.t2_ns)
        return offset, delay
