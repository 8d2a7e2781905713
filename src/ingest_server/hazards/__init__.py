"""Live-plane hazard warnings: FCW, EBW, ICW and VRUCW (C-V2X Day-1 names, T/CSAE 53).

- :class:`HazardEngine` (sans-IO): live ``state/1`` and ``roadside.objects/1`` messages in,
  :class:`~wire.warning.HazardWarning` s out, on any clock (tests and the traffic simulator
  drive it with simulated time).
- :class:`HazardWorker`: the engine on MQTT for a set of tiles and their neighbours; start and
  stop it from a server with ``start()`` / ``stop()`` or ``with HazardWorker(...) as w:``.
- :class:`WarningRecorder`: every warning sent, in the index's ``warnings`` table.
- :class:`HazardConfig`: thresholds and ranges (defaults meet the NHTSA FCW confirmation test).
"""

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

__all__ = [
    "EngineStats", "HazardConfig", "HazardConfigError", "HazardConnectError", "HazardEngine",
    "HazardError", "HazardStorageError", "HazardWorker", "WarningRecorder",
]
