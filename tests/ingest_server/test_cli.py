"""`cvis server` as a real process with two workers, then `cvis archive ls|info|export`."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcap.reader import make_reader

from cvis.broker import ManagedBroker
from cvis.cli import main
from firmware_bridges.candump import format_frame
from ingest_server.cli import parse_time
from ingest_server.config import build_config, config_to_toml
from ingest_server.errors import QueryError
from tests.ingest_server.conftest import private_broker
from tests.ingest_server.publisher import (
    AgentPublisher,
    can_batches,
    can_frames,
    gnss_batches,
    gnss_fixes,
    interleave,
)


def cvis(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a `cvis` command in this process (the archive commands start no threads)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def test_parse_time() -> None:
    assert parse_time("1533226488.5") == 1_533_226_488_500_000_000
    assert parse_time("2018-08-02T16:14:48.5Z") == 1_533_226_488_500_000_000
    assert parse_time("2018-08-02T16:14:48.5") == 1_533_226_488_500_000_000
    assert parse_time(None) is None
    with pytest.raises(QueryError, match="ISO 8601"):
        parse_time("yesterday")


def test_server_archives_and_the_archive_cli_exports(
    tmp_path: Path, broker: ManagedBroker, index_url: str, shared_data: Path
) -> None:
    data = tmp_path / "data"
    frames = can_frames(shared_data)[:25_000]
    fixes = gnss_fixes(shared_data)[:40]
    batches = {
        "veh1": interleave(can_batches("veh1", frames), gnss_batches("veh1", fixes)),
        "veh2": can_batches("veh2", frames[:5000], offset_ns=2_000_000_000),
    }
    cfg = tmp_path / "server.toml"
    cfg.write_text(config_to_toml(build_config({"broker": private_broker(broker)}, env={})))
    server = subprocess.Popen(
        [sys.executable, "-m", "cvis", "server", "--config", str(cfg), "--data-dir", str(data),
         "--index", index_url, "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pubs = [AgentPublisher(broker.host, broker.port, a, b).start() for a, b in batches.items()]
    try:
        for p in pubs:
            assert p.done.wait(90), f"{p.agent}: {len(p.acked)} of {len(p.batches)} acked"
    finally:
        for p in pubs:
            p.stop()
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err[-3000:]
    assert "2 worker(s)" in out
    assert "worker 0: stopped cleanly" in err and "worker 1: stopped cleanly" in err

    base = ["--data-dir", str(data), "--index", index_url]
    ls = cvis("archive", "ls", *base, "--json")
    assert ls.returncode == 0, ls.stderr
    rows = {(r["agent"], r["stream"]): r for r in json.loads(ls.stdout)}
    assert rows[("veh1", "can")]["records"] == len(frames)
    assert rows[("veh1", "gnss")]["records"] == len(fixes)
    assert rows[("veh2", "can")]["records"] == 5000
    # veh2's clock is 2 s behind the server: its log times are shifted, its capture times not.
    assert rows[("veh2", "can")]["first_ns"] == frames[0].timestamp_ns + 2_000_000_000

    t0 = frames[0].timestamp_ns + 10**9
    t1 = frames[0].timestamp_ns + 2 * 10**9
    sliced = cvis("archive", "ls", *base, "--agent", "veh1", "--stream", "can",
                  "--from", f"{t0 / 1e9:.9f}", "--to", f"{t1 / 1e9:.9f}", "--json")
    row, = json.loads(sliced.stdout)
    assert 9 <= row["batches"] <= 12

    info = cvis("archive", "info", *base, "--json")
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert doc["totals"]["batches"] == sum(len(b) for b in batches.values())
    assert {s["worker"] for s in doc["segments"]} <= {0, 1}
    assert all(s["state"] == "closed" for s in doc["segments"])
    assert cvis("archive", "info", *base).returncode == 0  # the table form

    out_mcap = tmp_path / "slice.mcap"
    exp = cvis("archive", "export", *base, "--agent", "veh1", "-o", str(out_mcap), "--json")
    assert exp.returncode == 0, exp.stderr
    assert json.loads(exp.stdout)["batches"] == len(batches["veh1"])
    with open(out_mcap, "rb") as f:
        r = make_reader(f)
        summary = r.get_summary()
        assert summary is not None
        topics = {c.topic for c in summary.channels.values()}
        assert topics == {"/veh1/can", "/veh1/gnss"}
        times = [m.log_time for _, _, m in r.iter_messages(log_time_order=False)]
    assert times == sorted(times)
    assert len(times) == len(fixes) + len(can_batches("veh1", frames))

    log_file = tmp_path / "veh1.log"
    cd = cvis("archive", "export", *base, "--agent", "veh1", "--format", "candump", "-o",
              str(log_file))
    assert cd.returncode == 0, cd.stderr
    assert log_file.read_text().splitlines() == [format_frame(f) for f in frames]

    both = cvis("archive", "export", *base, "--format", "candump", "-o", str(tmp_path / "x.log"))
    assert both.returncode == 1 and "pass --agent" in both.stderr
    assert not (tmp_path / "x.log").exists() and not (tmp_path / "x.log.part").exists()
    none = cvis("archive", "ls", "--data-dir", str(tmp_path / "nope"))
    assert none.returncode == 1 and "not an archive directory" in none.stderr


def test_server_restarts_a_killed_worker(tmp_path: Path, broker: ManagedBroker) -> None:
    from ingest_server.server import Supervisor

    cfg = build_config({"data_dir": str(tmp_path / "d"), "broker": private_broker(broker),
                        "workers": 1}, env={})
    sup = Supervisor(cfg).start()
    try:
        pid, = sup.pids()
        assert pid is not None
        import os

        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            sup.poll()
            new, = sup.pids()
            if new not in (None, pid):
                break
            time.sleep(0.1)
        assert new not in (None, pid)
        assert sup.slots[0].restarts == 1
    finally:
        sup.stop()


def test_stopping_the_server_finishes_the_segment_of_a_worker_waiting_to_restart(
    tmp_path: Path, broker: ManagedBroker, shared_data: Path
) -> None:
    import os

    from ingest_server.archive.recovery import scan_segment
    from ingest_server.index.queries import Index
    from ingest_server.server import Supervisor

    data = tmp_path / "d"
    cfg = build_config({"data_dir": str(data), "broker": private_broker(broker), "workers": 1,
                        "hazards": {"enabled": False}}, env={})
    sup = Supervisor(cfg).start()
    pub = AgentPublisher(broker.host, broker.port, "veh9",
                         can_batches("veh9", can_frames(shared_data)[:3000])).start()
    try:
        assert pub.done.wait(60), f"{len(pub.acked)} of {len(pub.batches)} acked"
        pid, = sup.pids()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # its segment stays open; poll() is not called: no restart
        while sup.slots[0].proc is not None and sup.slots[0].proc.poll() is None:
            time.sleep(0.05)
    finally:
        pub.stop()
        sup.stop()
    index = Index.open(cfg.resolved_index_url, migrate=False)
    try:
        segments = index.segments()
        assert segments and all(s.state != "open" for s in segments), segments
        stored = index.count_batches()
    finally:
        index.close()
    assert stored == len(pub.batches)
    for path in data.glob("segments/*/*.mcap"):
        _, truncated = scan_segment(path)
        assert not truncated, f"{path} was left unfinished"
