"""The agent's clock: capture time, the offset to the server, and how far to trust both.

Records are stamped with the wall clock (UTC ns), which is what people and the server need;
everything that orders or paces data (batch age, sequence numbers, uplink timeouts) runs on the
monotonic clock, so a wall-clock jump never reorders or drops data.

The offset to the server is estimated NTP-style over MQTT with :class:`wire.control.TimeRequest`
and :class:`wire.control.TimeResponse` (four timestamps). A small clock filter keeps the last
``filter_samples`` samples and uses the offset of the one with the smallest round trip (the
least disturbed by queueing); samples slower than ``max_delay_ms`` are ignored.

Time quality (carried by every batch and live state): ``SERVER_SYNCED`` while a sample is
fresher than ``stale_after_s``, ``FREE_RUNNING`` otherwise. A wall-clock jump (the difference
between wall and monotonic time moves by more than ``jump_threshold_ms``) is logged, drops the
samples (they measured the old clock) and the quality, and asks for a new sample at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.config import ClockConfig
from wire.control import TimeRequest, TimeResponse
from wire.envelope import TimeQuality

log = logging.getLogger(__name__)

#: Requests older than this are forgotten (their response, if any, is ignored).
REQUEST_TIMEOUT_NS = 10_000_000_000
MAX_PENDING = 16


@dataclass(frozen=True, slots=True)
class ClockSample:
    offset_ns: int
    delay_ns: int
    mono_ns: int


class AgentClock:
    def __init__(
        self,
        config: ClockConfig | None = None,
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.config = config or ClockConfig()
        self.wall_ns = wall_ns
        self.mono_ns = mono_ns
        self._samples: deque[ClockSample] = deque(maxlen=self.config.filter_samples)
        self._pending: dict[int, int] = {}
        self._next_id = 1
        self._ref = wall_ns() - mono_ns()
        self.offset_ns = 0
        self.delay_ns: int | None = None
        self.jumps = 0
        self.last_jump_ns = 0
        self.rejected = 0
        self.responses = 0

    def now_ns(self) -> int:
        """Capture time: UTC ns from the wall clock."""
        return self.wall_ns()

    @property
    def quality(self) -> TimeQuality:
        if not self._samples:
            return TimeQuality.FREE_RUNNING
        age_ns = self.mono_ns() - self._samples[-1].mono_ns
        if age_ns > self.config.stale_after_s * 1e9:
            return TimeQuality.FREE_RUNNING
        return TimeQuality.SERVER_SYNCED

    def request(self) -> TimeRequest:
        """A new time request (send it on the agent's ``time/request`` topic)."""
        now_mono = self.mono_ns()
        for rid, sent in list(self._pending.items()):
            if now_mono - sent > REQUEST_TIMEOUT_NS or len(self._pending) >= MAX_PENDING:
                del self._pending[rid]
        rid = self._next_id
        self._next_id = (self._next_id + 1) % 2**31 or 1
        self._pending[rid] = now_mono
        return TimeRequest(rid, self.wall_ns())

    def on_response(self, resp: TimeResponse) -> ClockSample | None:
        """Take a response into the filter; None if unknown, stale or implausible."""
        t4 = self.wall_ns()
        if self._pending.pop(resp.request_id, None) is None:
            self.rejected += 1
            return None
        offset, delay = resp.offset_and_delay(t4)
        if delay < 0 or delay > self.config.max_delay_ms * 1e6:
            self.rejected += 1
            log.debug("clock: sample rejected (round trip %.1f ms)", delay / 1e6)
            return None
        sample = ClockSample(offset, delay, self.mono_ns())
        self._samples.append(sample)
        self.responses += 1
        best = min(self._samples, key=lambda s: s.delay_ns)
        first = self.delay_ns is None
        self.offset_ns, self.delay_ns = best.offset_ns, best.delay_ns
        if first:
            log.info("clock: synced to server, offset %+.3f ms (round trip %.3f ms)",
                     self.offset_ns / 1e6, self.delay_ns / 1e6)
        return sample

    def check_jump(self) -> int:
        """Detect a wall-clock step; returns its size in ns (0 if none)."""
        ref = self.wall_ns() - self.mono_ns()
        step = ref - self._ref
        if abs(step) <= self.config.jump_threshold_ms * 1e6:
            self._ref = ref
            return 0
        self._ref = ref
        self.jumps += 1
        self.last_jump_ns = step
        self._samples.clear()
        self._pending.clear()
        self.delay_ns = None
        log.warning("clock: wall clock jumped by %+.3f s; offset to the server must be re-measured",
                    step / 1e9)
        return step

    def stats(self) -> dict[str, Any]:
        return {
            "offset_ns": self.offset_ns,
            "delay_ns": self.delay_ns,
            "quality": self.quality.name,
            "samples": len(self._samples),
            "jumps": self.jumps,
            "rejected": self.rejected,
        }
