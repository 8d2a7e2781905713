"""Fixtures for the edge agent tests: real captures cut into real encoded batches."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.spool import Spool
from firmware_bridges.candump import CandumpWriter, read_candump
from tests.edge_agent.captures import CAN_LOG, GNSS_CSV, VIDEO, nmea_from_gnss_csv
from wire.envelope import Batch, encode_batch
from wire.schemas import CAMERA_JPEG, CAN_FRAMES, CameraFrame, CanFrame

_FRAMES: list[CanFrame] = []
_JPEGS: list[bytes] = []


@pytest.fixture(scope="session")
def can_frames(shared_data: Path) -> list[CanFrame]:
    """The first 20,000 frames of the real RAV4 log."""
    if not _FRAMES:
        _FRAMES.extend(itertools.islice(read_candump(shared_data / CAN_LOG), 20_000))
    return _FRAMES


@pytest.fixture(scope="session")
def jpegs(shared_data: Path) -> list[bytes]:
    """Eight real JPEG frames of vtest.avi (320x240, quality 80)."""
    if not _JPEGS:
        import cv2

        cap = cv2.VideoCapture(str(shared_data / VIDEO))
        try:
            for _ in range(8):
                ok, img = cap.read()
                assert ok
                img = cv2.resize(img, (320, 240))
                ok, buf = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), 80])
                assert ok
                _JPEGS.append(buf.tobytes())
        finally:
            cap.release()
    return _JPEGS


@pytest.fixture(scope="session")
def short_can_log(can_frames: list[CanFrame], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 20,000 frames (about 9 s) of the real RAV4 log, as a candump -L file."""
    out = tmp_path_factory.mktemp("can") / "rav4_head.log"
    with out.open("w") as f:
        CandumpWriter(f).write_all(can_frames)
    return out


@pytest.fixture(scope="session")
def drive_nmea(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The RAV4 drive's u-blox fixes as an NMEA capture (10 Hz, GGA + RMC)."""
    out = tmp_path_factory.mktemp("gnss") / "drive.nmea"
    nmea_from_gnss_csv(shared_data / GNSS_CSV, out)
    return out


def can_batch(agent: str, frames: list[CanFrame], seq: int, stream: str = "can") -> bytes:
    return encode_batch(agent, stream, CAN_FRAMES.table(frames), seq).encode()


def camera_batch(agent: str, jpegs: list[bytes], seq: int, stream: str = "camera.front") -> bytes:
    frames = [CameraFrame(1_700_000_000_000_000_000 + i, stream, i, 320, 240, j) for i, j in enumerate(jpegs)]
    return encode_batch(agent, stream, CAMERA_JPEG.table(frames), seq, codec_name="none").encode()


def replay_cmd(agent: str, broker_url: str, spool: Path, *args: str | Path) -> list[str]:
    """``cvis agent replay`` as a real process (same interpreter and environment)."""
    return [sys.executable, "-m", "cvis", "-v", "agent", "replay", "--agent-id", agent,
            "--broker", broker_url, "--spool", str(spool), *map(str, args)]


def spool_batches(spool_dir: Path, agent: str) -> list[Batch]:
    """Open a spool left by a dead agent and decode every batch in it (fails on a torn one)."""
    spool = Spool(spool_dir, agent, budget_bytes=2**40)
    try:
        out = []
        for stream, seq, records, data, crc in spool.rows():
            assert zlib.crc32(data) == crc, f"{stream} seq {seq}: checksum mismatch"
            b = Batch.decode(data)
            assert (b.stream, b.seq, b.count) == (stream, seq, records)
            assert b.table().n == records
            out.append(b)
        return out
    finally:
        spool.close()


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """``wait_for`` for async tests: poll without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
