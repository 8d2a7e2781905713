"""One warning per episode: updates while it lasts, an end, and a refractory period after it.

Applications produce a :class:`Finding` at every evaluation where their
condition holds. Findings with the same key (application, target,
counterparts) belong to one episode:

- the first finding opens it and yields a ``new`` warning (update 0);
- later findings confirm it and yield an ``update`` only when the severity
  changed, the TTC moved by ``ttc_change_s``, or ``update_interval_s`` passed
  (so an active warning is re-sent before its ``expiry_s`` runs out, and one
  lost QoS 0 message is repaired within half a second);
- when no finding confirmed it for ``clear_after_s`` it ends with an ``end``
  warning (so the vehicle can clear its display at once);
- for ``refractory_s`` after that a finding for the same key opens nothing,
  unless it is an ALERT: a short refractory keeps a flickering condition from
  nagging, but never hides an imminent collision.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ingest_server.hazards.config import EpisodeConfig
from wire.warning import HazardWarning, Severity, Status, WarningType

log = logging.getLogger(__name__)

#: A TTC change matters (earns an update) only when the TTC is this short.
_TTC_RELEVANT_S = 6.0

EpisodeKey = tuple[WarningType, str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Finding:
    """An application's verdict, at one evaluation, that ``target`` is in danger."""

    type: WarningType
    target: str
    counterparts: tuple[str, ...]
    severity: Severity
    lat: float
    lon: float
    ttc_s: float | None = None
    time_diff_s: float | None = None
    source_ns: int = 0

    @property
    def key(self) -> EpisodeKey:
        return (self.type, self.target, self.counterparts)


@dataclass(slots=True)
class Episode:
    id: int
    finding: Finding
    opened_ns: int
    confirmed_ns: int
    sent_ns: int
    sent_severity: Severity
    sent_ttc: float | None
    updates: int = 0


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


class EpisodeBook:
    """Open episodes and refractory periods, keyed by (application, target, counterparts)."""

    def __init__(self, config: EpisodeConfig, episode_prefix: int | None = None,
                 on_change: Callable[[str, Episode], None] | None = None) -> None:
        self.config = config
        prefix = episode_prefix if episode_prefix is not None else int.from_bytes(os.urandom(4)) >> 1
        self._next_id = (prefix & 0x7FFFFFFF) << 32
        self.active: dict[EpisodeKey, Episode] = {}
        self._refractory: dict[EpisodeKey, int] = {}
        self.counts: Counter[str] = Counter()
        self._on_change = on_change

    def is_active(self, key: EpisodeKey) -> bool:
        return key in self.active

    def confirm(self, f: Finding, now_ns: int) -> HazardWarning | None:
        """Record a finding; returns the warning to send, if any."""
        c = self.config
        ep = self.active.get(f.key)
        if ep is None:
            until = self._refractory.get(f.key)
            if until is not None:
                if now_ns < until and f.severity < Severity.ALERT:
                    self.counts["refractory"] += 1
                    return None
                del self._refractory[f.key]
            if len(self.active) >= c.max_episodes:
                self.counts["overflow"] += 1
                return None
            ep = Episode(self._next_id, f, now_ns, now_ns, now_ns, f.severity, f.ttc_s)
            self._next_id += 1
            self.active[f.key] = ep
            self.counts["opened"] += 1
            if self._on_change:
                self._on_change("open", ep)
            return self._warning(ep, Status.NEW, now_ns)
        ep.finding = f
        ep.confirmed_ns = now_ns
        ttc_moved = (
            f.ttc_s is not None and ep.sent_ttc is not None
            and min(f.ttc_s, ep.sent_ttc) <= _TTC_RELEVANT_S
            and abs(f.ttc_s - ep.sent_ttc) >= c.ttc_change_s
        )
        if (f.severity != ep.sent_severity or ttc_moved
                or now_ns - ep.sent_ns >= c.update_interval_s * 1e9):
            ep.updates += 1
            ep.sent_ns, ep.sent_severity, ep.sent_ttc = now_ns, f.severity, f.ttc_s
            return self._warning(ep, Status.UPDATE, now_ns)
        return None

    def sweep(self, now_ns: int) -> list[HazardWarning]:
        """End episodes nobody confirmed for ``clear_after_s``; returns their ``end`` warnings."""
        c = self.config
        limit = now_ns - int(c.clear_after_s * 1e9)
        ended = [ep for ep in self.active.values() if ep.confirmed_ns < limit]
        out = []
        for ep in ended:
            del self.active[ep.finding.key]
            ep.updates += 1
            self._refractory[ep.finding.key] = now_ns + int(c.refractory_s * 1e9)
            self.counts["ended"] += 1
            if self._on_change:
                self._on_change("end", ep)
            out.append(self._warning(ep, Status.END, now_ns))
        if self._refractory and len(self._refractory) > 4 * len(self.active) + 64:
            self._refractory = {k: t for k, t in self._refractory.items() if t > now_ns}
        return out

    def _warning(self, ep: Episode, status: Status, now_ns: int) -> HazardWarning:
        f = ep.finding
        expires = now_ns if status is Status.END else now_ns + int(self.config.expiry_s * 1e9)
        return HazardWarning(
            type=f.type, severity=f.severity, target=f.target, counterparts=f.counterparts,
            lat=f.lat, lon=f.lon, issued_ns=now_ns, expires_ns=expires, episode=ep.id,
            update=ep.updates, status=status, ttc_s=_round(f.ttc_s),
            time_diff_s=_round(f.time_diff_s), source_ns=f.source_ns,
        )
