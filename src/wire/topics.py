"""Topic names of the wire contract: builders, subscription filters and a strict parser.

Every topic names its agent, so a broker ACL can pin an agent to its own
topics (``cvis/v1/%u/#`` and ``cvis/v1/live/+/%u``). Tiles are named like
``n3774w12243`` (MQTT forbids ``+`` in a topic name, so no signs).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

from wire.errors import TopicError

PREFIX = "cvis/v1"
LIVE = "live"
_AGENT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STREAM_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TILE_RE = re.compile(r"([ns])([0-9]{1,5})([ew])([0-9]{1,5})")
#: Agent ids that would make topics ambiguous.
RESERVED_AGENTS = frozenset({LIVE})
#: Edge of a live-plane tile, in degrees of latitude and longitude (about 1.1 km north-south).
TILE_DEG = 0.01


class TopicKind(enum.Enum):
    BATCH = "batch"
    ACK = "ack"
    HEALTH = "health"
    CONFIG = "config"
    WARNING = "warning"
    TIME_REQUEST = "time/request"
    TIME_RESPONSE = "time/response"
    LIVE = "live"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic. ``stream`` is set for batches, ``tile`` for live state."""

    kind: TopicKind
    agent: str
    stream: str | None = None
    tile: str | None = None

    def __str__(self) -> str:
        if self.kind is TopicKind.BATCH:
            return batch_topic(self.agent, self.stream or "")
        if self.kind is TopicKind.LIVE:
            return live_topic(self.tile or "", self.agent)
        return f"{PREFIX}/{self.agent}/{self.kind.value}"


def check_agent(agent: str) -> str:
    """Return ``agent`` if it is a valid agent id, else raise :class:`TopicError`."""
    if not isinstance(agent, str) or not _AGENT_RE.fullmatch(agent):
        raise TopicError(
            f"invalid agent id {agent!r}: use 1-64 letters, digits, '-' or '_'"
        )
    if agent in RESERVED_AGENTS:
        raise TopicError(f"agent id {agent!r} is reserved")
    return agent


def check_stream(stream: str) -> str:
    if not isinstance(stream, str) or not _STREAM_RE.fullmatch(stream):
        raise TopicError(
            f"invalid stream name {stream!r}: use 1-64 letters, digits, '.', '-' or '_'"
        )
    return stream


def check_tile(tile: str) -> str:
    if not isinstance(tile, str) or not _TILE_RE.fullmatch(tile):
        raise TopicError(f"invalid tile {tile!r}: expected like 'n3774w12243'")
    return tile


def batch_topic(agent: str, stream: str) -> str:
    return f"{PREFIX}/{check_agent(agent)}/batch/{check_stream(stream)}"


def ack_topic(agent: str) -> str:
    return f"{PREFIX}/{check_agent(agent)}/ack"


def health_topic(agent: str) -> str:
    return f"{PREFIX}/{check_agent(agent)}/health"


def config_topic(agent: str) -> str:
    return f"{PREFIX}/{check_agent(agent)}/config"


def warning_topic(agent: str) -> str:
    return f"{PREFIX}/{check_agent(agent)}/warning"


def time_request_topic(agent: str) -> str:
    return f"{PREFIX}/{check_agent(agent)}/time/request"


def time_response_topic(agent: str) -> str:
    return f"{PREFIX}/{check_agent(agent)}/time/response"


def live_topic(tile: str, agent: str) -> str:
    return f"{PREFIX}/{LIVE}/{check_tile(tile)}/{check_agent(agent)}"


# Subscription filters (the only place wildcards are allowed).


def batch_filter(share_group: str | None = None) -> str:
    """Every agent's batches; with ``share_group``, a shared subscription that splits them."""
    base = f"{PREFIX}/+/batch/#"
    if share_group is None:
        return base
    check_agent(share_group)
    return f"$share/{share_group}/{base}"


def health_filter() -> str:
    return f"{PREFIX}/+/health"


def time_request_filter() -> str:
    return f"{PREFIX}/+/time/request"


def live_filter(tile: str | None = None) -> str:
    return f"{PREFIX}/{LIVE}/{check_tile(tile) if tile else '+'}/+"


# Tiles.


def tile_of(lat: float, lon: float) -> str:
    """The live-plane tile holding a WGS84 position."""
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise TopicError(f"position ({lat}, {lon}) is not a valid WGS84 latitude/longitude")
    return _tile_name(math.floor(lat / TILE_DEG), math.floor(lon / TILE_DEG))


def tile_neighbours(tile: str) -> list[str]:
    """The tile and its eight neighbours, for a hazard worker that must see across edges."""
    m = _TILE_RE.fullmatch(check_tile(tile))
    assert m is not None
    i = int(m.group(2)) * (1 if m.group(1) == "n" else -1)
    j = int(m.group(4)) * (1 if m.group(3) == "e" else -1)
    return [_tile_name(i + di, j + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]


def _tile_name(i: int, j: int) -> str:
    return f"{'n' if i >= 0 else 's'}{abs(i)}{'e' if j >= 0 else 'w'}{abs(j)}"


# Parsing.

_SIMPLE_KINDS = {
    "ack": TopicKind.ACK,
    "health": TopicKind.HEALTH,
    "config": TopicKind.CONFIG,
    "warning": TopicKind.WARNING,
}


def parse_topic(topic: str) -> Topic:
    """Parse a concrete (publish) topic; wildcards, empty levels and foreign prefixes are errors."""
    if not isinstance(topic, str) or not topic:
        raise TopicError("empty topic")
    if "+" in topic or "#" in topic:
        raise TopicError(f"topic {topic!r} contains a wildcard")
    levels = topic.split("/")
    if any(level == "" for level in levels):
        raise TopicError(f"topic {topic!r} has an empty level")
    if len(levels) < 3 or "/".join(levels[:2]) != PREFIX:
        raise TopicError(f"topic {topic!r} does not start with {PREFIX!r}")
    rest = levels[2:]
    if rest[0] == LIVE:
        if len(rest) != 3:
            raise TopicError(f"live topic {topic!r} must be {PREFIX}/live/TILE/AGENT")
        return Topic(TopicKind.LIVE, check_agent(rest[2]), tile=check_tile(rest[1]))
    agent = check_agent(rest[0])
    tail = rest[1:]
    if len(tail) == 2 and tail[0] == "batch":
        return Topic(TopicKind.BATCH, agent, stream=check_stream(tail[1]))
    if len(tail) == 1 and tail[0] in _SIMPLE_KINDS:
        return Topic(_SIMPLE_KINDS[tail[0]], agent)
    if len(tail) == 2 and tail[0] == "time" and tail[1] in ("request", "response"):
        kind = TopicKind.TIME_REQUEST if tail[1] == "request" else TopicKind.TIME_RESPONSE
        return Topic(kind, agent)
    raise TopicError(f"topic {topic!r} is not a cvis/v1 topic")
