"""Health: a retained message on ``cvis/v1/{agent}/health`` every few seconds, and the last will.

The payload is a msgpack map with the fields of :class:`wire.schemas.Health` (``timestamp_ns``,
``online``, ``uptime_s``, ``sources``, ``spool``, ``uplink``, ``clock``, ``system``) plus
``v`` (1), ``schema`` (``health/1``), ``agent`` and ``campaigns``; :func:`decode_health` turns it
back into a ``Health`` record. Per source: state, records and rate per stream, errors, restarts,
drops. Spool: depth, bytes, evictions per stream (batches, records, bytes), disk-full state.
Uplink: connection, in flight, published, acked, resent. Clock: offset, round trip, quality.
System: CPU (% of one core since the last report), RSS, disk free, load.

The last will (registered at connect) is the same map with ``online = false``; the broker
publishes it, retained, if the agent vanishes, and the agent publishes it itself on a clean exit.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import msgpack

from wire.errors import DecodeError
from wire.schemas import Health

HEALTH_VERSION = 1
MAX_HEALTH_BYTES = 256 * 1024


def offline_message(agent_id: str, reason: str = "connection lost") -> bytes:
    """The last will: ``online = false``."""
    return encode_health(agent_id, Health(time.time_ns(), False, 0.0, system={"reason": reason}))


def encode_health(agent_id: str, health: Health, campaigns: dict[str, Any] | None = None) -> bytes:
    return msgpack.packb(
        {
            "v": HEALTH_VERSION,
            "schema": "health/1",
            "agent": agent_id,
            "timestamp_ns": health.timestamp_ns,
            "online": health.online,
            "uptime_s": health.uptime_s,
            "sources": health.sources,
            "spool": health.spool,
            "uplink": health.uplink,
            "clock": health.clock,
            "system": health.system,
            "campaigns": campaigns or {},
        },
        use_bin_type=True,
    )


def decode_health(payload: bytes) -> tuple[str, Health, dict[str, Any]]:
    """(agent, Health, campaigns) from a health message; DecodeError if malformed."""
    if len(payload) > MAX_HEALTH_BYTES:
        raise DecodeError(f"health message of {len(payload)} bytes is too large")
    try:
        obj = msgpack.unpackb(payload, raw=False, max_bin_len=MAX_HEALTH_BYTES, max_ext_len=0)
    except (ValueError, msgpack.UnpackException) as exc:
        raise DecodeError(f"health message is not msgpack: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("v") != HEALTH_VERSION:
        raise DecodeError("health message has no version 1 map")
    try:
        h = Health(
            timestamp_ns=int(obj["timestamp_ns"]), online=bool(obj["online"]),
            uptime_s=float(obj["uptime_s"]), sources=dict(obj["sources"]), spool=dict(obj["spool"]),
            uplink=dict(obj["uplink"]), clock=dict(obj["clock"]), system=dict(obj["system"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"health message lacks a field: {exc}") from exc
    return str(obj.get("agent", "")), h, dict(obj.get("campaigns") or {})


class SystemMeter:
    """CPU of this process as % of one core between calls, RSS, disk free, load."""

    def __init__(self, disk_path: Path) -> None:
        self.disk_path = disk_path
        self._cpu = self._cpu_s()
        self._t = time.monotonic()
        self.peak_rss_mb = 0.0

    @staticmethod
    def _cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def sample(self) -> dict[str, Any]:
        cpu, now = self._cpu_s(), time.monotonic()
        pct = 100.0 * (cpu - self._cpu) / max(now - self._t, 1e-6)
        self._cpu, self._t = cpu, now
        rss = rss_mb()
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        try:
            du = shutil.disk_usage(self.disk_path)
            disk = {"disk_free_mb": round(du.free / 2**20, 1),
                    "disk_used_pct": round(100 * du.used / du.total, 1)}
        except OSError:
            disk = {}
        return {
            "cpu_pct_of_core": round(pct, 2),
            "rss_mb": round(rss, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "load_1m": round(os.getloadavg()[0], 2),
            **disk,
        }


def rss_mb() -> float:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
