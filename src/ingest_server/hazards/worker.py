"""The MQTT hazard worker: live messages of a set of tiles in, warnings to vehicles out.

Threads: paho's network thread only puts each message, undecoded, in a
pending map keyed by topic (one topic per agent), replacing any message of
the same agent still waiting there: on the live plane the newest state wins,
so an overloaded worker evaluates every vehicle at a lower rate instead of
falling further and further behind (``coalesced`` counts the replaced ones;
the map is bounded and drops the oldest when full). One evaluation thread
decodes and evaluates what the map holds through the
:class:`~ingest_server.hazards.engine.HazardEngine` and publishes the
warnings; an optional recorder thread writes them to the index. So evaluation
never blocks the network thread, and states that still waited longer than
``freshness.max_age_ms`` are dropped as stale instead of producing late
warnings. Decoding stays out of the network thread on purpose: under the GIL
it would not run in parallel with the evaluation anyway, and it would be
spent on states that a newer one replaces before they are evaluated.

The evaluation thread sleeps while the map is empty; the network thread wakes
it (through a ``SimpleQueue``, only when it sleeps), and it then gathers for
``GATHER_S`` before draining, so a stream of 10,000 states/s costs a wake-up
per several states rather than one each.

Subscriptions: ``cvis/v1/live/{tile}/+`` for each own tile and its eight
neighbours (all tiles when none are given), QoS 0, renewed on every
reconnect. Warnings go only to vehicles in the worker's own tiles, so workers
with disjoint tile sets never warn the same vehicle twice.

Warnings are published at QoS 0 on ``cvis/v1/{agent}/warning``. A warning
that arrives late is useless, and QoS 1 buys nothing on a live TCP
connection except a PUBACK per message; across a reconnect it would deliver
warnings whose expiry has passed. Instead every active episode is re-sent
(an ``update``) at least every ``episodes.update_interval_s`` and expires
after ``episodes.expiry_s``, so one lost message is repaired within half a
second.

Use it from a server as ``with HazardWorker(url, tiles=...) as w: ...`` or
``w.start()`` / ``w.stop()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from ingest_server.hazards.config import HazardConfig
from ingest_server.hazards.engine import MAX_LIVE_BYTES, HazardEngine
from ingest_server.hazards.errors import HazardConfigError, HazardConnectError
from ingest_server.hazards.record import WarningRecorder
from wire.broker_url import parse_broker_url as parse_url
from wire.errors import ValidationError
from wire.topics import check_tile, live_filter, tile_neighbours, warning_topic
from wire.warning import HazardWarning

log = logging.getLogger(__name__)

WARNING_QOS = 0
TICK_S = 0.05
#: After a wake-up, the evaluation thread waits this long for more messages before draining.
GATHER_S = 0.0005


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` (port 1883 by default) or ``mqtts://`` (8883) -> (host, port)."""
    try:
        address = parse_url(url, allow_bare=True)
    except ValidationError as exc:
        raise HazardConfigError(str(exc)) from exc
    return address.host, address.port


