"""Campaign routing: always-on and thinned streams, pre-trigger rings, windows, config messages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgpack
import pytest

from cvis.broker import ManagedBroker
from edge_agent.agent import Agent
from edge_agent.campaigns.campaign import CampaignEngine, CampaignSpec, Fired, campaign_message, specs_from
from edge_agent.config import config_from_dict
from edge_agent.errors import CampaignError
from tests.edge_agent.ack_server import AckingServer
from tests.edge_agent.conftest import until
from wire.schemas import CameraFrame
from wire.topics import config_topic

S = 1_000_000_000
T0 = 1_700_000_000 * S


def frames(jpegs: list[bytes], n: int, fps: float = 10.0) -> list[CameraFrame]:
    return [CameraFrame(T0 + round(i * S / fps), "cam", i, 320, 240, jpegs[i % len(jpegs)]) for i in range(n)]


def engine(spec: dict, out: list[tuple[str, object]], fired: list[Fired] | None = None) -> CampaignEngine:
    return CampaignEngine(specs_from([spec]), lambda s, r: out.append((s, r)),
                          (fired.append if fired is not None else None))


BRAKE = {
    "name": "brake",
    "streams": {"cam": {"mode": "triggered"}, "can": {"mode": "always"}, "dbg": {"mode": "off"},
                "gnss": {"mode": "always", "rate_hz": 2}},
    "triggers": [{"name": "hard", "condition": "rising(p > 50)", "pre_s": 1.0, "post_s": 0.5}],
}


def test_trigger_uploads_exactly_the_window(jpegs: list[bytes]) -> None:
    out: list[tuple[str, object]] = []
    fired: list[Fired] = []
    e = engine(BRAKE, out, fired)
    cams = frames(jpegs, 60)  # 6 s at 10 fps
    for f in cams[:30]:
        e.route("cam", f, f.timestamp_ns, len(f.jpeg))
    assert out == []  # held in the ring
    e.on_signal("p", T0 + 29 * S // 10, 80.0)  # fires at t = 2.9 s
    for f in cams[30:]:
        e.route("cam", f, f.timestamp_ns, len(f.jpeg))
    got = [r.frame_index for s, r in out if s == "cam"]  # type: ignore[attr-defined]
    # [2.9 - 1.0, 2.9 + 0.5] = frames 19..34, nothing else.
    assert got == list(range(19, 35))
    assert len(fired) == 1 and fired[0].trigger == "hard" and fired[0].streams == ("cam",)
    # The condition stays true: no second trigger until it falls and rises again.
    e.on_signal("p", T0 + 40 * S // 10, 90.0)
    assert len(fired) == 1
    e.on_signal("p", T0 + 41 * S // 10, 0.0)
    e.on_signal("p", T0 + 55 * S // 10, 60.0)
    assert len(fired) == 2


def test_overlapping_windows_merge(jpegs: list[bytes]) -> None:
    out: list[tuple[str, object]] = []
    e = engine(BRAKE, out)
    cams = frames(jpegs, 60)
    for f in cams[:20]:
        e.route("cam", f, f.timestamp_ns, len(f.jpeg))
    e.on_signal("p", T0 + 19 * S // 10, 80.0)   # window [0.9, 2.4]
    for f in cams[20:23]:
        e.route("cam", f, f.timestamp_ns, len(f.jpeg))
    e.on_signal("p", T0 + 22 * S // 10, 0.0)
    e.on_signal("p", T0 + 22 * S // 10 + 1, 70.0)  # window [1.2, 2.7]: merges
    for f in cams[23:]:
        e.route("cam", f, f.timestamp_ns, len(f.jpeg))
    got = [r.frame_index for s, r in out]  # type: ignore[attr-defined]
    assert got == list(range(9, 28))  # 0.9 s .. 2.7 s, each frame once


def test_always_thinned_and_off_streams(jpegs: list[bytes]) -> None:
    out: list[tuple[str, object]] = []
    e = engine(BRAKE, out)
    for i in range(20):  # 10 Hz for 2 s -> 2 Hz keeps every fifth
        e.route("gnss", i, T0 + i * S // 10, 72)
        e.route("can", i, T0 + i * S // 10, 24)
        e.route("dbg", i, T0 + i * S // 10, 24)
        e.route("unlisted", i, T0 + i * S // 10, 24)
    assert [r for s, r in out if s == "gnss"] == [0, 5, 10, 15]
    assert [r for s, r in out if s == "can"] == list(range(20))
    assert [r for s, r in out if s == "unlisted"] == list(range(20))  # default mode: always
    assert not [r for s, r in out if s == "dbg"]
    assert e.filtered == {"gnss": 16, "dbg": 20}


def test_ring_is_bounded_in_time_and_bytes(jpegs: list[bytes]) -> None:
    out: list[tuple[str, object]] = []
    spec = {**BRAKE, "ring_max_mb": 0.05}  # about 50 KB
    e = engine(spec, out)
    for f in frames(jpegs, 300):  # 30 s
        e.route("cam", f, f.timestamp_ns, len(f.jpeg))
    ring = e.stats()["rings"]["cam"]
    assert ring["bytes"] <= 0.05 * 2**20
    assert ring["records"] + ring["dropped"] == 300
    e2 = engine(BRAKE, out)
    for f in frames(jpegs, 300):
        e2.route("cam", f, f.timestamp_ns, len(f.jpeg))
    # pre_s 1.0 + 2 s slack at 10 fps: at most 31 frames are kept.
    assert e2.stats()["rings"]["cam"]["records"] <= 31


def test_bad_config_message_is_rejected_and_previous_kept() -> None:
    out: list[tuple[str, object]] = []
    e = engine(BRAKE, out)
    bad = json.dumps({"campaigns": [{"name": "x", "triggers": [
        {"name": "t", "condition": "avg(speed, 2) > 1"}]}]}).encode()
    assert not e.apply_message(bad)
    assert e.rejected is not None and "campaigns.0.triggers.0.condition" in e.rejected
    assert "needs a unit" in e.rejected
    assert [c.name for c in e.specs] == ["brake"]
    assert not e.apply_message(b"\xc1garbage")
    assert not e.apply_message(json.dumps({"campaigns": [{"name": "y", "streams": {
        "cam": {"mode": "triggered"}}}]}).encode())
    assert "have no trigger" in (e.rejected or "")
    assert [c.name for c in e.specs] == ["brake"]
    # A good one (msgpack this time) replaces the set.
    good = msgpack.packb({"campaigns": [{"name": "calm", "streams": {"cam": {"mode": "off"}}}]})
    assert e.apply_message(good)
    assert [c.name for c in e.specs] == ["calm"] and e.mode("cam") == "off" and e.rejected is None
    assert e.apply_message(campaign_message([CampaignSpec.model_validate(BRAKE)]))
    assert e.mode("cam") == "triggered"


def test_trigger_naming_an_untriggered_stream_is_an_error() -> None:
    with pytest.raises(CampaignError, match="not triggered"):
        specs_from([{**BRAKE, "triggers": [{"name": "t", "condition": "x > 1", "streams": ["can"]}]}])


def test_campaigns_from_the_retained_config_topic(broker: ManagedBroker, short_can_log: Path,
                                                  tmp_path: Path) -> None:
    agent_id = "veh-campaign"
    cfg = config_from_dict({
        "agent_id": agent_id, "broker": {"url": broker.url}, "spool": {"dir": str(tmp_path / "spool")},
        "sources": [{"type": "replay_can", "name": "can", "path": str(short_can_log), "speed": 1}],
        "drain_timeout_s": 0,
    }, {})
    quiet = campaign_message([{"name": "quiet", "streams": {"can": {"mode": "off"}}}])
    bad = json.dumps({"campaigns": [{"name": "typo", "streams": {"can": {"mode": "sometimes"}}}]}).encode()

    async def main(server: AckingServer) -> None:
        async with Agent(cfg) as agent:
            eng = agent.campaigns
            assert eng is not None
            await until(lambda: [c.name for c in eng.specs] == ["quiet"], 20, "the retained campaign")
            await until(lambda: eng.filtered.get("can", 0) > 0, 20, "CAN frames filtered out")
            server.client.publish(config_topic(agent_id), bad, qos=1)
            await until(lambda: eng.rejected is not None, 20, "the rejection")
            assert [c.name for c in eng.specs] == ["quiet"] and eng.mode("can") == "off"
            assert (await agent.drain(20)).complete

    with AckingServer(broker.host, broker.port) as server:
        server.client.publish(config_topic(agent_id), quiet, qos=1, retain=True).wait_for_publish(10)
        try:
            asyncio.run(main(server))
        finally:
            server.client.publish(config_topic(agent_id), b"", qos=1, retain=True).wait_for_publish(10)
        events = server.records(agent_id, "events")
    kinds = [e.kind for e in events]
    assert "campaign_loaded" in kinds
    (rejected,) = [e for e in events if e.kind == "campaign_rejected"]
    assert "campaigns.0.streams.can.mode" in rejected.attrs["error"]
