"""The managed broker: `cvis broker` runs Mosquitto, a batch goes through at QoS 1, stop frees the port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cvis.broker import BrokerError, EmbeddedBroker, ManagedBroker, free_port, port_accepts
from wire import Batch, encode_batch, topics
from wire.schemas import CAN_FRAMES, CanFrame


def _roundtrip_batch(host: str, port: int) -> Batch:
    frames = [CanFrame.make(i * 1_000_000, "can0", 0x1A0 + i % 4, bytes([i % 256] * 8)) for i in range(50)]
    batch = encode_batch("car-7", "can0", CAN_FRAMES.table(frames), 42)
    got: list[bytes] = []
    ready = threading.Event()
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        client.subscribe(topics.batch_filter(), qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):  # type: ignore[no-untyped-def]
        ready.set()

    def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
        assert msg.topic == topics.batch_topic("car-7", "can0") and msg.qos == 1
        got.append(msg.payload)
        done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
    sub.on_connect, sub.on_subscribe, sub.on_message = on_connect, on_subscribe, on_message
    sub.connect(host, port)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pub")
    try:
        assert ready.wait(10), "subscription not acknowledged"
        pub.connect(host, port)
        pub.loop_start()
        info = pub.publish(topics.batch_topic("car-7", "can0"), batch.encode(), qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
        assert done.wait(10), "batch did not arrive"
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.loop_stop()
        sub.disconnect()
    back = Batch.decode(got[0])
    assert back == batch and back.table().records() == frames
    return back


@pytest.mark.parametrize("embedded", [False, True], ids=["mosquitto", "amqtt"])
def test_cvis_broker_command_starts_carries_a_batch_and_frees_the_port(tmp_path: Path,
                                                                       embedded: bool) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvis", "broker", "--port", str(port), "--data-dir", str(tmp_path),
         *(["--embedded"] if embedded else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        name = "amqtt, MQTT 3.1.1" if embedded else "Mosquitto, MQTT 5"
        assert f"mqtt://127.0.0.1:{port} ({name};" in line, line
        if not embedded:
            conf = (tmp_path / "mosquitto.conf").read_text()
            assert f"listener {port} 127.0.0.1" in conf
            assert "max_queued_messages 100000" in conf and "max_packet_size" in conf
        _roundtrip_batch("127.0.0.1", port)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert not port_accepts("127.0.0.1", port)
    assert "stopped" in err
    if embedded:
        assert "listening on 127.0.0.1" in (tmp_path / "broker.log").read_text()


def test_cvis_broker_embedded_refuses_mosquitto_only_options() -> None:
    bad = subprocess.run([sys.executable, "-m", "cvis", "broker", "--embedded", "--acl-file", "x"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "--embedded takes no TLS, ACL or password" in bad.stdout


def test_managed_broker_restarts_on_the_same_port_and_keeps_persistence(tmp_path: Path) -> None:
    b = ManagedBroker(data_dir=tmp_path)
    with b:
        port = b.port
        assert port is not None
        _roundtrip_batch(b.host, port)
        b.stop()
        assert not port_accepts("127.0.0.1", port)
        b.start()
        assert b.port == port and b.running()
        _roundtrip_batch(b.host, port)
        b.kill()
        assert not b.running()
    assert (tmp_path / "mosquitto.db").exists()


def test_broker_errors_name_the_problem(tmp_path: Path, broker: ManagedBroker) -> None:
    with pytest.raises(BrokerError, match="already in use"):
        ManagedBroker(broker.port, tmp_path / "x").start()
    with pytest.raises(BrokerError, match="apt-get install mosquitto"):
        ManagedBroker(data_dir=tmp_path / "y", executable="no-such-mosquitto").start()
    tls = tmp_path / "missing.pem"
    from cvis.broker import TlsFiles

    with pytest.raises(BrokerError, match="exited at start"):
        ManagedBroker(data_dir=tmp_path / "z", tls=TlsFiles(tls, tls, tls)).start(timeout=5)


def test_session_broker_fixture_is_the_managed_broker(broker: ManagedBroker) -> None:
    assert broker.running() and broker.pid and os.path.exists(f"/proc/{broker.pid}")
    assert broker.port is not None
    _roundtrip_batch(broker.host, broker.port)
    time.sleep(0)  # nothing left running: the leak guard checks threads and children


def test_embedded_broker_carries_a_batch_and_frees_the_port(tmp_path: Path) -> None:
    b = EmbeddedBroker(data_dir=tmp_path)
    with b:
        assert b.mqtt_version == "3.1.1" and b.running()
        port = b.port
        assert port is not None
        _roundtrip_batch(b.host, port)
        b.kill()  # as a crash would
        assert not b.running() and not port_accepts("127.0.0.1", port)
        b.start()
        assert b.port == port
        _roundtrip_batch(b.host, port)
    assert not port_accepts("127.0.0.1", port)
    with pytest.raises(BrokerError, match="already in use"), ManagedBroker(data_dir=tmp_path / "m") as m:
        EmbeddedBroker(m.port, tmp_path / "e").start()
