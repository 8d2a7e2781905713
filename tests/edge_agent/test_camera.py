"""Cameras: JPEG encoding off the event loop; a camera that outpaces its encoder drops its
oldest frames and counts them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import config_from_dict
from edge_agent.sources.camera import CameraSource
from tests.edge_agent.captures import VIDEO
from tests.edge_agent.conftest import spool_batches, until

VIDEO_FRAMES = 795


def test_camera_drops_oldest_frames_when_the_encoder_falls_behind(shared_data: Path, tmp_path: Path) -> None:
    # The file read as a live camera: frames come as fast as they decode, and encoding them at
    # 1920x1080, quality 100, is several times slower, so the one-frame queue must drop.
    cfg = config_from_dict({
        "agent_id": "veh-cam", "broker": {"url": "mqtt://127.0.0.1:9"},  # offline: spool only
        "spool": {"dir": str(tmp_path / "spool"), "budget_mb": 512},
        "sources": [{"type": "camera", "name": "camera.front", "device": str(shared_data / VIDEO),
                     "width": 1920, "height": 1080, "jpeg_quality": 100, "queue_frames": 1}],
        "drain_timeout_s": 0,
    }, {})

    async def main() -> tuple[int, int]:
        async with Agent(cfg) as agent:
            (cam,) = agent.sources
            assert isinstance(cam, CameraSource)
            # The file ends: a camera that stops delivering is an error, retried with backoff.
            await until(lambda: cam.stats.errors >= 1, 120, "the end of the file")
            await agent.stop_sources()
            await agent.flush()
            return cam.stats.dropped, cam.stats.records["camera.front"]

    dropped, delivered = asyncio.run(main())
    frames = [f for b in spool_batches(tmp_path / "spool", "veh-cam") if b.stream == "camera.front"
              for f in b.table().records()]
    assert len(frames) == delivered
    assert dropped > 0
    assert delivered + dropped == VIDEO_FRAMES  # every frame either delivered or counted
    idx = [f.frame_index for f in frames]
    assert idx == sorted(set(idx))  # delivered in capture order, each once
    assert idx[-1] == VIDEO_FRAMES - 1  # the newest frame is never the one dropped
    ts = [f.timestamp_ns for f in frames]
    assert ts == sorted(ts)
    img = cv2.imdecode(np.frombuffer(frames[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (1080, 1920, 3) and (frames[0].width, frames[0].height) == (1920, 1080)


def test_looping_video_replay_keeps_counting_frames_past_the_end(tmp_path: Path) -> None:
    clip = tmp_path / "five.avi"
    out = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (64, 48))
    for i in range(5):
        out.write(np.full((48, 64, 3), i * 40, np.uint8))
    out.release()
    cfg = config_from_dict({
        "agent_id": "veh-loop", "broker": {"url": "mqtt://127.0.0.1:9"},  # offline: spool only
        "spool": {"dir": str(tmp_path / "spool"), "budget_mb": 64},
        "sources": [{"type": "replay_video", "name": "camera.front", "path": str(clip),
                     "loop": True, "drop_when_behind": False}],
        "drain_timeout_s": 0,
    }, {})

    async def main() -> int:
        async with Agent(cfg) as agent:
            (cam,) = agent.sources
            await until(lambda: cam.stats.records.get("camera.front", 0) >= 12, 60, "three loops")
            await agent.stop_sources()
            await agent.flush()
            return cam.stats.errors

    errors = asyncio.run(main())
    frames = [f for b in spool_batches(tmp_path / "spool", "veh-loop") if b.stream == "camera.front"
              for f in b.table().records()]
    assert errors == 0
    idx = [f.frame_index for f in frames]
    assert len(idx) >= 12 and idx == list(range(len(idx)))  # counting on across loops
    # The sixth frame is the first one again.
    first, sixth = (cv2.imdecode(np.frombuffer(frames[k].jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
                    for k in (0, 5))
    assert abs(int(first.mean()) - int(sixth.mean())) <= 2
    assert [f.timestamp_ns for f in frames] == sorted(f.timestamp_ns for f in frames)
