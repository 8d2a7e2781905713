"""The track table's spatial index and leader bookkeeping, through the engine."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_server.hazards.engine import HazardEngine
from ingest_server.hazards.geometry import M_PER_DEG, angle_diff
from ingest_server.hazards.tracks import CELL_DEG, heading_sector, sectors_beyond
from wire.state import State
from wire.topics import live_topic, tile_of

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def put(engine: HazardEngine, agent: str, t_ms: int, lat: float, lon: float, speed: float,
        heading: float = 90.0) -> None:
    st_ = State(timestamp_ns=T0 + t_ms * MS, lat=lat, lon=lon, speed_mps=speed,
                heading_deg=heading)
    engine.on_message(live_topic(tile_of(lat, lon), agent), st_.encode(), T0 + t_ms * MS)


def east(lat: float, lon: float, metres: float) -> float:
    return lon + metres / (M_PER_DEG * math.cos(math.radians(lat)))


@settings(max_examples=150, deadline=None)
@given(
    lat_cell=st.floats(0.0, 1.0), lon_cell=st.floats(0.0, 1.0),
    gap=st.floats(5.0, 300.0), heading=st.sampled_from([90.0, 270.0]),
)
def test_leader_found_up_to_the_fcw_range_wherever_the_grid_cells_fall(
        lat_cell: float, lon_cell: float, gap: float, heading: float) -> None:
    # An ego and a slower vehicle ahead on a straight road, anywhere relative to the grid's
    # cell edges: the leader is found exactly up to the FCW range (150 m, centre to centre).
    lat = 37.77 + lat_cell * CELL_DEG
    lon = -122.43 + lon_cell * CELL_DEG
    sign = 1.0 if heading == 90.0 else -1.0
    engine = HazardEngine()
    put(engine, "lead", 0, lat, east(lat, lon, sign * gap), 15.0, heading)
    put(engine, "ego", 1, lat, lon, 15.0, heading)
    ego, lead = engine.tracks.vehicles["ego"], engine.tracks.vehicles["lead"]
    if gap <= 149.9:
        assert ego.leader is lead and ego in lead.followers
    elif gap >= 150.1:
        assert ego.leader is None and not lead.followers


def test_leader_relation_follows_the_traffic_and_forgets_silent_or_jumping_vehicles() -> None:
    engine = HazardEngine()
    lat, lon = 37.77, -122.43
    put(engine, "far", 0, lat, east(lat, lon, 100.0), 20.0)
    put(engine, "near", 0, lat, east(lat, lon, 50.0), 20.0)
    put(engine, "ego", 1, lat, lon, 20.0)
    v = engine.tracks.vehicles
    assert v["ego"].leader is v["near"] and list(v["near"].followers) == [v["ego"]]
    assert v["near"].leader is v["far"]
    # 'near' really jumps 2 km (5 states in a row): its track restarts there, and the ego no
    # longer holds the old one as its leader.
    old = v["near"]
    for t in range(20, 120, 20):
        put(engine, "near", t, lat, east(lat, lon, 2000.0 + t * 0.02), 20.0)
    assert v["near"] is not old and v["ego"].leader is None and not old.followers
    assert engine.stats.dropped["jump"] == 4
    # 'near' goes silent: it is forgotten, and nobody keeps it as leader or follower.
    for t in range(100, 3700, 100):
        put(engine, "far", t, lat, east(lat, lon, 100.0 + 0.02 * t), 20.0)
        put(engine, "ego", t + 1, lat, east(lat, lon, 0.02 * t), 20.0)
        engine.tick(T0 + (t + 2) * MS)
    assert "near" not in v
    ego, far = v["ego"], v["far"]
    assert ego.leader is far and list(far.followers) == [ego]
    # The leader turns off the road (heading north): it is no longer anyone's leader.
    put(engine, "far", 3700, lat + 0.0001, east(lat, lon, 174.0), 20.0, heading=0.0)
    put(engine, "ego", 3701, lat, east(lat, lon, 74.0), 20.0)
    assert v["ego"].leader is None
    assert not v["far"].followers


@settings(max_examples=400, deadline=None)
@given(heading=st.one_of(st.floats(-720.0, 720.0), st.integers(-48, 48).map(lambda k: k * 15.0)),
       max_diff=st.one_of(st.floats(1.0, 179.0), st.sampled_from([30.0, 90.0, 150.0, 165.0])),
       other=st.one_of(st.floats(0.0, 360.0, exclude_max=True),
                       st.integers(0, 23).map(lambda k: k * 15.0)),
       nudge=st.sampled_from([0.0, 1e-9, -1e-9]))
def test_skipped_heading_sectors_hold_only_headings_beyond_the_limit(
        heading: float, max_diff: float, other: float, nudge: float) -> None:
    # A neighbour query skips whole heading sectors; a heading it skips must never be one the
    # applications could use (within max_diff of the query's heading).
    other = (other + nudge) % 360.0
    if heading_sector(other) in sectors_beyond(heading, max_diff):
        assert angle_diff(heading, other) > max_diff


def test_oncoming_sectors_are_skipped() -> None:
    # Defaults: nothing beyond 150 degrees matters, so the sectors around the opposite heading go.
    assert heading_sector(270.0) in sectors_beyond(90.0, 150.0)
    assert heading_sector(250.0) not in sectors_beyond(90.0, 150.0)
    assert sectors_beyond(90.0, 170.0) == frozenset()  # nothing is beyond a whole sector
