"""Server configuration (TOML, environment, errors naming the key) and time sync over MQTT."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cvis.broker import ManagedBroker
from ingest_server.config import config_to_toml, load_config
from ingest_server.errors import ConfigError
from ingest_server.timesync import answer
from tests.ingest_server.conftest import ThreadedWorker, make_config
from wire.control import TimeRequest, TimeResponse
from wire.topics import time_request_topic, time_response_topic


def test_config_from_toml_and_environment(tmp_path: Path) -> None:
    p = tmp_path / "server.toml"
    p.write_text('data_dir = "/srv/cvis"\nworkers = 3\n[broker]\nurl = "mqtt://10.0.0.5:1884"\n'
                 "[archive]\nsegment_max_s = 60\n")
    cfg = load_config(p, env={"CVIS_SERVER__INGEST__FLUSH_INTERVAL_MS": "250",
                              "CVIS_SERVER__WORKERS": "4", "OTHER": "x"})
    assert cfg.workers == 4 and cfg.ingest.flush_interval_ms == 250
    assert (cfg.broker.host, cfg.broker.port) == ("10.0.0.5", 1884)
    assert cfg.archive.segment_max_s == 60
    assert cfg.resolved_index_url == "sqlite:////srv/cvis/index.sqlite"
    again = tmp_path / "again.toml"
    again.write_text(config_to_toml(cfg))
    assert load_config(again, env={}) == cfg


@pytest.mark.parametrize(("text", "key"), [
    ("workers = 0", "workers"),
    ('[archive]\nsegment_max_mb = -1', "archive.segment_max_mb"),
    ('[broker]\nurl = "http://x"', "broker.url"),
    ("[ingest]\nflush_intervall_ms = 5", "ingest.flush_intervall_ms"),
    ('index_url = "mysql://x"', "index_url"),
])
def test_config_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(p, env={})


def test_answer_is_pure_and_ignores_garbage() -> None:
    req = TimeRequest(7, 1_000)
    topic, payload = answer(time_request_topic("veh1"), req.encode(), 2_000, clock=lambda: 2_500)  # type: ignore[misc]
    assert topic == time_response_topic("veh1")
    assert TimeResponse.decode(payload) == TimeResponse(7, 1_000, 2_000, 2_500)
    assert answer(time_request_topic("veh1"), b"\x93garbage", 1) is None
    assert answer(time_request_topic("veh1"), b"\x00" * 1000, 1) is None
    assert answer("cvis/v1/veh1/ack", req.encode(), 1) is None


def test_worker_answers_time_requests(tmp_path: Path, broker: ManagedBroker) -> None:
    cfg = make_config(tmp_path / "data", broker)
    got: list[TimeResponse] = []
    arrived = threading.Event()
    agent = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="time-agent")

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(TimeResponse.decode(msg.payload))
        arrived.set()

    agent.on_message = on_message
    with ThreadedWorker(cfg):
        agent.connect(broker.host, broker.port)
        agent.loop_start()
        try:
            agent.subscribe(time_response_topic("veh9"), qos=0)
            time.sleep(0.2)
            t1 = time.time_ns()
            agent.publish(time_request_topic("veh9"), TimeRequest(42, t1).encode(), qos=0)
            assert arrived.wait(10)
            t4 = time.time_ns()
        finally:
            agent.disconnect()
            agent.loop_stop()
    resp, = got
    assert resp.request_id == 42 and resp.t1_ns == t1
    assert t1 <= resp.t2_ns <= resp.t3_ns <= t4
    offset, delay = resp.offset_and_delay(t4)
    assert delay >= 0 and abs(offset) <= delay  # one clock: the offset is within the delay
