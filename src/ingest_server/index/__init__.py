"""The archive index: SQLAlchemy Core tables, versioned migrations and the queries on them."""

from ingest_server.index.migrations import LATEST, migrate
from ingest_server.index.queries import BatchRow, Index, SegmentRow, SegmentUpdate, StreamRef

__all__ = ["LATEST", "BatchRow", "Index", "SegmentRow", "SegmentUpdate", "StreamRef", "migrate"]
