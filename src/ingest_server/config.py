"""The server's configuration: one typed object, loaded from TOML with environment overrides.

``load_config(path)`` reads TOML (``server.toml``), applies ``CVIS_SERVER__SECTION__KEY=value``
environment variables (``__`` separates levels, keys are lower-cased, values are parsed as
TOML values when they parse, else kept as text), then the command line overrides, and
validates everything with pydantic. Every error names the key, for example
``archive.segment_max_mb: Input should be greater than 0``.

Example::

    data_dir = "/var/lib/cvis"
    index_url = "postgresql+psycopg://cvis@db/cvis"   # default: SQLite in data_dir
    workers = 2

    [broker]
    url = "mqtt://127.0.0.1:1883"

    [ingest]
    flush_interval_ms = 100

    [archive]
    segment_max_s = 600
    segment_max_mb = 512

    [hazards]                  # hazard workers (FCW, EBW, ICW, VRUCW); on unless disabled
    enabled = true
    tiles = []                 # [] = one worker for every tile; ["n3777w12243", ...] = one
                               # worker for these; [["n3777w12243"], ["n3777w12242"]] = one each
    [hazards.fcw]              # thresholds: see ingest_server.hazards.config.HazardConfig
    ttc_s = 2.7
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest_server.errors import ConfigError
from ingest_server.hazards.config import HazardConfig
from wire import config_layers
from wire.broker_url import parse_broker_url
from wire.errors import ValidationError as WireValidationError
from wire.limits import Limits
from wire.topics import check_agent, check_tile

ENV_PREFIX = "CVIS_SERVER__"
#: Largest configuration file we read.
MAX_CONFIG_BYTES = 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerConfig(_Model):
    url: str = "mqtt://127.0.0.1:1883"
    #: Prefix of each worker's MQTT client id; worker N is ``{client_id_prefix}-{N}``.
    client_id_prefix: str = "cvis-ingest"
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive_s: int = Field(default=30, ge=2, le=3600)
    #: Shared-subscription group of the ingest workers.
    share_group: str = "ingest"
    #: How long the broker keeps a worker's session (and its queued QoS 1 messages) while the
    #: worker is away, for example during a restart. Keep it short: Mosquitto goes on handing
    #: an offline session its turn of the shared subscription until the session expires (the
    #: agents resend those batches after their ack timeout), so a worker that is gone for good
    #: should not hold a session for long.
    session_expiry_s: int = Field(default=300, ge=0)
    #: MQTT 5 Receive Maximum: unacknowledged batches the broker may have in flight to one worker.
    receive_maximum: int = Field(default=2000, ge=1, le=65535)
    #: MQTT protocol the workers speak. ``"5"`` (default) splits the batches between workers
    #: with a shared subscription. ``"3.1.1"`` is for brokers without MQTT 5, such as the
    #: embedded amqtt broker ``cvis demo`` falls back to: no shared subscriptions there, so
    #: the server must run a single ingest worker (two would each receive every batch).
    mqtt_version: Literal["5", "3.1.1"] = "5"

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parse_broker_url(v)
        return v

    @field_validator("share_group")
    @classmethod
    def _check_group(cls, v: str) -> str:
        check_agent(v)  # same alphabet as an agent id
        return v

    @property
    def host(self) -> str:
        return parse_broker_url(self.url).host

    @property
    def port(self) -> int:
        return parse_broker_url(self.url).port

    @property
    def tls(self) -> bool:
        return parse_broker_url(self.url).tls


class IngestConfig(_Model):
    #: A flush (MCAP chunk flush + fsync + index commit + acks) happens at least this often...
    flush_interval_ms: int = Field(default=100, ge=1, le=60_000)
    #: ...or as soon as this many batches or bytes are pending.
    flush_max_batches: int = Field(default=1000, ge=1)
    flush_max_mb: float = Field(default=32.0, gt=0)
    #: Bounded inbox between the MQTT thread and the writer: messages and bytes.
    inbox_max_messages: int = Field(default=4000, ge=1)
    inbox_max_mb: float = Field(default=256.0, gt=0)
    #: Wire limits applied to every batch (see wire.limits.Limits).
    max_encoded_mb: float = Field(default=16.0, gt=0)
    max_decoded_mb: float = Field(default=64.0, gt=0)
    max_records: int = Field(default=1_000_000, ge=1)
    #: Directory of trained zstd dictionaries (``<id>.zdict``), shared with the agents.
    dictionaries_dir: Path | None = None
    #: Answer agents' time-sync requests (wire.control) on ``time/response``.
    time_sync: bool = True

    def limits(self) -> Limits:
        mib = 1024 * 1024
        return Limits(
            max_encoded_bytes=int(self.max_encoded_mb * mib),
            max_decoded_bytes=int(self.max_decoded_mb * mib),
            max_records=self.max_records,
            max_field_bytes=int(self.max_encoded_mb * mib),
        )


class ArchiveConfig(_Model):
    #: A segment is closed and a new one started after this long or this size.
    segment_max_s: float = Field(default=600.0, gt=0)
    segment_max_mb: float = Field(default=512.0, gt=0)
    #: MCAP chunk target size; chunks also end at every flush.
    chunk_kb: int = Field(default=4096, ge=16)
    #: zstd level for MCAP chunks (0: the writer's default).
    compression_level: int = Field(default=0, ge=0, le=22)


class IndexConfig(_Model):
    #: SQLite ``synchronous`` setting: FULL survives power loss, NORMAL only process crashes.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    busy_timeout_s: float = Field(default=30.0, gt=0)


class QuarantineConfig(_Model):
    #: Rejected messages kept for inspection (oldest dropped first), in memory and in the index.
    max_entries: int = Field(default=1000, ge=0)
    #: Bytes of each rejected message kept.
    keep_bytes: int = Field(default=1024, ge=0, le=1024 * 1024)


class ServerHazardConfig(HazardConfig):
    """``[hazards]``: the hazard worker processes ``cvis server`` runs, and their thresholds.

    The thresholds (``[hazards.fcw]``, ``[hazards.episodes]``, ...) are those of
    :class:`~ingest_server.hazards.config.HazardConfig`; the keys here say which workers run.
    """

    #: Run hazard workers at all (``cvis server --no-hazards`` turns them off).
    enabled: bool = True
    #: Tiles the workers own: ``[]`` (default) one worker for every tile; a list of tiles, one
    #: worker owning those; a list of lists, one worker per list (disjoint: a tile owned twice
    #: would warn its vehicles twice).
    tiles: list[str] | list[list[str]] = Field(default_factory=list)
    #: Log each worker's statistics this often (0: never).
    stats_every_s: float = Field(default=60.0, ge=0)

    @field_validator("tiles")
    @classmethod
    def _check_tiles(cls, v: list[str] | list[list[str]]) -> list[str] | list[list[str]]:
        groups = [v] if v and isinstance(v[0], str) else v
        seen: set[str] = set()
        for group in groups:
            assert isinstance(group, list)
            if not group:
                raise ValueError("an empty tile list in a list of lists: give every worker its tiles")
            for tile in group:
                check_tile(tile)
                if tile in seen:
                    raise ValueError(f"tile {tile!r} is given to two hazard workers")
                seen.add(tile)
        return v

    @property
    def tile_groups(self) -> list[list[str]]:
        """Tiles of each worker to run (``[]``: every tile); empty when disabled."""
        if not self.enabled:
            return []
        v = self.tiles
        if not v:
            return [[]]
        if isinstance(v[0], str):
            return [[str(t) for t in v]]
        return [[str(t) for t in g] for g in v]

    def thresholds(self) -> HazardConfig:
        """The plain hazard configuration (without the server's keys)."""
        return HazardConfig.model_validate(
            self.model_dump(exclude={"enabled", "tiles", "stats_every_s"}))


class ServerConfig(_Model):
    data_dir: Path = Path("cvis-data")
    #: SQLAlchemy URL of the index; default ``sqlite:///{data_dir}/index.sqlite``.
    index_url: str | None = None
    workers: int = Field(default=1, ge=1, le=64)
    broker: BrokerConfig = BrokerConfig()
    ingest: IngestConfig = IngestConfig()
    archive: ArchiveConfig = ArchiveConfig()
    index: IndexConfig = IndexConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    hazards: ServerHazardConfig = ServerHazardConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("index_url")
    @classmethod
    def _check_index(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite", "postgresql")):
            raise ValueError(f"index URL {v!r}: only sqlite:// and postgresql+psycopg:// are supported")
        return v

    @model_validator(mode="after")
    def _check_workers(self) -> ServerConfig:
        if self.broker.mqtt_version == "3.1.1" and self.workers > 1:
            raise ValueError(f"workers: {self.workers} ingest workers need MQTT 5 shared "
                             "subscriptions; with broker.mqtt_version = \"3.1.1\" run one worker")
        return self

    @property
    def resolved_index_url(self) -> str:
        return self.index_url or f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"


def _format(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def build_config(
    data: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Validate ``data`` (a parsed TOML document) with environment and command-line overrides."""
    try:
        from_env = config_layers.env_overrides(os.environ if env is None else env, ENV_PREFIX)
    except WireValidationError as exc:
        raise ConfigError(f"server config: {exc}") from None
    merged = config_layers.merge(config_layers.merge(data or {}, from_env), overrides or {})
    try:
        return ServerConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"server config: {_format(exc)}") from exc


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Load ``path`` (TOML, optional), then environment, then ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read server config {path}: {exc}") from exc
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"server config {path} is larger than {MAX_CONFIG_BYTES} bytes")
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"server config {path}: {exc}") from exc
    return build_config(data, env=env, overrides=overrides)


def config_to_toml(config: ServerConfig) -> str:
    """Render a config as TOML (used to hand a config to worker processes)."""
    return _toml_table(config.model_dump(mode="json", exclude_none=True), [])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot render {v!r} as TOML")


def _toml_table(d: Mapping[str, Any], path: list[str]) -> str:
    lines = []
    subs = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            subs.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    out = ""
    if path:
        out += f"[{'.'.join(path)}]\n"
    out += "".join(line + "\n" for line in lines)
    for k, v in subs:
        out += "\n" + _toml_table(v, [*path, k])
    return out
