"""The hazard engine: live messages in, warnings out, callable synchronously with any clock.

Sans-IO: :meth:`HazardEngine.on_message` takes a live topic, its payload and
the server time of arrival and returns the warnings to publish;
:meth:`HazardEngine.tick` ends quiet episodes and forgets silent vehicles. The
MQTT worker feeds it wall-clock time; tests and the traffic simulator feed it
simulated time, many times faster than real time.

On every accepted state of vehicle X (at X's sample time t):

- FCW: X's leader is found among its neighbours and X is assessed against
  it; every neighbour whose leader is X is re-assessed against X's new state;
- EBW: if X brakes hard, the vehicles behind it are warned; if a neighbour
  ahead of X brakes hard, X is;
- ICW: X and every neighbour on a crossing path;
- VRUCW: X against the RSU-seen pedestrians and cyclists near it.

On every RSU object list, each listed pedestrian or cyclist is assessed
against the vehicles near it.

Ownership: with ``owns`` set, warnings are produced only for vehicles whose
current tile the engine owns. A worker subscribes to its tiles and their
neighbours, so it sees every counterpart across a tile edge, while exactly
one worker warns each vehicle.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ingest_server.hazards import ebw, fcw, icw, vru
from ingest_server.hazards.config import HazardConfig
from ingest_server.hazards.episodes import Episode, EpisodeBook, Finding
from ingest_server.hazards.paths import relate
from ingest_server.hazards.tracks import (
    C_BRAKING,
    C_CURVATURE,
    C_HEADING,
    C_LEADER,
    C_OWNED,
    C_SPEED,
    C_UE,
    C_UN,
    Rejected,
    Track,
    TrackTable,
)
from wire.errors import TopicError, WireError
from wire.live_objects import LiveKind, ObjectList, live_kind
from wire.state import State
from wire.topics import TopicKind, parse_topic
from wire.warning import HazardWarning, WarningType

log = logging.getLogger(__name__)

#: Longest live message considered at all (an object list; states are 47 bytes).
MAX_LIVE_BYTES = 64 * 1024


@dataclass(slots=True)
class EngineStats:
    states: int = 0
    object_lists: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    evaluations: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "states": self.states, "object_lists": self.object_lists,
            "dropped": dict(self.dropped), "warnings": dict(self.warnings),
            "evaluations": self.evaluations,
        }


class HazardEngine:
    """Tracks, applications and episodes for one worker."""

    def __init__(
        self,
        config: HazardConfig | None = None,
        *,
        owns: Callable[[str], bool] | None = None,
        episode_prefix: int | None = None,
    ) -> None:
        self.config = config or HazardConfig()
        self.tracks = TrackTable(self.config)
        self.episodes = EpisodeBook(self.config.episodes, episode_prefix, self._log_episode)
        self.owns = owns
        self.stats = EngineStats()
        c = self.config
        self._radius = max(c.fcw.range_m, c.ebw.range_m, c.icw.range_m)

    # input

    def on_message(self, topic: str, payload: bytes, now_ns: int) -> list[HazardWarning]:
        """A live-plane message; anything malformed is dropped and counted, never raised."""
        try:
            if len(payload) > MAX_LIVE_BYTES:
                raise Rejected("oversize")
            try:
                t = parse_topic(topic)
            except TopicError:
                raise Rejected("topic") from None
            if t.kind is not TopicKind.LIVE:
                raise Rejected("topic")
            kind = live_kind(payload)
            if kind is LiveKind.STATE:
                return self.on_state(t.agent, State.decode(payload), now_ns)
            return self.on_objects(t.agent, ObjectList.decode(payload), now_ns)
        except Rejected as r:
            self.stats.dropped[r.reason] += 1
        except WireError as exc:
            self.stats.dropped["malformed"] += 1
            log.debug("hazards: dropped live message on %s: %s", topic, exc)
        return []

    def on_state(self, agent: str, state: State, now_ns: int) -> list[HazardWarning]:
        try:
            ego = self.tracks.update(agent, state, now_ns)
        except Rejected as r:
            self.stats.dropped[r.reason] += 1
            return []
        self.stats.states += 1
        return self._evaluate_vehicle(ego, now_ns)

    def on_objects(self, rsu: str, objects: ObjectList, now_ns: int) -> list[HazardWarning]:
        try:
            kept = self.tracks.update_objects(
                rsu, objects.timestamp_ns, objects.objects, objects.clock_offset_us * 1000, now_ns
            )
        except Rejected as r:
            self.stats.dropped[r.reason] += 1
            return []
        self.stats.object_lists += 1
        out: list[HazardWarning] = []
        c = self.config
        if not c.vru.enabled:
            return out
        source = objects.timestamp_ns + objects.clock_offset_us * 1000
        for obj in kept:
            for v in self.tracks.vehicles_near(obj.lat, obj.lon, c.vru.range_m, obj.t_ns):
                if not self._owned(v):
                    continue
                key = (WarningType.VRUCW, v.agent, (obj.key,))
                f = vru.assess(v, obj, obj.t_ns, source, c.vru, c.path,
                               self.episodes.is_active(key))
                self._emit(f, now_ns, out)
        return out

    def tick(self, now_ns: int) -> list[HazardWarning]:
        """End quiet episodes (their ``end`` warnings) and forget silent tracks.

        An episode is opened only for a vehicle this engine owns, so its end is always sent,
        even if the vehicle has since driven into another worker's tile.
        """
        ended = self.episodes.sweep(now_ns)
        for w in ended:
            self.stats.warnings[f"{w.type.value}:end"] += 1
        self.tracks.expire(now_ns)
        return ended

    # evaluation

    def _owned(self, tr: Track) -> bool:
        return self.owns is None or self.owns(tr.tile)

    def _emit(self, f: Finding | None, now_ns: int, out: list[HazardWarning]) -> None:
        if f is None:
            return
        w = self.episodes.confirm(f, now_ns)
        if w is not None:
            out.append(w)
            self.stats.warnings[f"{w.type.value}:{w.status.value}"] += 1

    def _evaluate_vehicle(self, x: Track, now_ns: int) -> list[HazardWarning]:
        c = self.config
        t = x.t_ns
        out: list[HazardWarning] = []
        self.stats.evaluations += 1
        x_owned = self._owned(x)
        tracks = self.tracks
        tracks.set_owned(x, x_owned)
        active = self.episodes.is_active
        around = tracks.around(x, self._radius)
        leader: Track | None = None
        if around is not None:
            # Vectorised pre-selection on the raw states; exact relations only for the few left.
            # A vehicle of another worker's tile matters here only to vehicles this one owns.
            ix, rows = around.slots, around.rows
            de, dn, d2, diff = around.de, around.dn, around.d2, around.diff
            owned = rows[:, C_OWNED] > 0.5
            same = diff <= c.path.same_direction_deg
            in_front = (de * x.ue + dn * x.un) > 0.0
            ahead = same & in_front
            behind = same & ~in_front & owned

            if c.ebw.enabled and x_owned:  # a vehicle ahead of X brakes hard
                for i in ix[ahead & (rows[:, C_BRAKING] > 0.5)].tolist():
                    n = tracks.track_at(i)
                    self._emit(ebw.assess(x, n, relate(x, n, t, c.path), t, c.ebw, c.path),
                               now_ns, out)
            if c.ebw.enabled and x.braking_hard:  # X brakes hard: warn those behind it
                r2 = (c.ebw.range_m + 10.0) ** 2
                for i in ix[behind & (d2 <= r2)].tolist():
                    n = tracks.track_at(i)
                    self._emit(ebw.assess(n, x, relate(n, x, t, c.path), t, c.ebw, c.path),
                               now_ns, out)
            if c.fcw.enabled:  # X is the leader of someone behind
                for i in ix[behind & (rows[:, C_LEADER] == x.slot)].tolist():
                    n = tracks.track_at(i)
                    if n.leader == x.agent:
                        key = (WarningType.FCW, n.agent, (x.agent,))
                        rel = relate(n, x, t, c.path)
                        self._emit(fcw.assess(n, x, rel, t, c.fcw, c.path, active(key)),
                                   now_ns, out)
            if c.icw.enabled:
                cross = (diff >= c.icw.min_angle_deg) & (diff <= c.icw.max_angle_deg)
                if not x_owned:
                    cross &= owned
                if cross.any():
                    for i in self._icw_candidates(x, ix[cross], rows[cross], de[cross], dn[cross]):
                        n = tracks.track_at(i)
                        n_owned = self._owned(n)
                        key = (WarningType.ICW, x.agent, (n.agent,))
                        pair = icw.assess(x, n, t, t, c.icw, active(key))
                        if pair is not None:
                            if x_owned:
                                self._emit(pair[0], now_ns, out)
                            if n_owned:
                                self._emit(pair[1], now_ns, out)
            if c.fcw.enabled and x_owned:  # X's leader: the nearest vehicle ahead in X's lane
                leader = self._find_leader(x, ix, rows, de, dn, d2, ahead, now_ns, out)
        tracks.set_leader(x, leader)

        if c.vru.enabled and x_owned and tracks.objects:
            r = x.speed * c.vru.horizon_s + 20.0
            for obj in tracks.objects_near(x.lat, x.lon, min(r, c.vru.range_m), t):
                key = (WarningType.VRUCW, x.agent, (obj.key,))
                self._emit(vru.assess(x, obj, t, t, c.vru, c.path, active(key)), now_ns, out)
        return out

    def _find_leader(self, x: Track, ix: np.ndarray, rows: np.ndarray, de: np.ndarray,
                     dn: np.ndarray, d2: np.ndarray, ahead: np.ndarray, now_ns: int,
                     out: list[HazardWarning]) -> Track | None:
        c = self.config
        p = c.path
        tracks = self.tracks
        cand = ahead & (d2 <= c.fcw.range_m * c.fcw.range_m)
        if not cand.any():
            return None
        ix, rows, de, dn, d2 = ix[cand], rows[cand], de[cand], dn[cand], d2[cand]
        # Lateral offset from X's predicted arc, vectorised; the exact relation (with
        # extrapolation and path history) is computed below only for plausible candidates.
        fwd = de * x.ue + dn * x.un
        left = dn * x.ue - de * x.un
        k = x.curvature(p.max_curvature)
        if abs(k) < 1e-5:
            lateral = left
        else:
            sgn = 1.0 if k > 0 else -1.0
            r = 1.0 / abs(k)
            lateral = (r - np.hypot(fwd, left * sgn - r)) * sgn
        near_lane = np.abs(lateral) <= p.lane_half_width_m + 1.5
        bent = np.abs(rows[:, C_CURVATURE] - k) > 0.002
        arc_heading = x.heading - np.degrees(k * fwd)
        mismatch = np.abs((rows[:, C_HEADING] - arc_heading + 180.0) % 360.0 - 180.0) > 3.0
        keep = near_lane | ((np.abs(lateral) <= p.trail_max_lateral_m) & (bent | mismatch))
        if not keep.any():
            return None
        ix, d2 = ix[keep], d2[keep]
        t = x.t_ns
        for i in ix[np.argsort(d2)].tolist():
            n = tracks.track_at(i)
            rel = relate(x, n, t, p)
            if fcw.is_leader_candidate(rel, c.fcw, p):
                key = (WarningType.FCW, x.agent, (n.agent,))
                self._emit(fcw.assess(x, n, rel, t, c.fcw, p, self.episodes.is_active(key)),
                           now_ns, out)
                return n
        return None

    def _icw_candidates(self, x: Track, ix: np.ndarray, rows: np.ndarray, de: np.ndarray,
                        dn: np.ndarray) -> list[int]:
        """Crossing neighbours whose heading lines meet where both could arrive in time."""
        bue, bun = rows[:, C_UE], rows[:, C_UN]
        det = bue * x.un - x.ue * bun
        ok = np.abs(det) > 1e-6
        det = np.where(ok, det, 1.0)
        sa = (bue * dn - de * bun) / det
        sb = (x.ue * dn - x.un * de) / det
        reach = self.config.icw.horizon_s + 1.0
        ok &= (sa > -30.0) & (sa < x.speed * reach + 10.0)
        ok &= (sb > -30.0) & (sb < rows[:, C_SPEED] * reach + 10.0)
        return list(ix[ok].tolist())

    def _log_episode(self, what: str, ep: Episode) -> None:
        f = ep.finding
        if what == "open":
            log.info("hazards: %s episode %x for %s (counterpart %s, ttc %s, severity %s)",
                     f.type.value, ep.id, f.target, ",".join(f.counterparts),
                     "-" if f.ttc_s is None else f"{f.ttc_s:.2f} s", f.severity.name)
        else:
            log.info("hazards: %s episode %x for %s ended after %.1f s, %d updates",
                     f.type.value, ep.id, f.target, (ep.confirmed_ns - ep.opened_ns) / 1e9,
                     ep.updates)

