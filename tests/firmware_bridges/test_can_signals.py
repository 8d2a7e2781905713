"""Vehicle signals from the real RAV4 log with opendbc's DBC: speed and steering against comma's
reference CSV, rate limits, checksum/counter signals kept, unknown ids and decode errors counted,
DBC loading errors."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from cantools.database.can import Database

from firmware_bridges.can_signals import SignalDecoder, load_dbc, loads_dbc, toyota_checksum
from firmware_bridges.errors import ConfigError
from wire.schemas import VEHICLE_SIGNALS, CanFrame, Signal
from wire.schemas.can_frames import REMOTE


def reference_rows(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "can" / "comma2k19_seg40_reference_signals.csv").open() as f:
        return list(csv.DictReader(f))


def ns(seconds: str) -> int:
    whole, _, frac = seconds.partition(".")
    return int(whole) * 1_000_000_000 + int(frac.ljust(9, "0"))


def decode_all(dec: SignalDecoder, frames: list[CanFrame]) -> list[Signal]:
    return [s for f in frames for s in dec.decode(f)]


def test_vehicle_speed_agrees_with_comma_reference(
    shared_data: Path, can_pt_dbc: Database, can_log_frames: list[CanFrame]
) -> None:
    dec = SignalDecoder(can_pt_dbc, {"WHEEL_SPEEDS": 0}, channels=["can0"])
    by_time: dict[int, dict[str, float]] = defaultdict(dict)
    for s in decode_all(dec, can_log_frames):
        by_time[s.timestamp_ns][s.name] = s.value
    rows = reference_rows(shared_data)
    assert len(rows) == len(by_time) == 4974
    worst = 0.0
    for row in rows:
        wheels = by_time[ns(row["t_boot_s"])]  # the CSV rows carry the frames' own timestamps
        assert len(wheels) == 4
        speed = sum(wheels.values()) / 4 / 3.6
        worst = max(worst, abs(speed - float(row["speed_mps"])))
        assert wheels["WHEEL_SPEEDS.WHEEL_SPEED_FL"] / 3.6 == pytest.approx(
            float(row["wheel_speed_fl_mps"]), abs=0.01
        )
    assert worst < 0.01
    assert 7.0 < float(rows[0]["speed_mps"]) < 9.0  # the car is moving: the check is not vacuous


def test_steering_angle_agrees_with_comma_reference(
    shared_data: Path, can_pt_dbc: Database, can_log_frames: list[CanFrame]
) -> None:
    dec = SignalDecoder(
        can_pt_dbc,
        {"STEER_ANGLE_SENSOR.STEER_ANGLE": 0, "STEER_ANGLE_SENSOR.STEER_FRACTION": 0},
        channels=["can0"],
    )
    angles: list[float] = []
    pending: dict[str, float] = {}
    for s in decode_all(dec, can_log_frames):
        pending[s.name] = s.value
        if len(pending) == 2:
            angles.append(sum(pending.values()))
            pending = {}
    rows = reference_rows(shared_data)
    ref = [float(r["steering_angle_deg"]) for r in rows]
    assert len(angles) == len(ref)
    assert max(ref) - min(ref) > 5  # it steers
    # comma's values lag by at most one sample
    for i, want in enumerate(ref):
        near = [angles[j] for j in (i - 1, i, i + 1) if 0 <= j < len(angles)]
        assert min(abs(a - want) for a in near) <= 0.1


def test_rate_limit_keeps_the_long_run_rate(can_pt_dbc: Database, can_log_frames: list[CanFrame]) -> None:
    full = SignalDecoder(can_pt_dbc, {"STEER_ANGLE_SENSOR.STEER_ANGLE": 0}, channels=["can0"])
    every = decode_all(full, can_log_frames)
    assert len(every) == 4974
    ten = SignalDecoder(can_pt_dbc, {"STEER_ANGLE_SENSOR.STEER_ANGLE": 10}, channels=["can0"])
    slow = decode_all(ten, can_log_frames)
    span_s = (every[-1].timestamp_ns - every[0].timestamp_ns) / 1e9
    assert abs(len(slow) - span_s * 10) <= 2
    gaps = [(b.timestamp_ns - a.timestamp_ns) / 1e6 for a, b in zip(slow, slow[1:], strict=False)]
    assert min(gaps) > 80 and max(gaps) < 125  # ms, at 83 Hz input
    assert {s.timestamp_ns for s in slow} <= {s.timestamp_ns for s in every}
    # a named signal overrides its message's rate
    mixed = SignalDecoder(can_pt_dbc, {"WHEEL_SPEEDS": 1, "WHEEL_SPEEDS.WHEEL_SPEED_FL": 0})
    counts = Counter(s.name for s in decode_all(mixed, can_log_frames))
    assert counts["WHEEL_SPEEDS.WHEEL_SPEED_FL"] == 4974
    assert 59 <= counts["WHEEL_SPEEDS.WHEEL_SPEED_RR"] <= 61


def test_time_going_back_restarts_the_rate_limit(can_pt_dbc: Database) -> None:
    dec = SignalDecoder(can_pt_dbc, {"WHEEL_SPEEDS.WHEEL_SPEED_FL": 1})
    data = bytes.fromhex("25B525B525A0258D")
    times = [100 * 10**9, 100 * 10**9 + 10**8, 50 * 10**9, 50 * 10**9 + 10**8, 51 * 10**9]
    out = [dec.decode(CanFrame(t, "can0", 0xAA, 0, 8, data)) for t in times]
    assert [len(o) for o in out] == [1, 0, 1, 0, 1]


def test_checksum_and_counter_signals_stay_available(
    can_pt_dbc: Database, can_log_frames: list[CanFrame]
) -> None:
    dec = SignalDecoder(can_pt_dbc, {"STEER_TORQUE_SENSOR": 0}, channels=["can0"])
    frames = [f for f in can_log_frames if f.channel == "can0" and f.arbitration_id == 0x260]
    assert len(frames) > 1000
    for f in frames:
        values = {s.name: s.value for s in dec.decode(f)}
        assert values["STEER_TORQUE_SENSOR.CHECKSUM"] == f.data[-1] == toyota_checksum(0x260, f.data)
    names = set(SignalDecoder(can_pt_dbc).outputs)
    assert {"GAS_PEDAL.CHECKSUM", "PCM_CRUISE.CHECKSUM", "STEER_TORQUE_SENSOR.CHECKSUM"} <= names
    assert any(n.endswith(".COUNTER") for n in names)


def test_toyota_checksum_verifies_the_whole_powertrain_bus(
    can_pt_dbc: Database, can_log_frames: list[CanFrame]
) -> None:
    with_checksum = {
        m.frame_id for m in can_pt_dbc.messages if any(s.name == "CHECKSUM" for s in m.signals)
    }
    checked = [f for f in can_log_frames if f.channel == "can0" and f.arbitration_id in with_checksum]
    assert len(checked) == 12656  # the number SOURCES.md gives
    assert all(toyota_checksum(f.arbitration_id, f.data) == f.data[-1] for f in checked)


def test_unknown_ids_and_short_frames_are_counted(
    can_pt_dbc: Database, can_log_frames: list[CanFrame]
) -> None:
    dec = SignalDecoder(can_pt_dbc, channels=["can0"])
    signals = decode_all(dec, can_log_frames)
    st = dec.stats
    assert st.unknown_id == 16060 and st.other_channel == 135_468 - 53_800
    assert st.decoded == 37_740 and not st.decode_errors
    assert st.short_frames == 688  # ECUs sending fewer bytes than the DBC says
    assert st.signals == len(signals)
    table = VEHICLE_SIGNALS.table(signals[:1000])
    assert table.records() == signals[:1000]
    strict = SignalDecoder(can_pt_dbc, channels=["can0"], allow_truncated=False)
    decode_all(strict, can_log_frames)
    assert strict.stats.decoded == 37_740 - 688
    assert sum(strict.stats.decode_errors.values()) == 688
    assert set(strict.stats.decode_errors) >= {"TIME", "GEAR_PACKET", "DOOR_LOCKS"}


def test_remote_frames_and_unselected_messages_are_not_decoded(can_pt_dbc: Database) -> None:
    dec = SignalDecoder(can_pt_dbc, {"SPEED": 0})
    assert dec.decode(CanFrame(0, "can0", 0xB4, REMOTE, 8, b"")) == []
    assert dec.decode(CanFrame(0, "can0", 0xAA, 0, 8, bytes(8))) == []
    assert (dec.stats.not_data, dec.stats.not_selected) == (1, 1)
    out = dec.decode(CanFrame(0, "can0", 0xB4, 0, 8, bytes.fromhex("000000001D0B7A5E")))
    values = {s.name: s.value for s in out}
    assert values == {"SPEED.ENCODER": 0x1D, "SPEED.SPEED": pytest.approx(0x0B7A * 0.01),
                      "SPEED.CHECKSUM": 0x5E}


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ({"NO_SUCH_MESSAGE": 0}, "no message 'NO_SUCH_MESSAGE'"),
        ({"WHEEL_SPEEDS.NOPE": 0}, "no signal 'NOPE'"),
        ({"WHEEL_SPEEDS": -1}, "rate must be"),
        ({"WHEEL_SPEEDS": float("nan")}, "rate must be"),
    ],
)
def test_bad_selection_is_a_config_error(
    can_pt_dbc: Database, selection: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SignalDecoder(can_pt_dbc, selection)


def test_load_dbc_errors(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read DBC file"):
        load_dbc(tmp_path / "missing.dbc")
    junk = tmp_path / "junk.dbc"
    junk.write_bytes(b"BO_ this is not \x00 a dbc {{{")
    with pytest.raises(ConfigError, match="not a valid DBC"):
        load_dbc(junk)
    with pytest.raises(ConfigError, match="larger than 1000 bytes"):
        load_dbc(shared_data / "can" / "toyota_adas.dbc", max_bytes=1000)
    with pytest.raises(ConfigError, match="overlapping"):
        load_dbc(shared_data / "can" / "toyota_new_mc_pt_generated.dbc", strict=True)
    # Vector's tools write cp1252; a comment with a degree sign must not stop the load
    text = (shared_data / "can" / "toyota_adas.dbc").read_text()
    latin = tmp_path / "latin.dbc"
    latin.write_bytes(text.encode() + b'\nCM_ BO_ 528 "angle in \xb0";\n')
    assert len(load_dbc(latin).messages) == len(loads_dbc(text).messages) == 32
