"""Replay: ordering and relative spacing of logged items, GNSS epoch cutting, capture reading."""

from __future__ import annotations

import asyncio
import gzip
import math
from pathlib import Path
from typing import Any

import pytest

from firmware_bridges.candump import read_candump
from firmware_bridges.errors import ConfigError
from firmware_bridges.gnss_demux import GnssDemux
from firmware_bridges.parser import parse_all
from firmware_bridges.replay import (
    Replay,
    frame_timeline,
    gnss_timeline,
    read_capture,
    strip_comment_header,
)

# A replay never yields an item before its due time; that lower bound holds on any machine.
# Upper bounds would be timed assertions, so none are made.
SLACK = 0.002  # event-loop clock granularity


async def arrivals(replay: Replay[Any]) -> list[tuple[float, Any]]:
    loop = asyncio.get_running_loop()
    out: list[tuple[float, Any]] = []
    async for item in replay:
        out.append((loop.time(), item))
    return out


def test_items_come_in_order_and_never_before_their_scaled_log_time() -> None:
    log_times = [10.0, 10.1, 10.3, 10.35, 10.9]
    replay = Replay([(t, i) for i, t in enumerate(log_times)], speed=2.0)
    got = asyncio.run(arrivals(replay))
    assert [item for _, item in got] == [0, 1, 2, 3, 4]
    t0 = got[0][0]
    for (when, _), t in zip(got, log_times, strict=True):
        assert when - t0 >= (t - log_times[0]) / 2.0 - SLACK
    times = [when for when, _ in got]
    assert times == sorted(times)
    assert replay.log_elapsed_s == pytest.approx(0.9)
    assert replay.stats.items == 5 and replay.stats.laps == 1


def test_backward_steps_count_as_no_gap_and_long_gaps_are_capped() -> None:
    items = [(100.0, "a"), (100.2, "b"), (99.0, "c"), (99.1, "d"), (500.0, "e")]
    replay = Replay(items, speed=math.inf, max_gap_s=1.0)
    got = asyncio.run(arrivals(replay))
    assert [x for _, x in got] == ["a", "b", "c", "d", "e"]
    # schedule: 0.2 (a->b), 0 (backwards), 0.1, capped 1.0
    assert replay.log_elapsed_s == pytest.approx(1.3)
    assert replay.stats.backward_steps == 1 and replay.stats.capped_gaps == 1


def test_looping_replays_the_log_again_after_the_lap_gap() -> None:
    async def main() -> tuple[list[tuple[float, str]], Replay[str]]:
        replay = Replay(lambda: [(1.0, "x"), (1.05, "y")], speed=1.0, loop=True, lap_gap_s=0.1)
        loop = asyncio.get_running_loop()
        got = []
        async for item in replay:
            got.append((loop.time(), item))
            if len(got) == 6:
                break
        return got, replay

    got, replay = asyncio.run(main())
    assert [x for _, x in got] == ["x", "y"] * 3
    t0 = got[0][0]
    for k, (when, _) in enumerate(got):
        due = (k // 2) * 0.15 + (k % 2) * 0.05  # each lap: 0.05 apart, then the 0.1 lap gap
        assert when - t0 >= due - SLACK
    assert replay.stats.laps == 2
    assert replay.log_elapsed_s == pytest.approx(0.05 * 3 + 0.1 * 2)


def test_shift_delays_the_rest_of_the_schedule() -> None:
    async def main() -> list[float]:
        replay = Replay([(0.0, 1), (0.01, 2), (0.02, 3)], speed=1.0)
        loop = asyncio.get_running_loop()
        out = []
        async for _ in replay:
            out.append(loop.time())
            if len(out) == 1:
                replay.shift(0.2)  # an SLCAN adapter's channel was closed for 0.2 s
        return out

    times = asyncio.run(main())
    assert times[1] - times[0] >= 0.21 - SLACK
    assert times[2] - times[0] >= 0.22 - SLACK


def test_bad_replay_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="speed"):
        Replay([(0.0, 1)], speed=0)
    with pytest.raises(ConfigError, match="iterator"):
        Replay(iter([(0.0, 1)]), loop=True)
    with pytest.raises(ConfigError, match="negative"):
        Replay([(0.0, 1)], lap_gap_s=-1)


