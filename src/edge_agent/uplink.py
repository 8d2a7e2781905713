"""The uplink: one MQTT connection (paho-mqtt 2) and the archival-plane sender.

:class:`MqttLink` owns the paho client and a network thread of its own that runs paho's
``loop()`` (paho's network loop on the data path; publishes from the event loop only queue
packets and wake that thread through paho's socket pair). The thread reconnects with capped,
jittered exponential backoff; after every connect it subscribes again (a lost subscription
is a lost ack). The session is persistent (``clean_session=False``), so acks published while
the agent was away are delivered when it returns. A last will marks the agent offline.
TLS with client certificates is configured from :class:`edge_agent.config.BrokerConfig`.

:class:`Uplink` moves batches from the spool to the broker: QoS 1, highest priority class
first, at most ``window_batches`` / ``window_mb`` published and not yet acknowledged by the
*server* (``wire.control.Ack`` ranges on the agent's ``ack`` topic; a broker PUBACK only means
the broker has it). A batch is deleted from the spool only when an ack covers it. Batches are
sent again after an ack timeout, and after a reconnect when the broker had already accepted
them (those paho had not finished sending, paho retransmits itself). A token bucket can cap
the bandwidth.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.config import BrokerConfig, UplinkConfig
from edge_agent.errors import UplinkError
from edge_agent.spool import SpooledBatch
from wire.control import Ack
from wire.errors import WireError
from wire.topics import ack_topic, batch_topic

log = logging.getLogger(__name__)

Handler = Callable[[bytes, str, bool], None]
#: A PUBACK seen before its publish was recorded counts if it is at most this old.
_EARLY_PUBACK_S = 5.0


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` s; True if it is set.

    ``asyncio.timeout`` rather than ``asyncio.wait_for``: on Python 3.11, ``wait_for`` around
    ``Event.wait()`` can swallow a cancellation and hang a shutdown.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class Backoff:
    """Capped exponential backoff with full jitter in [delay/2, delay]."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max(max_s, min_s)
        self._delay = min_s
        self._rng = rng or random.Random()

    def next(self) -> float:
        d = self._delay
        self._delay = min(self.max_s, self._delay * 2)
        return self._rng.uniform(d / 2, d)

    def reset(self) -> None:
        self._delay = self.min_s


