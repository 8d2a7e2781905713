"""The agent's configuration: one typed object, loaded from TOML with environment overrides.

``load_config(path)`` reads TOML, applies ``CVIS_AGENT__SECTION__KEY=value`` environment
variables (``__`` separates levels, keys are lower-cased, values are parsed as TOML values when
they parse, else kept as text), and validates everything with pydantic. Every error names the
key, for example ``spool.budget_mb: Input should be greater than 0``.

Sources are listed as ``[[sources]]`` tables with a ``type`` (``camera``, ``can``, ``radar``,
``gnss``, ``replay_can``, ``replay_gnss``, ``replay_video``) and a ``name``; the options of each
type are validated by the source class itself (see :mod:`edge_agent.sources.base`), which is
imported only when a configuration names it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.campaigns.campaign import CampaignSpec
from edge_agent.errors import ConfigError
from wire import config_layers
from wire.broker_url import BrokerAddress, parse_broker_url
from wire.errors import ValidationError as WireValidationError
from wire.topics import check_agent, check_stream

ENV_PREFIX = "CVIS_AGENT__"
#: Largest configuration file we read.
MAX_CONFIG_BYTES = 1024 * 1024

#: Stream priority classes, in eviction order: the first is evicted first and sent last.
PRIORITY_CLASSES: tuple[str, ...] = (
    "camera", "radar_points", "radar_objects", "gnss", "signals", "can", "events",
)
#: Default class of each record schema.
SCHEMA_PRIORITY = {
    "camera.jpeg": "camera",
    "radar.points": "radar_points",
    "radar.objects": "radar_objects",
    "roadside.objects": "radar_objects",
    "gnss.fix": "gnss",
    "vehicle.signals": "signals",
    "signal.phase": "signals",
    "can.frames": "can",
    "event": "events",
    "health": "events",
}

PriorityName = Literal["camera", "radar_points", "radar_objects", "gnss", "signals", "can", "events"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerConfig(_Model):
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    #: TLS: CA bundle that signs the broker's certificate; client certificate and key.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive_s: int = Field(default=15, ge=2, le=3600)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parse_broker_url(v)
        return v

    @property
    def address(self) -> BrokerAddress:
        """Host, port and TLS; a client certificate means TLS whatever the scheme."""
        return parse_broker_url(self.url, tls=self.tls_cert is not None)

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def tls(self) -> bool:
        return self.address.tls

    @property
    def port(self) -> int:
        return self.address.port


class SpoolConfig(_Model):
    dir: Path = Path("spool")
    #: Bytes of encoded batches the spool may hold before it evicts by priority.
    budget_mb: float = Field(default=1024.0, gt=0)
    #: When the disk is full, batches wait in memory up to this bound (then evict by priority).
    memory_fallback_mb: float = Field(default=64.0, gt=0)
    #: Optional hard cap on the database file; beyond it SQLite reports "disk full".
    max_file_mb: float | None = Field(default=None, gt=0)
    #: "full" survives power loss; "normal" survives a crashed process only.
    synchronous: Literal["full", "normal"] = "full"


class UplinkConfig(_Model):
    #: Batches published and not yet acknowledged by the server, at most.
    window_batches: int = Field(default=64, ge=1, le=10_000)
    window_mb: float = Field(default=32.0, gt=0)
    #: A batch not acknowledged within this time is sent again.
    ack_timeout_s: float = Field(default=30.0, gt=0)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    #: Bandwidth cap in kilobytes per second (0 = none), with a burst allowance.
    max_kbyte_s: float = Field(default=0.0, ge=0)
    burst_kbyte: float = Field(default=2048.0, gt=0)


class BatchConfig(_Model):
    """When a stream's batch closes: on age (monotonic), record count or bytes, whichever first."""

    max_age_s: float = Field(default=1.0, gt=0, le=3600)
    max_records: int = Field(default=50_000, ge=1, le=1_000_000)
    max_mb: float = Field(default=4.0, gt=0, le=15)
    #: "zstd" or "none"; default: none for camera JPEG (already compressed), zstd otherwise.
    codec: Literal["zstd", "none"] | None = None
    zstd_level: int = Field(default=3, ge=1, le=19)


class StreamConfig(_Model):
    """Per-stream overrides: batching and priority class."""

    priority: PriorityName | None = None
    max_age_s: float | None = Field(default=None, gt=0, le=3600)
    max_records: int | None = Field(default=None, ge=1, le=1_000_000)
    max_mb: float | None = Field(default=None, gt=0, le=15)
    codec: Literal["zstd", "none"] | None = None


class SignalRef(_Model):
    """A decoded signal feeding a live-state field: value * scale + offset."""

    signal: str
    scale: float = 1.0
    offset: float = 0.0


