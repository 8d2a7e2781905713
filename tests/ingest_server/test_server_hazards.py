"""`cvis server` runs hazard workers beside the ingest workers and records their warnings in its
index (migration 2); `--no-hazards` turns them off. Real processes, a real Mosquitto, SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cvis.broker import ManagedBroker
from cvis.simulate import scenario as scenarios
from cvis.simulate.world import World
from ingest_server.config import build_config, config_to_toml
from ingest_server.errors import ConfigError
from ingest_server.hazards.errors import HazardStorageError
from ingest_server.hazards.record import WarningRecorder
from ingest_server.index import migrations, schema
from tests.ingest_server.conftest import private_broker
from wire.topics import tile_of
from wire.warning import HazardWarning, Severity, Status, WarningType

T0 = 1_700_000_000_000_000_000


def a_warning(episode: int, update: int = 0) -> HazardWarning:
    return HazardWarning(WarningType.FCW, Severity.WARNING, "ego", ("lead",), 37.77, -122.43,
                         T0, T0 + 10**9, episode, update, Status.NEW, ttc_s=2.5, source_ns=T0 - 1)


def test_migration_2_puts_warnings_in_the_index(index_url: str) -> None:
    engine = migrations.create_engine(index_url)
    try:
        # An index of the previous version (migration 1 only), as an older cvis left it.
        with migrations.write_conn(engine) as conn, conn.begin():
            migrations.MIGRATIONS[0].apply(conn)
            conn.execute(schema.schema_version.insert().values(
                version=1, applied_ns=0, description=migrations.MIGRATIONS[0].description))
        assert not sa.inspect(engine).has_table("warnings")
        with pytest.raises(HazardStorageError, match="migrate the index first"):
            WarningRecorder(engine, create=False)
        assert migrations.migrate(engine) == migrations.LATEST == 2
        assert migrations.migrate(engine) == 2  # idempotent
        insp = sa.inspect(engine)
        assert {i["name"] for i in insp.get_indexes("warnings")} >= {
            "ix_warnings_issued", "ix_warnings_target_issued"}
        rec = WarningRecorder(engine, create=False)
        assert rec.record([a_warning(1), a_warning(1, 1), a_warning(2)]) == 3
        assert rec.record([a_warning(2), a_warning(3)]) == 1  # (episode, update) stays unique
        assert [(r.warning.episode, r.warning.update) for r in rec.fetch()] == [
            (1, 0), (1, 1), (2, 0), (3, 0)]
        # The recorder writes the table the migration made, beside the ingest tables.
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(schema.warnings)).scalar() == 4
            assert conn.execute(sa.select(sa.func.count()).select_from(schema.batches)).scalar() == 0
    finally:
        engine.dispose()


def test_hazards_section_of_the_server_config() -> None:
    cfg = build_config({"hazards": {"tiles": [["n3777w12243"], ["n3777w12242", "n3776w12242"]],
                                    "fcw": {"ttc_s": 3.0}}}, env={})
    assert cfg.hazards.tile_groups == [["n3777w12243"], ["n3777w12242", "n3776w12242"]]
    assert cfg.hazards.thresholds().fcw.ttc_s == 3.0
    # Written out for the worker processes and read back unchanged.
    import tomllib

    assert build_config(tomllib.loads(config_to_toml(cfg)), env={}) == cfg
    assert build_config({}, env={}).hazards.tile_groups == [[]]  # default: one, every tile
    assert build_config({"hazards": {"tiles": ["n1e2", "n1e3"]}}, env={}).hazards.tile_groups == [
        ["n1e2", "n1e3"]]
    off = build_config({}, env={"CVIS_SERVER__HAZARDS__ENABLED": "false"})
    assert off.hazards.tile_groups == []
    for bad, message in (
        ({"tiles": ["x1"]}, "hazards.tiles: Value error, invalid tile 'x1'"),
        ({"tiles": [["n1e2"], ["n1e2"]]}, "tile 'n1e2' is given to two hazard workers"),
        ({"icw": {"time_diff_s": -1}}, "hazards.icw.time_diff_s"),
        ({"colour": "red"}, "hazards.colour: Extra inputs"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_config({"hazards": bad}, env={})


def intersection_tiles() -> tuple[str, str]:
    """The tiles of the intersection scenario's two crossing vehicles near the conflict."""
    world = World(scenarios.load("intersection"))
    pa, pb = world.by_id["a"].pose(2.2), world.by_id["b"].pose(2.2)
    return (tile_of(*world.projection.to_wgs84(pa.x, pa.y)),
            tile_of(*world.projection.to_wgs84(pb.x, pb.y)))


