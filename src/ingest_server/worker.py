"""The ingest worker: MQTT in, validated batches archived and indexed once, acks out.

One worker is one process (``python -m ingest_server.worker --config F --worker-id N``, started
by :mod:`ingest_server.server`). Its MQTT client (paho, MQTT 5, client id
``{prefix}-{N}``, ``clean_start=False`` with a session expiry) joins the shared subscription
``$share/ingest/cvis/v1/+/batch/#``, so N workers split the batches and a restarted worker
gets back the QoS 1 messages queued for it meanwhile. With ``broker.mqtt_version = "3.1.1"``
(brokers without MQTT 5, such as the embedded amqtt) the one worker subscribes to
``cvis/v1/+/batch/#`` directly, on a persistent (``clean_session=False``) session.

Flow and durability. The MQTT thread puts each message in a bounded inbox (messages and
bytes); when it is full the MQTT thread waits, so TCP pushes back on the broker and memory
stays bounded. The worker thread validates each message (:mod:`ingest_server.validate`;
refused ones are counted and quarantined, never archived) and, every ``flush_interval_ms``
or sooner when enough is pending, flushes:

1. asks the index which pending ``(agent, stream, seq)`` are already stored (duplicates);
2. logs the new batches to its MCAP segment and ends the chunk: ``MCAPWriter.flush()`` and
   ``fsync``, the durability point;
3. commits their index rows (``(stream, seq)`` unique; a row another worker committed first
   makes ours an orphan, dropped from the segment when it is closed);
4. publishes one selective :class:`wire.control.Ack` per agent (QoS 1) covering new and
   duplicate batches alike;
5. sends the MQTT PUBACKs (``manual_ack``): the broker forgets a message only once it is
   durable, so a worker killed at any point gets it again from its session on restart. A
   PUBACK is sent only on the connection the message came in on.

Acks are end-to-end: the agent deletes a batch from its spool only on the application ack,
so a message the broker loses (a broker killed before it saved its queue) is resent by the
agent. PUBACKs only make recovery faster. A storage failure (disk, index) stops the worker
with an error, since durability can no longer be promised; the supervisor restarts it and
recovery (:mod:`ingest_server.archive.recovery`) repairs the open segment.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import logging
import os
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest_server import timesync
from ingest_server.acks import AckBook
from ingest_server.archive.foxglove_schemas import channel_spec, channel_topic, to_messages
from ingest_server.archive.recovery import recover_worker
from ingest_server.archive.writer import ArchiveWriter
from ingest_server.config import ServerConfig, load_config
from ingest_server.errors import IngestServerError, Rejected, StorageError
from ingest_server.index.queries import Index, StreamRef
from ingest_server.quarantine import Quarantine
from ingest_server.validate import ValidBatch, topic_agent, validate
from wire import codec
from wire.topics import batch_filter, time_request_filter

log = logging.getLogger(__name__)

#: Exit code of a worker stopped by a storage failure (the supervisor restarts it).
EXIT_STORAGE = 3
EXIT_CONFIG = 2
_STATS_EVERY_S = 30.0


@dataclass(slots=True)
class InboxItem:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    received_ns: int


class Inbox:
    """A FIFO bounded by message count and bytes; ``put`` waits while it is full."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._q: collections.deque[InboxItem] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.waits = 0

    def __len__(self) -> int:
        return len(self._q)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, item: InboxItem, stop: threading.Event) -> bool:
        size = len(item.payload)
        with self._cond:
            waited = False
            while self._q and (len(self._q) >= self.max_messages
                               or self._bytes + size > self.max_bytes):
                if stop.is_set():
                    return False
                waited = True
                self._cond.wait(0.1)
            if waited:
                self.waits += 1
            self._q.append(item)
            self._bytes += size
            self._cond.notify_all()
            return True

    def get_many(self, max_n: int, timeout: float) -> list[InboxItem]:
        with self._cond:
            if not self._q and timeout > 0:
                self._cond.wait(timeout)
            out: list[InboxItem] = []
            while self._q and len(out) < max_n:
                it = self._q.popleft()
                self._bytes -= len(it.payload)
                out.append(it)
            if out:
                self._cond.notify_all()
            return out


