"""The batch envelope: one msgpack map per archival MQTT message.

Keys (short, because a 100 ms CAN batch is only about a kilobyte):

=========  =====================================================================
``v``      format version ``[major, minor]``; an unknown major is rejected
``agent``  agent id (must equal the topic's)
``stream`` stream name (must equal the topic's)
``schema`` record schema name, ``sv`` its version
``seq``    per-(agent, stream) sequence number, never repeated across restarts
``t0/t1``  first / last record capture time, UTC ns, agent clock
``n``      record count
``off``    estimated offset agent clock -> server clock, ns (server = agent + off)
``tq``     :class:`TimeQuality` of the agent clock when the batch was closed
``codec``  ``zstd`` or ``none``; ``dict`` the zstd dictionary id or nil
``crc``    CRC-32 of the decoded (uncompressed msgpack) payload
``p``      the payload
=========  =====================================================================

Unknown extra keys are ignored, so a minor version may add fields.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass
from typing import Any

from wire.codec import (
    CODEC_ZSTD,
    CODECS,
    DEFAULT_LEVEL,
    NO_DICTIONARIES,
    Dictionaries,
    compress,
    decompress,
    pack,
    unpack,
)
from wire.columns import Table, TableSchema
from wire.errors import DecodeError, LimitError, SchemaError, TopicError, ValidationError
from wire.limits import DEFAULT_LIMITS, Limits
from wire.schemas import get_schema
from wire.topics import check_agent, check_stream

FORMAT_VERSION = (1, 0)
_INT64 = (-(2**63), 2**63 - 1)


class TimeQuality(enum.IntEnum):
    """How far the agent trusts its clock when it stamped a batch."""

    UNKNOWN = 0  #: no reference at all (for example just after boot, no RTC)
    FREE_RUNNING = 1  #: the system clock, not yet checked against the server
    SERVER_SYNCED = 2  #: offset to the server estimated over MQTT
    GNSS_LOCKED = 3  #: disciplined by GNSS time or PTP


@dataclass(frozen=True, slots=True)
class Batch:
    agent: str
    stream: str
    schema: str
    schema_version: int
    seq: int
    first_ns: int
    last_ns: int
    count: int
    clock_offset_ns: int
    time_quality: TimeQuality
    codec: str
    dict_id: int | None
    crc32: int
    payload: bytes
    version: tuple[int, int] = FORMAT_VERSION

    def __post_init__(self) -> None:
        try:
            check_agent(self.agent)
            check_stream(self.stream)
        except TopicError as exc:
            raise ValidationError(str(exc)) from exc
        if not 0 <= self.seq < 2**63:
            raise ValidationError(f"seq {self.seq} out of range")
        if self.count < 0:
            raise ValidationError("negative record count")
        for name in ("first_ns", "last_ns", "clock_offset_ns"):
            v = getattr(self, name)
            if not _INT64[0] <= v <= _INT64[1]:
                raise ValidationError(f"{name}={v} is outside int64")
        if self.count and self.last_ns < self.first_ns:
            raise ValidationError("last_ns before first_ns")
        if self.codec not in CODECS:
            raise ValidationError(f"unknown codec {self.codec!r}")

    @property
    def schema_key(self) -> str:
        return f"{self.schema}/{self.schema_version}"

    def encode(self) -> bytes:
        return pack(
            {
                "v": list(self.version),
                "agent": self.agent,
                "stream": self.stream,
                "schema": self.schema,
                "sv": self.schema_version,
                "seq": self.seq,
                "t0": self.first_ns,
                "t1": self.last_ns,
                "n": self.count,
                "off": self.clock_offset_ns,
                "tq": int(self.time_quality),
                "codec": self.codec,
                "dict": self.dict_id,
                "crc": self.crc32,
                "p": self.payload,
            }
        )

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> Batch:
        """Parse and check an envelope; the payload stays encoded (see :meth:`table`)."""
        if len(data) > limits.max_encoded_bytes:
            raise LimitError(f"batch of {len(data)} bytes exceeds {limits.max_encoded_bytes}")
        obj = unpack(data, limits)
        if not isinstance(obj, dict):
            raise DecodeError("batch envelope is not a map")
        v = obj.get("v")
        if (
            not isinstance(v, list)
            or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        ):
            raise DecodeError(f"batch envelope has no valid format version (v={v!r})")
        if v[0] != FORMAT_VERSION[0]:
            raise SchemaError(
                f"unsupported envelope major version {v[0]} (this end speaks {FORMAT_VERSION[0]})"
            )
        try:
            tq = TimeQuality(_field(obj, "tq", int))
        except ValueError:
            tq = TimeQuality.UNKNOWN  # a newer minor version may add qualities
        dict_id = obj.get("dict")
        if dict_id is not None and (not isinstance(dict_id, int) or isinstance(dict_id, bool)):
            raise DecodeError("batch envelope: 'dict' must be an integer or nil")
        try:
            return cls(
                agent=_field(obj, "agent", str),
                stream=_field(obj, "stream", str),
                schema=_field(obj, "schema", str),
                schema_version=_field(obj, "sv", int),
                seq=_field(obj, "seq", int),
                first_ns=_field(obj, "t0", int),
                last_ns=_field(obj, "t1", int),
                count=_field(obj, "n", int),
                clock_offset_ns=_field(obj, "off", int),
                time_quality=tq,
                codec=_field(obj, "codec", str),
                dict_id=dict_id,
                crc32=_field(obj, "crc", int),
                payload=_field(obj, "p", bytes),
                version=(v[0], v[1]),
            )
        except ValidationError as exc:
            raise DecodeError(f"batch envelope: {exc}") from exc

    def table(
        self, limits: Limits = DEFAULT_LIMITS, dicts: Dictionaries = NO_DICTIONARIES
    ) -> Table:
        """Decode and verify the payload: checksum, schema, count and time range."""
        if self.count > limits.max_records:
            raise LimitError(f"batch declares {self.count} records, limit {limits.max_records}")
        schema = get_schema(self.schema, self.schema_version)
        raw = decompress(self.payload, self.codec, dict_id=self.dict_id, dicts=dicts, limits=limits)
        if zlib.crc32(raw) != self.crc32:
            raise DecodeError(f"payload checksum mismatch in {self.agent}/{self.stream} seq {self.seq}")
        table = schema.decode(unpack(raw, limits), limits)
        if table.n != self.count:
            raise SchemaError(f"envelope says {self.count} records, payload holds {table.n}")
        if table.n:
            t = table.columns[schema.time_column]
            if int(t.min()) != self.first_ns or int(t.max()) != self.last_ns:  # type: ignore[union-attr]
                raise SchemaError("envelope time range does not match its records")
        return table


def _field(obj: dict[str, Any], key: str, typ: type) -> Any:
    if key not in obj:
        raise DecodeError(f"batch envelope lacks {key!r}")
    val = obj[key]
    if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        raise DecodeError(f"batch envelope field {key!r} must be {typ.__name__}, got {type(val).__name__}")
    return val


def encode_batch(
    agent: str,
    stream: str,
    table: Table,
    seq: int,
    *,
    clock_offset_ns: int = 0,
    time_quality: TimeQuality = TimeQuality.FREE_RUNNING,
    codec_name: str = CODEC_ZSTD,
    dict_id: int | None = None,
    dicts: Dictionaries = NO_DICTIONARIES,
    level: int = DEFAULT_LEVEL,
) -> Batch:
    """Encode a table into a :class:`Batch` (call ``.encode()`` for the bytes)."""
    schema: TableSchema = table.schema
    raw = pack(schema.encode(table))
    if table.n:
        t = table.columns[schema.time_column]
        first, last = int(t.min()), int(t.max())  # type: ignore[union-attr]
    else:
        first = last = 0
    return Batch(
        agent=agent,
        stream=stream,
        schema=schema.name,
        schema_version=schema.version,
        seq=seq,
        first_ns=first,
        last_ns=last,
        count=table.n,
        clock_offset_ns=clock_offset_ns,
        time_quality=time_quality,
        codec=codec_name,
        dict_id=dict_id,
        crc32=zlib.crc32(raw),
        payload=compress(raw, codec_name, dict_id=dict_id, dicts=dicts, level=level),
    )
