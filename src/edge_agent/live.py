"""The live plane: ``state/1`` at 10 Hz out, hazard warnings in.

:class:`LiveState` keeps the latest GNSS fix and the decoded signals named in the ``[live]``
configuration (``speed_mps = {signal = "SPEED.SPEED", scale = 0.2777}`` and so on) and, at
``rate_hz``, publishes a :class:`wire.state.State` at QoS 0 on ``cvis/v1/live/{tile}/{agent}``.
Live states are latest-wins: never spooled, never queued while the link is down (they are
dropped and counted), so they resume with the first tick after a reconnect.

Fields: position, elevation, heading (course) and accuracy from GNSS; speed from the speed
signal, else GNSS; acceleration from the acceleration signal, else the change of speed over
the last half second; brake flag from the brake signal; hard braking when deceleration exceeds
``hard_braking_mps2``. The state's time is the capture time of the newest input.

Warnings arrive on the agent's ``warning`` topic (:class:`wire.warning.HazardWarning`); each is
logged with its end-to-end latency (from the capture of the state that triggered it to its
arrival here, both on the server's clock using the agent's offset estimate).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from edge_agent.clock import AgentClock
from edge_agent.config import LiveConfig, SignalRef
from wire.errors import WireError
from wire.schemas import GnssFix
from wire.state import Brake, State
from wire.topics import live_topic, tile_of

log = logging.getLogger(__name__)

_FIELDS = ("speed_mps", "accel_mps2", "yaw_rate_dps", "steering_deg", "brake")
#: Window over which acceleration is derived from speed when no signal gives it.
_ACCEL_WINDOW_NS = 500_000_000


class LiveState:
    def __init__(
        self,
        config: LiveConfig,
        agent_id: str,
        clock: AgentClock,
        publish: Callable[[str, bytes], bool],
    ) -> None:
        self.config = config
        self.agent_id = agent_id
        self.clock = clock
        self._publish = publish
        self._refs: dict[str, tuple[str, SignalRef]] = {}
        for f in _FIELDS:
            ref = getattr(config, f)
            if ref is not None:
                self._refs[ref.signal] = (f, ref)
        self._values: dict[str, float] = {}
        self._speeds: deque[tuple[int, float]] = deque(maxlen=256)
        self._fix: GnssFix | None = None
        self._fix_mono = 0.0
        self._newest_ns = 0
        self._seq = 0
        self.published = 0
        self.dropped_offline = 0
        self.no_fix = 0
        self.warnings = 0
        self.bad_warnings = 0
        self.last_warning_latency_ms: float | None = None

    @property
    def signals(self) -> frozenset[str]:
        return frozenset(self._refs)

    def on_signal(self, name: str, t_ns: int, value: float) -> None:
        entry = self._refs.get(name)
        if entry is None:
            return
        field, ref = entry
        v = value * ref.scale + ref.offset
        self._values[field] = v
        if field == "speed_mps":
            self._speeds.append((t_ns, v))
        if t_ns > self._newest_ns:
            self._newest_ns = t_ns

    def on_fix(self, fix: GnssFix) -> None:
        if not (math.isfinite(fix.lat) and math.isfinite(fix.lon)):
            return
        self._fix = fix
        self._fix_mono = time.monotonic()
        if fix.timestamp_ns > self._newest_ns:
            self._newest_ns = fix.timestamp_ns

    def build(self) -> State | None:
        fix = self._fix
        if fix is None or time.monotonic() - self._fix_mono > self.config.max_fix_age_s:
            return None
        vals = self._values
        speed = vals.get("speed_mps")
        if speed is None or not math.isfinite(speed):
            speed = fix.speed_mps if math.isfinite(fix.speed_mps) else 0.0
        speed = min(max(speed, 0.0), 655.0)
        accel = vals.get("accel_mps2")
        if accel is None:
            accel = self._derived_accel()
        brake = Brake.NONE
        if vals.get("brake", 0.0) > 0:
            brake |= Brake.APPLIED
        if accel is not None and accel <= -self.config.hard_braking_mps2:
            brake |= Brake.HARD_BRAKING
        heading = fix.course_deg if math.isfinite(fix.course_deg) else 0.0
        self._seq = (self._seq + 1) & 0xFFFF
        return State(
            timestamp_ns=self._newest_ns or self.clock.now_ns(),
            lat=fix.lat,
            lon=fix.lon,
            speed_mps=speed,
            heading_deg=heading,
            seq=self._seq,
            clock_offset_us=max(-(2**31), min(2**31 - 1, self.clock.offset_ns // 1000)),
            time_quality=self.clock.quality,
            elevation_m=fix.alt_m if math.isfinite(fix.alt_m) else 0.0,
            accel_mps2=accel if accel is not None and math.isfinite(accel) else 0.0,
            yaw_rate_dps=_finite(vals.get("yaw_rate_dps")),
            steering_deg=_finite(vals.get("steering_deg")),
            brake=brake,
            length_m=self.config.length_m,
            width_m=self.config.width_m,
            pos_accuracy_m=fix.h_acc_m,
        )

    def _derived_accel(self) -> float | None:
        s = self._speeds
        if len(s) < 2:
            return None
        t1, v1 = s[-1]
        for t0, v0 in reversed(s):
            if t1 - t0 >= _ACCEL_WINDOW_NS:
                return (v1 - v0) / ((t1 - t0) / 1e9)
        return None

    def tick(self, connected: bool) -> bool:
        """Build and publish one state; False if there was nothing to send or no link."""
        state = self.build()
        if state is None:
            self.no_fix += 1
            return False
        if not connected:
            self.dropped_offline += 1
            return False
        try:
            topic = live_topic(tile_of(state.lat, state.lon), self.agent_id)
            payload = state.encode()
        except WireError as exc:
            log.warning("live: cannot encode state (%s)", exc)
            return False
        if self._publish(topic, payload):
            self.published += 1
            return True
        self.dropped_offline += 1
        return False

    async def run(self, connected: Callable[[], bool]) -> None:
        period = 1.0 / self.config.rate_hz
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            self.tick(connected())
            next_t += period
            delay = next_t - loop.time()
            if delay < -period:  # fell behind (a stall): do not burst to catch up
                next_t = loop.time()
                delay = 0
            await asyncio.sleep(max(delay, 0))

    # warnings

    def on_warning(self, payload: bytes, topic: str, retain: bool) -> None:
        if retain:
            return  # an old warning kept by the broker: expired by construction
        try:
            from wire.warning import HazardWarning
        except ImportError:  # pragma: no cover - the warning format ships with wire
            log.info("live: warning received (%d bytes, format unknown)", len(payload))
            return
        try:
            w = HazardWarning.decode(payload)
        except WireError as exc:
            self.bad_warnings += 1
            log.warning("live: undecodable warning of %d bytes (%s)", len(payload), exc)
            return
        self.warnings += 1
        server_now = self.clock.now_ns() + self.clock.offset_ns
        e2e_ms = (server_now - w.source_ns) / 1e6 if w.source_ns else float("nan")
        issue_ms = (server_now - w.issued_ns) / 1e6
        self.last_warning_latency_ms = e2e_ms if math.isfinite(e2e_ms) else issue_ms
        log.warning(
            "live: %s %s %s from %s, ttc %s; latency %.1f ms end to end, %.1f ms since issue%s",
            w.type.value, w.severity.name, w.status.value, ",".join(w.counterparts),
            "-" if w.ttc_s is None else f"{w.ttc_s:.2f} s", e2e_ms, issue_ms,
            " (EXPIRED)" if w.expired(server_now) else "",
        )

    def stats(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "dropped_offline": self.dropped_offline,
            "no_fix": self.no_fix,
            "warnings": self.warnings,
            "bad_warnings": self.bad_warnings,
            "last_warning_latency_ms": self.last_warning_latency_ms,
        }


def _finite(v: float | None) -> float:
    return v if v is not None and math.isfinite(v) else 0.0
