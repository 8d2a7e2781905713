"""How each wire record schema is stored in MCAP: a schema Foxglove can display, and its messages.

One MCAP channel per agent and stream, topic ``/{agent}/{stream}``. Log time is the capture
time corrected by the batch's clock offset (server time); the original capture time (agent
clock) is kept in every message, as said below.

==================  ====================  ==================================================
wire schema         MCAP schema           messages
==================  ====================  ==================================================
camera.jpeg/1       foxglove.             one per frame; ``timestamp`` = capture time,
                    CompressedImage       ``frame_id`` = camera name, ``format`` = ``jpeg``
gnss.fix/1          foxglove.LocationFix  one per fix; ``timestamp`` = capture time; the
                                          fields LocationFix lacks (receiver UTC time, fix
                                          quality, satellites, HDOP, speed, course, accuracy)
                                          are in ``metadata`` as exact text
radar.objects/1     foxglove.SceneUpdate  one per scan (records sharing a timestamp): a cube
                                          per object in the sensor frame, every field of the
                                          record in the entity's ``metadata``
roadside.objects/1  foxglove.SceneUpdate  as radar, positioned in metres east/north of the
                                          south-west corner of the object's live-plane tile
                                          (frame ``tile/<tile>``), exact WGS84 in metadata
vehicle.signals/1   JSON ``cvis.Vehicle   one per sample time: ``{"capture_ns": t, "values":
                    Signals``             {name: value}}``; Foxglove plots
                                          ``/a/signals.values.SPEED``. NaN and infinities
                                          are stored as null
can.frames/1        protobuf              one per batch, see below; lossless
                    ``cvis.CanFrames``
any other           JSON ``cvis.<name>``  one per record, every field; bytes as base64,
                                          non-finite floats as null
==================  ====================  ==================================================

``cvis.CanFrames`` (proto3, packed) holds a whole ``can.frames/1`` batch column by column, so
a 100 ms batch of a few hundred frames is one MCAP message and the archive keeps every bit
(export reproduces a candump ``-L`` log exactly)::

    message CanFrames {
      string agent = 1;
      string stream = 2;
      uint64 seq = 3;                      // the batch's seq number
      sfixed64 clock_offset_ns = 4;        // server time = capture time + offset
      uint32 time_quality = 5;             // wire.envelope.TimeQuality
      repeated string channel_names = 6;   // bus names, e.g. can0
      repeated sfixed64 timestamp_ns = 7;  // capture time per frame, UTC ns, agent clock
      repeated uint32 channel = 8;         // index into channel_names, per frame
      repeated fixed32 arbitration_id = 9;
      bytes flags = 10;                    // can.frames/1 flag bits, one byte per frame
      bytes dlc = 11;                      // raw DLC, one byte per frame
      bytes length = 12;                   // payload bytes per frame
      bytes data = 13;                     // payloads, concatenated
    }
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from foxglove import Schema
from foxglove.messages import (
    CompressedImage,
    CubePrimitive,
    Duration,
    KeyValuePair,
    LocationFix,
    LocationFixPositionCovarianceType,
    Pose,
    Quaternion,
    SceneEntity,
    SceneUpdate,
    Timestamp,
    Vector3,
)
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from ingest_server.errors import ArchiveError
from wire.columns import Categorical, PaddedBytes, Table
from wire.envelope import Batch
from wire.errors import WireError
from wire.schemas import CAN_FRAMES, GNSS_FIX, SCHEMAS
from wire.topics import TILE_DEG, tile_of

CAN_SCHEMA_NAME = "cvis.CanFrames"
SIGNALS_SCHEMA_NAME = "cvis.VehicleSignals"
#: Objects shown for this long after their scan unless a newer scan replaces them.
OBJECT_LIFETIME_NS = 200_000_000
_EARTH_M_PER_DEG = 111_320.0


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """The MCAP schema and message encoding of one wire schema."""

    schema: Schema
    message_encoding: str


def channel_topic(agent: str, stream: str) -> str:
    return f"/{agent}/{stream}"


# cvis.CanFrames, built with the protobuf library from its descriptor ----------------------

_FD = descriptor_pb2.FieldDescriptorProto

#: (name, number, type, repeated): the fields of ``cvis.CanFrames`` (see the module docstring).
_CAN_FIELDS = (
    ("agent", 1, _FD.TYPE_STRING, False),
    ("stream", 2, _FD.TYPE_STRING, False),
    ("seq", 3, _FD.TYPE_UINT64, False),
    ("clock_offset_ns", 4, _FD.TYPE_SFIXED64, False),
    ("time_quality", 5, _FD.TYPE_UINT32, False),
    ("channel_names", 6, _FD.TYPE_STRING, True),
    ("timestamp_ns", 7, _FD.TYPE_SFIXED64, True),
    ("channel", 8, _FD.TYPE_UINT32, True),
    ("arbitration_id", 9, _FD.TYPE_FIXED32, True),
    ("flags", 10, _FD.TYPE_BYTES, False),
    ("dlc", 11, _FD.TYPE_BYTES, False),
    ("length", 12, _FD.TYPE_BYTES, False),
    ("data", 13, _FD.TYPE_BYTES, False),
)


def _can_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="cvis/can_frames.proto", package="cvis", syntax="proto3")
    message = file.message_type.add(name="CanFrames")
    for name, number, type_, repeated in _CAN_FIELDS:
        # proto3 packs repeated scalars by default; json_name as protoc would set it.
        first, *rest = name.split("_")
        message.field.add(
            name=name, number=number, type=type_,
            label=_FD.LABEL_REPEATED if repeated else _FD.LABEL_OPTIONAL,
            json_name=first + "".join(p.title() for p in rest),
        )
    return file


_CAN_FILE = _can_file()
# A private pool: nothing else registering a file or message of the same name can clash.
_CAN_POOL = descriptor_pool.DescriptorPool()
_CAN_POOL.Add(_CAN_FILE)
#: The message class of ``cvis.CanFrames`` (typed Any: its fields are made at run time).
_CanFrames: Any = message_factory.GetMessageClass(_CAN_POOL.FindMessageTypeByName(CAN_SCHEMA_NAME))
_CAN_DESCRIPTOR_SET = descriptor_pb2.FileDescriptorSet(file=[_CAN_FILE]).SerializeToString()


def can_descriptor() -> bytes:
    """The serialized ``FileDescriptorSet`` of ``cvis.CanFrames`` (the MCAP schema data)."""
    return _CAN_DESCRIPTOR_SET


def encode_can_frames(batch: Batch, table: Table) -> bytes:
    """One ``cvis.CanFrames`` message holding every frame of a can.frames/1 batch."""
    cols = table.columns
    channel = cols["channel"]
    assert isinstance(channel, Categorical)
    data = cols["data"]
    if isinstance(data, PaddedBytes):  # as decoded from the wire: no bytes object per frame
        lengths = data.lengths.astype(np.uint8)
        payload = data.joined()
    else:
        assert isinstance(data, list)
        lengths = np.fromiter(map(len, data), dtype=np.uint8, count=table.n)
        payload = b"".join(data)
    msg = _CanFrames(
        agent=batch.agent,
        stream=batch.stream,
        seq=batch.seq,
        clock_offset_ns=batch.clock_offset_ns,
        time_quality=int(batch.time_quality),
        channel_names=channel.categories,
        timestamp_ns=cols["timestamp_ns"].tolist(),  # type: ignore[union-attr]
        channel=channel.codes.tolist(),
        arbitration_id=cols["arbitration_id"].tolist(),  # type: ignore[union-attr]
        flags=np.asarray(cols["flags"], dtype=np.uint8).tobytes(),
        dlc=np.asarray(cols["dlc"], dtype=np.uint8).tobytes(),
        length=lengths.tobytes(),
        data=payload,
    )
    out: bytes = msg.SerializeToString()
    return out


@dataclass(frozen=True, slots=True)
class CanFramesMessage:
    """A decoded ``cvis.CanFrames`` message."""

    agent: str
    stream: str
    seq: int
    clock_offset_ns: int
    time_quality: int
    table: Table


def decode_can_frames(buf: bytes) -> CanFramesMessage:
    """Parse a ``cvis.CanFrames`` message back into a can.frames/1 table (checked)."""
    try:
        msg = _CanFrames.FromString(buf)
    except DecodeError as exc:
        raise ArchiveError(f"cvis.CanFrames: {len(buf)} bytes do not parse: {exc}") from exc
    ts = np.array(msg.timestamp_ns, dtype=np.int64)
    n = len(ts)
    chan = np.array(msg.channel, dtype=np.int64)
    lengths = np.frombuffer(msg.length, dtype=np.uint8).astype(np.int64)
    payload: bytes = msg.data
    if len(lengths) != n or int(lengths.sum()) != len(payload) or len(chan) != n:
        raise ArchiveError("cvis.CanFrames: column lengths disagree")
    names = tuple(msg.channel_names)
    if n and int(chan.max()) >= len(names):
        raise ArchiveError("cvis.CanFrames: channel index out of range")
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]]
    data = [payload[a:b] for a, b in zip(starts, ends, strict=True)]
    try:
        table = CAN_FRAMES.from_columns(
            timestamp_ns=ts,
            channel=Categorical(names, chan.astype(np.int32)),
            arbitration_id=np.array(msg.arbitration_id, dtype=np.uint32),
            flags=np.frombuffer(msg.flags, dtype=np.uint8),
            dlc=np.frombuffer(msg.dlc, dtype=np.uint8),
            data=data,
        )
    except WireError as exc:
        raise ArchiveError(f"cvis.CanFrames: {exc}") from exc
    if any(len(table.columns[c]) != n for c in ("arbitration_id", "flags", "dlc")):
        raise ArchiveError("cvis.CanFrames: column lengths disagree")
    return CanFramesMessage(
        agent=msg.agent, stream=msg.stream, seq=msg.seq, clock_offset_ns=msg.clock_offset_ns,
        time_quality=msg.time_quality, table=table,
    )


# Helpers ---------------------------------------------------------------------------------


def _stamp(ns: int) -> Timestamp:
    sec, nsec = divmod(ns, 1_000_000_000)
    return Timestamp(sec, nsec)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _exact(v: Any) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


def _kv(rec: Any, skip: tuple[str, ...] = ()) -> list[KeyValuePair]:
    return [KeyValuePair(key=f.name, value=_exact(getattr(rec, f.name)))
            for f in fields(rec) if f.name not in skip]


def _json_value(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, bytes | bytearray):
        return base64.b64encode(v).decode()
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


def _json_schema(name: str, properties: dict[str, Any]) -> Schema:
    body = {"title": name, "type": "object", "properties": properties}
    return Schema(name=name, encoding="jsonschema", data=json.dumps(body).encode())


_JSON_TYPES = {"str": "string", "bytes": "string", "obj": {}, "f4": "number", "f8": "number",
               "bool": "boolean"}


def _record_schema(schema_key: str) -> Schema:
    wire = SCHEMAS[schema_key]
    props: dict[str, Any] = {}
    for col, kind in wire.columns.items():
        t = _JSON_TYPES.get(kind, "integer")
        props[col] = t if isinstance(t, dict) else {"type": t}
        if kind in ("f4", "f8"):
            props[col] = {"type": ["number", "null"]}
        if kind == "bytes":
            props[col] = {"type": "string", "contentEncoding": "base64"}
    return _json_schema(f"cvis.{wire.name}", props)


# Converters: (batch, table) -> [(message bytes, log time)] ---------------------------------

Messages = list[tuple[bytes, int]]


def _can(batch: Batch, table: Table) -> Messages:
    if not table.n:
        return []
    return [(encode_can_frames(batch, table), batch.first_ns + batch.clock_offset_ns)]


def _camera(batch: Batch, table: Table) -> Messages:
    off = batch.clock_offset_ns
    cam = table.columns["camera"]
    assert isinstance(cam, Categorical)
    out = []
    jpegs: list[bytes] = table.columns["jpeg"]  # type: ignore[assignment]
    for ts, name, jpeg in zip(table.columns["timestamp_ns"].tolist(), cam.values(),  # type: ignore[union-attr]
                              jpegs, strict=True):
        msg = CompressedImage(timestamp=_stamp(ts), frame_id=name, data=jpeg, format="jpeg")
        out.append((msg.encode(), ts + off))
    return out


#: The gnss.fix/1 fields LocationFix has no place for: kept in its metadata, in field order.
_GNSS_METADATA = tuple(c for c in GNSS_FIX.columns if c not in ("timestamp_ns", "lat", "lon"))


def _gnss(batch: Batch, table: Table) -> Messages:
    off = batch.clock_offset_ns
    cols: dict[str, list[Any]] = {c: table.columns[c].tolist()  # type: ignore[union-attr]
                                  for c in GNSS_FIX.columns}
    # Column by column, what _kv(record, skip=(timestamp_ns, lat, lon)) gives for each record:
    # exact text, repr for floats and str for integers.
    metadata = [[KeyValuePair(key=c, value=text)
                 for text in map(repr if GNSS_FIX.columns[c] in ("f4", "f8") else str, cols[c])]
                for c in _GNSS_METADATA]
    out = []
    for i, (ts, lat, lon, alt, h, v) in enumerate(zip(
            cols["timestamp_ns"], cols["lat"], cols["lon"], cols["alt_m"], cols["h_acc_m"],
            cols["v_acc_m"], strict=True)):
        if math.isfinite(h) and math.isfinite(v):
            cov = [h * h, 0.0, 0.0, 0.0, h * h, 0.0, 0.0, 0.0, v * v]
            kind = LocationFixPositionCovarianceType.DiagonalKnown
        else:
            cov = [0.0] * 9
            kind = LocationFixPositionCovarianceType.Unknown
        msg = LocationFix(
            timestamp=_stamp(ts), frame_id=batch.agent, latitude=lat, longitude=lon,
            altitude=alt if math.isfinite(alt) else 0.0, position_covariance=cov,
            position_covariance_type=kind, metadata=[m[i] for m in metadata],
        )
        out.append((msg.encode(), ts + off))
    return out


def _by_time(records: list[Any]) -> list[tuple[int, list[Any]]]:
    groups: dict[int, list[Any]] = {}
    for r in records:
        groups.setdefault(r.timestamp_ns, []).append(r)
    return list(groups.items())


def _radar_objects(batch: Batch, table: Table) -> Messages:
    off = batch.clock_offset_ns
    out = []
    for ts, recs in _by_time(table.records()):
        ents = [
            SceneEntity(
                timestamp=_stamp(ts), frame_id=r.sensor, id=f"{r.sensor}/{r.object_id}",
                lifetime=Duration(0, OBJECT_LIFETIME_NS), metadata=_kv(r),
                cubes=[CubePrimitive(
                    pose=Pose(position=Vector3(x=float(r.x), y=float(r.y), z=0.75),
                              orientation=Quaternion(w=1.0)),
                    size=Vector3(x=max(float(r.length), 0.1) if math.isfinite(r.length) else 1.0,
                                 y=max(float(r.width), 0.1) if math.isfinite(r.width) else 1.0,
                                 z=1.5),
                )],
            )
            for r in recs
        ]
        out.append((SceneUpdate(entities=ents).encode(), ts + off))
    return out


def _roadside_objects(batch: Batch, table: Table) -> Messages:
    off = batch.clock_offset_ns
    out = []
    for ts, recs in _by_time(table.records()):
        ents = []
        for r in recs:
            try:
                tile = tile_of(r.lat, r.lon)
            except WireError:
                tile = "invalid"
            lat0 = math.floor(r.lat / TILE_DEG) * TILE_DEG if tile != "invalid" else 0.0
            lon0 = math.floor(r.lon / TILE_DEG) * TILE_DEG if tile != "invalid" else 0.0
            east = (r.lon - lon0) * _EARTH_M_PER_DEG * math.cos(math.radians(lat0))
            north = (r.lat - lat0) * _EARTH_M_PER_DEG
            yaw = math.radians(90.0 - r.heading_deg) if math.isfinite(r.heading_deg) else 0.0
            ents.append(SceneEntity(
                timestamp=_stamp(ts), frame_id=f"tile/{tile}", id=f"{batch.agent}/{r.object_id}",
                lifetime=Duration(0, OBJECT_LIFETIME_NS), metadata=_kv(r),
                cubes=[CubePrimitive(
                    pose=Pose(position=Vector3(x=east if math.isfinite(east) else 0.0,
                                               y=north if math.isfinite(north) else 0.0, z=0.75),
                              orientation=Quaternion(z=math.sin(yaw / 2), w=math.cos(yaw / 2))),
                    size=Vector3(x=r.length_m if r.length_m > 0 else 1.0,
                                 y=r.width_m if r.width_m > 0 else 1.0, z=1.5),
                )],
            ))
        out.append((SceneUpdate(entities=ents).encode(), ts + off))
    return out


def _signals(batch: Batch, table: Table) -> Messages:
    off = batch.clock_offset_ns
    names = table.columns["name"]
    assert isinstance(names, Categorical)
    ts = table.columns["timestamp_ns"]
    values = table.columns["value"]
    assert isinstance(ts, np.ndarray) and isinstance(values, np.ndarray)
    n = table.n
    if not n:
        return []
    # JSON text built directly (a batch holds hundreds of samples): names are JSON-quoted once,
    # a finite float's repr is valid JSON, anything else is null.
    keys = [json.dumps(name) + ":" for name in names.categories]
    texts = list(map(repr, values.tolist()))
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        texts[i] = "null"
    pairs = list(map(str.__add__, map(keys.__getitem__, names.codes.tolist()), texts))
    if n > 1 and not bool((ts[1:] >= ts[:-1]).all()):  # out of order: group by first appearance
        groups: dict[int, list[str]] = {}
        for t, pair in zip(ts.tolist(), pairs, strict=True):
            groups.setdefault(t, []).append(pair)
        runs = [(t, ",".join(p)) for t, p in groups.items()]
    else:  # samples in time order (the usual case): one message per run of equal times
        cuts = [0, *(np.flatnonzero(ts[1:] != ts[:-1]) + 1).tolist(), n]
        runs = [(t, ",".join(pairs[a:b]))
                for t, a, b in zip(ts[cuts[:-1]].tolist(), cuts[:-1], cuts[1:], strict=True)]
    return [(f'{{"capture_ns":{t},"values":{{{text}}}}}'.encode(), t + off) for t, text in runs]


def _records(batch: Batch, table: Table) -> Messages:
    off = batch.clock_offset_ns
    out = []
    for rec in table.records():
        body = {f.name: _json_value(getattr(rec, f.name)) for f in fields(rec)}
        out.append((json.dumps(body, allow_nan=False).encode(), rec.timestamp_ns + off))
    return out


_CONVERTERS: dict[str, Callable[[Batch, Table], Messages]] = {
    "can.frames/1": _can,
    "camera.jpeg/1": _camera,
    "gnss.fix/1": _gnss,
    "radar.objects/1": _radar_objects,
    "roadside.objects/1": _roadside_objects,
    "vehicle.signals/1": _signals,
}

_SPECS: dict[str, ChannelSpec] = {}


def channel_spec(schema_key: str) -> ChannelSpec:
    """The MCAP schema and encoding for a wire schema key such as ``can.frames/1``."""
    spec = _SPECS.get(schema_key)
    if spec is None:
        if schema_key == "can.frames/1":
            spec = ChannelSpec(Schema(name=CAN_SCHEMA_NAME, encoding="protobuf",
                                      data=can_descriptor()), "protobuf")
        elif schema_key == "camera.jpeg/1":
            spec = ChannelSpec(CompressedImage.get_schema(), "protobuf")
        elif schema_key == "gnss.fix/1":
            spec = ChannelSpec(LocationFix.get_schema(), "protobuf")
        elif schema_key in ("radar.objects/1", "roadside.objects/1"):
            spec = ChannelSpec(SceneUpdate.get_schema(), "protobuf")
        elif schema_key == "vehicle.signals/1":
            spec = ChannelSpec(_json_schema(SIGNALS_SCHEMA_NAME, {
                "capture_ns": {"type": "integer"},
                "values": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
            }), "json")
        elif schema_key in SCHEMAS:
            spec = ChannelSpec(_record_schema(schema_key), "json")
        else:
            raise ArchiveError(f"no MCAP mapping for schema {schema_key}")
        _SPECS[schema_key] = spec
    return spec


def to_messages(batch: Batch, table: Table) -> Messages:
    """The MCAP messages of one validated batch, as ``(data, log_time_ns)`` pairs."""
    return _CONVERTERS.get(batch.schema_key, _records)(batch, table)