class LiveConfig(_Model):
    enabled: bool = True
    rate_hz: float = Field(default=10.0, gt=0, le=100)
    #: GNSS fixes older than this are not used for live state.
    max_fix_age_s: float = Field(default=2.0, gt=0)
    speed_mps: SignalRef | None = None
    accel_mps2: SignalRef | None = None
    yaw_rate_dps: SignalRef | None = None
    steering_deg: SignalRef | None = None
    brake: SignalRef | None = None
    #: Decelerations beyond this set the hard-braking flag (m/s², positive).
    hard_braking_mps2: float = Field(default=4.0, gt=0)
    length_m: float = 4.5
    width_m: float = 1.8


class ClockConfig(_Model):
    sync_interval_s: float = Field(default=10.0, gt=0)
    #: Samples kept by the clock filter; the one with the smallest round trip wins.
    filter_samples: int = Field(default=8, ge=1, le=64)
    #: Samples with a longer round trip are ignored.
    max_delay_ms: float = Field(default=500.0, gt=0)
    #: A change of wall minus monotonic time beyond this is a wall-clock jump.
    jump_threshold_ms: float = Field(default=250.0, gt=0)
    #: Without a fresh sample the offset is trusted this long.
    stale_after_s: float = Field(default=120.0, gt=0)


class HealthConfig(_Model):
    interval_s: float = Field(default=5.0, gt=0)


class SourceConfig(BaseModel):
    """One source: ``type`` picks the implementation; other keys are its options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    name: str

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        check_stream(v)
        return v

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AgentConfig(_Model):
    agent_id: str
    broker: BrokerConfig = BrokerConfig()
    spool: SpoolConfig = SpoolConfig()
    uplink: UplinkConfig = UplinkConfig()
    batch: BatchConfig = BatchConfig()
    streams: dict[str, StreamConfig] = {}
    sources: list[SourceConfig] = []
    campaigns: list[CampaignSpec] = []
    live: LiveConfig = LiveConfig()
    clock: ClockConfig = ClockConfig()
    health: HealthConfig = HealthConfig()
    #: Stream of agent events (triggers, source faults, campaign changes).
    events_stream: str = "events"
    #: Shutdown: how long to drain (flush batches, wait for acks) before giving up.
    drain_timeout_s: float = Field(default=10.0, ge=0)

    @field_validator("agent_id")
    @classmethod
    def _check_agent(cls, v: str) -> str:
        check_agent(v)
        return v

    @field_validator("streams")
    @classmethod
    def _check_streams(cls, v: dict[str, StreamConfig]) -> dict[str, StreamConfig]:
        for name in v:
            check_stream(name)
        return v

    @field_validator("sources")
    @classmethod
    def _check_sources(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique, repeated: {sorted(dup)}")
        return v

    def batch_for(self, stream: str) -> BatchConfig:
        """The batch settings of ``stream``: the defaults with its overrides applied."""
        over = self.streams.get(stream)
        if over is None:
            return self.batch
        changes = {k: v for k, v in over.model_dump().items() if v is not None and k != "priority"}
        return self.batch.model_copy(update=changes)

    def priority_for(self, stream: str, schema_name: str) -> int:
        """Eviction rank of a stream: 0 is evicted first (and sent last)."""
        over = self.streams.get(stream)
        name = over.priority if over and over.priority else SCHEMA_PRIORITY.get(schema_name, "signals")
        return PRIORITY_CLASSES.index(name)


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming its key (``sources.0.fps: ...``)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        key = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
        lines.append(f"{key}: {err['msg']}")
    return "; ".join(lines)


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``CVIS_AGENT__SPOOL__BUDGET_MB=512`` -> ``{"spool": {"budget_mb": 512}}``."""
    try:
        return config_layers.env_overrides(environ, ENV_PREFIX)
    except WireValidationError as exc:
        raise ConfigError(str(exc)) from None


def loads_config(
    text: str, environ: Mapping[str, str] | None = None, *, origin: str = "config"
) -> AgentConfig:
    """Parse TOML text (plus environment overrides) into a validated :class:`AgentConfig`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    return config_from_dict(data, environ)


def config_from_dict(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> AgentConfig:
    merged = config_layers.merge(data, env_overrides(os.environ if environ is None else environ))
    try:
        cfg = AgentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc
    from edge_agent.sources.base import validate_source_options  # lazy: sources import config

    for i, src in enumerate(cfg.sources):
        validate_source_options(src, key=f"sources.{i}")
    return cfg


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate a TOML configuration file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {p} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {p} is not UTF-8: {exc}") from exc
    return loads_config(text, environ, origin=str(p))
