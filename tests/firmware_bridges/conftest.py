"""Fixtures for the CAN-side tests (names start with ``can_``): the real RAV4 log and its DBCs.

The log is ../shared/data/can/toyota_rav4_comma2k19_seg40.log.gz: 60 s of a
Toyota RAV4 (comma2k19), 135,468 frames in candump ``-L`` text.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from cantools.database.can import Database

from firmware_bridges.can_signals import load_dbc
from firmware_bridges.candump import CandumpParser
from firmware_bridges.parser import events
from wire.schemas import CanFrame

CAN_LOG_FRAMES = 135_468


@pytest.fixture(scope="session")
def can_log_path(shared_data: Path) -> Path:
    return shared_data / "can" / "toyota_rav4_comma2k19_seg40.log.gz"


@pytest.fixture(scope="session")
def can_log_bytes(can_log_path: Path) -> bytes:
    """The log's text, decompressed."""
    with gzip.open(can_log_path, "rb") as f:
        return f.read()


@pytest.fixture(scope="session")
def can_log_lines(can_log_bytes: bytes) -> list[bytes]:
    return can_log_bytes.splitlines()


@pytest.fixture(scope="session")
def can_log_frames(can_log_bytes: bytes) -> list[CanFrame]:
    """Every frame of the log, parsed from one feed of the whole text."""
    parser = CandumpParser()
    parser.feed(can_log_bytes)
    parser.flush()
    frames = list(events(parser))
    assert len(frames) == CAN_LOG_FRAMES, parser.stats
    return frames


@pytest.fixture(scope="session")
def can_pt_dbc(shared_data: Path) -> Database:
    """opendbc's toyota_new_mc_pt_generated.dbc (powertrain bus, can0)."""
    return load_dbc(shared_data / "can" / "toyota_new_mc_pt_generated.dbc")


@pytest.fixture(scope="session")
def can_adas_dbc(shared_data: Path) -> Database:
    """opendbc's toyota_adas.dbc (radar tracks, can1)."""
    return load_dbc(shared_data / "can" / "toyota_adas.dbc")
