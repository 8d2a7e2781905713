"""The real captures the agent tests replay, and a GNSS log made from the same drive.

The RAV4 CAN log has no NMEA capture of its own, but comma recorded the drive's u-blox fixes
(``comma2k19_seg40_gnss_ublox.csv``, 10 Hz). :func:`nmea_from_gnss_csv` writes them as the
NMEA 0183 a receiver would have sent (GGA + RMC per fix, with the recorded UTC time), so the
agent's GNSS replay and live state run on the same drive as its CAN replay.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

from firmware_bridges.nmea import encode_sentence

CAN_LOG = "can/toyota_rav4_comma2k19_seg40.log.gz"
CAN_DBC = "can/toyota_new_mc_pt_generated.dbc"
RADAR_DBC = "can/toyota_adas.dbc"
GNSS_CSV = "can/comma2k19_seg40_gnss_ublox.csv"
VIDEO = "video/vtest.avi"
#: Frames in the RAV4 log.
CAN_FRAMES_IN_LOG = 135_468


def _dm(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    v = abs(value)
    deg = int(v)
    minutes = (v - deg) * 60
    return (f"{deg:02d}{minutes:08.5f}" if lat else f"{deg:03d}{minutes:08.5f}"), hemi


def nmea_from_gnss_csv(csv_path: Path, out: Path) -> int:
    """Write the CSV's fixes as GPGGA + GPRMC sentences; returns the number of fixes."""
    n = 0
    with csv_path.open() as f, out.open("wb") as w:
        for row in csv.DictReader(f):
            t = dt.datetime.fromtimestamp(float(row["utc_timestamp_s"]) / 1000, dt.UTC)
            hms = f"{t:%H%M%S}.{t.microsecond // 10000:02d}"
            lat, ns = _dm(float(row["lat_deg"]), True)
            lon, ew = _dm(float(row["lon_deg"]), False)
            knots = float(row["speed_mps"]) / 0.514444
            course = float(row["bearing_deg"]) % 360
            alt = float(row["alt_m"])
            w.write(encode_sentence(f"GPGGA,{hms},{lat},{ns},{lon},{ew},1,09,0.9,{alt:.1f},M,-25.0,M,,"))
            w.write(encode_sentence(
                f"GPRMC,{hms},A,{lat},{ns},{lon},{ew},{knots:.3f},{course:.2f},{t:%d%m%y},,,A"))
            n += 1
    return n