class MqttLink:
    """A paho client, its network thread, reconnects and topic handlers.

    Handlers and connection callbacks run on the asyncio loop given at :meth:`start`.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        client_id: str,
        *,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        max_inflight: int = 64,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.broker = broker
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        c = self.client
        c.max_inflight_messages_set(min(max(max_inflight, 1), 65535))
        c.max_queued_messages_set(0)
        # Publishing from other threads only queues the packet; our network thread writes it.
        c.on_socket_register_write = _no_op
        c.on_socket_unregister_write = _no_op
        if broker.username:
            c.username_pw_set(broker.username, broker.password)
        if broker.tls:
            for name in ("tls_ca", "tls_cert", "tls_key"):
                p = getattr(broker, name)
                if p is not None and not p.is_file():
                    raise UplinkError(f"broker.{name}: file {p} not found")
            if (broker.tls_cert is None) != (broker.tls_key is None):
                raise UplinkError("broker.tls_cert and broker.tls_key go together")
            c.tls_set(
                ca_certs=str(broker.tls_ca) if broker.tls_ca else None,
                certfile=str(broker.tls_cert) if broker.tls_cert else None,
                keyfile=str(broker.tls_key) if broker.tls_key else None,
            )
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.connect_async(broker.host, broker.port, keepalive=broker.keepalive_s)
        self._backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self._handlers: dict[str, tuple[int, Handler]] = {}
        self._on_up: list[Callable[[], None]] = []
        self._on_down: list[Callable[[], None]] = []
        self._on_puback: Callable[[int], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.failed_connects = 0
        self.connected_since_mono: float | None = None
        self.last_error: str | None = None

    # wiring (before start)

    def subscribe(self, topic: str, qos: int, handler: Handler) -> None:
        self._handlers[topic] = (qos, handler)

    def on_up(self, fn: Callable[[], None]) -> None:
        self._on_up.append(fn)

    def on_down(self, fn: Callable[[], None]) -> None:
        self._on_down.append(fn)

    def on_puback(self, fn: Callable[[int], None]) -> None:
        """``fn(mid)`` runs in the network thread when the broker accepts a QoS 1 publish."""
        self._on_puback = fn

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="cvis-uplink-net", daemon=True)
        self._thread.start()

    def stop(self, final: tuple[str, bytes] | None = None, timeout: float = 3.0) -> None:
        """Publish ``final`` (retained, QoS 1) if connected, disconnect cleanly, join the thread."""
        if self._thread is None:
            return
        if final is not None and self.connected:
            info = self.client.publish(final[0], final[1], qos=1, retain=True)
            deadline = time.monotonic() + min(timeout, 2.0)
            while not info.is_published() and self.connected and time.monotonic() < deadline:
                time.sleep(0.01)
        self._stop.set()
        if self.connected:
            self.client.disconnect()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("uplink: network thread did not stop within %.1f s", timeout)
        self._thread = None
        # Close the socket and paho's wake-up socket pair now rather than at garbage collection.
        self.client._reset_sockets()

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    # network thread

    def _run(self) -> None:
        c = self.client
        while not self._stop.is_set():
            try:
                rc = c.reconnect()
            except (OSError, ValueError) as exc:
                rc = MQTTErrorCode.MQTT_ERR_CONN_REFUSED
                self.last_error = str(exc)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                while not self._stop.is_set():
                    rc = c.loop(timeout=1.0)
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                if self._stop.is_set():
                    # Let the DISCONNECT (queued by stop()) go out.
                    deadline = time.monotonic() + 1.0
                    while time.monotonic() < deadline:
                        if c.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                            break
                    break
            if self._connected.is_set():
                self._down()
            else:
                self.failed_connects += 1
            delay = self._backoff.next()
            if self.failed_connects <= 3 or self.failed_connects % 20 == 0:
                log.info("uplink: broker %s:%d unreachable (%s); retrying in %.2f s",
                         self.broker.host, self.broker.port,
                         self.last_error or mqtt.error_string(rc), delay)
            self._stop.wait(delay)
        if self._connected.is_set():
            self._down()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"connection refused: {reason}"
            log.warning("uplink: broker refused the connection: %s", reason)
            client.disconnect()
            return
        subs = [(t, qos) for t, (qos, _) in self._handlers.items()]
        if subs:
            client.subscribe(subs)
        self.connects += 1
        self.last_error = None
        self.connected_since_mono = time.monotonic()
        self._backoff.reset()
        self._connected.set()
        log.info("uplink: connected to %s:%d (session %s)", self.broker.host, self.broker.port,
                 "resumed" if flags.session_present else "new")
        for fn in self._on_up:
            self._call(fn)

    def _down(self) -> None:
        self._connected.clear()
        self.disconnects += 1
        self.connected_since_mono = None
        if not self._stop.is_set():
            log.warning("uplink: connection to %s:%d lost", self.broker.host, self.broker.port)
        for fn in self._on_down:
            self._call(fn)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason is not None and getattr(reason, "is_failure", False):
            self.last_error = str(reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        entry = self._handlers.get(msg.topic)
        if entry is None:
            return
        handler = entry[1]
        payload = bytes(msg.payload)
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(handler, payload, msg.topic, bool(msg.retain))
            except RuntimeError:  # loop closed during shutdown
                pass

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if self._on_puback is not None:
            self._on_puback(mid)

    def _call(self, fn: Callable[[], None]) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(fn)
            except RuntimeError:
                pass

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "broker": f"{self.broker.host}:{self.broker.port}",
            "tls": self.broker.tls,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "failed_connects": self.failed_connects,
            "connected_for_s": (time.monotonic() - self.connected_since_mono)
            if self.connected_since_mono is not None else None,
            "last_error": self.last_error,
        }


def _no_op(*args: Any) -> None:
    return None


class TokenBucket:
    """Bytes per second with a burst allowance; a batch larger than the burst waits for a full bucket."""

    def __init__(self, rate_bytes_s: float, burst_bytes: float) -> None:
        self.rate = rate_bytes_s
        self.capacity = max(burst_bytes, 1.0)
        self.tokens = self.capacity
        self._t = time.monotonic()
        self.waited_s = 0.0

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self._t) * self.rate)
        self._t = now

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        while True:
            self._refill()
            need = min(n, self.capacity)
            if self.tokens >= need:
                self.tokens -= n  # may go negative: the debt delays the next batch
                return
            wait = (need - self.tokens) / self.rate
            self.waited_s += wait
            await asyncio.sleep(wait)


@dataclass(slots=True)
class _InFlight:
    batch: SpooledBatch
    mid: int
    sent_mono: float
    puback: bool = False


class Uplink:
    """Sends spooled batches within a window, applies acks, resends what is not acknowledged.

    ``take(limit, max_bytes, skip)``, ``ack(ranges)`` and ``rewind(batches)`` are the spool's
    operations, run off the event loop by the agent.
    """

    def __init__(
        self,
        agent_id: str,
        link: MqttLink,
        config: UplinkConfig,
        *,
        take: Callable[[int, int, frozenset[tuple[str, int]]], Awaitable[list[SpooledBatch]]],
        ack: Callable[[dict[str, tuple[tuple[int, int], ...]]], Awaitable[int]],
        rewind: Callable[[list[SpooledBatch] | None], Awaitable[None]],
    ) -> None:
        self.agent_id = agent_id
        self.link = link
        self.config = config
        self._take = take
        self._ack = ack
        self._rewind = rewind
        self._inflight: dict[tuple[str, int], _InFlight] = {}
        self._by_mid: dict[int, tuple[str, int]] = {}
        self._lock = threading.Lock()  # _by_mid and puback flags are touched by the network thread
        self._early_pubacks: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._bucket = TokenBucket(config.max_kbyte_s * 1024, config.burst_kbyte * 1024)
        self._window_bytes = int(config.window_mb * 1024 * 1024)
        self._need_rewind = False
        self._topics: dict[str, str] = {}
        self.published = 0
        self.published_bytes = 0
        self.acked = 0
        self.resent_after_timeout = 0
        self.resent_after_reconnect = 0
        self.bad_acks = 0
        self.last_ack_mono: float | None = None
        link.subscribe(ack_topic(agent_id), 1, self._on_ack_message)
        link.on_up(self._on_up)
        link.on_down(self._on_down)
        link.on_puback(self._on_puback)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def wake(self) -> None:
        self._wake.set()

    # events (on the loop, except _on_puback)

    def _on_up(self) -> None:
        now = time.monotonic()
        for f in self._inflight.values():
            f.sent_mono = now  # paho sends these again now; their ack timeout starts over
        self.wake()

    def _on_down(self) -> None:
        # Batches the broker had accepted must be sent again (the server may never have seen
        # them, and a broker without persistence forgets them); those paho had not finished
        # stay in flight: paho retransmits them itself after the reconnect.
        with self._lock:
            again = [k for k, f in self._inflight.items() if f.puback]
            for k in again:
                f = self._inflight.pop(k)
                self._by_mid.pop(f.mid, None)
        self.resent_after_reconnect += len(again)
        self._need_rewind = True
        self.wake()

    def _on_puback(self, mid: int) -> None:
        with self._lock:
            key = self._by_mid.pop(mid, None)
            if key is None:
                # Either not a batch (health) or a PUBACK faster than our bookkeeping.
                if len(self._early_pubacks) > 1024:
                    self._early_pubacks.clear()
                self._early_pubacks[mid] = time.monotonic()
                return
            f = self._inflight.get(key)
            if f is not None:
                f.puback = True

    def _on_ack_message(self, payload: bytes, topic: str, retain: bool) -> None:
        try:
            ack = Ack.decode(payload)
        except WireError as exc:
            self.bad_acks += 1
            log.warning("uplink: ignoring a malformed ack (%s)", exc)
            return
        asyncio.get_running_loop().create_task(self.apply_ack(ack), name="cvis-ack")

    async def apply_ack(self, ack: Ack) -> None:
        with self._lock:
            for stream, ranges in ack.ranges.items():
                for key in [k for k in self._inflight if k[0] == stream]:
                    if any(lo <= key[1] <= hi for lo, hi in ranges):
                        f = self._inflight.pop(key)
                        self._by_mid.pop(f.mid, None)
        n = await self._ack(dict(ack.ranges))
        self.acked += n
        self.last_ack_mono = time.monotonic()
        self.wake()

    # the sender

    async def run(self) -> None:
        tick = min(1.0, self.config.ack_timeout_s / 4)
        while True:
            await wait_event(self._wake, tick)
            self._wake.clear()
            if not self.link.connected:
                continue
            if self._need_rewind:
                self._need_rewind = False
                await self._rewind(None)
            await self._expire()
            await self._send_some()

    async def _expire(self) -> None:
        now = time.monotonic()
        late = [f for f in self._inflight.values() if now - f.sent_mono > self.config.ack_timeout_s]
        if not late:
            return
        with self._lock:
            for f in late:
                self._inflight.pop(f.batch.key, None)
                self._by_mid.pop(f.mid, None)
        self.resent_after_timeout += len(late)
        log.warning("uplink: %d batches not acknowledged within %.0f s; sending them again",
                    len(late), self.config.ack_timeout_s)
        await self._rewind([f.batch for f in late])

    async def _send_some(self) -> None:
        room = self.config.window_batches - len(self._inflight)
        room_bytes = self._window_bytes - sum(f.batch.size for f in self._inflight.values())
        if room <= 0 or room_bytes <= 0:
            return
        batches = await self._take(room, room_bytes, frozenset(self._inflight))
        for i, b in enumerate(batches):
            await self._bucket.take(b.size)
            if not self.link.connected:
                await self._rewind(batches[i:])
                return
            # Never hold our lock across publish(): paho calls on_publish under its own lock.
            info = self.link.publish(self._topic(b.stream), b.data, qos=1)
            now = time.monotonic()
            with self._lock:
                f = self._inflight[b.key] = _InFlight(b, info.mid, now)
                early = self._early_pubacks.pop(info.mid, None)
                if early is not None and now - early < _EARLY_PUBACK_S:
                    f.puback = True  # the broker answered before we got here
                else:
                    self._by_mid[info.mid] = b.key
            self.published += 1
            self.published_bytes += b.size
        if len(batches) == room:
            self.wake()  # the window was the limit: look for more at once

    def _topic(self, stream: str) -> str:
        t = self._topics.get(stream)
        if t is None:
            t = self._topics[stream] = batch_topic(self.agent_id, stream)
        return t

    def stats(self) -> dict[str, Any]:
        return {
            **self.link.stats(),
            "inflight": len(self._inflight),
            "published": self.published,
            "published_bytes": self.published_bytes,
            "acked": self.acked,
            "resent_after_timeout": self.resent_after_timeout,
            "resent_after_reconnect": self.resent_after_reconnect,
            "bad_acks": self.bad_acks,
            "bandwidth_wait_s": round(self._bucket.waited_s, 3),
            "last_ack_age_s": None if self.last_ack_mono is None
            else round(time.monotonic() - self.last_ack_mono, 3),
        }
