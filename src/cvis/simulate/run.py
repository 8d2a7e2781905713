"""Running a world: synchronously against an in-process engine, or live through a broker.

Both publish exactly the same messages: every vehicle's ``state/1`` every
100 ms at its own phase (agents are not synchronised), every RSU's object
list likewise, on ``cvis/v1/live/{tile}/{agent}``.

- :func:`run_sync` calls a hazard engine directly with simulated time: a
  minute of traffic takes seconds, and latency is not measured.
- :func:`run_live` publishes at 10 Hz in real time through MQTT (QoS 0) and
  receives warnings on ``cvis/v1/+/warning``; latency is the time from the
  triggering state's capture to the warning's receipt.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import paho.mqtt.client as mqtt

from cvis.simulate.errors import SimulationConnectError, SimulationError
from cvis.simulate.report import Received, Report, evaluate
from cvis.simulate.world import Rsu, Vehicle, World
from wire.broker_url import parse_broker_url as parse_url
from wire.errors import ValidationError, WireError
from wire.topics import PREFIX, TILE_DEG, live_topic, tile_of
from wire.warning import HazardWarning, Status

log = logging.getLogger(__name__)

#: Scenario time 0 of a synchronous run (UTC ns): a fixed instant, so runs repeat exactly.
SYNC_EPOCH_NS = 1_700_000_000_000_000_000
STEP_NS = 10_000_000
_SLOTS = 10
MAX_WARNING_BYTES = 4096


class Engine(Protocol):
    def on_message(self, topic: str, payload: bytes, now_ns: int) -> list[HazardWarning]: ...
    def tick(self, now_ns: int) -> list[HazardWarning]: ...


Progress = Callable[[float], None]


def _by_slot(world: World) -> tuple[list[list[Vehicle]], list[list[Rsu]]]:
    vs: list[list[Vehicle]] = [[] for _ in range(_SLOTS)]
    rs: list[list[Rsu]] = [[] for _ in range(_SLOTS)]
    for v in world.vehicles:
        vs[round(v.slot * 100) % _SLOTS].append(v)
    for r in world.rsus:
        rs[round(r.slot * 100) % _SLOTS].append(r)
    return vs, rs


#: Each agent's live topic, with the tile indexes it was made for (a vehicle changes tile rarely).
_topics: dict[str, tuple[int, int, str]] = {}


def _live_topic(agent: str, lat: float, lon: float) -> str:
    i, j = math.floor(lat / TILE_DEG), math.floor(lon / TILE_DEG)  # as wire.topics.tile_of
    cached = _topics.get(agent)
    if cached is not None and cached[0] == i and cached[1] == j:
        return cached[2]
    topic = live_topic(tile_of(lat, lon), agent)
    if len(_topics) > 100_000:
        _topics.clear()
    _topics[agent] = (i, j, topic)
    return topic


def messages(world: World, t: float, slot: int, timestamp_ns: int, seq: int,
             slots: tuple[list[list[Vehicle]], list[list[Rsu]]]) -> Iterator[tuple[str, bytes]]:
    """The (topic, payload) pairs due in one 10 ms slot at scenario time ``t``."""
    vehicles, rsus = slots
    for v in vehicles[slot]:
        if v.active(t):
            st, lat, lon = world.state(v, t, timestamp_ns, seq)
            yield _live_topic(v.id, lat, lon), st.encode()
    for r in rsus[slot]:
        lat, lon = world.projection.to_wgs84(r.x, r.y)
        yield live_topic(tile_of(lat, lon), r.id), world.object_list(r, t, timestamp_ns, seq).encode()


def run_sync(world: World, engine: Engine, duration: float | None = None,
             progress: Progress | None = None) -> Report:
    """Drive ``engine`` with simulated time; returns the checked report."""
    duration = world.scenario.duration if duration is None else duration
    slots = _by_slot(world)
    received: list[Received] = []
    sent = 0
    steps = round(duration * 1e9 / STEP_NS)
    for i in range(steps + 1):
        now = SYNC_EPOCH_NS + i * STEP_NS
        t = i * STEP_NS / 1e9
        slot = i % _SLOTS
        for topic, payload in messages(world, t, slot, now, i // _SLOTS, slots):
            sent += 1
            for w in engine.on_message(topic, payload, now):
                received.append(Received(w, (w.issued_ns - SYNC_EPOCH_NS) / 1e9, None))
        if slot % 5 == 0:
            for w in engine.tick(now):
                received.append(Received(w, (w.issued_ns - SYNC_EPOCH_NS) / 1e9, None))
        if progress is not None and slot == 0:
            progress(t)
    return evaluate(world, received, sent, duration)


def parse_broker_url(url: str) -> tuple[str, int]:
    try:
        address = parse_url(url, allow_bare=True)
    except ValidationError as exc:
        raise SimulationError(str(exc)) from exc
    if address.tls:
        raise SimulationError(f"broker URL {url!r}: only mqtt://host:port is supported here")
    return address.host, address.port


class _Publisher:
    """A paho client without a network thread, only for publishing.

    paho writes a publish at once when no network thread runs (one ``send``), instead of
    queueing it, waking its loop thread through a socket pair and handing it the GIL; at
    10,000 states/s that halves the simulator's CPU. :meth:`service` does the rest of the
    protocol (CONNACK, keepalive pings) between publishes, with paho's external-loop calls.
    """

    def __init__(self, host: str, port: int, name: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"cvis-sim-{name}-{os.getpid()}")
        self.ready = False
        self.client.on_connect = self._connected
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise SimulationConnectError(f"cannot connect to broker {host}:{port}: {exc}") from exc

    def _connected(self, client: mqtt.Client, userdata: object, flags: object,
                   rc: mqtt.ReasonCode, props: object = None) -> None:
        self.ready = not rc.is_failure

    def service(self, timeout: float = 0.0) -> None:
        """Read what the broker sent, write what is pending, send a keepalive when due."""
        sock = self.client.socket()
        if sock is None:
            return
        readable, writable, _ = select.select(
            [sock], [sock] if self.client.want_write() else [], [], timeout)
        if readable:
            self.client.loop_read()
        if writable:
            self.client.loop_write()
        self.client.loop_misc()

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready:
            left = deadline - time.monotonic()
            if left <= 0 or self.client.socket() is None:
                self.close()
                raise SimulationConnectError("broker did not accept the simulator within "
                                             f"{timeout:.0f} s")
            self.service(min(left, 0.05))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        deadline = time.monotonic() + 1.0
        while self.client.socket() is not None and time.monotonic() < deadline:
            self.service(0.05)  # the broker closes the connection after DISCONNECT


class _Connection:
    """One paho client with its network thread, connected and (optionally) subscribed."""

    def __init__(self, host: str, port: int, name: str, subscribe: str | None = None,
                 on_message: Callable[[bytes, int], None] | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"cvis-sim-{name}-{os.getpid()}")
        self.ready = threading.Event()
        self._subscribe = subscribe
        self._on_payload = on_message
        self.client.on_connect = self._connected
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._message
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise SimulationConnectError(f"cannot connect to broker {host}:{port}: {exc}") from exc
        self.client.loop_start()

    def _connected(self, client: mqtt.Client, userdata: object, flags: object, rc: object,
                   props: object = None) -> None:
        if self._subscribe:
            client.subscribe(self._subscribe, qos=0)
        else:
            self.ready.set()

    def _message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self._on_payload is not None:
            self._on_payload(bytes(msg.payload), time.time_ns())

    def wait(self, timeout: float) -> None:
        if not self.ready.wait(timeout):
            self.close()
            raise SimulationConnectError("broker did not accept the simulator within "
                                         f"{timeout:.0f} s")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def run_live(world: World, broker_url: str, duration: float | None = None,
             progress: Progress | None = None, grace_s: float = 1.0) -> Report:
    """Publish the world at 10 Hz in real time; collect and check the warnings that come back."""
    duration = world.scenario.duration if duration is None else duration
    host, port = parse_broker_url(broker_url)
    inbox: list[tuple[bytes, int]] = []
    lock = threading.Lock()

    def got(payload: bytes, at_ns: int) -> None:
        with lock:
            inbox.append((payload, at_ns))

    rx = _Connection(host, port, "rx", f"{PREFIX}/+/warning", got)
    try:
        rx.wait(10.0)
        tx = _Publisher(host, port, "tx")
        try:
            tx.wait(10.0)
            start_ns, sent, behind, failed = _publish_loop(world, tx, duration, progress)
            deadline = time.monotonic() + grace_s
            while (left := deadline - time.monotonic()) > 0:
                tx.service(min(left, 0.1))
        finally:
            tx.close()
    finally:
        rx.close()
    received: list[Received] = []
    bad = 0
    for payload, at_ns in inbox:
        if len(payload) > MAX_WARNING_BYTES:
            bad += 1
            continue
        try:
            w = HazardWarning.decode(payload)
        except WireError:
            bad += 1
            continue
        # An end is issued by a timer, not by a state: it has no capture-to-receipt latency.
        latency = (at_ns - w.source_ns) / 1e6 if w.source_ns and w.status is not Status.END else None
        received.append(Received(w, (w.issued_ns - start_ns) / 1e9, latency))
    report = evaluate(world, received, sent, duration)
    report.extra.update({"malformed_warnings": bad, "publish_behind_ms_max": round(behind, 1),
                         "publish_failed": failed})
    return report


def _publish_loop(world: World, tx: _Publisher, duration: float,
                  progress: Progress | None) -> tuple[int, int, float, int]:
    """Real-time 10 ms slots; returns (start ns, messages sent, worst lag behind schedule ms,
    publishes paho refused)."""
    slots = _by_slot(world)
    publish = tx.client.publish
    ok = mqtt.MQTT_ERR_SUCCESS
    start = time.time_ns()
    sent = failed = 0
    worst = 0.0
    i = 0
    while True:
        due = start + i * STEP_NS
        now = time.time_ns()
        if now < due:
            tx.service((due - now) / 1e9)  # wait for the slot on the socket, not in sleep()
            now = time.time_ns()
            if now < due:
                time.sleep((due - now) / 1e9)
                now = time.time_ns()
        worst = max(worst, (now - due) / 1e6)
        t = (now - start) / 1e9
        if t > duration:
            break
        slot = i % _SLOTS
        for topic, payload in messages(world, t, slot, now, i // _SLOTS, slots):
            if publish(topic, payload, qos=0).rc != ok:
                failed += 1
            sent += 1
        if progress is not None and slot == 0:
            progress(t)
        i += 1
    return start, sent, worst, failed
