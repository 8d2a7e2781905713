"""The small interface every source implements, its supervisor and the registry by name.

A source turns a device (or a recorded capture) into records on one or more streams. It
declares its streams and their schemas up front (:meth:`Source.streams`), then
:meth:`Source.run` emits records through its :class:`SourceContext` until the device ends (a
replay) or fails. :func:`supervise` retries a failing source with capped, jittered backoff,
counts and reports the failure (health, an ``event`` record), and lets every other source
carry on.

Implementations are found by the ``type`` of a ``[[sources]]`` table through :data:`REGISTRY`
and imported only when a configuration names them (a missing OpenCV breaks only cameras).
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from edge_agent.clock import AgentClock
from edge_agent.config import SourceConfig, format_validation_error
from edge_agent.errors import ConfigError, SourceError
from wire.columns import TableSchema

log = logging.getLogger(__name__)

#: ``type`` -> "module:Class", imported on first use.
REGISTRY: dict[str, str] = {
    "camera": "edge_agent.sources.camera:CameraSource",
    "replay_video": "edge_agent.sources.camera:VideoReplaySource",
    "can": "edge_agent.sources.can:CanSource",
    "radar": "edge_agent.sources.radar:RadarSource",
    "gnss": "edge_agent.sources.gnss:GnssSource",
    "replay_can": "edge_agent.sources.replay:CanReplaySource",
    "replay_gnss": "edge_agent.sources.replay:GnssReplaySource",
}


class SourceOptions(BaseModel):
    """Base of every source's options model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceContext(Protocol):
    """What the agent offers a source. Every method is called on the event loop."""

    agent_id: str
    clock: AgentClock
    #: Wall-clock ns at which replays of this run start (shared, so replays line up).
    replay_base_ns: int

    def emit(self, stream: str, record: Any) -> None: ...

    def emit_many(self, stream: str, records: Sequence[Any]) -> None: ...

    def mark(self, stream: str, source: str, position: str | tuple[int, str]) -> None:
        """``source`` has captured up to ``position``; stored with ``stream``'s next batch."""

    def event(self, kind: str, source: str, **attrs: Any) -> None: ...

    async def ready(self) -> None:
        """Returns when the batches can take more records (replays await it: back-pressure)."""

    async def checkpoint(self, source: str) -> str | None: ...


@dataclass(slots=True)
class SourceStats:
    state: str = "starting"
    records: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    restarts: int = 0
    dropped: int = 0
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, stream: str, n: int = 1) -> None:
        self.records[stream] = self.records.get(stream, 0) + n

    def as_dict(self) -> dict[str, Any]:
        """A snapshot; ``extra`` values that are callables (a transport's live counters) are called."""
        return {
            "state": self.state, "records": dict(self.records), "errors": self.errors,
            "restarts": self.restarts, "dropped": self.dropped, "last_error": self.last_error,
            **{k: v() if callable(v) else v for k, v in self.extra.items()},
        }


class Source(abc.ABC):
    """One device or capture. Subclasses set ``Options`` and implement ``streams`` and ``run``."""

    Options: ClassVar[type[SourceOptions]] = SourceOptions
    #: Replays end; devices run until stopped.
    finite: ClassVar[bool] = False

    def __init__(self, name: str, options: SourceOptions, ctx: SourceContext) -> None:
        self.name = name
        self.options = options
        self.ctx = ctx
        self.stats = SourceStats()

    @abc.abstractmethod
    def streams(self) -> dict[str, TableSchema]:
        """Stream name -> schema of everything this source emits."""

    @abc.abstractmethod
    async def run(self) -> None:
        """Capture until the device ends (return) or fails (raise); cancelled to stop."""

    def emit(self, stream: str, record: Any) -> None:
        self.stats.count(stream)
        self.ctx.emit(stream, record)

    def emit_many(self, stream: str, records: Sequence[Any]) -> None:
        if records:
            self.stats.count(stream, len(records))
            self.ctx.emit_many(stream, records)


def source_class(type_name: str) -> type[Source]:
    target = REGISTRY.get(type_name)
    if target is None:
        raise ConfigError(f"unknown source type {type_name!r} (known: {', '.join(sorted(REGISTRY))})")
    module, _, cls = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"source type {type_name!r} is unavailable: {exc}") from exc
    found = getattr(mod, cls)
    assert issubclass(found, Source)
    return found


def validate_source_options(cfg: SourceConfig, key: str = "source") -> SourceOptions:
    """Validate a ``[[sources]]`` table's options with its source class (errors name the key)."""
    try:
        cls = source_class(cfg.type)
    except ConfigError as exc:
        raise ConfigError(f"{key}.type: {exc}") from exc
    try:
        return cls.Options.model_validate(cfg.options)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix=f"{key}.")) from exc


def create_source(cfg: SourceConfig, ctx: SourceContext, key: str = "source") -> Source:
    options = validate_source_options(cfg, key)
    return source_class(cfg.type)(cfg.name, options, ctx)


async def supervise(
    source: Source,
    ctx: SourceContext,
    *,
    min_backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
    healthy_after_s: float = 60.0,
) -> None:
    """Run a source; retry it with capped, jittered backoff when it fails; never raise."""
    delay = min_backoff_s
    while True:
        started = time.monotonic()
        source.stats.state = "running"
        try:
            await source.run()
        except asyncio.CancelledError:
            source.stats.state = "stopped"
            raise
        except Exception as exc:  # a device fault must not take down the agent
            source.stats.errors += 1
            source.stats.last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - started > healthy_after_s:
                delay = min_backoff_s
            wait = random.uniform(delay / 2, delay)
            source.stats.state = "retrying"
            log.warning("source %s failed (%s); retrying in %.1f s", source.name,
                        source.stats.last_error, wait, exc_info=not isinstance(exc, SourceError | OSError))
            ctx.event("source_error", source.name, error=source.stats.last_error)
            await asyncio.sleep(wait)
            delay = min(max_backoff_s, delay * 2)
            source.stats.restarts += 1
            continue
        if source.finite:
            source.stats.state = "finished"
            log.info("source %s finished (%s)", source.name,
                     ", ".join(f"{s}: {n}" for s, n in source.stats.records.items()) or "no records")
            return
        source.stats.state = "ended"
        log.warning("source %s ended unexpectedly; restarting in %.1f s", source.name, delay)
        await asyncio.sleep(delay)
        source.stats.restarts += 1
