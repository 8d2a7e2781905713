"""A small acknowledging server for the agent tests (the real ingest server lives elsewhere).

It subscribes to every agent's batches over a real Mosquitto, decodes and verifies each one
(envelope, checksum, schema), keeps what it received, and acknowledges with selective
:class:`wire.control.Ack` ranges every ``ack_every_s``. It also answers time requests, and
keeps live states and retained health messages. ``acking = False`` makes it a server that
receives but never acknowledges (to test resends).
"""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from wire.control import Ack, TimeRequest, TimeResponse, to_ranges
from wire.envelope import Batch
from wire.state import State
from wire.topics import TopicKind, ack_topic, parse_topic, time_response_topic


@dataclass
class Received:
    """Everything the server saw, per agent and stream."""

    #: (agent, stream) -> seq -> (crc of the envelope bytes, records)
    batches: dict[tuple[str, str], dict[int, tuple[int, list[Any]]]] = field(
        default_factory=lambda: defaultdict(dict))
    #: (agent, stream, seq) that arrived with different bytes than the first time (must stay empty)
    conflicts: list[tuple[str, str, int]] = field(default_factory=list)
    duplicates: int = 0
    messages: int = 0
    bad: list[str] = field(default_factory=list)
    #: (monotonic receive time, agent, State)
    live: list[tuple[float, str, State]] = field(default_factory=list)
    live_tiles: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    health: dict[str, bytes] = field(default_factory=dict)
    #: (monotonic receive time, agent, payload) of every health message
    health_log: list[tuple[float, str, bytes]] = field(default_factory=list)
    #: monotonic time of each batch message
    batch_times: list[float] = field(default_factory=list)
    #: (agent, stream, seq) -> (clock offset ns, time quality) of the envelope
    clock: dict[tuple[str, str, int], tuple[int, int]] = field(default_factory=dict)


class AckingServer:
    def __init__(self, host: str, port: int | None, *, ack_every_s: float = 0.05, acking: bool = True,
                 client_id: str | None = None, tls: tuple[Path, Path, Path] | None = None) -> None:
        assert port is not None, "the broker has no port yet"
        self.host, self.port = host, port
        self.ack_every_s = ack_every_s
        self.acking = acking
        self.received = Received()
        self.lock = threading.Lock()
        self._pending: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        self._stop = threading.Event()
        self._acker: threading.Thread | None = None
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                      client_id=client_id or f"cvis-test-server-{uuid.uuid4().hex[:8]}",
                                      clean_session=True)
        c.reconnect_delay_set(0.05, 0.5)
        if tls is not None:  # (CA, client certificate, client key)
            c.tls_set(ca_certs=str(tls[0]), certfile=str(tls[1]), keyfile=str(tls[2]))
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.connected = threading.Event()

    def __enter__(self) -> AckingServer:
        self.client.connect(self.host, self.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("test server could not connect to the broker")
        self._acker = threading.Thread(target=self._ack_loop, name="test-acker", daemon=True)
        self._acker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._acker is not None:
            self._acker.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe([("cvis/v1/+/batch/#", 1), ("cvis/v1/+/time/request", 0),
                          ("cvis/v1/+/health", 1), ("cvis/v1/live/+/+", 0)])
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        try:
            topic = parse_topic(msg.topic)
        except ValueError as exc:
            self.received.bad.append(str(exc))
            return
        if topic.kind is TopicKind.BATCH:
            self._on_batch(topic.agent, msg.payload, now)
        elif topic.kind is TopicKind.TIME_REQUEST:
            t2 = time.time_ns()
            req = TimeRequest.decode(msg.payload)
            resp = TimeResponse(req.request_id, req.t1_ns, t2, time.time_ns())
            client.publish(time_response_topic(topic.agent), resp.encode(), qos=0)
        elif topic.kind is TopicKind.HEALTH:
            with self.lock:
                self.received.health[topic.agent] = bytes(msg.payload)
                self.received.health_log.append((now, topic.agent, bytes(msg.payload)))
        elif topic.kind is TopicKind.LIVE:
            try:
                st = State.decode(msg.payload)
            except ValueError as exc:
                self.received.bad.append(f"live: {exc}")
                return
            with self.lock:
                self.received.live.append((now, topic.agent, st))
                self.received.live_tiles[topic.agent].add(topic.tile or "")

    def _on_batch(self, agent: str, payload: bytes, now: float) -> None:
        try:
            batch = Batch.decode(payload)
            records = batch.table().records()
        except ValueError as exc:
            self.received.bad.append(f"batch: {exc}")
            return
        crc = zlib.crc32(payload)
        with self.lock:
            r = self.received
            r.messages += 1
            r.batch_times.append(now)
            r.clock[(agent, batch.stream, batch.seq)] = (batch.clock_offset_ns, int(batch.time_quality))
            seen = r.batches[(agent, batch.stream)]
            if batch.seq in seen:
                r.duplicates += 1
                if seen[batch.seq][0] != crc:
                    r.conflicts.append((agent, batch.stream, batch.seq))
            else:
                seen[batch.seq] = (crc, records)
            self._pending[agent][batch.stream].add(batch.seq)

    def _ack_loop(self) -> None:
        while not self._stop.wait(self.ack_every_s):
            self.flush_acks()

    def flush_acks(self) -> None:
        if not self.acking:
            return
        with self.lock:
            pending, self._pending = self._pending, defaultdict(lambda: defaultdict(set))
        for agent, streams in pending.items():
            ack = Ack({s: to_ranges(seqs) for s, seqs in streams.items() if seqs}, time.time_ns())
            self.client.publish(ack_topic(agent), ack.encode(), qos=1)

    # views

    def records(self, agent: str, stream: str) -> list[Any]:
        """Every record received on a stream, in seq order, each batch once."""
        with self.lock:
            seen = dict(self.received.batches.get((agent, stream), {}))
        return [r for seq in sorted(seen) for r in seen[seq][1]]

    def seqs(self, agent: str, stream: str) -> set[int]:
        with self.lock:
            return set(self.received.batches.get((agent, stream), {}))

    def streams(self, agent: str) -> set[str]:
        with self.lock:
            return {s for a, s in self.received.batches if a == agent}
