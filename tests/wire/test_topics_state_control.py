from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire import topics
from wire.control import Ack, TimeRequest, TimeResponse, to_ranges
from wire.envelope import TimeQuality
from wire.errors import DecodeError, TopicError, ValidationError
from wire.state import STATE_SIZE, Brake, State, VehicleClass

AGENTS = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True).filter(lambda a: a != "live")
STREAMS = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)


@given(AGENTS, STREAMS)
def test_every_topic_builds_and_parses_back(agent: str, stream: str) -> None:
    t = topics.parse_topic(topics.batch_topic(agent, stream))
    assert (t.kind, t.agent, t.stream) == (topics.TopicKind.BATCH, agent, stream)
    assert str(t) == topics.batch_topic(agent, stream)
    for build, kind in [
        (topics.ack_topic, topics.TopicKind.ACK),
        (topics.health_topic, topics.TopicKind.HEALTH),
        (topics.config_topic, topics.TopicKind.CONFIG),
        (topics.warning_topic, topics.TopicKind.WARNING),
        (topics.time_request_topic, topics.TopicKind.TIME_REQUEST),
        (topics.time_response_topic, topics.TopicKind.TIME_RESPONSE),
    ]:
        parsed = topics.parse_topic(build(agent))
        assert (parsed.kind, parsed.agent) == (kind, agent)
        assert str(parsed) == build(agent)


@given(st.floats(-90, 90), st.floats(-180, 180), AGENTS)
def test_live_topics_and_tiles(lat: float, lon: float, agent: str) -> None:
    tile = topics.tile_of(lat, lon)
    t = topics.parse_topic(topics.live_topic(tile, agent))
    assert (t.kind, t.tile, t.agent) == (topics.TopicKind.LIVE, tile, agent)
    neighbours = topics.tile_neighbours(tile)
    assert len(set(neighbours)) == 9 and tile in neighbours


def test_tile_neighbours_are_adjacent_cells() -> None:
    tile = topics.tile_of(37.7749, -122.4194)
    assert tile == "n3777w12242"
    # A point 0.006 degrees north (one cell over) lies in one of the neighbours.
    assert topics.tile_of(37.7809, -122.4194) in topics.tile_neighbours(tile)
    assert topics.tile_of(0.001, 0.001) in topics.tile_neighbours(topics.tile_of(-0.001, -0.001))


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("cvis/v1/+/batch/can", "wildcard"),
        ("cvis/v1/car/batch/#", "wildcard"),
        ("cvis/v1//ack", "empty level"),
        ("cvis/v1/car/ack/", "empty level"),
        ("other/v1/car/ack", "does not start with"),
        ("cvis/v2/car/ack", "does not start with"),
        ("cvis/v1/car/unknown", "not a cvis/v1 topic"),
        ("cvis/v1/live/car", "must be"),
        ("cvis/v1/live/n1e1/has space", "invalid agent id"),
        ("cvis/v1/live/x1e1/car", "invalid tile"),
        ("cvis/v1/" + "a" * 65 + "/ack", "invalid agent id"),
        ("cvis/v1/live/ack", "must be"),
        ("", "empty topic"),
    ],
)
def test_bad_topics_are_rejected_with_a_clear_error(topic: str, message: str) -> None:
    with pytest.raises(TopicError, match=message):
        topics.parse_topic(topic)


def test_reserved_and_invalid_ids() -> None:
    with pytest.raises(TopicError, match="reserved"):
        topics.batch_topic("live", "can")
    with pytest.raises(TopicError, match="stream"):
        topics.batch_topic("car", "a/b")
    with pytest.raises(TopicError):
        topics.tile_of(91.0, 0.0)
    assert topics.batch_filter("ingest") == "$share/ingest/cvis/v1/+/batch/#"
    assert topics.live_filter("n1e2") == "cvis/v1/live/n1e2/+"


@given(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(-90, 90),
    st.floats(-180, 180),
    st.floats(0, 600),
    st.floats(-720, 720),
    st.floats(-40, 40),
    st.sampled_from(list(Brake)),
)
def test_state_round_trip_within_units(ts, lat, lon, speed, heading, accel, brake) -> None:  # type: ignore[no-untyped-def]
    s = State(ts, lat, lon, speed, heading, seq=70000, accel_mps2=accel, brake=brake,
              vehicle_class=VehicleClass.BUS, time_quality=TimeQuality.GNSS_LOCKED,
              pos_accuracy_m=0.35)
    data = s.encode()
    assert len(data) == STATE_SIZE < 100
    back = State.decode(data)
    assert back.timestamp_ns == ts
    assert abs(back.lat - lat) <= 0.5e-7 + 1e-12 and abs(back.lon - lon) <= 0.5e-7 + 1e-12
    assert abs(back.speed_mps - speed) <= 0.01 + 1e-9
    diff = abs((back.heading_deg - heading) % 360)
    assert min(diff, 360 - diff) <= 0.00625 + 1e-9
    assert abs(back.accel_mps2 - accel) <= 0.005 + 1e-9
    assert back.brake == brake and back.vehicle_class == VehicleClass.BUS
    assert back.seq == 70000 & 0xFFFF and math.isclose(back.pos_accuracy_m, 0.35)


def test_state_rejects_bad_values_and_sizes() -> None:
    with pytest.raises(ValidationError, match="latitude"):
        State(0, 95.0, 0.0, 1.0, 0.0)
    with pytest.raises(ValidationError, match="speed"):
        State(0, 0.0, 0.0, -1.0, 0.0)
    with pytest.raises(DecodeError, match="47 bytes"):
        State.decode(b"\x01" * 10)


def test_ack_ranges_and_time_sync_offset() -> None:
    assert to_ranges([5, 1, 2, 3, 9, 10]) == ((1, 3), (5, 5), (9, 10))
    ack = Ack({"can0": to_ranges([1, 2, 3, 7]), "gnss": ((4, 4),)}, 123)
    back = Ack.decode(ack.encode())
    assert back == ack and back.covers("can0", 2) and not back.covers("can0", 5)
    with pytest.raises(ValidationError):
        Ack({"can0": ((5, 2),)})
    req = TimeRequest(7, 1_000)
    assert TimeRequest.decode(req.encode()) == req
    # Agent clock 500 ns behind the server, 100 ns each way, 50 ns server processing.
    resp = TimeResponse(7, t1_ns=1_000, t2_ns=1_000 + 100 + 500, t3_ns=1_650)
    offset, delay = TimeResponse.decode(resp.encode()).offset_and_delay(t4_ns=1_650 - 500 + 100)
    assert (offset, delay) == (500, 200)


def test_broker_urls() -> None:
    from wire.broker_url import parse_broker_url

    assert parse_broker_url("mqtt://10.0.0.5").url == "mqtt://10.0.0.5:1883"
    assert parse_broker_url("mqtts://ingest.example").url == "mqtts://ingest.example:8883"
    a = parse_broker_url("tcp://h:1884", tls=True)  # a client certificate forces TLS
    assert (a.host, a.port, a.tls) == ("h", 1884, True)
    assert parse_broker_url("localhost:1999", allow_bare=True).port == 1999
    for bad, msg in [("localhost:1999", "must start with"), ("http://h", "must start with"),
                     ("mqtt://", "has no host"), ("mqtt://h:99999", "out of range")]:
        with pytest.raises(ValidationError, match=msg):
            parse_broker_url(bad)
