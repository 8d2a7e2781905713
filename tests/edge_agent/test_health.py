"""Health: a retained message every few seconds with what an operator needs; the last will."""

from __future__ import annotations

import subprocess
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cvis.broker import ManagedBroker
from edge_agent.health import decode_health
from tests.edge_agent.ack_server import AckingServer
from tests.edge_agent.conftest import replay_cmd, wait_for
from wire.schemas import HEALTH
from wire.topics import health_topic

AGENT = "veh-health"
CONFIG = """
agent_id = "set-by-replay"
[health]
interval_s = 0.5
"""


def retained(broker: ManagedBroker, topic: str) -> bytes:
    """Read a retained message with a fresh client."""
    got: list[bytes] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cvis-test-{uuid.uuid4().hex[:8]}")
    c.on_connect = lambda cl, *a: cl.subscribe(topic, 1)
    c.on_message = lambda cl, u, m: (got.append(bytes(m.payload)), done.set())
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        assert done.wait(10), f"no retained message on {topic}"
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0]


def test_health_reports_and_last_will(broker: ManagedBroker, short_can_log: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG)
    cmd = replay_cmd(AGENT, broker.url, tmp_path / "spool", "--config", cfg, "--can", short_can_log,
                     "--speed", "1")
    with AckingServer(broker.host, broker.port) as server:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def running_report() -> bool:
                with server.lock:
                    log = [p for _, a, p in server.received.health_log if a == AGENT]
                return any(decode_health(p)[1].uplink.get("acked") for p in log)

            wait_for(running_report, 30, "a health report after the first ack")
            with server.lock:
                payload = [p for _, a, p in server.received.health_log if a == AGENT][-1]
        finally:
            proc.kill()  # kill -9: no goodbye, the broker publishes the last will
            proc.wait()
        agent, h, campaigns = decode_health(payload)
        assert agent == AGENT and h.online
        can = h.sources["can"]
        assert can["state"] == "running" and can["records"]["can"] > 0 and "can" in can["rate_hz"]
        assert {"batches", "bytes", "budget_bytes", "evicted", "disk_full", "corrupt"} <= set(h.spool)
        assert h.uplink["connected"] and h.uplink["published"] >= 1
        assert h.clock["quality"] in ("SERVER_SYNCED", "FREE_RUNNING")
        assert h.system["rss_mb"] > 10 and "cpu_pct_of_core" in h.system and "disk_free_mb" in h.system
        assert campaigns["active"] == []
        HEALTH.table([h])  # a valid health/1 record
        wait_for(lambda: not decode_health(server.received.health[AGENT])[1].online, 30, "the last will")
    _, will, _ = decode_health(retained(broker, health_topic(AGENT)))
    assert not will.online  # retained: anyone subscribing later sees the agent is offline
