"""The agent runtime: sources -> campaigns -> batchers -> spool -> uplink, plus live, clock, health.

``Agent`` is an async context manager that owns a ``TaskGroup`` of named tasks::

    async with Agent(config) as agent:
        await agent.sources_finished()      # replays end; devices run until cancelled
        result = await agent.drain(timeout)  # close batches, wait for every ack

On exit it stops the sources, closes every open batch into the spool, drains for up to
``drain_timeout_s`` (what is not acknowledged stays in the spool for the next start), publishes
an offline health message and disconnects.

Threads: the event loop runs sources, campaigns, batchers and the uplink's window; one worker
thread owns the spool (SQLite writes, batch encoding) so the loop never waits on the disk;
paho's network loop runs in the uplink's thread; cameras encode JPEG in their own threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from edge_agent.batcher import RECORD_BYTES, Batcher, PendingBatch, encode
from edge_agent.campaigns.campaign import CampaignEngine, Fired
from edge_agent.clock import AgentClock
from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError
from edge_agent.health import SystemMeter, encode_health, offline_message
from edge_agent.live import LiveState
from edge_agent.sources.base import Source, SourceContext, create_source, supervise
from edge_agent.spool import Spool
from edge_agent.uplink import MqttLink, Uplink, wait_event
from wire.columns import TableSchema
from wire.control import TimeResponse
from wire.envelope import TimeQuality
from wire.errors import WireError
from wire.limits import DEFAULT_LIMITS
from wire.schemas import CAMERA_JPEG, EVENT, GNSS_FIX, VEHICLE_SIGNALS, Event, Health
from wire.topics import config_topic, health_topic, time_request_topic, time_response_topic, warning_topic

log = logging.getLogger(__name__)

T = TypeVar("T")
#: How often open batches are checked for closing.
FLUSH_TICK_S = 0.05


@dataclass(frozen=True, slots=True)
class DrainResult:
    """What was still unacknowledged when a drain ended."""

    batches: int
    records: int
    bytes: int

    @property
    def complete(self) -> bool:
        return self.batches == 0


@dataclass(slots=True)
class _Stream:
    name: str
    schema: TableSchema
    batcher: Batcher
    fixed_size: int | None  # None: measure each record (camera)
    is_signals: bool
    is_gnss: bool
    direct: bool = False


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: AgentClock | None = None,
        sources: Sequence[Callable[[SourceContext], Source]] = (),
    ) -> None:
        self.config = config
        self.agent_id = config.agent_id
        self.clock = clock or AgentClock(config.clock)
        self.replay_base_ns = self.clock.now_ns()
        self._source_factories = list(sources)
        self.sources: list[Source] = []
        self._streams: dict[str, _Stream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exec: ThreadPoolExecutor | None = None
        self.spool: Spool | None = None
        self.link: MqttLink | None = None
        self.uplink: Uplink | None = None
        self.live: LiveState | None = None
        self.campaigns: CampaignEngine | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._source_tasks: list[asyncio.Task[None]] = []
        self._service_tasks: list[asyncio.Task[Any]] = []
        self._flush_now = asyncio.Event()
        self._full: set[str] = set()
        self._unhandled_jump = 0
        self._health_now = asyncio.Event()
        self._stored = asyncio.Event()
        self._started_mono = time.monotonic()
        self._meter: SystemMeter | None = None
        self._health_prev: dict[str, dict[str, int]] = {}
        self._health_prev_t = time.monotonic()
        self.health_published = 0
        self.closed = False
        self._sync_soon = True
        #: Drain (within ``drain_timeout_s``) when the context exits; off if the caller drained.
        self.drain_on_exit = True

    # context manager

    async def __aenter__(self) -> Agent:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="cvis-spool")
        try:
            self.spool = await self._call(
                Spool, cfg.spool.dir, cfg.agent_id,
                budget_bytes=int(cfg.spool.budget_mb * 1024 * 1024),
                memory_bytes=int(cfg.spool.memory_fallback_mb * 1024 * 1024),
                max_file_bytes=int(cfg.spool.max_file_mb * 1024 * 1024) if cfg.spool.max_file_mb else None,
                synchronous=cfg.spool.synchronous,
            )
            self._meter = SystemMeter(cfg.spool.dir)
            self._build_sources()
            self._add_stream(cfg.events_stream, EVENT)
            self.campaigns = CampaignEngine(list(cfg.campaigns), self._forward, self._on_fire)
            self.campaigns.on_load = self._refresh_routes
            self._refresh_routes()
            self.live = LiveState(cfg.live, self.agent_id, self.clock, self._publish_live)
            self.link = MqttLink(
                cfg.broker, cfg.broker.client_id or f"cvis-agent-{self.agent_id}",
                reconnect_min_s=cfg.uplink.reconnect_min_s, reconnect_max_s=cfg.uplink.reconnect_max_s,
                max_inflight=cfg.uplink.window_batches,
                will=(health_topic(self.agent_id), offline_message(self.agent_id)),
            )
            self.uplink = Uplink(
                self.agent_id, self.link, cfg.uplink,
                take=lambda n, b, skip: self._call(self._spool().take, n, b, skip),
                ack=lambda ranges: self._call(self._spool().ack, ranges),
                rewind=lambda batches: self._call(self._spool().rewind, batches),
            )
            self.link.subscribe(config_topic(self.agent_id), 1, self._on_config)
            self.link.subscribe(warning_topic(self.agent_id), 1, self.live.on_warning)
            self.link.subscribe(time_response_topic(self.agent_id), 0, self._on_time_response)
            self.link.on_up(self._on_link_up)
        except BaseException:
            await self._close_spool()
            raise
        self.link.start(self._loop)
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        tg = self._tg
        self._service_tasks = [
            tg.create_task(self.uplink.run(), name="cvis-uplink"),
            tg.create_task(self._flush_loop(), name="cvis-batches"),
            tg.create_task(self._maintenance_loop(), name="cvis-spool-maintenance"),
            tg.create_task(self._time_sync_loop(), name="cvis-clock"),
            tg.create_task(self._health_loop(), name="cvis-health"),
        ]
        if cfg.live.enabled:
            self._service_tasks.append(
                tg.create_task(self.live.run(lambda: self.link is not None and self.link.connected),
                               name="cvis-live"))
        for s in self.sources:
            self._source_tasks.append(tg.create_task(supervise(s, self), name=f"cvis-source-{s.name}"))
        log.info("agent %s: started with sources %s, spool %s (%d batches waiting)", self.agent_id,
                 [s.name for s in self.sources], cfg.spool.dir, self._spool().pending_batches)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        clean = exc_type is None or issubclass(exc_type, asyncio.CancelledError)
        await self.close(drain=self.drain_on_exit and clean)

    async def close(self, drain: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self.stop_sources()
            if drain and self.config.drain_timeout_s > 0:
                res = await self.drain(self.config.drain_timeout_s)
                if not res.complete:
                    log.warning("agent: stopping with %d batches (%d records) unacknowledged; "
                                "they stay in the spool", res.batches, res.records)
            else:
                await self.flush()
        finally:
            for t in self._service_tasks:
                t.cancel()
            if self._tg is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._tg.__aexit__(None, None, None)
            if self.link is not None:
                spool_stats = await self._call(self._spool().stats) if self.spool is not None else {}
                final = encode_health(self.agent_id, self._health(False, spool_stats),
                                      self.campaigns.stats() if self.campaigns else None)
                await asyncio.to_thread(self.link.stop, (health_topic(self.agent_id), final))
            await self._close_spool()

    async def _close_spool(self) -> None:
        if self.spool is not None and self._exec is not None:
            await self._call(self.spool.close)
        if self._exec is not None:
            self._exec.shutdown(wait=True)
            self._exec = None

    # sources and streams

    def _build_sources(self) -> None:
        for i, sc in enumerate(self.config.sources):
            self.sources.append(create_source(sc, self, key=f"sources.{i}"))
        self.sources.extend(make(self) for make in self._source_factories)
        for s in self.sources:
            for stream, schema in s.streams().items():
                self._add_stream(stream, schema)

    def _add_stream(self, stream: str, schema: TableSchema) -> None:
        cur = self._streams.get(stream)
        if cur is not None:
            if cur.schema is not schema:
                raise ConfigError(
                    f"stream {stream!r} is used with two schemas: {cur.schema.key} and {schema.key}"
                )
            return
        rank = self.config.priority_for(stream, schema.name)
        batcher = Batcher(stream, schema, self.config.batch_for(stream), rank)
        self._streams[stream] = _Stream(
            stream, schema, batcher,
            None if schema is CAMERA_JPEG else RECORD_BYTES.get(schema.name, 64),
            schema is VEHICLE_SIGNALS, schema is GNSS_FIX,
        )

    async def stop_sources(self) -> None:
        for t in self._source_tasks:
            t.cancel()
        for t in self._source_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._source_tasks = []

    async def sources_finished(self) -> None:
        """Wait until every source has ended (replays reach their end; devices never do)."""
        if self._source_tasks:
            await asyncio.wait(self._source_tasks)

    # SourceContext

    def emit(self, stream: str, record: Any) -> None:
        st = self._streams[stream]
        if st.direct:  # always on, not thinned, feeds nothing else: straight to its batch
            if st.batcher.add(record, st.fixed_size or len(record.jpeg) + 48):
                self._full.add(stream)
                self._flush_now.set()
            return
        t = record.timestamp_ns
        if st.is_signals:
            assert self.campaigns is not None and self.live is not None
            self.campaigns.on_signal(record.name, t, record.value)
            self.live.on_signal(record.name, t, record.value)
        elif st.is_gnss:
            assert self.live is not None
            self.live.on_fix(record)
        size = st.fixed_size if st.fixed_size is not None else len(record.jpeg) + 48
        self.campaigns.route(stream, record, t, size)  # type: ignore[union-attr]

    def _refresh_routes(self) -> None:
        """Which streams skip the campaign engine (after every change of campaigns)."""
        eng = self.campaigns
        for st in self._streams.values():
            st.direct = (
                eng is not None and not st.is_signals and not st.is_gnss and eng.is_plain(st.name)
            )

    def emit_many(self, stream: str, records: Sequence[Any]) -> None:
        for r in records:
            self.emit(stream, r)

    def mark(self, stream: str, source: str, position: str | tuple[int, str]) -> None:
        self._streams[stream].batcher.mark(source, position)

    def event(self, kind: str, source: str, **attrs: Any) -> None:
        t = self.clock.now_ns()
        self.emit(self.config.events_stream, Event(t, kind, source, attrs))
        if self.campaigns is not None:
            self.campaigns.on_event(kind, t)

    async def checkpoint(self, source: str) -> str | None:
        return await self._call(self._spool().checkpoint, source)

    def _forward(self, stream: str, record: Any) -> None:
        st = self._streams[stream]
        size = st.fixed_size if st.fixed_size is not None else len(record.jpeg) + 48
        if st.batcher.add(record, size):
            self._full.add(stream)
            self._flush_now.set()

    async def ready(self) -> None:
        """Wait while a batch is full and not yet stored (back-pressure for replays)."""
        while self._full:
            self._flush_now.set()
            self._stored.clear()
            await wait_event(self._stored, FLUSH_TICK_S)

    def _on_fire(self, fired: Fired) -> None:
        self.event("trigger", fired.campaign, trigger=fired.trigger, t_ns=fired.t_ns,
                   start_ns=fired.start_ns, end_ns=fired.end_ns, streams=list(fired.streams),
                   condition=fired.condition)

    # batches -> spool

    async def _flush_loop(self) -> None:
        while True:
            await wait_event(self._flush_now, FLUSH_TICK_S)
            self._flush_now.clear()
            if await self._check_clock():
                continue
            now = time.monotonic()
            for st in list(self._streams.values()):
                if st.batcher.due(now):
                    self._full.discard(st.name)
                    await self._store(st.batcher.take())

    async def _check_clock(self) -> bool:
        """On a wall-clock jump, close every open batch as FREE_RUNNING (its offset is stale)."""
        step = self.clock.check_jump() or self._unhandled_jump
        self._unhandled_jump = 0
        if not step:
            return False
        self._sync_soon = True
        pending = [st.batcher.take() for st in list(self._streams.values())]
        self._full.clear()
        self.event("clock_jump", "clock", step_ns=step)
        for p in pending:
            await self._store(p, TimeQuality.FREE_RUNNING)
        return True

    async def flush(self) -> None:
        """Close every open batch (and pending checkpoint) into the spool now."""
        await self._check_clock()
        for st in list(self._streams.values()):
            self._full.discard(st.name)
            await self._store(st.batcher.take())

    async def _store(self, pending: PendingBatch | None, quality: TimeQuality | None = None) -> None:
        if pending is None:
            return
        step = self.clock.check_jump()
        if step:  # the clock jumped while records of this batch were coming in
            self._unhandled_jump = step
            self._flush_now.set()
            quality = TimeQuality.FREE_RUNNING
        off, q = self.clock.offset_ns, quality or self.clock.quality
        await self._call(self._store_sync, pending, off, q)
        self._stored.set()
        if self.uplink is not None:
            self.uplink.wake()

    def _store_sync(self, pending: PendingBatch, offset_ns: int, quality: TimeQuality) -> None:
        spool = self._spool()
        if not pending.records:
            for source, value in pending.checkpoints.items():
                spool.set_checkpoint(source, value)
            return
        seq = spool.next_seq(pending.stream)
        batch = encode(pending, self.agent_id, seq, clock_offset_ns=offset_ns, time_quality=quality)
        data = batch.encode()
        if len(data) > DEFAULT_LIMITS.max_encoded_bytes and len(pending.records) > 1:
            half = len(pending.records) // 2
            first = PendingBatch(pending.stream, pending.schema, pending.rank, pending.records[:half],
                                 pending.codec, pending.zstd_level)
            rest = PendingBatch(pending.stream, pending.schema, pending.rank, pending.records[half:],
                                pending.codec, pending.zstd_level, pending.checkpoints)
            log.warning("agent: %s batch of %d bytes exceeds the wire limit; split",
                        pending.stream, len(data))
            self._store_sync(first, offset_ns, quality)
            self._store_sync(rest, offset_ns, quality)
            return
        spool.put(pending.stream, seq, pending.rank, batch.count, batch.first_ns, batch.last_ns, data,
                  pending.checkpoints)

    async def _maintenance_loop(self) -> None:
        spool = self._spool()
        while True:
            await asyncio.sleep(2.0)
            if spool.disk_full or spool.stats()["memory_batches"]:
                moved = await self._call(spool.flush_memory)
                if moved and self.uplink is not None:
                    self.uplink.wake()

    async def drain(self, timeout: float) -> DrainResult:
        """Close open batches, then wait up to ``timeout`` s until the server acknowledged everything."""
        await self.flush()
        deadline = time.monotonic() + timeout
        spool = self._spool()
        while True:
            if spool.pending_batches == 0:
                return DrainResult(0, 0, 0)
            if time.monotonic() >= deadline:
                return self.unacknowledged()
            if self.uplink is not None:
                self.uplink.wake()
            await asyncio.sleep(0.05)

    def unacknowledged(self) -> DrainResult:
        st = self._spool().stats()
        recs = sum(s["records"] for s in st["streams"].values())
        return DrainResult(st["batches"], recs, st["bytes"])

    # control plane

    def _on_config(self, payload: bytes, topic: str, retain: bool) -> None:
        assert self.campaigns is not None
        if not payload:
            log.info("campaigns: config topic cleared; back to the configuration file's campaigns")
            self.campaigns.load(list(self.config.campaigns))
            return
        if self.campaigns.apply_message(payload):
            self.event("campaign_loaded", "config", campaigns=[c.name for c in self.campaigns.specs])
        else:
            self.event("campaign_rejected", "config", error=self.campaigns.rejected)

    def _on_time_response(self, payload: bytes, topic: str, retain: bool) -> None:
        try:
            resp = TimeResponse.decode(payload)
        except WireError as exc:
            log.debug("clock: malformed time response (%s)", exc)
            return
        self.clock.on_response(resp)

    def _on_link_up(self) -> None:
        self._sync_soon = True
        self._health_now.set()

    async def _time_sync_loop(self) -> None:
        quick = 4  # a few samples right after connecting fill the filter
        last = 0.0
        while True:
            await asyncio.sleep(0.5)
            if self.link is None or not self.link.connected:
                continue
            if self._sync_soon:
                self._sync_soon = False
                quick = 4
            now = time.monotonic()
            interval = 1.0 if quick > 0 else self.config.clock.sync_interval_s
            if now - last >= interval:
                last = now
                quick = max(0, quick - 1)
                req = self.clock.request()
                self.link.publish(time_request_topic(self.agent_id), req.encode(), qos=0)

    def _publish_live(self, topic: str, payload: bytes) -> bool:
        link = self.link
        if link is None or not link.connected:
            return False
        return link.publish(topic, payload, qos=0).rc == 0

    # health

    def _health(self, online: bool, spool: dict[str, Any]) -> Health:
        now = time.monotonic()
        dt = max(now - self._health_prev_t, 1e-6)
        sources: dict[str, Any] = {}
        for s in self.sources:
            d = s.stats.as_dict()
            prev = self._health_prev.get(s.name, {})
            d["rate_hz"] = {k: round((v - prev.get(k, 0)) / dt, 2) for k, v in s.stats.records.items()}
            self._health_prev[s.name] = dict(s.stats.records)
            sources[s.name] = d
        self._health_prev_t = now
        spool = dict(spool)
        spool["batchers"] = {n: {"open_records": len(st.batcher), "dropped": st.batcher.dropped}
                             for n, st in self._streams.items() if len(st.batcher) or st.batcher.dropped}
        return Health(
            timestamp_ns=self.clock.now_ns(),
            online=online,
            uptime_s=round(now - self._started_mono, 3),
            sources=sources,
            spool=spool,
            uplink=self.uplink.stats() if self.uplink else {},
            clock=self.clock.stats(),
            system={**(self._meter.sample() if self._meter else {}),
                    "live": self.live.stats() if self.live else {}},
        )

    async def _health_loop(self) -> None:
        while True:
            await wait_event(self._health_now, self.config.health.interval_s)
            self._health_now.clear()
            link = self.link
            if link is None or not link.connected:
                continue
            h = self._health(True, await self._call(self._spool().stats))
            link.publish(health_topic(self.agent_id),
                         encode_health(self.agent_id, h, self.campaigns.stats() if self.campaigns else None),
                         qos=1, retain=True)
            self.health_published += 1

    # helpers

    def _spool(self) -> Spool:
        assert self.spool is not None, "agent not started"
        return self.spool

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the spool thread."""
        assert self._loop is not None and self._exec is not None
        if kwargs:
            return await self._loop.run_in_executor(self._exec, lambda: fn(*args, **kwargs))
        return await self._loop.run_in_executor(self._exec, fn, *args)

