"""The hazards package's exceptions: one root, split by phase."""

from __future__ import annotations


class HazardError(Exception):
    """Root of every error raised by :mod:`ingest_server.hazards`."""


class HazardConfigError(HazardError, ValueError):
    """The hazard configuration is invalid (names the bad key)."""


class HazardConnectError(HazardError):
    """The hazard worker could not reach or subscribe at the broker."""


class HazardStorageError(HazardError):
    """Recording warnings in the index failed."""
