"""kill -9 the agent again and again while it replays the real CAN log: nothing lost, nothing torn."""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from cvis.broker import ManagedBroker
from edge_agent.sources.replay import Position
from edge_agent.spool import Spool
from firmware_bridges.candump import read_candump
from tests.edge_agent.ack_server import AckingServer
from tests.edge_agent.captures import CAN_FRAMES_IN_LOG, CAN_LOG
from tests.edge_agent.conftest import replay_cmd, spool_batches, wait_for

AGENT = "veh-kill9"
KILLS = 10


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill9_while_replaying_loses_nothing(
    broker: ManagedBroker, shared_data: Path, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    log_path = shared_data / CAN_LOG
    cmd = replay_cmd(AGENT, broker.url, spool, "--can", log_path, "--speed", "3", "--drain-timeout", "60")
    rng = random.Random(20260804)
    stderr = (tmp_path / "agent.log").open("ab")
    seen_in_spool: dict[tuple[str, int], bytes] = {}
    with AckingServer(broker.host, broker.port) as server:
        for _ in range(KILLS):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                # Kill at a random moment, but only once this run has done something.
                before = server.received.messages
                running = proc

                def progressed(b: int = before, p: subprocess.Popen[bytes] = running) -> bool:
                    return server.received.messages > b or p.poll() is not None

                wait_for(progressed, 60, "the agent to publish")
                time.sleep(rng.uniform(0.0, 1.0))
            finally:
                proc.kill()
                proc.wait()
            # Whatever the spool holds after kill -9 decodes, matches its checksum, and a batch
            # kept over several crashes never changes.
            for b in spool_batches(spool, AGENT):
                key = (b.stream, b.seq)
                assert seen_in_spool.setdefault(key, b.payload) == b.payload
        # The kills all came mid-replay: the stored position is short of the log's end.
        position = Position.decode(checkpoint(spool, "can"))
        assert position is not None and 0 < position.index < CAN_FRAMES_IN_LOG - 1
        final = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=stderr, timeout=120)
        stderr.close()
        assert final.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
        server.flush_acks()
        received = server.records(AGENT, "can")
        assert not server.received.conflicts  # a seq never carried two different batches
        assert not server.received.bad
    assert spool_batches(spool, AGENT) == []  # drained

    # Every frame of the log arrived; with per-batch checkpoints, exactly once.
    log_frames = list(read_candump(log_path))
    assert len(log_frames) == CAN_FRAMES_IN_LOG
    t_log0 = log_frames[0].timestamp_ns
    t_rx0 = min(f.timestamp_ns for f in received)
    expected = Counter((f.timestamp_ns - t_log0, f.channel, f.arbitration_id, f.data) for f in log_frames)
    got = Counter((f.timestamp_ns - t_rx0, f.channel, f.arbitration_id, f.data) for f in received)
    missing = expected - got
    assert not missing, f"{sum(missing.values())} frames never published, e.g. {next(iter(missing))}"
    assert got == expected


def checkpoint(spool_dir: Path, source: str) -> str | None:
    spool = Spool(spool_dir, AGENT, budget_bytes=2**40)
    try:
        return spool.checkpoint(source)
    finally:
        spool.close()
