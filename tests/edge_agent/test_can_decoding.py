"""What a CAN source makes of each frame: one implementation for live buses and candump replays."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edge_agent.sources.can import CanDecodingOptions, CanFrames, CanOptions
from edge_agent.sources.replay import CanReplayOptions
from firmware_bridges.candump import read_candump
from tests.edge_agent.captures import CAN_LOG, RADAR_DBC


class Recorder:
    """Stands where the agent's Source would: counts what CanFrames emits per stream."""

    name = "front-radar"

    def __init__(self) -> None:
        self.records: Counter[str] = Counter()

    def emit(self, stream: str, record: Any) -> None:
        self.records[stream] += 1

    def emit_many(self, stream: str, records: Any) -> None:
        if records:  # as Source.emit_many
            self.records[stream] += len(records)


def _decode(shared_data: Path, options: CanDecodingOptions) -> Counter[str]:
    rec = Recorder()
    frames = CanFrames(rec, "can", options)  # type: ignore[arg-type]
    assert set(frames.streams()) == {"can", "radar.objects"}
    for f in read_candump(shared_data / CAN_LOG):
        frames.handle(f)
    return rec.records


def test_radar_channels_limit_the_tracks_on_live_and_replayed_buses(shared_data: Path) -> None:
    for opts in (CanOptions, CanReplayOptions):
        extra = {"path": shared_data / CAN_LOG} if opts is CanReplayOptions else {}
        on_radar_bus = _decode(shared_data, opts(radar_dbc=shared_data / RADAR_DBC,
                                                 radar_channels=["can1"], **extra))
        assert on_radar_bus == {"can": 135_468, "radar.objects": 19_200}  # 16 slots x 1200 pairs
        elsewhere = _decode(shared_data, opts(radar_dbc=shared_data / RADAR_DBC,
                                              radar_channels=["can0"], **extra))
        assert elsewhere == {"can": 135_468}
