"""A hard-braking trigger over decoded CAN signals uploads exactly its pre/post window of camera frames."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cantools
import pytest

from cvis.broker import ManagedBroker
from firmware_bridges.candump import read_candump
from tests.edge_agent.ack_server import AckingServer
from tests.edge_agent.captures import CAN_DBC, CAN_LOG, VIDEO
from tests.edge_agent.conftest import replay_cmd

AGENT = "veh-brake"
PRE_S, POST_S = 2.0, 1.0
#: The strongest braking of this gentle drive: 5 km/h lost within one second.
CONDITION = "delta(SPEED.SPEED, 1s) <= -5"
CONFIG = f"""
agent_id = "set-by-replay"
[[campaigns]]
name = "brakes"
ring_slack_s = 10
streams = {{ "camera.front" = {{ mode = "triggered" }} }}
[[campaigns.triggers]]
name = "hard_braking"
condition = "{CONDITION}"
pre_s = {PRE_S}
post_s = {POST_S}
"""


def braking_onsets(shared_data: Path) -> list[int]:
    """When the condition becomes true, in ns from the log's first frame: computed here with
    cantools directly, independently of the agent's decoder and expression engine."""
    db = cantools.database.load_file(shared_data / CAN_DBC, strict=False)
    msg = db.get_message_by_name("SPEED")
    samples: list[tuple[int, float]] = []
    t0 = None
    for f in read_candump(shared_data / CAN_LOG):
        t0 = f.timestamp_ns if t0 is None else t0
        if f.channel == "can0" and f.arbitration_id == msg.frame_id:
            samples.append((f.timestamp_ns - t0, msg.decode(f.data, decode_choices=False)["SPEED"]))
    onsets, prev, j = [], False, 0
    for t, v in samples:
        while samples[j][0] < t - 1_000_000_000:
            j += 1
        now = v - samples[j][1] <= -5
        if now and not prev:
            onsets.append(t)
        prev = now
    return onsets


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_hard_braking_uploads_exactly_the_window(
    broker: ManagedBroker, shared_data: Path, tmp_path: Path
) -> None:
    onsets = braking_onsets(shared_data)
    assert len(onsets) == 1  # one hard braking in this drive, at about 58.6 s
    (t_brake,) = onsets
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG)
    cmd = replay_cmd(AGENT, broker.url, tmp_path / "spool", "--config", cfg,
                     "--can", shared_data / CAN_LOG, "--dbc", shared_data / CAN_DBC, "--dbc-channel", "can0",
                     "--signals", "SPEED.SPEED", "--video", shared_data / VIDEO, "--camera-size", "320x240",
                     "--speed", "6", "--drain-timeout", "60")
    with AckingServer(broker.host, broker.port) as server, (tmp_path / "agent.log").open("wb") as err:
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, timeout=150)
        assert r.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
        server.flush_acks()
        base = min(f.timestamp_ns for f in server.records(AGENT, "can"))  # replays share one base
        camera = server.records(AGENT, "camera.front")
        events = server.records(AGENT, "events")
    # The agent saw the same moment: its trigger event names it to the nanosecond.
    triggers = [e for e in events if e.kind == "trigger"]
    assert len(triggers) == 1
    assert triggers[0].attrs["t_ns"] - base == t_brake
    assert triggers[0].attrs["trigger"] == "hard_braking"
    # Camera frame i was captured at base + i * 100 ms (vtest.avi is 10 fps).
    lo, hi = t_brake - int(PRE_S * 1e9), t_brake + int(POST_S * 1e9)
    expected = [i for i in range(795) if lo <= round(i * 1e8) <= hi]
    got = sorted(f.frame_index for f in camera)
    assert got == expected
    assert all(f.timestamp_ns - base == round(f.frame_index * 1e8) for f in camera)
    assert len(got) == 30
