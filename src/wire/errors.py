"""The wire package's exceptions: one root, split by what went wrong.

Remote faults (a peer sent bytes we cannot accept) are ``DecodeError`` and
``LimitError``; ``SchemaError`` names an unknown or mismatched schema; local
misuse (building a record or topic with bad values) is ``ValidationError``,
which is also a ``ValueError``.
"""

from __future__ import annotations


class WireError(Exception):
    """Root of every error raised by :mod:`wire`."""


class DecodeError(WireError):
    """Bytes from a peer are malformed: bad msgpack, bad zstd, bad checksum, bad shape."""


class LimitError(DecodeError):
    """Input exceeds a configured size or count limit; nothing beyond the limit was allocated."""


class SchemaError(DecodeError):
    """Unknown schema or version, or a payload that does not match its schema."""


class TopicError(WireError, ValueError):
    """A topic name or agent id does not follow the wire contract."""


class ValidationError(WireError, ValueError):
    """A record, envelope or dictionary was built locally with invalid values."""
