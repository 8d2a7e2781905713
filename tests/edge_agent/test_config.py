"""Agent configuration: TOML, environment overrides, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import PRIORITY_CLASSES, env_overrides, load_config, loads_config
from edge_agent.errors import ConfigError
from tests.edge_agent.captures import CAN_DBC, CAN_LOG

GOOD = """
agent_id = "veh-7"
[broker]
url = "mqtts://broker.example:8883"
[spool]
dir = "/var/lib/cvis/spool"
budget_mb = 2048
[streams."camera.front"]
max_age_s = 2.0
[streams.debug]
priority = "events"
[[sources]]
type = "replay_can"
name = "can"
path = "{log}"
dbc = "{dbc}"
dbc_channels = ["can0"]
[[sources]]
type = "camera"
name = "camera.front"
device = 0
width = 1280
height = 720
fps = 10
[[campaigns]]
name = "brakes"
streams = {{ "camera.front" = {{ mode = "triggered" }} }}
[[campaigns.triggers]]
name = "hard"
condition = "delta(SPEED.SPEED, 1s) < -15"
pre_s = 5
post_s = 5
"""


def good_text(shared_data: Path) -> str:
    return GOOD.format(log=shared_data / CAN_LOG, dbc=shared_data / CAN_DBC)


def test_loads_a_full_config(shared_data: Path, tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(good_text(shared_data))
    cfg = load_config(p, environ={})
    assert cfg.agent_id == "veh-7"
    assert cfg.broker.tls and cfg.broker.port == 8883 and cfg.broker.host == "broker.example"
    assert cfg.batch_for("camera.front").max_age_s == 2.0
    assert cfg.batch_for("can").max_age_s == 1.0
    assert cfg.priority_for("camera.front", "camera.jpeg") == PRIORITY_CLASSES.index("camera")
    assert cfg.priority_for("debug", "camera.jpeg") == PRIORITY_CLASSES.index("events")
    assert [s.type for s in cfg.sources] == ["replay_can", "camera"]
    assert cfg.campaigns[0].triggers[0].pre_s == 5


def test_environment_overrides(shared_data: Path) -> None:
    env = {"CVIS_AGENT__SPOOL__BUDGET_MB": "512", "CVIS_AGENT__BROKER__URL": "mqtt://10.0.0.1:1884",
           "CVIS_AGENT__LIVE__ENABLED": "false", "UNRELATED": "x"}
    cfg = loads_config(good_text(shared_data), env)
    assert cfg.spool.budget_mb == 512
    assert cfg.broker.port == 1884 and not cfg.broker.tls
    assert cfg.live.enabled is False
    assert env_overrides({"CVIS_AGENT__A__B": "text here"}) == {"a": {"b": "text here"}}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("budget_mb = 2048", "budget_mb = -1"), "spool.budget_mb"),
        (("fps = 10", 'fps = "fast"'), "sources.1.fps"),
        (('type = "camera"', 'type = "lidar"'), "sources.1.type: unknown source type 'lidar'"),
        (("width = 1280", "width = 1280\nzoom = 2"), "sources.1.zoom: Extra inputs are not permitted"),
        (('condition = "delta(SPEED.SPEED, 1s) < -15"', 'condition = "delta(SPEED.SPEED, 1) < -15"'),
         "campaigns.0.triggers.0.condition"),
        (('agent_id = "veh-7"', 'agent_id = "veh/7"'), "agent_id"),
        (('url = "mqtts://broker.example:8883"', 'url = "http://x"'), "broker.url"),
        (('priority = "events"', 'priority = "vip"'), "streams.debug.priority"),
    ],
)
def test_errors_name_the_key(shared_data: Path, change: tuple[str, str], key: str) -> None:
    text = good_text(shared_data)
    assert change[0] in text
    with pytest.raises(ConfigError, match=key.replace("(", r"\(")):
        loads_config(text.replace(change[0], change[1], 1), {})


def test_missing_capture_file_is_named(shared_data: Path) -> None:
    text = good_text(shared_data).replace(str(shared_data / CAN_LOG), "/nonexistent/x.log")
    with pytest.raises(ConfigError, match=r"sources\.0\.path: .*does not exist"):
        loads_config(text, {})


def test_cli_reports_a_bad_config_and_exits_2(shared_data: Path, tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(good_text(shared_data).replace("budget_mb = 2048", "budget_mb = 0"))
    r = subprocess.run([sys.executable, "-m", "cvis", "agent", "run", "--config", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "spool.budget_mb" in r.stderr and "greater than 0" in r.stderr
