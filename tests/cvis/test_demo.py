"""`cvis demo` end to end: real processes, real Mosquitto (or the embedded amqtt broker), real
ptys, the shipped captures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cvis import demo
from cvis.broker import EmbeddedBroker, ManagedBroker
from cvis.demo import CAN_LOG, DemoError, captures_dir, choose_broker
from firmware_bridges.candump import read_candump
from ingest_server.index.queries import Index


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_archives_all_three_agents_and_exports_the_replayed_can_frames(tmp_path: Path,
                                                                             broker: str) -> None:
    data = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "cvis", "demo", "--data-dir", str(data), "--duration", "30",
         "--interval", "10", "--broker", broker],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "broker mqtt://127.0.0.1:" in proc.stdout and "archived after" in proc.stdout
    if broker == "embedded":
        assert "--broker embedded: using the embedded amqtt broker" in proc.stdout
        assert "(amqtt), server with 1 ingest worker," in proc.stdout
    else:
        assert "(Mosquitto), server with 2 ingest workers," in proc.stdout

    index = Index.open(f"sqlite:///{data / 'archive' / 'index.sqlite'}", migrate=False)
    try:
        rows = {(r["agent"], r["stream"]): r for r in index.stream_summary()}
    finally:
        index.close()
    for i in (1, 2, 3):
        for stream in ("can0", "signals", "gnss", "camera.front"):
            assert rows[(f"demo-car-{i}", stream)]["records"] > 0, (i, stream, sorted(rows))

    out = tmp_path / "car1.log"
    export = subprocess.run(
        [sys.executable, "-m", "cvis", "archive", "export", "--data-dir", str(data / "archive"),
         "--agent", "demo-car-1", "--stream", "can0", "--format", "candump", "-o", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert export.returncode == 0, export.stderr
    exported = [(f.arbitration_id, f.data) for f in read_candump(out)]
    assert len(exported) == rows[("demo-car-1", "can0")]["records"] > 10_000
    # The simulated adapter sits on the powertrain bus and replays it from its first frame: the
    # archive holds exactly that sequence, no frame lost, duplicated or reordered.
    source = [(f.arbitration_id, f.data) for f in read_candump(captures_dir(None) / CAN_LOG)
              if f.channel == "can0"]
    assert exported == (source * 2)[: len(exported)]


def test_auto_falls_back_to_the_embedded_broker_only_without_mosquitto(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(choose_broker("auto", tmp_path), ManagedBroker)  # this machine has Mosquitto
    monkeypatch.setattr(demo, "mosquitto_executable", lambda: None)
    assert isinstance(choose_broker("auto", tmp_path), EmbeddedBroker)
    with pytest.raises(DemoError, match=r"Mosquitto is not installed.*--broker embedded"):
        choose_broker("mosquitto", tmp_path)
