"""A small road network in local metres (x east, y north): lines and arcs, lanes both ways.

Traffic drives on the right: a road's forward lanes lie right of its
centreline (lane 1 nearest it), backward lanes left of it, driven towards
decreasing ``s``. A closed road (a ring) wraps ``s`` around its length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Segment:
    """A line (``radius`` 0) or an arc (``radius`` > 0 turns left, < 0 right) of ``length``."""

    s0: float
    x0: float
    y0: float
    heading: float  #: radians, mathematical (counter-clockwise from east)
    length: float
    radius: float = 0.0

    def pose(self, ds: float) -> tuple[float, float, float, float]:
        """(x, y, heading rad, curvature 1/m) at ``ds`` into the segment."""
        if self.radius == 0.0:
            return (self.x0 + ds * math.cos(self.heading), self.y0 + ds * math.sin(self.heading),
                    self.heading, 0.0)
        k = 1.0 / self.radius
        h = self.heading + ds * k
        # Centre lies to the left (k > 0) or right (k < 0) of the start.
        cx = self.x0 - self.radius * math.sin(self.heading)
        cy = self.y0 + self.radius * math.cos(self.heading)
        return cx + self.radius * math.sin(h), cy - self.radius * math.cos(h), h, k

    def end(self) -> tuple[float, float, float]:
        x, y, h, _ = self.pose(self.length)
        return x, y, h


class Road:
    def __init__(self, road_id: str, x: float, y: float, heading_deg: float,
                 pieces: list[tuple[float, float]], lanes: int, lane_width: float,
                 two_way: bool, closed: bool) -> None:
        """``pieces``: (length, radius) with radius 0 for a line; heading is a compass heading."""
        self.id = road_id
        self.lanes = lanes
        self.lane_width = lane_width
        self.two_way = two_way
        self.closed = closed
        self.segments: list[Segment] = []
        h = math.radians(90.0 - heading_deg)
        s = 0.0
        for length, radius in pieces:
            seg = Segment(s, x, y, h, length, radius)
            self.segments.append(seg)
            x, y, h = seg.end()
            s += length
        self.length = s

    def lane_offset(self, lane: int, backward: bool) -> float:
        """Lateral offset (metres, positive left of the centreline) of a lane's centre."""
        off = (lane - 0.5) * self.lane_width
        return off if backward else -off

    def pose(self, s: float, offset: float) -> tuple[float, float, float, float]:
        """(x, y, heading rad, curvature of the offset line) at ``s``, ``offset`` left."""
        if self.closed:
            s %= self.length
        seg = self.segments[-1]
        for candidate in self.segments:
            if s < candidate.s0 + candidate.length:
                seg = candidate
                break
        x, y, h, k = seg.pose(s - seg.s0)
        x -= offset * math.sin(h)
        y += offset * math.cos(h)
        k_off = k / (1.0 - k * offset) if k else 0.0
        return x, y, h, k_off

    def advance(self, s0: float, distance: float, offset: float, backward: bool) -> float:
        """Centreline ``s`` after driving ``distance`` along the line ``offset`` left of it.

        On an arc the offset line is longer (outside) or shorter (inside) than
        the centreline, so every lane keeps its own true distances.
        """
        s = s0
        remaining = distance
        sign = -1.0 if backward else 1.0
        for _ in range(4 * len(self.segments) + 1000):
            if remaining <= 1e-9:
                break
            if self.closed:
                s %= self.length
                if backward and s <= 1e-9:
                    s = self.length
            if backward:
                seg = self._segment(s - 1e-6)
                room = s - seg.s0
                if not self.closed and seg is self.segments[0]:
                    room = math.inf
            else:
                seg = self._segment(s)
                room = seg.s0 + seg.length - s
                if not self.closed and seg is self.segments[-1]:
                    room = math.inf
            k = 1.0 / seg.radius if seg.radius else 0.0
            factor = 1.0 - k * offset  # lane length per centreline length
            step = min(remaining / factor, max(room, 1e-6))
            s += sign * step
            remaining -= step * factor
        return s % self.length if self.closed else s

    def _segment(self, s: float) -> Segment:
        if self.closed:
            s %= self.length
        for seg in self.segments:
            if s < seg.s0 + seg.length:
                return seg
        return self.segments[-1]

    def on_road(self, s: float) -> bool:
        return self.closed or 0.0 <= s <= self.length
