"""Campaigns: what to collect when.

A campaign sets a policy per stream: ``always`` (optionally thinned to ``rate_hz``),
``triggered`` (held in a pre-trigger ring buffer, bounded in data time and bytes, and uploaded
for ``[t - pre_s, t + post_s]`` when a trigger fires) or ``off``. Triggers are conditions in the
language of :mod:`edge_agent.campaigns.expression`; one fires on the rising edge of its
condition, and overlapping windows of a stream merge.

Several campaigns may be active at once: a stream is ``always`` if any campaign says so, else
``triggered`` if any says so (by any of their triggers), else ``off`` if one says so; streams no
campaign names follow the campaigns' ``default_mode`` (``always`` unless every campaign says
``off``). With no campaign at all every stream is always on.

Campaigns come from the configuration file and from the agent's retained ``config`` topic
(JSON or msgpack: ``{"campaigns": [...]}``, the same shape as the TOML ``[[campaigns]]``
tables). A set that fails validation is rejected with a message and the previous one stays.

Windows and rings run on data time (the records' capture time), so a trigger selects the same
records whatever the replay speed, and a lagging source still gets its window.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent.campaigns.expression import Condition, check
from edge_agent.errors import CampaignError
from wire.topics import check_stream

log = logging.getLogger(__name__)

#: Largest campaign message accepted from the config topic.
MAX_CAMPAIGN_MESSAGE_BYTES = 256 * 1024
#: Extra data time a ring keeps beyond the longest pre-trigger window (for lagging sources).
RING_SLACK_S = 2.0


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamPolicy(_Model):
    mode: Literal["always", "triggered", "off"] = "always"
    #: For ``always``: at most this many records per second (0 = every record).
    rate_hz: float = Field(default=0.0, ge=0)


class TriggerSpec(_Model):
    name: str
    condition: str
    pre_s: float = Field(default=5.0, ge=0, le=600)
    post_s: float = Field(default=5.0, ge=0, le=600)
    #: Triggered streams this trigger uploads (default: every triggered stream of its campaign).
    streams: list[str] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        check_stream(v)
        return v

    @field_validator("condition")
    @classmethod
    def _condition(cls, v: str) -> str:
        return check(v)


class CampaignSpec(_Model):
    name: str
    streams: dict[str, StreamPolicy] = {}
    triggers: list[TriggerSpec] = []
    default_mode: Literal["always", "off"] = "always"
    #: Bytes each triggered stream's pre-trigger ring may hold.
    ring_max_mb: float = Field(default=64.0, gt=0)
    #: Data time a ring keeps beyond the longest pre-trigger window, so a stream running ahead
    #: of the signals that trigger it (a replay on a busy machine) still has its window.
    ring_slack_s: float = Field(default=RING_SLACK_S, ge=0, le=600)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        check_stream(v)
        return v

    @model_validator(mode="after")
    def _triggers_cover_streams(self) -> CampaignSpec:
        triggered = {s for s, p in self.streams.items() if p.mode == "triggered"}
        for s in self.streams:
            check_stream(s)
        for t in self.triggers:
            for s in t.streams or ():
                if s not in triggered:
                    raise ValueError(f"trigger {t.name!r} names stream {s!r}, which is not triggered")
        lonely = [s for s in triggered if not any(t.streams is None or s in t.streams for t in self.triggers)]
        if lonely:
            raise ValueError(f"triggered streams {sorted(lonely)} have no trigger")
        return self


def parse_campaign_message(payload: bytes) -> list[CampaignSpec]:
    """Decode a ``config`` topic message into campaigns (JSON or msgpack), or raise."""
    if len(payload) > MAX_CAMPAIGN_MESSAGE_BYTES:
        raise CampaignError(f"config message of {len(payload)} bytes exceeds {MAX_CAMPAIGN_MESSAGE_BYTES}")
    obj: Any
    try:
        if payload[:1] in (b"{", b" ", b"\n", b"\t", b"\r"):
            obj = json.loads(payload.decode("utf-8"))
        else:
            obj = msgpack.unpackb(payload, raw=False, max_bin_len=0, max_ext_len=0)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CampaignError(f"config message is neither JSON nor msgpack: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("campaigns"), list):
        raise CampaignError("config message must be a map with a 'campaigns' list")
    return specs_from(obj["campaigns"])


def specs_from(items: Iterable[Any]) -> list[CampaignSpec]:
    out: list[CampaignSpec] = []
    for i, item in enumerate(items):
        try:
            out.append(CampaignSpec.model_validate(item))
        except ValidationError as exc:
            parts = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                parts.append(f"campaigns.{i}{'.' + loc if loc else ''}: {err['msg']}")
            raise CampaignError("; ".join(parts)) from exc
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise CampaignError(f"campaign names must be unique: {names}")
    return out


@dataclass(frozen=True, slots=True)
class Fired:
    """A trigger that fired: the window it opened on each stream."""

    campaign: str
    trigger: str
    t_ns: int
    start_ns: int
    end_ns: int
    streams: tuple[str, ...]
    condition: str


@dataclass(slots=True)
class _Ring:
    """A triggered stream's pre-trigger buffer and its open windows."""

    keep_ns: int
    max_bytes: int
    items: deque[tuple[int, Any, int]]
    nbytes: int = 0
    dropped: int = 0
    windows: list[list[int]] | None = None  # merged [start, end] pairs

    def open(self, start: int, end: int) -> None:
        ws = self.windows or []
        for w in ws:
            if start <= w[1] and end >= w[0]:
                w[0] = min(w[0], start)
                w[1] = max(w[1], end)
                break
        else:
            ws.append([start, end])
        ws.sort()
        self.windows = ws

    def covering(self, t: int) -> bool:
        return any(w[0] <= t <= w[1] for w in self.windows or ())


