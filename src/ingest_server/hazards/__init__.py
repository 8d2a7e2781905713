"""Live-plane hazard warnings: FCW, EBW, ICW and VRUCW (C-V2X Day-1 names, T/CSAE 53).

- :class:`HazardEngine` (sans-IO): live ``state/1`` and ``roadside.objects/1`` messages in,
  :class:`~wire.warning.HazardWarning` s out, on any clock (tests and the traffic simulator
  drive it with simulated time).
- :class:`HazardWorker`: the engine on MQTT for a set of tiles and their neighbours; start and
  stop it from a server with ``start()`` / ``stop()`` or ``with HazardWorker(...) as w:``.
- :class:`WarningRecorder`: every warning sent, in the index's ``warnings`` table.
- :class:`HazardConfig`: thresholds and ranges (defaults meet the NHTSA FCW confirmation test).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest_server.hazards.config import HazardConfig
    from ingest_server.hazards.engine import EngineStats, HazardEngine
    from ingest_server.hazards.errors import (
        HazardConfigError,
        HazardConnectError,
        HazardError,
        HazardStorageError,
    )
    from ingest_server.hazards.record import WarningRecorder
    from ingest_server.hazards.worker import HazardWorker

# Imported on first use: every cvis command (the agent too) loads the hazards CLI module, and
# the recorder alone would pull in SQLAlchemy.
_HOME = {
    "HazardConfig": "config", "EngineStats": "engine", "HazardEngine": "engine",
    "HazardConfigError": "errors", "HazardConnectError": "errors", "HazardError": "errors",
    "HazardStorageError": "errors", "WarningRecorder": "record", "HazardWorker": "worker",
}

__all__ = [
    "EngineStats", "HazardConfig", "HazardConfigError", "HazardConnectError", "HazardEngine",
    "HazardError", "HazardStorageError", "HazardWorker", "WarningRecorder",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
