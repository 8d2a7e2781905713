"""``cvis parse`` run as a real process on the real captures: JSON lines out, counters on stderr."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from firmware_bridges.candump import read_candump
from firmware_bridges.cli import iso_utc, record_json, sniff_protocol
from firmware_bridges.errors import ConfigError
from firmware_bridges.simulators import RadarSimulator
from firmware_bridges.slcan import encode_frames
from wire.schemas import GnssFix, Signal

CAN_LOG = "can/toyota_rav4_comma2k19_seg40.log.gz"


def cvis_parse(*args: str | Path) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cvis", "parse", *map(str, args)],
        capture_output=True, timeout=120, check=False,
    )
    lines = proc.stdout.decode().splitlines()
    return proc.returncode, [json.loads(line) for line in lines], proc.stderr.decode()


def parse_time(s: str) -> dt.datetime:
    """ISO 8601 UTC, rounded to 10 ms (UBX carries ns; gpsd prints ms)."""
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t.replace(microsecond=0) + dt.timedelta(milliseconds=round(t.microsecond / 1e4) * 10)


def gpsd_tpv(chk: Path) -> dict[dt.datetime, dict[str, Any]]:
    out = {}
    for line in chk.read_text().splitlines():
        if not line.startswith("{"):
            continue  # gpsd echoes the NMEA it read between its JSON reports
        obj = json.loads(line)
        if obj.get("class") == "TPV" and "time" in obj and "lat" in obj:
            out[parse_time(obj["time"])] = obj
    return out


def test_parse_candump_log_prints_every_frame_and_the_counters(shared_data: Path) -> None:
    code, records, err = cvis_parse(shared_data / CAN_LOG)
    assert code == 0, err
    assert len(records) == 135468
    assert records[0] == {
        "schema": "can.frames", "timestamp_ns": 46408584930000, "channel": "can0",
        "arbitration_id": 0x260, "flags": 0, "dlc": 8, "data": "08fffb0000001884",
    }
    assert {r["channel"] for r in records} == {"can0", "can1", "can0tx", "can1tx"}
    assert "(candump): 135468 records (can.frames 135468)" in err
    assert "frames=135468 bad_checksum=0 truncated=0 skipped_bytes=0" in err


def test_parse_candump_with_the_radar_dbc_adds_radar_objects(shared_data: Path) -> None:
    code, records, err = cvis_parse(shared_data / CAN_LOG, "--dbc", shared_data / "can/toyota_adas.dbc")
    assert code == 0, err
    objects = [r for r in records if r["schema"] == "radar.objects"]
    assert len(objects) == 19200  # 16 track slots, 1200 TRACK_A/B pairs each
    assert {r["object_id"] for r in objects} == set(range(16))
    valid = [r for r in objects if r["valid"]]
    assert valid and all(0 < r["x"] < 255 for r in valid)
    assert "radar tracks:" in err


def test_parse_candump_with_dbc_adds_vehicle_signals(shared_data: Path) -> None:
    code, records, err = cvis_parse(
        shared_data / CAN_LOG, "--dbc", shared_data / "can/toyota_new_mc_pt_generated.dbc",
        "--dbc-channel", "can0",
    )
    assert code == 0, err
    signals = [r for r in records if r["schema"] == "vehicle.signals"]
    assert sum(r["schema"] == "can.frames" for r in records) == 135468
    fl = [r["value"] for r in signals if r["name"] == "WHEEL_SPEEDS.WHEEL_SPEED_FL"]
    assert len(fl) > 1000
    assert all(0 <= v < 200 for v in fl)  # km/h on a highway
    assert any(r["name"] == "STEER_ANGLE_SENSOR.STEER_ANGLE" for r in signals)
    assert "signals: frames=135468" in err and "other_channel=81668" in err


@pytest.mark.parametrize("name", ["bu353s4.log", "ublox-neo-m8n.log"])
def test_parse_gnss_fixes_agree_with_gpsd(shared_data: Path, name: str) -> None:
    log = shared_data / "gnss/gpsd" / name
    code, records, err = cvis_parse(log)
    assert code == 0, err
    fixes = [r for r in records if r["schema"] == "gnss.fix"]
    tpv = gpsd_tpv(log.with_name(name + ".chk"))
    matched = 0
    for fix in fixes:
        assert fix["time"].endswith("Z")
        ref = tpv.get(parse_time(fix["time"]))
        if ref is None:
            continue
        matched += 1
        assert fix["lat"] == pytest.approx(ref["lat"], abs=1e-7)
        assert fix["lon"] == pytest.approx(ref["lon"], abs=1e-7)
        assert fix["alt_m"] == pytest.approx(ref["altMSL"], abs=0.01)
    assert matched >= 20
    assert "records (gnss.fix" in err and "demux: frames=" in err


def test_parse_a_mixed_ubx_capture_gives_fixes_and_esf_signals(shared_data: Path) -> None:
    code, records, err = cvis_parse(shared_data / "gnss/gpsd/ublox-neo-m8l.log",
                                    "--protocol", "ubx")
    assert code == 0, err
    kinds = {r["schema"] for r in records}
    assert kinds == {"gnss.fix", "vehicle.signals"}
    assert any(r["name"].startswith("esf.") for r in records if r["schema"] == "vehicle.signals")
    assert "ubx: frames=1388" in err


def test_parse_slcan_text_made_from_the_real_log(tmp_path: Path, shared_data: Path) -> None:
    frames = []
    for f in read_candump(shared_data / CAN_LOG):
        frames.append(f)
        if len(frames) == 5000:
            break
    capture = tmp_path / "adapter.slcan"
    capture.write_bytes(b"\r" + encode_frames(frames, timestamps=True) + b"\a")
    code, records, err = cvis_parse(capture, "--channel", "can9")
    assert code == 0, err
    assert [(r["arbitration_id"], r["data"]) for r in records] == [
        (f.arbitration_id, f.data.hex()) for f in frames
    ]
    assert {r["channel"] for r in records} == {"can9"}
    assert "(slcan): 5000 records" in err and "slcan replies: ok=1 bell=1" in err


def test_parse_mmwave_uart_capture(tmp_path: Path) -> None:
    sim = RadarSimulator(rate_hz=10.0)
    capture = tmp_path / "radar.bin"
    capture.write_bytes(b"\x00garbage" + b"".join(sim.frame_bytes(n) for n in range(30)))
    code, records, err = cvis_parse(capture)
    assert code == 0, err
    assert len(records) == 30 * 13
    assert {r["schema"] for r in records} == {"radar.points"}
    assert [r["frame"] for r in records[::13]] == list(range(30))
    assert "(mmwave)" in err and "frames=30" in err and "skipped_bytes=8" in err


def test_parse_reports_bad_input_clearly(tmp_path: Path, shared_data: Path) -> None:
    code, records, err = cvis_parse(tmp_path / "missing.log")
    assert code == 2 and records == [] and "missing.log does not exist" in err
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 8)
    code, records, err = cvis_parse(junk)
    assert code == 2 and "cannot tell the protocol" in err and "--protocol" in err
    code, _, err = cvis_parse(shared_data / "gnss/gpsd/bu353s4.log", "--dbc",
                              shared_data / "can/toyota_adas.dbc")
    assert code == 2 and "--dbc decodes CAN input" in err


def test_sniffing_the_first_kib() -> None:
    assert sniff_protocol(b"(1533199735.123456) can0 260#08FFFB0000001884\n") == "candump"
    assert sniff_protocol(b"\rt2608FFFB0000001884\r") == "slcan"
    assert sniff_protocol(b"$GPGGA,030719.000,3747.0873,S*7D\r\n") == "nmea"
    assert sniff_protocol(b"$GNTXT,01*00\r\n\xb5\x62\x01\x07") == "ubx"
    assert sniff_protocol(b"xx\x02\x01\x04\x03\x06\x05\x08\x07") == "mmwave"
    with pytest.raises(ConfigError):
        sniff_protocol(b"hello world")


def test_record_json_names_the_schema_and_writes_nan_as_null() -> None:
    fix = GnssFix(1, 1_419_995_239_500_000_000, -37.78, 175.31, 59.9, 0.35, math.nan, 1, 8,
                  1.1)
    obj = record_json(fix)
    assert obj["schema"] == "gnss.fix"
    assert obj["time"] == "2014-12-31T03:07:19.500000Z"
    assert obj["course_deg"] is None and obj["h_acc_m"] is None
    json.dumps(obj, allow_nan=False)
    assert record_json(Signal(5, "SPEED.SPEED", 12.5)) == {
        "schema": "vehicle.signals", "timestamp_ns": 5, "name": "SPEED.SPEED", "value": 12.5,
    }
    assert iso_utc(0) is None
    with pytest.raises(ConfigError):
        record_json(object())
