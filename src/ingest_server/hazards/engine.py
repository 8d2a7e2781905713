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

Cost: one state costs about 40 us of CPU with 1,000 vehicles in dense traffic
(``bench/hazards.py``). Neighbours come from a grid of cells; each is first
rejected or sorted with a few subtractions on its raw state (latitude and
longitude bands, heading difference, then distance and freshness), so
oncoming traffic and vehicles outside the radius never reach any geometry.
What each vehicle needs per pair (heading unit vector, curvature, cell, tile)
is derived once per state by the track table, the leader relation is kept
both ways (a vehicle's followers are looked up, not searched for), and the
exact relation (extrapolation, arcs, path history) is computed only for the
nearest plausible leader, a vehicle's followers, braking vehicles and
crossing candidates. Plain Python beats numpy here: a neighbourhood holds a
few dozen vehicles, too few to pay for numpy's per-call overhead.

Ownership: with ``owns`` set, warnings are produced only for vehicles whose
current tile the engine owns. A worker subscribes to its tiles and their
neighbours, so it sees every counterpart across a tile edge, while exactly
one worker warns each vehicle.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter

from ingest_server.hazards import ebw, fcw, icw, vru
from ingest_server.hazards.config import HazardConfig
from ingest_server.hazards.episodes import Episode, EpisodeBook, Finding
from ingest_server.hazards.geometry import M_PER_DEG
from ingest_server.hazards.paths import ARC_MISMATCH_DEG, SAME_CURVE, relate
from ingest_server.hazards.tracks import Rejected, Track, TrackTable, sectors_beyond
from wire.errors import TopicError, WireError
from wire.live_objects import LiveKind, ObjectList, live_kind
from wire.state import State
from wire.topics import TopicKind, parse_topic
from wire.warning import HazardWarning, WarningType

log = logging.getLogger(__name__)

#: Longest live message considered at all (an object list; states are 47 bytes).
MAX_LIVE_BYTES = 64 * 1024
#: The latitude / longitude bands of a neighbour query are this much wider than the radius,
#: so they never reject what the exact distance test would keep.
_BAND_SLACK = 1.0 + 1e-9
#: Live topics remembered with their agent (one per agent); the cache is cleared when full.
_TOPIC_CACHE = 100_000


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
        self._max_age_ns = c.freshness.max_age_ms * 1e6
        self._agents: dict[str, str] = {}  # live topic -> agent, for topics already checked
        # Settings read on every state, looked up once (the configuration is frozen).
        self._band_lat = self._radius / M_PER_DEG * _BAND_SLACK
        self._r2 = self._radius * self._radius
        self._r2_fcw = c.fcw.range_m * c.fcw.range_m
        self._r2_ebw = (c.ebw.range_m + 10.0) ** 2
        #: Neighbours whose heading differs more matter to no application.
        self._max_diff_deg = max(c.path.same_direction_deg,
                                 c.icw.max_angle_deg if c.icw.enabled else 0.0)

    # input

    def on_message(self, topic: str, payload: bytes, now_ns: int) -> list[HazardWarning]:
        """A live-plane message; anything malformed is dropped and counted, never raised."""
        try:
            if len(payload) > MAX_LIVE_BYTES:
                raise Rejected("oversize")
            agent = self._agents.get(topic)
            if agent is None:
                agent = self._live_agent(topic)
            kind = live_kind(payload)
            if kind is LiveKind.STATE:
                return self.on_state(agent, State.decode(payload), now_ns)
            return self.on_objects(agent, ObjectList.decode(payload), now_ns)
        except Rejected as r:
            self.stats.dropped[r.reason] += 1
        except WireError as exc:
            self.stats.dropped["malformed"] += 1
            log.debug("hazards: dropped live message on %s: %s", topic, exc)
        return []

    def _live_agent(self, topic: str) -> str:
        try:
            t = parse_topic(topic)
        except TopicError:
            raise Rejected("topic") from None
        if t.kind is not TopicKind.LIVE:
            raise Rejected("topic")
        if len(self._agents) >= _TOPIC_CACHE:
            self._agents.clear()
        self._agents[topic] = t.agent
        return t.agent

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
        path = c.path
        t = x.t_ns
        out: list[HazardWarning] = []
        self.stats.evaluations += 1
        x_owned = self.owns is None or self.owns(x.tile)
        x.owned = x_owned
        tracks = self.tracks
        active = self.episodes.is_active
        ebw_on, fcw_on, icw_on = c.ebw.enabled, c.fcw.enabled, c.icw.enabled
        x_brakes = ebw_on and x.braking_hard

        # One pass over the grid cells around X, cheapest rejections first (a latitude and a
        # longitude band, the heading difference, then freshness and distance); what is left
        # is sorted by relation: same direction ahead (leader, a braking vehicle ahead), same
        # direction behind (only wanted when X brakes hard), crossing (ICW). Oncoming traffic
        # is dropped here. These are the raw states; the exact relations (extrapolation to X's
        # time, X's arc, the target's path history) are computed only for the few candidates
        # that could matter.
        lat, lon, heading, ue, un = x.lat, x.lon, x.heading, x.ue, x.un
        radius = self._radius
        r2 = self._r2
        kx = M_PER_DEG * math.cos(math.radians(lat))
        band_lat = self._band_lat
        band_lon = radius / max(kx, 1e-9) * _BAND_SLACK
        max_age = self._max_age_ns
        same_deg = path.same_direction_deg
        icw_lo, icw_hi = c.icw.min_angle_deg, c.icw.max_angle_deg
        ahead: list[tuple[float, Track, float, float, float]] = []  # d2, n, de, dn, fwd
        behind: list[tuple[float, Track]] = []
        cross: list[tuple[Track, float, float]] = []
        # Whole heading sectors of oncoming traffic are not even visited.
        skip = sectors_beyond(heading, self._max_diff_deg)
        for bucket in tracks.vehicle_grid.buckets(lat, lon, radius, skip):
            for n in bucket:
                dlat = n.lat - lat
                if dlat > band_lat or dlat < -band_lat:
                    continue
                dlon = n.lon - lon
                if dlon > band_lon or dlon < -band_lon:
                    continue
                diff = abs(n.heading - heading) % 360.0
                if diff > 180.0:
                    diff = 360.0 - diff
                if diff <= same_deg:
                    de = dlon * kx
                    dn = dlat * M_PER_DEG
                    fwd = de * ue + dn * un
                    if fwd > 0.0 or (x_brakes and n.owned and n is not x):
                        age = n.t_ns - t
                        d2 = de * de + dn * dn
                        if -max_age <= age <= max_age and d2 <= r2:
                            if fwd > 0.0:
                                ahead.append((d2, n, de, dn, fwd))
                            else:
                                behind.append((d2, n))
                if (icw_on and icw_lo <= diff <= icw_hi and (x_owned or n.owned)
                        and -max_age <= n.t_ns - t <= max_age):
                    de = dlon * kx
                    dn = dlat * M_PER_DEG
                    if de * de + dn * dn <= r2:
                        cross.append((n, de, dn))

        if ebw_on and x_owned:  # a vehicle ahead of X brakes hard
            for _, n, _, _, _ in ahead:
                if n.braking_hard:
                    self._emit(ebw.assess(x, n, relate(x, n, t, path), t, c.ebw, path),
                               now_ns, out)
        if x_brakes:  # X brakes hard: warn those behind it
            r2_ebw = self._r2_ebw
            for d2, n in behind:
                if d2 <= r2_ebw:
                    self._emit(ebw.assess(n, x, relate(n, x, t, path), t, c.ebw, path),
                               now_ns, out)
        if fcw_on and x.followers:  # X is the leader of someone behind
            for n in list(x.followers):
                if self._is_behind(x, n, kx, r2) and n.owned:
                    key = (WarningType.FCW, n.agent, (x.agent,))
                    rel = relate(n, x, t, path)
                    self._emit(fcw.assess(n, x, rel, t, c.fcw, path, active(key)), now_ns, out)
        for n, de, dn in cross:
            if not self._may_cross(x, n, de, dn):
                continue
            n_owned = self._owned(n)
            key = (WarningType.ICW, x.agent, (n.agent,))
            pair = icw.assess(x, n, t, t, c.icw, active(key))
            if pair is not None:
                if x_owned:
                    self._emit(pair[0], now_ns, out)
                if n_owned:
                    self._emit(pair[1], now_ns, out)
        leader: Track | None = None
        if fcw_on and x_owned and ahead:  # X's leader: the nearest vehicle ahead in X's lane
            leader = self._find_leader(x, ahead, now_ns, out)
        tracks.set_leader(x, leader)

        if c.vru.enabled and x_owned and tracks.objects:
            r = x.speed * c.vru.horizon_s + 20.0
            for obj in tracks.objects_near(x.lat, x.lon, min(r, c.vru.range_m), t):
                key = (WarningType.VRUCW, x.agent, (obj.key,))
                self._emit(vru.assess(x, obj, t, t, c.vru, path, active(key)), now_ns, out)
        return out

    def _is_behind(self, x: Track, n: Track, kx: float, r2: float) -> bool:
        """``n`` is a fresh neighbour of ``x`` in the same direction and not in front of it."""
        age = n.t_ns - x.t_ns
        if age > self._max_age_ns or age < -self._max_age_ns:
            return False
        de = (n.lon - x.lon) * kx
        dn = (n.lat - x.lat) * M_PER_DEG
        if de * de + dn * dn > r2:
            return False
        diff = abs(n.heading - x.heading) % 360.0
        if diff > 180.0:
            diff = 360.0 - diff
        return diff <= self.config.path.same_direction_deg and de * x.ue + dn * x.un <= 0.0

    def _find_leader(self, x: Track, ahead: list[tuple[float, Track, float, float, float]],
                     now_ns: int, out: list[HazardWarning]) -> Track | None:
        c = self.config
        p = c.path
        r2 = self._r2_fcw
        # Nearest first: the leader is the nearest candidate whose exact relation puts it in
        # X's lane. Before that relation (extrapolation, path history) is computed, the lateral
        # offset from X's predicted arc on the raw states rules out the vehicles clearly in
        # another lane, unless a bent path could still put them in X's lane by their trail.
        cands = [a for a in ahead if a[0] <= r2]
        if len(cands) > 1:
            cands.sort(key=itemgetter(0))
        ue, un, k, heading = x.ue, x.un, x.k, x.heading
        near_lane = p.lane_half_width_m + 1.5
        trail_lateral = p.trail_max_lateral_m
        straight = abs(k) < 1e-5
        sgn = 1.0 if k > 0 else -1.0
        radius = 0.0 if straight else 1.0 / abs(k)
        t = x.t_ns
        for _, n, de, dn, fwd in cands:
            left = dn * ue - de * un
            lateral = abs(left if straight else radius - math.hypot(fwd, left * sgn - radius))
            if lateral > near_lane and not (lateral <= trail_lateral and (
                abs(n.k - k) > SAME_CURVE
                or abs((n.heading - (heading - math.degrees(k * fwd)) + 180.0) % 360.0 - 180.0)
                > ARC_MISMATCH_DEG
            )):
                continue
            rel = relate(x, n, t, p)
            if fcw.is_leader_candidate(rel, c.fcw, p):
                key = (WarningType.FCW, x.agent, (n.agent,))
                self._emit(fcw.assess(x, n, rel, t, c.fcw, p, self.episodes.is_active(key)),
                           now_ns, out)
                return n
        return None

    def _may_cross(self, x: Track, n: Track, de: float, dn: float) -> bool:
        """The heading lines of ``x`` and ``n`` meet where both could arrive in time."""
        det = n.ue * x.un - x.ue * n.un
        if abs(det) <= 1e-6:
            return False
        sa = (n.ue * dn - de * n.un) / det
        sb = (x.ue * dn - x.un * de) / det
        reach = self.config.icw.horizon_s + 1.0
        return (-30.0 < sa < x.speed * reach + 10.0) and (-30.0 < sb < n.speed * reach + 10.0)

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

