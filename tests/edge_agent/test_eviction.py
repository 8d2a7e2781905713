"""A spool budget far below what was captured: eviction by priority, counters equal what is missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cvis.broker import ManagedBroker
from edge_agent.health import decode_health
from tests.edge_agent.ack_server import AckingServer
from tests.edge_agent.captures import CAN_FRAMES_IN_LOG, CAN_LOG, VIDEO
from tests.edge_agent.conftest import replay_cmd, spool_batches

AGENT = "veh-evict"
VIDEO_FRAMES = 795
GNSS_FIXES = 579

CONFIG = """
agent_id = "set-by-replay"
[spool]
budget_mb = 2.0
[streams."camera.front"]
max_mb = 0.5
[uplink]
reconnect_min_s = 0.2
reconnect_max_s = 1.0
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_budget_evicts_camera_first_and_counts_exactly(
    own_broker: ManagedBroker, shared_data: Path, drive_nmea: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG)
    spool = tmp_path / "spool"
    cmd = replay_cmd(AGENT, own_broker.url, spool, "--config", cfg, "--can", shared_data / CAN_LOG,
                     "--gnss", drive_nmea, "--video", shared_data / VIDEO, "--camera-size", "640x360",
                     "--speed", "0")
    log = tmp_path / "agent.log"
    # Offline: the whole drive is captured into a 2 MB spool (the video alone is about 30 MB).
    own_broker.stop()
    with log.open("ab") as err:
        offline = subprocess.run([*cmd, "--drain-timeout", "0"], stdout=subprocess.DEVNULL,
                                 stderr=err, timeout=180)
    assert offline.returncode == 1, log.read_text()[-2000:]  # captured, not acknowledged
    kept = spool_batches(spool, AGENT)  # intact
    assert sum(len(b.payload) for b in kept) <= 2 * 2**20
    # Back online: a second run has nothing left to capture and sends what the spool kept.
    own_broker.start()
    with AckingServer(own_broker.host, own_broker.port) as server, log.open("ab") as err:
        online = subprocess.run([*cmd, "--drain-timeout", "60"], stdout=subprocess.DEVNULL,
                                stderr=err, timeout=180)
        assert online.returncode == 0, log.read_text()[-2000:]
        server.flush_acks()
        _, health, _ = decode_health(server.received.health[AGENT])  # the final, retained one
        camera = server.records(AGENT, "camera.front")
        can = server.records(AGENT, "can")
        gnss = server.records(AGENT, "gnss")
        cam_seqs = server.seqs(AGENT, "camera.front")
    evicted = health.spool["evicted"]
    # Priority: only camera frames were evicted; CAN and GNSS arrived complete.
    assert set(evicted) == {"camera.front"}, evicted
    assert len(can) == CAN_FRAMES_IN_LOG
    assert len(gnss) == GNSS_FIXES
    # The counters say exactly what is missing, frame for frame.
    assert 0 < len(camera) < VIDEO_FRAMES
    assert evicted["camera.front"]["records"] == VIDEO_FRAMES - len(camera)
    assert len({f.frame_index for f in camera}) == len(camera)
    # Whole batches go, oldest first: what survived is the end of the video.
    indices = sorted(f.frame_index for f in camera)
    assert indices == list(range(VIDEO_FRAMES - len(camera), VIDEO_FRAMES))
    seqs = cam_seqs
    assert evicted["camera.front"]["batches"] + len(seqs) == max(seqs) + 1