class HazardWorker:
    """Hazard evaluation for ``tiles`` (all tiles if empty) against one broker."""

    def __init__(
        self,
        broker_url: str,
        *,
        tiles: Sequence[str] = (),
        config: HazardConfig | None = None,
        recorder: WarningRecorder | None = None,
        client_id: str | None = None,
        max_queue: int = 50_000,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self.host, self.port = parse_broker_url(broker_url)
        try:
            self.tiles = tuple(check_tile(t) for t in tiles)
        except ValueError as exc:
            raise HazardConfigError(str(exc)) from exc
        own = frozenset(self.tiles)
        self.engine = HazardEngine(config, owns=(own.__contains__ if own else None))
        self.recorder = recorder
        self.filters = (
            sorted({live_filter(n) for t in self.tiles for n in tile_neighbours(t)})
            if self.tiles else [live_filter()]
        )
        self._pending: OrderedDict[str, bytes] = OrderedDict()
        self._max_queue = max_queue
        # Wakes the evaluation thread; the network thread puts a token only while ``_idle``.
        self._signal: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._idle = False
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self.queue_dropped = 0
        self.coalesced = 0
        self.published = 0
        self.publish_failed = 0
        self.busy_s = 0.0
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"cvis-hazards-{os.getpid()}-{id(self):x}",
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._client.reconnect_delay_set(1, 5)
        if username:
            self._client.username_pw_set(username, password)
        if parse_url(broker_url, allow_bare=True).tls:
            self._client.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key,
                                 cert_reqs=ssl.CERT_REQUIRED)

    # lifecycle

    def start(self, timeout: float = 10.0) -> HazardWorker:
        if self._thread is not None:
            raise RuntimeError("hazard worker already started")
        if self.recorder is not None:
            self.recorder.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cvis-hazards-eval", daemon=True)
        self._thread.start()
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            self.stop()
            raise HazardConnectError(f"cannot connect to broker {self.host}:{self.port}: {exc}") from exc
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise HazardConnectError(
                f"broker {self.host}:{self.port} did not confirm the live subscriptions in {timeout} s"
            )
        log.info("hazards: worker subscribed to %d live filters on %s:%d (tiles: %s)",
                 len(self.filters), self.host, self.port, ", ".join(self.tiles) or "all")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect, finish the queue's evaluation thread and flush the recorder."""
        self._stop.set()  # first: the disconnect below is not a connection lost
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()
        self._signal.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.recorder is not None:
            self.recorder.stop()
        log.info("hazards: worker stopped (%s)", self.stats())

    def __enter__(self) -> HazardWorker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def connected(self) -> bool:
        """Connected with the live subscriptions in place."""
        return self._client.is_connected() and self._subscribed.is_set()

    def stats(self) -> dict[str, Any]:
        return {
            **self.engine.stats.as_dict(), "pending": len(self._pending),
            "queue_dropped": self.queue_dropped, "coalesced": self.coalesced,
            "published": self.published,
            "publish_failed": self.publish_failed, "busy_s": round(self.busy_s, 3),
        }

    # paho callbacks (network thread: keep them short)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    rc: mqtt.ReasonCode, props: object = None) -> None:
        if rc.is_failure:
            log.warning("hazards: broker refused the connection: %s", rc)
            return
        # Renew the subscriptions on every (re)connect: a clean session has none.
        self._subscribed.clear()
        client.subscribe([(f, 0) for f in self.filters])

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                      rcs: list[mqtt.ReasonCode], props: object = None) -> None:
        if any(rc.is_failure for rc in rcs):
            log.warning("hazards: broker refused a live subscription: %s", rcs)
            return
        self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       rc: mqtt.ReasonCode, props: object = None) -> None:
        if not self._stop.is_set():
            log.warning("hazards: disconnected from broker (%s); reconnecting", rc)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        # No decoding here: the network thread only files the payload (bytes, as paho made
        # it) under its topic, and wakes the evaluation thread if it sleeps.
        payload = msg.payload  # bytes: paho slices it out of the packet
        if len(payload) > MAX_LIVE_BYTES or type(payload) is not bytes:
            payload = bytes(payload[:MAX_LIVE_BYTES + 1])  # the engine drops it if oversize
        topic = msg.topic
        pending = self._pending
        if topic in pending:
            self.coalesced += 1  # latest wins; it keeps its place in the line
        elif len(pending) >= self._max_queue:
            with contextlib.suppress(KeyError):
                pending.popitem(last=False)
            self.queue_dropped += 1
        pending[topic] = payload
        if self._idle:
            self._idle = False
            self._signal.put(None)

    # evaluation thread

    def _run(self) -> None:
        engine = self.engine
        pending = self._pending
        wake = self._signal
        perf_counter, time_ns, monotonic = time.perf_counter, time.time_ns, time.monotonic
        next_tick = monotonic() + TICK_S
        while not self._stop.is_set():
            # Sleep until the network thread files a message (or the next tick): announce the
            # sleep first, then look once more, so a message filed in between is not missed.
            self._idle = True
            if not pending:
                with contextlib.suppress(queue.Empty):
                    wake.get(timeout=max(0.0, next_tick - monotonic()))
                    # Let a few more messages come before draining: at 10,000 states/s this
                    # wakes the thread (and hands the GIL over) once per several messages
                    # instead of once per message, for half a millisecond of latency.
                    time.sleep(GATHER_S)
            self._idle = False
            n = 0
            while True:
                try:
                    topic, payload = pending.popitem(last=False)
                except KeyError:
                    break
                started = perf_counter()
                try:
                    warnings = engine.on_message(topic, payload, time_ns())
                except Exception:  # a bug must not kill the worker; count it and go on
                    engine.stats.dropped["error"] += 1
                    log.exception("hazards: evaluation failed on %s", topic)
                    warnings = []
                if warnings:
                    self._publish(warnings)
                self.busy_s += perf_counter() - started
                n += 1
                if n % 64 == 0 and monotonic() >= next_tick:
                    break  # a steady stream must not hold back the tick (episode ends)
            if monotonic() >= next_tick:
                next_tick = monotonic() + TICK_S
                ended = engine.tick(time_ns())
                if ended:
                    self._publish(ended)

    def _publish(self, warnings: list[HazardWarning]) -> None:
        for w in warnings:
            info = self._client.publish(warning_topic(w.target), w.encode(), qos=WARNING_QOS)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self.published += 1
            else:
                self.publish_failed += 1
            if self.recorder is not None:
                self.recorder.submit(w)
