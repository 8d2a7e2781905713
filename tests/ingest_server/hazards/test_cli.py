"""``cvis simulate traffic`` and ``cvis hazards`` from the command line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cvis.broker import ManagedBroker
from cvis.cli import main

ROOT = Path(__file__).resolve().parents[3]


def test_simulate_builtin_scenario_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "traffic", "--scenario", "pedestrian", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert report["missed"] == 0 and report["spurious"] == 0
    assert report["expectations"][0]["status"] == "ok"
    assert report["p50_ms"] is None  # no broker, no latency


def test_simulate_exit_code_reports_missed_and_spurious(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "src/cvis/simulate/scenarios/hard_brake.toml").read_text()
    # Expect a warning that cannot come (d is ahead of the braking car), forget a real one.
    text = text.replace('target = "b"\ncounterpart = "a"\nafter = 3.0\nbefore = 3.3',
                        'target = "d"\ncounterpart = "a"\nafter = 3.0\nbefore = 3.3')
    path = tmp_path / "broken.toml"
    path.write_text(text)
    assert main(["simulate", "traffic", "--scenario", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["missed"] == 1 and report["spurious"] == 1
    assert report["expectations"][0]["status"] == "missed"


def test_simulate_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "traffic", "--scenario", "no_such_scenario"]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[roads]]\nid = "r"\nsegments = [{ line = -5 }]\n')
    assert main(["simulate", "traffic", "--scenario", str(bad)]) == 2
    assert main(["simulate", "traffic", "--scenario", "background", "--vehicles", "100000"]) == 2
    assert main(["simulate", "traffic", "--scenario", "hard_brake", "--vehicles", "3"]) == 2
    assert main(["simulate", "traffic", "--scenario", "hard_brake", "--worker"]) == 2
    err = capsys.readouterr().out
    assert "unknown scenario 'no_such_scenario'" in err
    assert "roads.0.segments.0.line" in err
    assert "holds at most" in err and "scripted vehicles" in err and "--worker needs --broker" in err


def test_simulate_with_background_vehicles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "traffic", "--scenario", "background", "--vehicles", "60",
                 "--duration", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["vehicles"] == 60 and report["warnings"] == 0


def test_hazards_cli_runs_until_sigterm(broker: ManagedBroker, tmp_path: Path) -> None:
    db = tmp_path / "w.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvis", "hazards", "--broker", broker.url, "--tiles", "n3776w12243",
         "--db", f"sqlite:///{db}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "hazard worker on" in line and "n3776w12243" in line
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=20)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "worker subscribed to 9 live filters" in rest and "worker stopped" in rest
    assert db.exists()


def test_hazards_cli_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["hazards", "--tiles", "nowhere"]) == 2
    cfg = tmp_path / "h.toml"
    cfg.write_text("[fcw]\nttc_s = 0\n")
    assert main(["hazards", "--config", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert "invalid tile 'nowhere'" in out and "fcw.ttc_s" in out