@dataclass(slots=True)
class WorkerStats:
    received: int = 0
    stored_batches: int = 0
    stored_records: int = 0
    stored_bytes: int = 0
    duplicates: int = 0
    orphans: int = 0
    acks_published: int = 0
    flushes: int = 0
    time_requests: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in self.__slots__}


@dataclass(slots=True)
class _Pending:
    ref: StreamRef
    vb: ValidBatch


class WorkerLock:
    """One process per worker id: an flock on ``{data_dir}/locks/worker-N.lock``."""

    def __init__(self, data_dir: Path, worker: int) -> None:
        d = data_dir / "locks"
        d.mkdir(parents=True, exist_ok=True)
        self.path = d / f"worker-{worker}.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise IngestServerError(
                f"worker {worker} is already running on {data_dir} ({self.path} is locked)"
            ) from None

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)


class IngestWorker:
    """One ingest worker. ``start()``, then ``run(stop)`` until ``stop`` is set, then ``close()``."""

    def __init__(self, config: ServerConfig, worker: int = 0) -> None:
        self.config = config
        self.worker = worker
        self.limits = config.ingest.limits()
        d = config.ingest.dictionaries_dir
        self.dicts = codec.Dictionaries.load_dir(d) if d else codec.NO_DICTIONARIES
        ing = config.ingest
        self.inbox = Inbox(ing.inbox_max_messages, int(ing.inbox_max_mb * 1024 * 1024))
        self.quarantine = Quarantine(worker, config.quarantine.max_entries,
                                     config.quarantine.keep_bytes)
        self.stats = WorkerStats()
        self.index: Index | None = None
        self.archive: ArchiveWriter | None = None
        self.client: mqtt.Client | None = None
        self._lock: WorkerLock | None = None
        self._stop_mqtt = threading.Event()
        self._gen = 0
        self._gen_lock = threading.Lock()
        self.connected = threading.Event()
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._dups: list[tuple[str, str, int]] = []
        self._items: list[InboxItem] = []
        self._pending_bytes = 0
        self._first_pending = 0.0

    # lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = WorkerLock(cfg.data_dir, self.worker)
        try:
            self.index = Index.open(cfg.resolved_index_url,
                                    busy_timeout_s=cfg.index.busy_timeout_s,
                                    synchronous=cfg.index.sqlite_synchronous)
            n = recover_worker(cfg.data_dir, self.worker, self.index)
            if n:
                log.info("worker %d: recovered %d segment(s)", self.worker, n)
            self.archive = ArchiveWriter(
                cfg.data_dir, self.worker, self.index,
                max_duration_s=cfg.archive.segment_max_s,
                max_bytes=int(cfg.archive.segment_max_mb * 1024 * 1024),
                chunk_bytes=cfg.archive.chunk_kb * 1024,
                compression_level=cfg.archive.compression_level,
            )
            self.client = self._make_client()
            b = cfg.broker
            if b.mqtt_version == "5":
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = b.session_expiry_s
                props.ReceiveMaximum = b.receive_maximum
                self.client.connect_async(b.host, b.port, keepalive=b.keepalive_s,
                                          clean_start=False, properties=props)
            else:  # MQTT 3.1.1: the persistent session is asked for in the constructor
                self.client.connect_async(b.host, b.port, keepalive=b.keepalive_s)
            self.client.loop_start()
        except BaseException:
            self.close(flush=False)
            raise
        log.info("worker %d: started (broker %s, index %s, data %s)", self.worker, cfg.broker.url,
                 _safe_url(cfg.resolved_index_url), cfg.data_dir)

    def _make_client(self) -> mqtt.Client:
        b = self.config.broker
        client_id = f"{b.client_id_prefix}-{self.worker}"
        if b.mqtt_version == "5":
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                            manual_ack=True)
        else:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                            protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
        if b.username:
            c.username_pw_set(b.username, b.password)
        if b.tls:
            c.tls_set(ca_certs=str(b.tls_ca) if b.tls_ca else None,
                      certfile=str(b.tls_cert) if b.tls_cert else None,
                      keyfile=str(b.tls_key) if b.tls_key else None,
                      cert_reqs=ssl.CERT_REQUIRED)
        c.reconnect_delay_set(1, 2)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(100_000)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.message_callback_add(time_request_filter(), self._on_time_request)
        return c

    def close(self, flush: bool = True) -> None:
        """Flush what is pending, finish the segment, disconnect. Safe to call twice."""
        self._stop_mqtt.set()
        try:
            if flush and self.archive is not None and self.index is not None:
                self._drain_inbox()
                if self._items or self._pending:
                    self.flush()
                self.archive.close()
        finally:
            if self.client is not None:
                with contextlib.suppress(Exception):
                    self.client.disconnect()
                self.client.loop_stop()
                self.client = None
            if self.index is not None:
                self.index.close()
                self.index = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _drain_inbox(self) -> None:
        while True:
            items = self.inbox.get_many(10_000, 0)
            if not items:
                return
            for it in items:
                self._accept(it)

    # MQTT thread -----------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        if reason.is_failure:
            log.warning("worker %d: broker refused connection: %s", self.worker, reason)
            return
        with self._gen_lock:
            self._gen += 1
        b = self.config.broker
        if b.mqtt_version == "5":
            subs = [(batch_filter(b.share_group), SubscribeOptions(qos=1))]
            if self.config.ingest.time_sync:
                subs.append((f"$share/{b.share_group}/{time_request_filter()}", SubscribeOptions(qos=0)))
            client.subscribe(subs)
        else:  # one worker, no shared subscription
            subs311 = [(batch_filter(None), 1)]
            if self.config.ingest.time_sync:
                subs311.append((time_request_filter(), 0))
            client.subscribe(subs311)
        self.connected.set()
        log.info("worker %d: connected to %s (session %s)", self.worker, self.config.broker.url,
                 "resumed" if flags.session_present else "new")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        self.connected.clear()
        if not self._stop_mqtt.is_set():
            log.warning("worker %d: disconnected from broker (%s); reconnecting", self.worker,
                        reason)

    def _on_time_request(self, client: mqtt.Client, userdata: Any,
                         msg: mqtt.MQTTMessage) -> None:
        received = time.time_ns()
        self.stats.time_requests += 1
        out = timesync.answer(msg.topic, bytes(msg.payload), received)
        if out is not None:
            client.publish(out[0], out[1], qos=0)
        if msg.qos > 0:  # never the case on our QoS 0 subscription, but never leave one unacked
            client.ack(msg.mid, msg.qos)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Everything but time requests goes to the inbox; bad topics are quarantined there."""
        item = InboxItem(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._gen,
                         time.time_ns())
        self.inbox.put(item, self._stop_mqtt)

    # worker thread ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Process messages until ``stop`` is set (raises StorageError on a storage failure)."""
        ing = self.config.ingest
        interval = ing.flush_interval_ms / 1000
        max_bytes = int(ing.flush_max_mb * 1024 * 1024)
        last_stats = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            wait = interval if not self._items else max(0.0, self._first_pending + interval - now)
            for it in self.inbox.get_many(ing.flush_max_batches, min(wait, 0.5)):
                self._accept(it)
            now = time.monotonic()
            if self._items and (now - self._first_pending >= interval
                                or len(self._items) >= ing.flush_max_batches
                                or self._pending_bytes >= max_bytes):
                self.flush()
            assert self.archive is not None
            if self.archive.due():
                if self._items:
                    self.flush()
                self.archive.close()
            if now - last_stats >= _STATS_EVERY_S:
                last_stats = now
                self._log_stats()

    def _log_stats(self) -> None:
        s = self.stats
        log.info("worker %d: %d received, %d stored (%d records), %d duplicates, %d rejected, "
                 "%d acks, inbox %d", self.worker, s.received, s.stored_batches, s.stored_records,
                 s.duplicates, self.quarantine.total, s.acks_published, len(self.inbox))

    def _accept(self, item: InboxItem) -> None:
        if not self._items:
            self._first_pending = time.monotonic()
        self._items.append(item)
        self.stats.received += 1
        try:
            vb = validate(item.topic, item.payload, self.limits, self.dicts)
            b = vb.batch
            assert self.index is not None
            ref = self.index.cached_stream(b.agent, b.stream)
            if ref is None:
                ref = self.index.stream(b.agent, b.stream, b.schema_key,
                                        channel_topic(b.agent, b.stream))
            if ref.schema != b.schema_key:
                raise Rejected("schema_mismatch",
                               f"stream {b.agent}/{b.stream} is archived as {ref.schema}, "
                               f"this batch is {b.schema_key}", b.agent)
        except Rejected as exc:
            self.quarantine.add(item.received_ns, item.topic, item.payload, exc.reason,
                                exc.detail, exc.agent or topic_agent(item.topic))
            self.stats.rejected[exc.reason] = self.stats.rejected.get(exc.reason, 0) + 1
            return
        key = (ref.id, b.seq)
        if key in self._pending:
            self._dups.append(vb.key)
            return
        self._pending[key] = _Pending(ref, vb)
        self._pending_bytes += vb.size

    def flush(self) -> None:
        """Make pending batches durable, commit them, ack them, PUBACK their messages."""
        assert self.index is not None and self.archive is not None
        acks = AckBook()
        pending = self._pending
        try:
            existing = self.index.existing(pending) if pending else set()
            rows: list[dict[str, Any]] = []
            written: dict[tuple[int, int], int] = {}
            now = time.time_ns()
            for key, p in pending.items():
                b = p.vb.batch
                if key in existing:
                    self.stats.duplicates += 1
                    continue
                spec = channel_spec(b.schema_key)
                msgs = to_messages(b, p.vb.table)
                placed = self.archive.write(
                    p.ref.topic, spec, {"agent": b.agent, "stream": b.stream,
                                        "schema": b.schema_key}, msgs)
                written[key] = len(msgs)
                assert self.archive.segment_id is not None
                rows.append({
                    "stream_id": p.ref.id, "seq": b.seq, "segment_id": self.archive.segment_id,
                    "msg_first": placed.msg_first, "msg_last": placed.msg_last,
                    "records": b.count, "log_first_ns": b.first_ns + b.clock_offset_ns,
                    "log_last_ns": b.last_ns + b.clock_offset_ns, "capture_first_ns": b.first_ns,
                    "capture_last_ns": b.last_ns, "clock_offset_ns": b.clock_offset_ns,
                    "time_quality": int(b.time_quality), "encoded_bytes": p.vb.size,
                    "stored_ns": now, "worker": self.worker,
                })
            update = self.archive.sync() if rows else None
            q_entries, q_counts = self.quarantine.take_unsaved()
            inserted = self.index.commit_flush(
                update, rows, q_entries, q_counts, worker=self.worker,
                keep_quarantine=self.config.quarantine.max_entries)
        except StorageError:
            raise
        except Exception as exc:  # an unexpected failure while storing is a storage failure
            raise StorageError(f"worker {self.worker}: flush failed: {exc!r}") from exc
        for key, p in pending.items():
            b = p.vb.batch
            if key in written:
                if key in inserted:
                    self.stats.stored_batches += 1
                    self.stats.stored_records += b.count
                    self.stats.stored_bytes += p.vb.size
                else:
                    self.stats.orphans += 1
                    self.archive.orphans += max(1, written[key])
            acks.add(b.agent, b.stream, b.seq)
        for agent, stream, seq in self._dups:
            acks.add(agent, stream, seq)
        client = self.client
        if client is not None:
            for topic, ack in acks.messages(time.time_ns()):
                client.publish(topic, ack.encode(), qos=1)
                self.stats.acks_published += 1
            gen = self._gen
            for it in self._items:
                if it.qos > 0 and it.generation == gen:
                    client.ack(it.mid, it.qos)
        self.stats.flushes += 1
        self._pending = {}
        self._dups = []
        self._items = []
        self._pending_bytes = 0


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}@{host}"
    return url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ingest_server.worker",
                                description="one cvis ingest worker (started by `cvis server`)")
    p.add_argument("--config", type=Path, help="server TOML")
    p.add_argument("--worker-id", type=int, default=0)
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
    except IngestServerError as exc:
        print(f"ingest worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = IngestWorker(config, args.worker_id)
    try:
        worker.start()
        worker.run(stop)
    except StorageError as exc:
        log.error("worker %d: %s; stopping so recovery can run on restart", args.worker_id, exc)
        worker.close(flush=False)
        return EXIT_STORAGE
    except IngestServerError as exc:
        log.error("worker %d: %s", args.worker_id, exc)
        worker.close(flush=False)
        return EXIT_CONFIG
    try:
        worker.close()
    except StorageError as exc:
        log.error("worker %d: final flush failed: %s", args.worker_id, exc)
        return EXIT_STORAGE
    log.info("worker %d: stopped cleanly", args.worker_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