def test_candump_replay_keeps_the_log_order_and_spacing(shared_data: Path) -> None:
    path = shared_data / "can/toyota_rav4_comma2k19_seg40.log.gz"

    def first_frames() -> list[Any]:
        out = []
        for f in read_candump(path):
            out.append(f)
            if len(out) == 2000:
                break
        return out

    frames = first_frames()
    replay = Replay(frame_timeline(frames), speed=math.inf)
    got = asyncio.run(arrivals(replay))
    assert [f for _, f in got] == frames
    span = (frames[-1].timestamp_ns - frames[0].timestamp_ns) / 1e9
    assert replay.log_elapsed_s == pytest.approx(span, abs=1e-6)
    assert replay.stats.backward_steps == 0


@pytest.mark.parametrize(
    ("name", "epochs", "step"),
    [
        ("gpsd/bu353s4.log", 25, 1.0),  # NMEA, UTC time of day
        ("gpsd/ublox-neo-m9n-nmea.log", 61, 1.0),
        ("gpsd/ublox-neo-m8n.log", 24, 0.2),  # UBX NAV-PVT at 5 Hz, iTOW
        ("pyubx2/pygpsdata-HNR.log", 13, 0.05),  # HNR-PVT at 20 Hz
    ],
)
def test_gnss_captures_are_cut_into_epochs_by_receiver_time(
    shared_data: Path, name: str, epochs: int, step: float
) -> None:
    data = strip_comment_header((shared_data / "gnss" / name).read_bytes())
    timeline = gnss_timeline(data)
    assert b"".join(chunk for _, chunk in timeline) == data  # every byte, untouched
    assert len(timeline) == epochs
    steps = {round(b[0] - a[0], 3) for a, b in zip(timeline, timeline[1:], strict=False)}
    assert steps == {step}


def test_every_gnss_capture_survives_epoch_cutting_byte_for_byte(shared_data: Path) -> None:
    for path in sorted((shared_data / "gnss").rglob("*.log")):
        data = strip_comment_header(path.read_bytes())
        timeline = gnss_timeline(data)
        assert b"".join(c for _, c in timeline) == data, path.name
        times = [t for t, _ in timeline]
        assert times == sorted(times), path.name
        # cutting at epoch boundaries never splits a message: each chunk parses on its own
        whole = parse_all(GnssDemux(), data)
        pieces = [ev for _, c in timeline for ev in parse_all(GnssDemux(), c)]
        assert len(pieces) == len(whole), path.name


def test_a_gnss_log_without_times_is_paced_one_epoch_per_repeat() -> None:
    cycle = b"$GPGSV,1,1,00*79\r\n$GPGSA,A,1,,,,,,,,,,,,,,,*1E\r\n"
    timeline = gnss_timeline(cycle * 4)
    assert [t for t, _ in timeline] == [0.0, 1.0, 2.0, 3.0]
    assert all(chunk == cycle for _, chunk in timeline)


def test_read_capture_gunzips_and_enforces_its_bound(tmp_path: Path) -> None:
    plain = tmp_path / "x.log"
    plain.write_bytes(b"$GPGGA\r\n" * 100)
    packed = tmp_path / "x.log.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_capture(packed) == plain.read_bytes()
    with pytest.raises(ConfigError, match="larger than 100 bytes"):
        read_capture(packed, max_bytes=100)
    with pytest.raises(ConfigError, match="does not exist"):
        read_capture(tmp_path / "missing.log")


def test_comment_header_is_stripped_only_at_the_start() -> None:
    assert strip_comment_header(b"# a\n# b\n$GP*00\r\n#x\n") == b"$GP*00\r\n#x\n"
    assert strip_comment_header(b"$GP\r\n") == b"$GP\r\n"
    assert strip_comment_header(b"# only a comment") == b""
