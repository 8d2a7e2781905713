"""Radar object lists over CAN: the real Toyota (Denso) tracks on the RAV4's radar bus, and the
Continental ARS408 object list (encode -> decode, the documented bit layout, cycle assembly)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import pytest
from cantools.database.can import Database
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridges.can_objects import (
    PROB_OF_EXIST,
    Ars408Decoder,
    ToyotaTrackDecoder,
    encode_ars408_objects,
)
from firmware_bridges.can_signals import SignalDecoder
from firmware_bridges.candump import CandumpParser, format_frame
from firmware_bridges.errors import ConfigError
from firmware_bridges.parser import events
from firmware_bridges.slcan import SlcanParser, encode_frames
from wire.schemas import RADAR_OBJECTS, CanFrame, ObjectClass, RadarObject

TRACK_A = range(0x210, 0x220)
TRACK_B = range(0x220, 0x230)


def can1(frames: list[CanFrame]) -> list[CanFrame]:
    return [f for f in frames if f.channel == "can1"]


# -- Toyota tracks from the real log -----------------------------------------------------------


def test_toyota_tracks_decode_from_the_radar_bus(
    can_adas_dbc: Database, can_log_frames: list[CanFrame]
) -> None:
    ids = Counter(f.arbitration_id for f in can1(can_log_frames))
    assert all(ids[i] == 1200 for i in (*TRACK_A, *TRACK_B))
    dec = ToyotaTrackDecoder(can_adas_dbc, channels=["can1"])
    objs = [o for f in can_log_frames for o in dec.decode(f)] + dec.flush()
    st = dec.stats
    assert len(objs) == st.objects == 16 * 1200
    assert Counter(o.object_id for o in objs) == {i: 1200 for i in range(16)}
    assert st.bad_checksum == st.unpaired == st.truncated == st.decode_errors == 0
    assert st.unknown_id == 45_000 - 32 * 1200  # the radar bus's other messages
    valid = [o for o in objs if o.valid]
    assert 1000 < len(valid) < len(objs)
    assert all(0 < o.x < 255 and abs(o.y) < 50 and abs(o.vx) < 100 for o in valid)
    assert all(0 <= o.probability <= 1 for o in objs)
    assert all(math.isnan(o.ax) and o.object_class == ObjectClass.UNKNOWN for o in objs)
    assert any(o.is_new for o in objs)
    # a lead car: a valid track within a lane width, 5-100 m ahead, most of the minute
    lead = [o for o in valid if abs(o.y) < 1.8 and 5 < o.x < 100]
    assert len({o.timestamp_ns // 10**9 for o in lead}) > 40
    table = RADAR_OBJECTS.table(objs[:500])
    assert len(table.records()) == 500


def test_toyota_lateral_offset_points_left(can_adas_dbc: Database, can_log_frames: list[CanFrame]) -> None:
    raw_a = SignalDecoder(can_adas_dbc, {"TRACK_A_0": 0})
    dec = ToyotaTrackDecoder(can_adas_dbc)
    checked = 0
    for f in can1(can_log_frames):
        for o in dec.decode(f):
            if o.valid and o.object_id == 0 and o.y != 0:
                a = next(g for g in can1(can_log_frames) if g.arbitration_id == 0x210
                         and g.timestamp_ns == o.timestamp_ns)
                raw = {s.name: s.value for s in raw_a.decode(a)}
                assert o.y == -raw["TRACK_A_0.LAT_DIST"] and o.x == raw["TRACK_A_0.LONG_DIST"]
                checked += 1
        if checked >= 3:
            break
    assert checked == 3


def test_toyota_bad_checksum_drops_the_frame(can_adas_dbc: Database, can_log_frames: list[CanFrame]) -> None:
    radar = can1(can_log_frames)
    a = next(f for f in radar if f.arbitration_id == 0x213)
    b = next(f for f in radar if f.arbitration_id == 0x223 and f.timestamp_ns > a.timestamp_ns)
    dec = ToyotaTrackDecoder(can_adas_dbc)
    broken = replace(a, data=a.data[:2] + bytes([a.data[2] ^ 0x10]) + a.data[3:])
    assert dec.decode(broken) == [] and dec.stats.bad_checksum == 1
    assert dec.decode(b) == [] and dec.stats.unpaired == 1  # its B has nothing to join
    assert len(dec.decode(a)) == 0 and len(dec.decode(b)) == 1


def test_toyota_track_without_its_b_comes_out_alone(
    can_adas_dbc: Database, can_log_frames: list[CanFrame]
) -> None:
    a1, a2 = [f for f in can1(can_log_frames) if f.arbitration_id == 0x215][:2]
    dec = ToyotaTrackDecoder(can_adas_dbc)
    assert dec.decode(a1) == []
    (lonely,) = dec.decode(a2)  # the next cycle's A: the first one's B never came
    assert lonely.timestamp_ns == a1.timestamp_ns and math.isnan(lonely.probability)
    (last,) = dec.flush()
    assert last.timestamp_ns == a2.timestamp_ns and dec.stats.unpaired == 2


def test_toyota_decoder_needs_track_messages(can_pt_dbc: Database) -> None:
    with pytest.raises(ConfigError, match="TRACK_A"):
        ToyotaTrackDecoder(can_pt_dbc)


@pytest.fixture(scope="module")
def track_frames(can_log_frames: list[CanFrame]) -> list[CanFrame]:
    return [f for f in can1(can_log_frames) if 0x210 <= f.arbitration_id < 0x230]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_toyota_mutated_track_frames_are_caught_by_the_checksum(
    data: st.DataObject, can_adas_dbc: Database, track_frames: list[CanFrame]
) -> None:
    radar = track_frames
    start = data.draw(st.integers(0, len(radar) - 200))
    frames = radar[start : start + 200]
    hits = data.draw(st.sets(st.integers(0, 199), min_size=1, max_size=20))
    mutated = []
    for i, f in enumerate(frames):
        if i in hits:
            pos = data.draw(st.integers(0, len(f.data) - 1))
            flip = data.draw(st.integers(1, 255))
            f = replace(f, data=f.data[:pos] + bytes([f.data[pos] ^ flip]) + f.data[pos + 1 :])
        mutated.append(f)
    dec = ToyotaTrackDecoder(can_adas_dbc)
    objs = [o for f in mutated for o in dec.decode(f)] + dec.flush()
    assert dec.stats.bad_checksum == len(hits)
    clean = ToyotaTrackDecoder(can_adas_dbc)
    good = [o for f in frames for o in clean.decode(f)] + clean.flush()
    assert {(o.timestamp_ns, o.object_id) for o in objs} <= {(o.timestamp_ns, o.object_id) for o in good}
    # a track whose A and B both survived is exactly what the clean capture gives
    paired = [o for o in objs if not math.isnan(o.probability)]
    assert set(paired) <= set(good)
    assert len(objs) >= len(good) - len(hits)


# -- Continental ARS408 --------------------------------------------------------------------------


def ars_object(i: int, **kw: object) -> RadarObject:
    base = dict(
        timestamp_ns=1_000, sensor="ars408", object_id=i, x=12.4 + i, y=-3.2 + 0.2 * i, vx=-7.25,
        vy=0.5, ax=-1.23, length=4.6, width=1.8, object_class=int(ObjectClass.CAR),
        probability=0.99, is_new=False, valid=True,
    )
    base.update(kw)
    return RadarObject(**base)  # type: ignore[arg-type]


def same(a: RadarObject, b: RadarObject) -> bool:
    def close(x: float, y: float, tol: float) -> bool:
        return (math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol

    return (
        (a.timestamp_ns, a.sensor, a.object_id, a.object_class, a.is_new, a.valid)
        == (b.timestamp_ns, b.sensor, b.object_id, b.object_class, b.is_new, b.valid)
        and close(a.x, b.x, 0.1) and close(a.y, b.y, 0.1) and close(a.vx, b.vx, 0.125)
        and close(a.vy, b.vy, 0.125) and close(a.ax, b.ax, 0.005) and close(a.length, b.length, 0.1)
        and close(a.width, b.width, 0.1) and close(a.probability, b.probability, 1e-9)
    )


def run(dec: Ars408Decoder, frames: list[CanFrame]) -> list[list[RadarObject]]:
    """Decode frames, returning the object lists in the order they were completed."""
    out = []
    for f in frames:
        objs = dec.decode(f)
        if objs:
            out.append(objs)
    return out


def test_ars408_round_trip() -> None:
    classes = [ObjectClass.POINT, ObjectClass.CAR, ObjectClass.TRUCK, ObjectClass.PEDESTRIAN,
               ObjectClass.MOTORCYCLE, ObjectClass.BICYCLE, ObjectClass.WIDE, ObjectClass.UNKNOWN]
    objects = [
        ars_object(i, object_class=int(classes[i % 8]), probability=PROB_OF_EXIST[1 + i % 7],
                   is_new=i % 3 == 0 and i % 5 != 4, valid=i % 5 != 4, x=-500 + 25.2 * i, y=-204.6 + 8.2 * i,
                   vx=-128 + 5.25 * i, vy=-64 + 2.5 * i, ax=-10 + 0.41 * i)
        for i in range(40)
    ]
    frames = encode_ars408_objects(objects, meas_counter=77, channel="radar0")
    assert [f.arbitration_id for f in frames] == [0x60A] + [0x60B] * 40 + [0x60C] * 40 + [0x60D] * 40
    assert [f.dlc for f in frames[:2]] == [4, 8] and frames[41].dlc == 7
    dec = Ars408Decoder()
    assert run(dec, frames) == []  # the first cycle waits: are quality/extended messages coming?
    (got,) = run(dec, encode_ars408_objects([], timestamp_ns=2_000))
    assert len(got) == 40
    for a, b in zip(got, objects, strict=True):
        assert same(a, b), (a, b)
    assert dec.stats.cycles == 2 and dec.stats.objects == 40


def test_ars408_bit_layout_follows_the_documentation() -> None:
    # Object_1_General: Obj_ID byte 0; Obj_DistLong 13 bit (0.2 m, -500) from byte 1 bit 7;
    # Obj_DistLat 11 bit (0.2 m, -204.6); Obj_VrelLong 10 bit (0.25, -128) from byte 4;
    # Obj_VrelLat 9 bit (0.25, -64); Obj_DynProp 3 bit; Obj_RCS byte 7 (0.5, -64). Big-endian.
    dist_long, dist_lat, vrel_long, vrel_lat = 2562, 1007, 483, 258  # 12.4, -3.2, -7.25, 0.5
    general = bytes([
        7,
        dist_long >> 5,
        (dist_long & 0x1F) << 3 | dist_lat >> 8,
        dist_lat & 0xFF,
        vrel_long >> 2,
        (vrel_long & 0x3) << 6 | vrel_lat >> 3,
        (vrel_lat & 0x7) << 5,
        128,
    ])
    # Object_3_Extended: Obj_ArelLong 11 bit (0.01, -10) from byte 1; Obj_ArelLat 9 bit
    # (0.01, -2.5); Obj_Class 3 bit in byte 3; Obj_OrientationAngle 10 bit; length, width 0.2 m.
    arel_long, arel_lat, cls = 877, 250, 1
    extended = bytes([7, arel_long >> 3, (arel_long & 0x7) << 5 | arel_lat >> 4,
                      (arel_lat & 0xF) << 4 | cls, 450 >> 2, (450 & 3) << 6, 23, 9])
    # Object_2_Quality: Obj_ProbOfExist in byte 6 bits 7-5, Obj_MeasState in bits 4-2.
    quality = bytes([7, 0, 0, 0, 0, 0, 5 << 5 | 2 << 2])
    [ours] = [f for f in encode_ars408_objects([ars_object(7, x=12.4, y=-3.2, vx=-7.25, vy=0.5)])
              if f.arbitration_id == 0x60B]
    assert ours.data == general
    dec = Ars408Decoder()
    frames = [CanFrame(5, "can0", 0x60A, 0, 4, bytes([1, 0, 9, 0x10])),
              CanFrame(5, "can0", 0x60B, 0, 8, general),
              CanFrame(5, "can0", 0x60C, 0, 7, quality),
              CanFrame(5, "can0", 0x60D, 0, 8, extended)]
    (obj,) = run(dec, [*frames, replace(frames[0], timestamp_ns=6, data=bytes(4))])[0]
    assert obj.object_id == 7 and obj.timestamp_ns == 5
    assert (obj.x, obj.y, obj.vx, obj.vy) == pytest.approx((12.4, -3.2, -7.25, 0.5))
    assert (obj.ax, obj.length, obj.width) == pytest.approx((-1.23, 4.6, 1.8))
    assert obj.object_class == ObjectClass.CAR and obj.probability == 0.99
    assert obj.valid and not obj.is_new


def test_ars408_cycles_complete_early_once_the_layout_is_known() -> None:
    dec = Ars408Decoder(sensor="front", sensor_id=3, channels=["radar0"])
    cycle1 = encode_ars408_objects([ars_object(i) for i in range(3)], channel="radar0", sensor_id=3)
    cycle2 = encode_ars408_objects([ars_object(i, timestamp_ns=2_000) for i in range(5)],
                                   channel="radar0", sensor_id=3)
    assert {f.arbitration_id for f in cycle1} == {0x63A, 0x63B, 0x63C, 0x63D}
    out = [dec.decode(f) for f in cycle1 + cycle2]
    sizes = [len(o) for o in out]
    assert sizes[len(cycle1)] == 3  # cycle 1 comes out when cycle 2's status arrives
    assert sizes[-1] == 5  # cycle 2 comes out with its last extended message
    assert sum(sizes) == 8 and all(o.sensor == "front" for objs in out for o in objs)
    # without quality and extended messages
    lean = Ars408Decoder()
    bare = encode_ars408_objects([ars_object(1)], quality=False, extended=False)
    assert run(lean, bare) == []
    # the next status closes cycle 1; cycle 2, now known to be lean, completes with its general
    first, second = run(lean, bare)
    (o,) = first
    assert o.valid and math.isnan(o.probability) and math.isnan(o.length)
    assert o.object_class == ObjectClass.UNKNOWN
    assert len(second) == 1 and lean.flush() == []


def test_ars408_stray_and_short_frames_are_counted() -> None:
    dec = Ars408Decoder(channels=["can0"])
    frames = encode_ars408_objects([ars_object(1)])
    assert dec.decode(frames[1]) == [] and dec.stats.unpaired == 1  # a general before any status
    assert dec.decode(replace(frames[1], dlc=7, data=frames[1].data[:7])) == []
    assert dec.stats.truncated == 1
    assert dec.decode(replace(frames[1], channel="can1")) == [] and dec.stats.other_channel == 1
    assert dec.decode(CanFrame(0, "can0", 0x701, 0, 0, b"")) == [] and dec.stats.unknown_id == 1
    run(dec, frames)
    assert len(dec.flush()) == 1


def test_ars408_through_candump_and_slcan_text() -> None:
    objects = [ars_object(i, timestamp_ns=1_500_000_000) for i in range(10)]
    frames = encode_ars408_objects(objects) + encode_ars408_objects([], timestamp_ns=1_600_000_000)
    text = "".join(format_frame(f) + "\n" for f in frames).encode()
    cp = CandumpParser()
    cp.feed(text)
    via_candump = list(events(cp))
    sp = SlcanParser("can0", clock_ns=lambda: 1_500_000_000)
    sp.feed(encode_frames(frames))
    via_slcan = list(events(sp))
    for replay in (via_candump, via_slcan):
        (got,) = run(Ars408Decoder(), replay)  # type: ignore[arg-type]
        assert all(same(a, b) for a, b in zip(got, objects, strict=True))


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        ([ars_object(1, x=2000.0)], "DistLong = 2000.0 is outside -500..1138.2"),
        ([ars_object(1, y=float("nan"))], "y is NaN"),
        ([ars_object(1, ax=float("inf"))], "ArelLong is inf"),
        ([ars_object(1), ars_object(1)], "distinct"),
        ([ars_object(300)], "0-255"),
    ],
)
def test_ars408_encode_errors(objects: list[RadarObject], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        encode_ars408_objects(objects)
