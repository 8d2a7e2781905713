"""ingest_server exceptions: one root, split by phase.

``ConfigError`` is local misuse and names the bad key. ``Rejected`` is a remote fault: a
message from the broker that cannot be archived (it carries the reason it is counted under).
``ArchiveError`` is the MCAP archive on disk, ``IndexStoreError`` the SQL index; a worker that hits
either stops and is restarted by the supervisor, because a half-done flush is repaired by
recovery, not by retrying in place. ``QueryError`` is a bad archive query from the CLI.
"""

from __future__ import annotations


class IngestServerError(Exception):
    """Root of every error raised by :mod:`ingest_server`."""


class ConfigError(IngestServerError, ValueError):
    """The server configuration is invalid; the message names the key."""


class Rejected(IngestServerError):
    """A message was refused; ``reason`` is the counter it is counted under."""

    def __init__(self, reason: str, detail: str, agent: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.agent = agent


class StorageError(IngestServerError):
    """The archive or the index failed; durability can no longer be promised."""


class ArchiveError(StorageError):
    """An MCAP segment could not be written, read or recovered."""


class IndexStoreError(StorageError):
    """The SQL index is unusable: unreachable, wrong schema version, or a failed commit."""


class QueryError(IngestServerError, ValueError):
    """An archive query or export was asked for with bad arguments."""
