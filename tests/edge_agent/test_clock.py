"""Clock: NTP-style offset over MQTT, time quality on every batch, wall-clock jumps."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from cvis.broker import ManagedBroker
from edge_agent.agent import Agent
from edge_agent.clock import AgentClock
from edge_agent.config import ClockConfig, config_from_dict
from edge_agent.sources.base import Source, SourceOptions
from tests.edge_agent.ack_server import AckingServer
from tests.edge_agent.conftest import until
from wire.columns import TableSchema
from wire.control import TimeResponse
from wire.envelope import TimeQuality
from wire.schemas import VEHICLE_SIGNALS, Signal

S = 1_000_000_000
HOUR = 3600 * S


class FakeTime:
    """A wall and a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000 * S
        self.mono = 10 * S

    def step(self, ns: int) -> None:
        self.wall += ns
        self.mono += ns


def test_offset_filter_prefers_the_shortest_round_trip() -> None:
    ft = FakeTime()
    clock = AgentClock(ClockConfig(filter_samples=4), wall_ns=lambda: ft.wall, mono_ns=lambda: ft.mono)
    assert clock.quality is TimeQuality.FREE_RUNNING
    server_ahead = 5 * S
    # A slow, asymmetric exchange (80 ms out, 20 ms back) and a quick one (2 ms each way).
    for out_ns, back_ns in ((80_000_000, 20_000_000), (2_000_000, 2_000_000)):
        req = clock.request()
        ft.step(out_ns)
        t2 = ft.wall + server_ahead
        resp = TimeResponse(req.request_id, req.t1_ns, t2, t2)
        ft.step(back_ns)
        assert clock.on_response(resp) is not None
    assert clock.offset_ns == server_ahead  # the symmetric, fast sample wins exactly
    assert clock.delay_ns == 4_000_000
    assert clock.quality is TimeQuality.SERVER_SYNCED
    # Unknown or repeated responses and absurd round trips are rejected.
    assert clock.on_response(resp) is None
    req = clock.request()
    ft.step(2 * S)
    assert clock.on_response(TimeResponse(req.request_id, req.t1_ns, ft.wall, ft.wall)) is None
    assert clock.rejected == 2
    # Without fresh samples, trust lapses.
    ft.step(200 * S)
    assert clock.quality is TimeQuality.FREE_RUNNING


def test_wall_clock_jump_is_detected_and_drops_the_samples() -> None:
    ft = FakeTime()
    clock = AgentClock(ClockConfig(), wall_ns=lambda: ft.wall, mono_ns=lambda: ft.mono)
    req = clock.request()
    clock.on_response(TimeResponse(req.request_id, req.t1_ns, req.t1_ns, req.t1_ns))
    assert clock.quality is TimeQuality.SERVER_SYNCED
    ft.step(S)
    assert clock.check_jump() == 0  # both clocks moved together
    ft.wall -= HOUR  # someone set the clock back an hour
    assert clock.check_jump() == -HOUR
    assert clock.quality is TimeQuality.FREE_RUNNING and clock.jumps == 1


class TickOptions(SourceOptions):
    count: int = 400
    rate_hz: float = 100.0
    jump_at: int = 200


class TickSource(Source):
    """Counts, stamping each tick with the agent's wall clock; moves that clock back an hour midway."""

    Options = TickOptions
    finite = True
    jump: Any = None

    def streams(self) -> dict[str, TableSchema]:
        return {"ticks": VEHICLE_SIGNALS}

    async def run(self) -> None:
        o: TickOptions = self.options  # type: ignore[assignment]
        for i in range(o.count):
            if i == o.jump_at:
                type(self).jump()
            self.emit("ticks", Signal(self.ctx.clock.now_ns(), "tick", float(i)))
            await asyncio.sleep(1 / o.rate_hz)


def test_offset_quality_and_a_wall_clock_jump_end_to_end(broker: ManagedBroker, tmp_path: Path) -> None:
    """The agent syncs to the server; then its wall clock jumps back an hour mid-capture: no record
    is lost or reordered, the jump is recorded, and the offset is measured again (now +1 h)."""
    shift = [0]
    TickSource.jump = staticmethod(lambda: shift.__setitem__(0, -HOUR))
    clock = AgentClock(ClockConfig(sync_interval_s=1.0), wall_ns=lambda: time.time_ns() + shift[0])
    cfg = config_from_dict({"agent_id": "veh-clock", "broker": {"url": broker.url},
                            "spool": {"dir": str(tmp_path / "spool")}, "batch": {"max_age_s": 0.2},
                            "drain_timeout_s": 0}, {})

    async def main(server: AckingServer) -> None:
        async with Agent(cfg, clock=clock,
                         sources=[lambda ctx: TickSource("ticks", TickOptions(), ctx)]) as agent:
            await until(lambda: clock.quality is TimeQuality.SERVER_SYNCED, 30, "a first sync")
            assert clock.delay_ns is not None
            # Same machine: the true offset is 0; NTP's error is at most half the round trip.
            assert abs(clock.offset_ns) <= clock.delay_ns // 2 + 1_000_000
            await agent.sources_finished()
            await until(lambda: abs(clock.offset_ns - HOUR) < S, 30, "the offset after the jump")
            assert (await agent.drain(30)).complete

    with AckingServer(broker.host, broker.port) as server:
        asyncio.run(main(server))
        ticks = server.records("veh-clock", "ticks")
        events = server.records("veh-clock", "events")
        envelopes = {seq: server.received.clock[("veh-clock", "ticks", seq)]
                     for seq in server.seqs("veh-clock", "ticks")}
        batches = {seq: recs for seq, (_, recs) in server.received.batches[("veh-clock", "ticks")].items()}
    # Every tick once, in capture order, although the stamps go back an hour.
    assert [t.value for t in ticks] == [float(i) for i in range(400)]
    assert ticks[250].timestamp_ns < ticks[150].timestamp_ns - HOUR + 10 * S
    assert sorted(envelopes) == list(range(len(envelopes)))  # seqs follow capture, not wall time
    jumps = [e for e in events if e.kind == "clock_jump"]
    assert len(jumps) == 1 and abs(jumps[0].attrs["step_ns"] + HOUR) < S
    # Time quality: a batch that claims SERVER_SYNCED carries the offset that was right for
    # all of its records (about 0 before the jump, +1 h after); the batch holding the jump says
    # FREE_RUNNING; after the re-sync batches are synced again, with the new offset.
    qualities = []
    for seq in sorted(envelopes):
        off, q = envelopes[seq]
        values = [r.value for r in batches[seq]]
        qualities.append(q)
        if q == TimeQuality.SERVER_SYNCED:
            want = HOUR if min(values) >= 200 else 0
            assert max(values) < 200 or min(values) >= 200, (seq, values)
            assert abs(off - want) < S, (seq, off)
    straddling = [q for seq, q in zip(sorted(envelopes), qualities, strict=True)
                  if min(r.value for r in batches[seq]) < 200 <= max(r.value for r in batches[seq])]
    assert straddling in ([TimeQuality.FREE_RUNNING], [])
    assert qualities[-1] == TimeQuality.SERVER_SYNCED