@dataclass(slots=True)
class _Trigger:
    campaign: str
    spec: TriggerSpec
    condition: Condition
    streams: tuple[str, ...]
    was_true: bool = False
    fired: int = 0


class CampaignEngine:
    """Routes records by the active campaigns; evaluates triggers over decoded signals.

    ``forward(stream, record)`` receives what should be batched; ``on_fire(fired)`` hears
    each trigger. All calls happen on the agent's event loop.
    """

    def __init__(
        self,
        specs: list[CampaignSpec],
        forward: Callable[[str, Any], None],
        on_fire: Callable[[Fired], None] | None = None,
    ) -> None:
        self._forward = forward
        self._on_fire = on_fire
        self.specs: list[CampaignSpec] = []
        self._policy: dict[str, StreamPolicy] = {}
        self._default: Literal["always", "off"] = "always"
        self._rings: dict[str, _Ring] = {}
        self._triggers: list[_Trigger] = []
        self._by_signal: dict[str, list[_Trigger]] = {}
        self._last_kept: dict[str, int] = {}
        self.filtered: dict[str, int] = {}
        self.fired: list[Fired] = []
        self.rejected: str | None = None
        #: Called after every change of the active campaigns.
        self.on_load: Callable[[], None] | None = None
        self.load(specs)

    # configuration

    def load(self, specs: list[CampaignSpec]) -> None:
        """Activate ``specs`` (already validated); rings of still-triggered streams are kept."""
        policy: dict[str, StreamPolicy] = {}
        rank = {"always": 3, "triggered": 2, "off": 1}
        for c in specs:
            for s, p in c.streams.items():
                cur = policy.get(s)
                faster = p.mode == cur.mode == "always" and (
                    p.rate_hz == 0 or p.rate_hz > cur.rate_hz > 0
                ) if cur is not None else False
                if cur is None or rank[p.mode] > rank[cur.mode] or faster:
                    policy[s] = p
        triggers: list[_Trigger] = []
        pre: dict[str, float] = {}
        ring_mb: dict[str, float] = {}
        slack: dict[str, float] = {}
        for c in specs:
            own = tuple(s for s, p in c.streams.items() if p.mode == "triggered")
            for t in c.triggers:
                streams = tuple(t.streams) if t.streams is not None else own
                streams = tuple(s for s in streams if policy[s].mode == "triggered")
                triggers.append(_Trigger(c.name, t, Condition(t.condition), streams))
                for s in streams:
                    pre[s] = max(pre.get(s, 0.0), t.pre_s)
                    ring_mb[s] = max(ring_mb.get(s, 0.0), c.ring_max_mb)
                    slack[s] = max(slack.get(s, 0.0), c.ring_slack_s)
        rings: dict[str, _Ring] = {}
        for s, p in policy.items():
            if p.mode != "triggered":
                continue
            keep = int((pre.get(s, 0.0) + slack.get(s, RING_SLACK_S)) * 1e9)
            old = self._rings.get(s)
            ring = old or _Ring(keep, 0, deque())
            ring.keep_ns = keep
            ring.max_bytes = int(ring_mb.get(s, 64.0) * 1024 * 1024)
            rings[s] = ring
        self.specs = list(specs)
        self._policy = policy
        self._default = "always" if not specs or any(c.default_mode == "always" for c in specs) else "off"
        self._rings = rings
        self._triggers = triggers
        self._by_signal = {}
        for tr in triggers:
            for name in tr.condition.signals:
                self._by_signal.setdefault(name, []).append(tr)
        self._last_kept = {}
        if self.on_load is not None:
            self.on_load()
        log.info(
            "campaigns: active %s (%d triggers; triggered streams %s)",
            [c.name for c in specs] or "none (every stream always on)", len(triggers),
            sorted(rings) or "none",
        )

    def apply_message(self, payload: bytes) -> bool:
        """Replace the campaigns from a ``config`` message; a bad one is rejected, logged, kept."""
        try:
            specs = parse_campaign_message(payload)
            # Compile before switching, so a condition that fails to compile changes nothing.
            for c in specs:
                for t in c.triggers:
                    Condition(t.condition)
        except CampaignError as exc:
            self.rejected = str(exc)
            log.error("campaigns: rejected config message (%s); keeping %s", exc,
                      [c.name for c in self.specs] or "none")
            return False
        self.rejected = None
        self.load(specs)
        return True

    def is_plain(self, stream: str) -> bool:
        """True if every record of ``stream`` is simply forwarded (always on, not thinned)."""
        p = self._policy.get(stream)
        if p is None:
            return self._default == "always"
        return p.mode == "always" and p.rate_hz == 0

    def mode(self, stream: str) -> str:
        p = self._policy.get(stream)
        return p.mode if p is not None else self._default

    @property
    def signals(self) -> frozenset[str]:
        return frozenset(self._by_signal)

    # data path

    def route(self, stream: str, record: Any, t_ns: int, size: int) -> None:
        """Send ``record`` on, hold it in the stream's ring, or drop it, by policy."""
        p = self._policy.get(stream)
        if p is None:
            if self._default == "always":
                self._forward(stream, record)
            else:
                self.filtered[stream] = self.filtered.get(stream, 0) + 1
            return
        if p.mode == "always":
            if p.rate_hz > 0:
                last = self._last_kept.get(stream)
                if last is not None and 0 <= t_ns - last < int(1e9 / p.rate_hz):
                    self.filtered[stream] = self.filtered.get(stream, 0) + 1
                    return
                self._last_kept[stream] = t_ns
            self._forward(stream, record)
            return
        if p.mode == "off":
            self.filtered[stream] = self.filtered.get(stream, 0) + 1
            return
        ring = self._rings[stream]
        if ring.windows:
            if ring.covering(t_ns):
                self._forward(stream, record)
                return
            # Close windows this stream has moved past.
            ring.windows = [w for w in ring.windows if w[1] >= t_ns] or None
        ring.items.append((t_ns, record, size))
        ring.nbytes += size
        newest = t_ns
        items = ring.items
        while items and (items[0][0] < newest - ring.keep_ns or ring.nbytes > ring.max_bytes):
            _, _, sz = items.popleft()
            ring.nbytes -= sz
            ring.dropped += 1

    def on_signal(self, name: str, t_ns: int, value: float) -> None:
        """Feed a decoded signal sample to the triggers that read it."""
        trs = self._by_signal.get(name)
        if not trs:
            return
        for tr in trs:
            tr.condition.update(name, t_ns, value)
        for tr in trs:
            now = tr.condition.evaluate(t_ns)
            if now and not tr.was_true:
                self._fire(tr, t_ns)
            tr.was_true = now

    def on_event(self, kind: str, t_ns: int) -> None:
        """An agent event of ``kind`` (``event.KIND`` in conditions is 1 at this instant)."""
        name = f"event.{kind}"
        if name in self._by_signal:
            self.on_signal(name, t_ns, 1.0)
            for tr in self._by_signal[name]:
                tr.condition.update(name, t_ns, 0.0)

    def _fire(self, tr: _Trigger, t_ns: int) -> None:
        start = t_ns - int(tr.spec.pre_s * 1e9)
        end = t_ns + int(tr.spec.post_s * 1e9)
        tr.fired += 1
        fired = Fired(tr.campaign, tr.spec.name, t_ns, start, end, tr.streams, tr.spec.condition)
        self.fired.append(fired)
        if len(self.fired) > 1000:
            del self.fired[:500]
        log.info("campaigns: trigger %s/%s fired at %d; uploading [%+.1f s, %+.1f s] of %s",
                 tr.campaign, tr.spec.name, t_ns, -tr.spec.pre_s, tr.spec.post_s, list(tr.streams))
        for s in tr.streams:
            ring = self._rings.get(s)
            if ring is None:
                continue
            ring.open(start, end)
            keep: deque[tuple[int, Any, int]] = deque()
            for item in ring.items:
                if start <= item[0] <= end:
                    ring.nbytes -= item[2]
                    self._forward(s, item[1])
                else:
                    keep.append(item)
            ring.items = keep
        if self._on_fire is not None:
            self._on_fire(fired)

    def stats(self) -> dict[str, Any]:
        return {
            "active": [c.name for c in self.specs],
            "rejected": self.rejected,
            "triggers": {f"{t.campaign}/{t.spec.name}": t.fired for t in self._triggers},
            "rings": {s: {"records": len(r.items), "bytes": r.nbytes, "dropped": r.dropped}
                      for s, r in self._rings.items()},
            "filtered": dict(self.filtered),
        }


def campaign_message(specs: Iterable[CampaignSpec | Mapping[str, Any]]) -> bytes:
    """Encode campaigns as a ``config`` topic message (JSON), for servers and tests."""
    items = [s.model_dump() if isinstance(s, CampaignSpec) else dict(s) for s in specs]
    return json.dumps({"campaigns": items}).encode()