class Server:
    """`cvis server` as a real process; its log goes to a file the test can watch."""

    def __init__(self, tmp_path: Path, broker: ManagedBroker, index_url: str,
                 hazards: dict[str, object] | None = None, *extra: str) -> None:
        cfg = tmp_path / "server.toml"
        data: dict[str, object] = {"broker": private_broker(broker)}
        if hazards:
            data["hazards"] = hazards
        cfg.write_text(config_to_toml(build_config(data, env={})))
        self.log = tmp_path / "server.log"
        self._err = open(self.log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cvis", "server", "--config", str(cfg), "--data-dir",
             str(tmp_path / "data"), "--index", index_url, "--workers", "1", *extra],
            stdout=subprocess.PIPE, stderr=self._err, text=True)
        self.out = ""

    def wait_for(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.read_text().count(text) >= count:
                return
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.05)
        raise AssertionError(f"server log never said {text!r} {count}x:\n"
                             + self.log.read_text()[-3000:])

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.out = self.proc.communicate(timeout=60)[0]
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._err.close()
        return self.log.read_text()


def simulate(broker: ManagedBroker, scenario: str, duration: float) -> tuple[int, dict[str, Any]]:
    sim = subprocess.run(
        [sys.executable, "-m", "cvis", "-q", "simulate", "traffic", "--scenario", scenario,
         "--broker", broker.url, "--duration", str(duration), "--json"],
        capture_output=True, text=True, timeout=120)
    lines = sim.stdout.strip().splitlines()
    assert lines, sim.stderr[-3000:]
    return sim.returncode, json.loads(lines[-1])


def test_server_warns_and_records_in_its_index(tmp_path: Path, broker: ManagedBroker,
                                               index_url: str) -> None:
    if index_url.startswith("sqlite"):
        hazards: dict[str, object] = {}  # the default: one worker for every tile
        workers = 1
    else:
        tile_a, tile_b = intersection_tiles()
        assert tile_a != tile_b
        hazards = {"tiles": [[tile_a], [tile_b]]}  # two workers split by tile
        workers = 2
    server = Server(tmp_path, broker, index_url, hazards)
    try:
        server.wait_for("hazards: worker subscribed", workers)
        code, report = simulate(broker, "intersection", 4.0)
    finally:
        log = server.stop()
    assert server.proc.returncode == 0, log[-3000:]
    assert f"{workers} hazard worker(s)" in server.out
    for n in range(workers):
        assert f"hazard worker {n}: stopped cleanly" in log
    assert "worker 0: stopped cleanly" in log  # the ingest worker too

    # The expected warnings arrived, and nothing else.
    assert code == 0, report
    assert report["missed"] == 0 and report["spurious"] == 0
    expectations = {e["target"]: e for e in report["expectations"]}
    assert set(expectations) == {"a", "b"}
    assert all(e["status"] == "ok" for e in expectations.values())

    # Every warning the vehicles received is in the server's index.
    engine = migrations.create_engine(index_url)
    try:
        assert migrations.check_version(engine) == 2
        rows = [r.warning for r in WarningRecorder(engine, create=False).fetch()]
    finally:
        engine.dispose()
    assert len(rows) == report["warnings"]
    new = {w.target: w for w in rows if w.status is Status.NEW}
    assert set(new) == {"a", "b"}
    assert new["a"].type is WarningType.ICW and new["a"].counterparts == ("b",)
    assert new["b"].type is WarningType.ICW and new["b"].counterparts == ("a",)
    for target, w in new.items():
        assert w.ttc_s == expectations[target]["ttc_s"]
    assert all(w.type is WarningType.ICW for w in rows)
    if workers == 2:  # each vehicle warned by its own tile's worker only, so exactly once
        assert len([w for w in rows if w.status is Status.NEW]) == 2


def test_server_without_hazards_warns_nobody(tmp_path: Path, broker: ManagedBroker) -> None:
    index_url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    server = Server(tmp_path, broker, index_url, None, "--no-hazards")
    try:
        server.wait_for("worker 0: started")
        code, report = simulate(broker, "intersection", 4.0)
    finally:
        log = server.stop()
    assert server.proc.returncode == 0, log[-3000:]
    assert "no hazard workers" in server.out
    assert "1 ingest worker(s) and 0 hazard worker(s)" in log
    assert "hazards: worker subscribed" not in log
    assert code == 1  # the simulator's verdict: expected warnings missing
    assert report["warnings"] == 0 and report["missed"] == 2
    engine = migrations.create_engine(index_url)
    try:
        assert migrations.check_version(engine) == 2  # the table is there, and empty
        assert WarningRecorder(engine, create=False).count() == 0
    finally:
        engine.dispose()


def test_supervisor_restarts_a_killed_hazard_worker(tmp_path: Path, broker: ManagedBroker) -> None:
    import os

    from ingest_server.server import Supervisor

    cfg = build_config({"data_dir": str(tmp_path / "d"), "broker": private_broker(broker)},
                       env={})
    sup = Supervisor(cfg).start()
    try:
        pid, = sup.hazard_pids()
        assert pid is not None and pid not in sup.pids()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        new = pid
        while time.monotonic() < deadline:
            sup.poll()
            new, = sup.hazard_pids()
            if new not in (None, pid):
                break
            time.sleep(0.1)
        assert new not in (None, pid)
        assert sup.hazard_slots[0].restarts == 1 and sup.slots[0].restarts == 0
    finally:
        sup.stop()
    assert sup.hazard_pids() == [None]
