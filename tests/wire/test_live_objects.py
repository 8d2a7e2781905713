"""roadside.objects/1 on the live plane: round trips, telling it from state/1, bounded decoding."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.codec import pack
from wire.envelope import TimeQuality
from wire.errors import DecodeError, LimitError, SchemaError, ValidationError
from wire.live_objects import HEADER, MAX_OBJECTS, LiveKind, ObjectList, live_kind
from wire.schemas import ROADSIDE_OBJECTS, ObjectClass, RoadsideObject
from wire.state import STATE_SIZE, State


def ped(i: int = 1, **kw: float) -> RoadsideObject:
    base = dict(timestamp_ns=1_700_000_000_000_000_000, object_id=i,
                object_class=int(ObjectClass.PEDESTRIAN), lat=37.7751, lon=-122.4183,
                speed_mps=1.4, heading_deg=90.0, length_m=0.5, width_m=0.5, confidence=0.9)
    base.update(kw)
    return RoadsideObject(**base)  # type: ignore[arg-type]


_f32 = st.floats(0, 50, width=32)
objects = st.builds(
    RoadsideObject,
    timestamp_ns=st.integers(0, 2**62), object_id=st.integers(0, 2**32 - 1),
    object_class=st.sampled_from([int(c) for c in ObjectClass]),
    lat=st.floats(-90, 90), lon=st.floats(-180, 180), speed_mps=_f32,
    heading_deg=st.floats(0, 360, width=32), length_m=_f32, width_m=_f32,
    confidence=st.floats(0, 1, width=32),
)


@settings(max_examples=100, deadline=None)
@given(objs=st.lists(objects, max_size=40), t=st.integers(0, 2**62),
       off=st.integers(-(2**40), 2**40), seq=st.integers(0, 2**32 - 1),
       tq=st.sampled_from(list(TimeQuality)))
def test_round_trip(objs: list[RoadsideObject], t: int, off: int, seq: int, tq: TimeQuality) -> None:
    ol = ObjectList(t, tuple(objs), seq=seq, clock_offset_us=off, time_quality=tq)
    data = ol.encode()
    assert live_kind(data) is LiveKind.OBJECTS
    assert ObjectList.decode(data) == ol


def test_told_apart_from_state_by_first_bytes() -> None:
    state = State(timestamp_ns=1, lat=37.0, lon=-122.0, speed_mps=10.0, heading_deg=0.0).encode()
    assert len(state) == STATE_SIZE
    assert live_kind(state) is LiveKind.STATE
    empty = ObjectList(1, ()).encode()
    assert empty[:2] == HEADER and live_kind(empty) is LiveKind.OBJECTS
    with pytest.raises(SchemaError):
        ObjectList.decode(state)
    for junk in (b"", b"\x01", b"\x02\x01" + bytes(45), b"\x01\x01" + bytes(10), b"\x01\x07abc"):
        with pytest.raises(DecodeError, match="not a live-plane message"):
            live_kind(junk)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (ped(lat=math.nan), "not WGS84"),
        (ped(lon=200.0), "not WGS84"),
        (ped(speed_mps=-1.0), "speed"),
        (ped(heading_deg=math.inf), "heading"),
        (ped(confidence=-0.5), "confidence"),
    ],
)
def test_invalid_objects_are_refused(obj: RoadsideObject, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ObjectList(1, (obj,))
    # The same object from a peer is a DecodeError naming the problem.
    body = msgpack.unpackb(ObjectList(1, (ped(),)).encode()[2:])
    body["o"] = ROADSIDE_OBJECTS.encode(ROADSIDE_OBJECTS.table([obj]))
    with pytest.raises(DecodeError, match=message):
        ObjectList.decode(HEADER + pack(body))


def test_bounded_decoding() -> None:
    with pytest.raises(ValidationError, match="max 512"):
        ObjectList(1, tuple(ped(i) for i in range(MAX_OBJECTS + 1)))
    body = msgpack.unpackb(ObjectList(1, (ped(),)).encode()[2:])
    body["o"]["n"] = MAX_OBJECTS + 1
    with pytest.raises(LimitError):
        ObjectList.decode(HEADER + pack(body))
    with pytest.raises(DecodeError, match="exceeds"):
        ObjectList.decode(HEADER + bytes(70_000))
    for key, val in (("t", "now"), ("seq", None), ("tq", 1.5)):
        b = dict(body, **{key: val})
        with pytest.raises(DecodeError, match=repr(key)):
            ObjectList.decode(HEADER + pack(b))
    with pytest.raises(DecodeError):
        ObjectList.decode(HEADER + pack([1, 2]))
    with pytest.raises(DecodeError):
        ObjectList.decode(ObjectList(1, (ped(),)).encode()[:-4])
