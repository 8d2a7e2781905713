"""Geometry and kinematics the applications rest on, against hand-computed values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest_server.hazards.geometry import (
    angle_diff,
    move,
    offset_m,
    path_coords,
    project_on_polyline,
    ray_intersection,
    time_to_collision,
    to_frame,
    travel_time,
)


def test_offset_and_move_are_inverse_and_metric() -> None:
    lat, lon = 37.77, -122.43
    lat2, lon2 = move(lat, lon, 300.0, -400.0)
    e, n = offset_m(lat, lon, lat2, lon2)
    assert e == pytest.approx(300.0, abs=1e-6) and n == pytest.approx(-400.0, abs=1e-6)
    # One degree of latitude is about 111.2 km.
    assert offset_m(0.0, 0.0, 1.0, 0.0)[1] == pytest.approx(111_195, rel=1e-4)
    # Across the antimeridian the short way round is taken.
    assert offset_m(0.0, 179.9999, 0.0, -179.9999)[0] == pytest.approx(22.2, abs=0.1)


def test_vehicle_frame() -> None:
    # Heading east: north is to the left.
    assert to_frame(10.0, 5.0, 90.0) == pytest.approx((10.0, 5.0))
    # Heading north: east is to the right.
    assert to_frame(3.0, 10.0, 0.0) == pytest.approx((10.0, -3.0))
    assert angle_diff(350.0, 10.0) == pytest.approx(20.0)
    assert angle_diff(90.0, 270.0) == pytest.approx(180.0)


def test_path_coords_on_arcs() -> None:
    r = 100.0
    # A point a quarter circle along a left arc of radius 100, 2 m outside it.
    fwd, left = r + 2.0, r  # centre (0, 100): the point (102, 100) lies 2 m outside
    s, d = path_coords(fwd, left, 1 / r)
    assert s == pytest.approx(math.pi / 2 * r) and d == pytest.approx(-2.0)
    s, d = path_coords(fwd, -left, -1 / r)  # mirrored: a right arc
    assert s == pytest.approx(math.pi / 2 * r) and d == pytest.approx(2.0)
    assert path_coords(30.0, 1.5, 0.0) == (30.0, 1.5)


def test_time_to_collision_cases() -> None:
    # Constant speeds: gap / closing speed.
    assert time_to_collision(40.0, 20.0, 0.0, 10.0, 0.0, 10.0) == pytest.approx(4.0)
    # Pulling away: never.
    assert time_to_collision(10.0, 20.0, 0.0, 25.0, 0.0, 10.0) == math.inf
    # NHTSA test 2 at brake onset: equal speeds, 30 m, lead at -2.94 m/s²: sqrt(2*30/2.94).
    assert time_to_collision(30.0, 20.1, 0.0, 20.1, -2.94, 10.0) == pytest.approx(math.sqrt(60 / 2.94))
    # A lead that stops first: it stays stopped (no reversing into the ego).
    # Lead at 10 m/s braking 10 m/s² stops after 5 m; ego at 5 m/s covers 20 + 5 m in 5 s.
    assert time_to_collision(20.0, 5.0, 0.0, 10.0, -10.0, 10.0) == pytest.approx(5.0)
    # An ego braking hard enough stops short: never.
    assert time_to_collision(30.0, 20.0, -8.0, 0.0, 0.0, 10.0) == math.inf
    # Beyond the horizon: never; already touching: now.
    assert time_to_collision(500.0, 20.0, 0.0, 0.0, 0.0, 10.0) == math.inf
    assert time_to_collision(0.0, 1.0, 0.0, 0.0, 0.0, 10.0) == 0.0


@given(gap=st.floats(0.5, 200), ve=st.floats(0, 40), ae=st.floats(-9, 3),
       vl=st.floats(0, 40), al=st.floats(-9, 3))
def test_time_to_collision_is_when_the_gap_closes(gap: float, ve: float, ae: float, vl: float,
                                                  al: float) -> None:
    t = time_to_collision(gap, ve, ae, vl, al, 10.0)

    def pos(v: float, a: float, tt: float) -> float:
        if a < 0 and v + a * tt < 0:
            tt = -v / a
        return v * tt + 0.5 * a * tt * tt

    def remaining(tt: float) -> float:
        return gap + pos(vl, al, tt) - pos(ve, ae, tt)

    if t == math.inf:
        assert all(remaining(k / 100) > -1e-6 for k in range(1001))
    else:
        assert remaining(t) == pytest.approx(0.0, abs=1e-6)
        assert all(remaining(k * t / 100) > -1e-6 for k in range(100))


def test_travel_time_and_ray_intersection() -> None:
    assert travel_time(100.0, 10.0, 0.0) == pytest.approx(10.0)
    assert travel_time(10.0, 10.0, -10.0) == math.inf  # stops after 5 m
    assert travel_time(0.0, 0.0, 0.0) == 0.0
    # East-bound from the origin, north-bound from (50, -30): they meet at (50, 0).
    assert ray_intersection(0, 0, 90.0, 50, -30, 0.0) == pytest.approx((50.0, 30.0))
    assert ray_intersection(0, 0, 90.0, 0, 5, 90.0) is None


def test_polyline_projection() -> None:
    pts = [(0.0, 0.0), (10.0, 0.0), (20.0, 10.0)]
    lat, along, heading = project_on_polyline(pts, 5.0, 1.0)  # type: ignore[misc]
    assert lat == pytest.approx(1.0) and along == pytest.approx(5.0 + math.hypot(10, 10))
    assert heading == pytest.approx(90.0)
    assert project_on_polyline(pts, -5.0, 0.0) is None
