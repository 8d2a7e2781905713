"""Validation of one archival MQTT message: topic, envelope, limits, schema, checksum.

``validate(topic, payload, ...)`` returns a :class:`ValidBatch` or raises
:class:`ingest_server.errors.Rejected` whose ``reason`` is one of :data:`REASONS`. Pure: bytes
in, a decoded batch or a reason out; the worker counts and quarantines what this refuses.
Cheap checks come first, so garbage costs as little as possible: the size before msgpack, the
envelope before zstd, the declared count before the payload is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest_server.errors import Rejected
from wire import codec
from wire.columns import Table
from wire.envelope import Batch
from wire.errors import LimitError, SchemaError, WireError
from wire.limits import Limits
from wire.schemas import get_schema
from wire.topics import TopicKind, parse_topic

#: Every reason a message is refused, in the order the checks run.
REASONS = (
    "bad_topic",  # not a cvis/v1/{agent}/batch/{stream} topic
    "oversize",  # larger than Limits.max_encoded_bytes, refused before decoding
    "bad_envelope",  # not a msgpack map in the batch envelope format
    "agent_mismatch",  # the envelope names another agent than the topic
    "stream_mismatch",  # the envelope names another stream than the topic
    "unknown_schema",  # schema name/version this server does not know
    "limit",  # a record count, field or decompressed size over the limits (zstd bombs)
    "bad_payload",  # checksum, codec, columns or time range do not verify
    "bad_time",  # capture time plus clock offset is not a valid MCAP log time
    "schema_mismatch",  # the stream was archived before under another schema
)

_MAX_LOG_TIME = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ValidBatch:
    """A batch that passed every check, with its decoded records."""

    batch: Batch
    table: Table
    size: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.batch.agent, self.batch.stream, self.batch.seq)

    @property
    def log_first_ns(self) -> int:
        return self.batch.first_ns + self.batch.clock_offset_ns

    @property
    def log_last_ns(self) -> int:
        return self.batch.last_ns + self.batch.clock_offset_ns


def topic_agent(topic: str) -> str | None:
    """The agent a topic names, if it parses (for counting rejects per agent)."""
    try:
        return parse_topic(topic).agent
    except WireError:
        return None


def validate(
    topic: str,
    payload: bytes,
    limits: Limits,
    dicts: codec.Dictionaries = codec.NO_DICTIONARIES,
) -> ValidBatch:
    try:
        parsed = parse_topic(topic)
    except WireError as exc:
        raise Rejected("bad_topic", str(exc)) from exc
    if parsed.kind is not TopicKind.BATCH or parsed.stream is None:
        raise Rejected("bad_topic", f"{topic!r} is not a batch topic", parsed.agent)
    agent = parsed.agent
    if len(payload) > limits.max_encoded_bytes:
        raise Rejected(
            "oversize", f"{len(payload)} bytes exceed the limit of {limits.max_encoded_bytes}", agent
        )
    try:
        batch = Batch.decode(payload, limits)
    except LimitError as exc:
        raise Rejected("limit", str(exc), agent) from exc
    except WireError as exc:
        raise Rejected("bad_envelope", str(exc), agent) from exc
    if batch.agent != agent:
        raise Rejected(
            "agent_mismatch", f"topic names agent {agent!r}, envelope names {batch.agent!r}", agent
        )
    if batch.stream != parsed.stream:
        raise Rejected(
            "stream_mismatch",
            f"topic names stream {parsed.stream!r}, envelope names {batch.stream!r}",
            agent,
        )
    try:
        get_schema(batch.schema, batch.schema_version)
    except SchemaError as exc:
        raise Rejected("unknown_schema", str(exc), agent) from exc
    try:
        table = batch.table(limits, dicts)
    except LimitError as exc:
        raise Rejected("limit", str(exc), agent) from exc
    except WireError as exc:
        raise Rejected("bad_payload", str(exc), agent) from exc
    if table.n:
        lo = batch.first_ns + batch.clock_offset_ns
        hi = batch.last_ns + batch.clock_offset_ns
        if lo < 0 or hi > _MAX_LOG_TIME:
            raise Rejected(
                "bad_time",
                f"capture time {batch.first_ns} + clock offset {batch.clock_offset_ns} is not a "
                "valid log time (before 1970 or past int64)",
                agent,
            )
    return ValidBatch(batch, table, len(payload))
