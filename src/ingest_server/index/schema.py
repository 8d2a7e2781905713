"""The index tables (SQLAlchemy Core), as of the newest migration.

* ``agents``, ``streams``: who sent what; a stream keeps one record schema.
* ``segments``: MCAP files, their writer, state (``open`` while written, ``closed`` once
  finished or recovered), log-time range, size and message count.
* ``batches``: one row per stored batch; ``(stream_id, seq)`` is unique, which is what makes
  the archive idempotent. ``msg_first..msg_last`` are the MCAP message sequence numbers of the
  batch on its channel in its segment, so a reader takes exactly the messages of indexed
  batches. Log times are server time (capture + offset); capture times are the agent's.
* ``quarantine``: the newest refused messages (bounded); ``reject_counts``: totals by reason.
* ``warnings`` (migration 2): every hazard warning sent (``new``, each ``update``, ``end``), one
  row per message; an episode is the rows sharing ``episode``, and ``(episode, update_count)``
  is unique (see :mod:`ingest_server.hazards.record`).

Change the schema only through a new migration in :mod:`ingest_server.index.migrations`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

#: SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
Id = BigInteger().with_variant(Integer(), "sqlite")

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_ns", BigInteger, nullable=False),
    Column("description", Text, nullable=False),
)

agents = Table(
    "agents", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_ns", BigInteger, nullable=False),
)

streams = Table(
    "streams", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("agent_id", Id, ForeignKey("agents.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("schema", String(64), nullable=False),
    Column("topic", String(160), nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    UniqueConstraint("agent_id", "name", name="uq_streams_agent_name"),
)

segments = Table(
    "segments", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("worker", Integer, nullable=False),
    Column("path", String(512), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("closed_ns", BigInteger),
    Column("start_ns", BigInteger),
    Column("end_ns", BigInteger),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("messages", BigInteger, nullable=False, default=0),
    Column("batches", BigInteger, nullable=False, default=0),
    Column("recovered", Boolean, nullable=False, default=False),
    Index("ix_segments_worker_state", "worker", "state"),
)

batches = Table(
    "batches", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("stream_id", Id, ForeignKey("streams.id"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("segment_id", Id, ForeignKey("segments.id"), nullable=False),
    Column("msg_first", BigInteger, nullable=False),
    Column("msg_last", BigInteger, nullable=False),
    Column("records", Integer, nullable=False),
    Column("log_first_ns", BigInteger, nullable=False),
    Column("log_last_ns", BigInteger, nullable=False),
    Column("capture_first_ns", BigInteger, nullable=False),
    Column("capture_last_ns", BigInteger, nullable=False),
    Column("clock_offset_ns", BigInteger, nullable=False),
    Column("time_quality", SmallInteger, nullable=False),
    Column("encoded_bytes", Integer, nullable=False),
    Column("stored_ns", BigInteger, nullable=False),
    Column("worker", Integer, nullable=False),
    UniqueConstraint("stream_id", "seq", name="uq_batches_stream_seq"),
    Index("ix_batches_stream_time", "stream_id", "log_first_ns"),
    Index("ix_batches_segment", "segment_id"),
)

quarantine = Table(
    "quarantine", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("received_ns", BigInteger, nullable=False),
    Column("worker", Integer, nullable=False),
    Column("topic", String(256), nullable=False),
    Column("agent", String(64)),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("head", LargeBinary, nullable=False),
)

reject_counts = Table(
    "reject_counts", metadata,
    Column("worker", Integer, primary_key=True, autoincrement=False),
    Column("reason", String(32), primary_key=True),
    Column("count", BigInteger, nullable=False),
)



def warnings_table(meta: MetaData, name: str = "warnings") -> Table:
    """The hazard warnings table (also under another name or schema, for tests and tools)."""
    return Table(
        name, meta,
        Column("id", Id, primary_key=True, autoincrement=True),
        Column("episode", BigInteger, nullable=False),
        Column("update_count", Integer, nullable=False),
        Column("status", String(8), nullable=False),
        Column("type", String(8), nullable=False),
        Column("severity", SmallInteger, nullable=False),
        Column("target", String(64), nullable=False),
        Column("counterparts", String(2600), nullable=False),
        Column("ttc_s", Float, nullable=True),
        Column("time_diff_s", Float, nullable=True),
        Column("lat", Float, nullable=False),
        Column("lon", Float, nullable=False),
        Column("issued_ns", BigInteger, nullable=False),
        Column("expires_ns", BigInteger, nullable=False),
        Column("source_ns", BigInteger, nullable=False),
        UniqueConstraint("episode", "update_count", name=f"uq_{name}_episode_update"),
        Index(f"ix_{name}_issued", "issued_ns"),
        Index(f"ix_{name}_target_issued", "target", "issued_ns"),
    )


warnings = warnings_table(metadata)

#: Tables created by migration 1.
V1_TABLES = (schema_version, agents, streams, segments, batches, quarantine, reject_counts)
#: Tables created by migration 2.
V2_TABLES = (warnings,)
