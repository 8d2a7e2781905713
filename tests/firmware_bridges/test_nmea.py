"""NMEA 0183 framing and gnss.fix building, on the real receiver captures in ../shared/data/gnss."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pynmea2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.firmware_bridges.mutation import mutate, mutations

from firmware_bridges.nmea import (
    GnssFixBuilder,
    NmeaParser,
    NmeaSentence,
    checksum,
    encode_sentence,
    take_sentence,
)
from firmware_bridges.parser import NEED_DATA, events, parse_all
from wire.schemas import GNSS_FIX, FixQuality, GnssFix

# name -> sentences in the capture (SOURCES.md, counted by pyubx2 and pynmea2)
NMEA_LOGS = {
    "gpsd/bu353s4.log": 90,
    "gpsd/sirfstarv-nmea.log": 367,
    "gpsd/ublox-f9p-hpnmea.log": 139,
    "gpsd/ublox-zed-f9p-nmea.log": 1015,
    "gpsd/ublox-neo-m9n-nmea.log": 1403,
    "pynmeagps/pygpsdata-nmea4.log": 57,
    "pynmeagps/pygpsdata-nmeastartup.log": 12,
}
GPSD_CHECKED = ["bu353s4", "ublox-f9p-hpnmea"]
# gpsd TPV "status" -> the fix quality cvis reports (gpsd omits status for a plain GPS fix)
GPSD_STATUS = {None: FixQuality.GPS, 1: FixQuality.GPS, 2: FixQuality.DGPS,
               3: FixQuality.RTK_FIXED, 4: FixQuality.RTK_FLOAT, 5: FixQuality.DEAD_RECKONING}


def strip_comments(data: bytes) -> bytes:
    """Drop the leading ``#`` comment lines of a gpsd capture, as gpsfake does."""
    while data.startswith(b"#"):
        nl = data.find(b"\n")
        data = data[nl + 1 :] if nl >= 0 else b""
    return data


def load(shared_data: Path, name: str) -> bytes:
    return strip_comments((shared_data / "gnss" / name).read_bytes())


def parse_chunked(data: bytes, sizes: list[int] | None, **kw: Any) -> tuple[list[Any], dict]:
    """Feed ``data`` in the given chunk sizes (cycled; None = whole), then EOF."""
    p = NmeaParser(max_buffer=max(len(data) + 1, 2048), **kw)
    out: list[Any] = []
    i = 0
    k = 0
    while i < len(data):
        n = len(data) if sizes is None else sizes[k % len(sizes)]
        p.feed(data[i : i + n])
        out.extend(events(p))
        assert p.buffered <= len(data)
        i += n
        k += 1
    p.feed_eof()
    out.extend(events(p))
    return out, p.stats.as_dict()


def build_fixes(sentences: list[NmeaSentence]) -> tuple[list[GnssFix], GnssFixBuilder]:
    b = GnssFixBuilder(clock_ns=lambda: 1)
    fixes = [f for s in sentences for f in b.add(s)]
    fixes += b.flush()
    return fixes, b


def iso_ms(ns: int) -> str:
    """UTC ns -> gpsd's time format (ISO 8601, milliseconds, rounded)."""
    ms = (ns + 500_000) // 1_000_000
    t = dt.datetime.fromtimestamp(ms // 1000, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def gpsd_tpvs(path: Path) -> dict[str, list[dict[str, Any]]]:
    """gpsd's TPV reports that carry a time, grouped by that time."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            j = json.loads(line)
            if j["class"] == "TPV" and "time" in j and "lat" in j:
                out[j["time"]].append(j)
    return out


# Framing on real captures ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NMEA_LOGS))
def test_real_capture_whole_bytewise_and_random_chunks_agree(shared_data: Path, name: str) -> None:
    data = load(shared_data, name)
    whole, whole_stats = parse_chunked(data, None)
    bytewise, byte_stats = parse_chunked(data, [1])
    rng = random.Random(name)
    chunked, chunk_stats = parse_chunked(data, [rng.randint(1, 300) for _ in range(64)])
    assert len(whole) == NMEA_LOGS[name]
    assert whole == bytewise == chunked
    assert whole_stats == byte_stats == chunk_stats
    assert whole_stats["bad_checksum"] == whole_stats["truncated"] == 0


@pytest.mark.parametrize("name", sorted(NMEA_LOGS))
def test_every_framed_sentence_is_accepted_by_pynmea2_with_its_checksum(
        shared_data: Path, name: str) -> None:
    sentences, _ = parse_chunked(load(shared_data, name), None)
    talkers = set()
    known = 0
    for s in sentences:
        assert isinstance(s, NmeaSentence)
        body, star = s.raw[1:].rsplit("*", 1)
        assert pynmea2.NMEASentence.checksum(body) == int(star, 16)
        talkers.add(s.talker)
        try:
            msg = pynmea2.parse(s.raw, check=True)
        except pynmea2.SentenceTypeError:
            continue  # a sentence type pynmea2 does not know (GRS, RLM...)
        known += 1
        if s.talker != "P":
            assert msg.talker == s.talker and msg.sentence_type == s.sentence_type
    assert known >= 0.8 * len(sentences)
    if name.endswith("ublox-zed-f9p-nmea.log"):
        assert {"GN", "GP", "GL", "GA", "GB"} <= talkers


def test_comment_header_is_counted_as_skipped_not_as_frames(shared_data: Path) -> None:
    raw = (shared_data / "gnss/gpsd/bu353s4.log").read_bytes()
    header = raw[: len(raw) - len(strip_comments(raw))]
    sentences, stats = parse_chunked(raw, [7])
    assert len(sentences) == 90
    assert stats["skipped_bytes"] == len(header) - header.count(b"\n")


def test_bad_checksum_fixture_counts_the_bad_and_parses_the_good(shared_data: Path) -> None:
    # pynmeagps fixture: three GNRMC lines, the 1st and 3rd with a wrong checksum (7A, not 7B)
    sentences, stats = parse_chunked(load(shared_data, "pynmeagps/pygpsdata-nmeabadck.log"), [5])
    assert [s.sentence_type for s in sentences] == ["RMC"]
    assert "10214.42462" in sentences[0].raw
    assert stats["bad_checksum"] == 2 and stats["frames"] == 1


def test_mixed_nmea_and_ubx_port_gives_only_the_sentences(shared_data: Path) -> None:
    data = load(shared_data, "pyubx2/pygpsdata-MIXED.log")
    sentences, stats = parse_chunked(data, [1])
    assert len(sentences) == 8 and all(s.sentence_type == "TXT" for s in sentences)
    assert stats["skipped_bytes"] > 30000  # the UBX frames are garbage to an NMEA framer


# Framing edge cases -------------------------------------------------------------------------

GGA = encode_sentence("GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,0000")
RMC = encode_sentence("GPRMC,030719.000,A,3747.0873,S,17518.8938,E,0.69,181.39,311214,,,A")


def test_encode_sentence_matches_the_real_checksum() -> None:
    assert GGA == b"$GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,0000*7D\r\n"
    assert checksum(b"GPGSA,A,3,17,28,06,01,30,20,26,13,,,,,1.8,1.1,1.5") == 0x33
    with pytest.raises(ValueError, match="printable"):
        encode_sentence("GPGGA,\x00")
    with pytest.raises(ValueError, match="starts with"):
        encode_sentence("GPGGA", start="#")


def test_cut_sentence_is_truncated_and_the_next_one_parses() -> None:
    data = GGA[:30] + RMC + b"\x00\xff\xfe" + GGA
    out, stats = parse_chunked(data, [1])
    assert [s.sentence_type for s in out] == ["RMC", "GGA"]
    assert stats["truncated"] == 1 and stats["skipped_bytes"] == 3


def test_sentence_cut_by_binary_bytes_is_truncated_and_stray_dollar_is_garbage() -> None:
    data = GGA[:40] + b"\xb5\x62" + b"x$\x01" + RMC
    out, stats = parse_chunked(data, None)
    assert [s.sentence_type for s in out] == ["RMC"]
    assert stats["truncated"] == 1
    assert stats["skipped_bytes"] == 2 + 3  # the two binary bytes, then "x$\x01"


def test_lowercase_checksum_lf_only_and_cr_only_line_ends_are_accepted() -> None:
    body = b"GPHDT,123.4,T"
    star = b"*%02x" % checksum(body)
    data = b"$" + body + star + b"\n" + b"$" + body + star + b"\r" + GGA
    out, stats = parse_chunked(data, [3])
    assert [s.sentence_type for s in out] == ["HDT", "HDT", "GGA"]
    assert stats["skipped_bytes"] == 0


def test_missing_checksum_is_rejected_unless_allowed() -> None:
    data = b"$GPHDT,123.4,T\r\n" + GGA
    strict, stats = parse_chunked(data, None)
    assert [s.sentence_type for s in strict] == ["GGA"] and stats["bad_checksum"] == 1
    lenient, stats = parse_chunked(data, None, require_checksum=False)
    assert [s.sentence_type for s in lenient] == ["HDT", "GGA"] and stats["bad_checksum"] == 0


def test_proprietary_and_encapsulated_sentences_keep_their_address() -> None:
    pubx = encode_sentence("PUBX,00,103607.00,5327.03942,N")
    ais = encode_sentence("AIVDM,1,1,,A,13aEOK?P00PD2wVMdLDRhgvL289?,0", start="!")
    out, _ = parse_chunked(pubx + ais, [2])
    assert [(s.talker, s.sentence_type) for s in out] == [("P", "UBX"), ("AI", "VDM")]
    assert out[1].raw.startswith("!AIVDM") and out[0].fields[:2] == ["00", "103607.00"]


def test_overlong_sentence_is_truncated_and_the_buffer_stays_bounded() -> None:
    p = NmeaParser(max_sentence=100, max_buffer=4096)
    p.feed(b"$GPTXT," + b"A" * 150)
    assert p.next_event() is NEED_DATA
    assert p.stats.truncated == 1 and p.buffered == 0
    p.feed(b"A" * 5000 + GGA)  # endless text without a line end, then a sentence
    out = list(events(p))
    assert [s.sentence_type for s in out] == ["GGA"]
    assert p.stats.buffer_overflows == 1 and p.buffered == 0


def test_feeding_without_draining_drops_oldest_bytes_and_counts_it() -> None:
    p = NmeaParser(max_buffer=2048)
    for _ in range(40):
        p.feed(GGA)
        assert p.buffered <= 2048
    out = list(events(p))
    assert p.stats.buffer_overflows > 0
    assert 2048 // len(GGA) - 1 <= len(out) <= 2048 // len(GGA)


def test_partial_sentence_at_end_of_input_counts_as_truncated() -> None:
    p = NmeaParser()
    p.feed(GGA + RMC[:20])
    assert [s.sentence_type for s in events(p)] == ["GGA"]
    p.feed_eof()
    assert p.next_event() is NEED_DATA
    assert p.stats.truncated == 1 and p.buffered == 0


def test_take_sentence_reports_need_data_until_the_line_end() -> None:
    assert take_sentence(GGA[:-2], 0)[0] == "need_data"
    outcome, end, sentence = take_sentence(GGA, 0)
    assert outcome == "frame" and end == len(GGA) - 1 and sentence is not None


def test_bad_address_is_counted_unsupported() -> None:
    out, stats = parse_chunked(encode_sentence("G-,1") + GGA, None)
    assert len(out) == 1 and stats["unsupported"] == 1


def test_sentence_validates_its_start_mark() -> None:
    with pytest.raises(ValueError):
        NmeaSentence("GP", "GGA", "GPGGA,1")


# Fixes against gpsd -------------------------------------------------------------------------


@pytest.mark.parametrize("name", GPSD_CHECKED)
def test_fixes_agree_with_gpsd_positions_times_and_status(shared_data: Path, name: str) -> None:
    sentences, _ = parse_chunked(load(shared_data, f"gpsd/{name}.log"), None)
    fixes, builder = build_fixes(sentences)
    tpvs = gpsd_tpvs(shared_data / f"gnss/gpsd/{name}.log.chk")
    ours = {iso_ms(f.time_utc_ns): f for f in fixes}
    assert len(ours) == len(fixes)  # one fix per epoch
    assert set(ours) == set(tpvs)
    for when, reports in tpvs.items():
        f = ours[when]
        for j in reports:  # gpsd prints lat/lon with 9 decimals
            assert round(f.lat, 9) == pytest.approx(j["lat"], abs=1e-12), when
            assert round(f.lon, 9) == pytest.approx(j["lon"], abs=1e-12), when
            assert f.fix_quality == GPSD_STATUS[j.get("status")], when
            if "altMSL" in j:
                assert f.alt_m == pytest.approx(j["altMSL"], abs=1e-3)
            if "speed" in j:
                assert f.speed_mps == pytest.approx(j["speed"], abs=5e-4)
            if "track" in j:
                assert f.course_deg == pytest.approx(j["track"], abs=1e-3)
    assert builder.stats.field_errors == 0


def test_fix_fields_from_gga_gsa_rmc_and_gst(shared_data: Path) -> None:
    sentences, _ = parse_chunked(load(shared_data, "gpsd/ublox-zed-f9p-nmea.log"), None)
    fixes, builder = build_fixes(sentences)
    assert len(fixes) == 29  # 29 epochs (GGA/RMC/GST each 29 times)
    times = [f.time_utc_ns for f in fixes]
    assert times == sorted(times) and len(set(times)) == 29
    for f in fixes:
        assert math.isfinite(f.h_acc_m) and math.isfinite(f.v_acc_m)  # from GST
        assert 0 < f.hdop < 50 and 0 < f.satellites < 64
        assert -90 <= f.lat <= 90 and -180 <= f.lon <= 180
    GNSS_FIX.table(fixes)  # the records fit the wire schema
    assert builder.stats.late == 0


def test_learned_cycle_end_emits_each_epoch_on_its_last_sentence(shared_data: Path) -> None:
    sentences, _ = parse_chunked(load(shared_data, "gpsd/bu353s4.log"), None)
    b = GnssFixBuilder(clock_ns=lambda: 1)
    emitted_on = []
    for s in sentences:
        for f in b.add(s):
            emitted_on.append((s.sentence_type, f))
    # The first epoch closes when the second one starts; from then on the RMC that ends
    # each SiRF cycle (GGA, GSA, [GSV], RMC) emits its epoch at once.
    assert emitted_on[0][0] == "GGA"
    assert [kind for kind, _ in emitted_on[1:]] == ["RMC"] * 24
    assert b.flush() == [] and b.stats.fixes == 25


def _add_all(b: GnssFixBuilder, *bodies: str) -> list[GnssFix]:
    out = []
    for body in bodies:
        raw = encode_sentence(body).decode().strip()
        addr = body.split(",")[0]
        out += b.add(NmeaSentence(addr[:2], addr[2:], raw))
    return out


def test_epoch_closes_on_new_time_and_flush() -> None:
    b = GnssFixBuilder(clock_ns=iter(range(100, 200)).__next__)
    out = _add_all(
        b,
        "GNRMC,235959.50,A,4807.038,N,01131.000,E,22.4,84.4,311224,,,D",
        "GNVTG,84.4,T,,M,22.4,N,41.5,K,D",
        "GNGGA,235959.50,4807.038,N,01131.000,E,4,12,0.9,545.4,M,46.9,M,,",
        "GNGSA,A,3,04,05,09,12,,,,,,,,,1.5,0.9,1.2",
        "GNGST,235959.50,1.0,,,,0.3,0.4,0.8",
        "BDHDT,90.0,T",
    )
    assert out == []
    out = _add_all(b, "GPGGA,000000.00,4807.039,N,01131.001,E,5,07,1.1,545.0,M,46.9,M,,")
    assert len(out) == 1
    f = out[0]
    assert f.timestamp_ns == 100
    assert f.time_utc_ns == int(dt.datetime(2024, 12, 31, 23, 59, 59, 500000,
                                            tzinfo=dt.UTC).timestamp() * 1e9)
    assert f.lat == pytest.approx(48 + 7.038 / 60) and f.lon == pytest.approx(11 + 31.0 / 60)
    assert f.fix_quality == FixQuality.RTK_FIXED and f.satellites == 12 and f.hdop == 0.9
    assert f.speed_mps == pytest.approx(22.4 * 1852 / 3600)
    assert f.course_deg == pytest.approx(84.4) and f.alt_m == pytest.approx(545.4)
    assert f.h_acc_m == pytest.approx(0.5) and f.v_acc_m == pytest.approx(0.8)
    # The next epoch (GGA only, after midnight) takes the last RMC date plus one day.
    (g,) = b.flush()
    assert iso_ms(g.time_utc_ns) == "2025-01-01T00:00:00.000Z"
    assert g.fix_quality == FixQuality.RTK_FLOAT and g.timestamp_ns == 101
    assert math.isnan(g.speed_mps) and math.isnan(g.course_deg) and math.isnan(g.h_acc_m)


def test_vtg_and_hdt_fill_what_rmc_lacks_and_gsa_counts_satellites() -> None:
    b = GnssFixBuilder(clock_ns=lambda: 5)
    _add_all(
        b,
        "GLGGA,101010.0,5000.0,S,00100.0,W,1,,,12.0,M,,M,,",
        "GLGSA,A,3,65,66,67,,,,,,,,,,2.0,1.2,1.6",
        "GAGSA,A,3,01,02,,,,,,,,,,,2.0,1.3,1.6",
        "GPVTG,,T,,M,10.0,N,36.0,K,A",
        "GPHDT,271.5,T",
    )
    (f,) = b.flush()
    assert f.time_utc_ns == 0  # no date ever seen
    assert f.lat == -50.0 and f.lon == pytest.approx(-(1 + 0 / 60))
    assert f.satellites == 5 and f.hdop == 1.2  # GSA fills what GGA left empty
    assert f.speed_mps == pytest.approx(10.0) and f.course_deg == 271.5


def test_no_fix_epochs_have_nan_position_and_sentences_without_position_make_no_fix() -> None:
    b = GnssFixBuilder(clock_ns=lambda: 5)
    out = _add_all(
        b,
        "GPRMC,120000.00,V,,,,,,,010125,,,N",
        "GPGGA,120000.00,,,,,0,00,99.99,,,,,,",
        "GPGST,120001.00,1.0,,,,0.3,0.4,0.8",  # a new time: closes 12:00:00
    )
    assert len(out) == 1
    f = out[0]
    assert math.isnan(f.lat) and math.isnan(f.lon) and f.fix_quality == FixQuality.NONE
    assert iso_ms(f.time_utc_ns) == "2025-01-01T12:00:00.000Z"
    assert b.flush() == [] and b.stats.epochs_without_position == 1


def test_receiver_without_time_still_gets_one_fix_per_cycle() -> None:
    b = GnssFixBuilder(clock_ns=lambda: 5)
    out = _add_all(b, "GPGGA,,,,,,0,00,,,,,,,", "GPGSA,A,1,,,,,,,,,,,,,,,",
                   "GPGGA,,,,,,0,00,,,,,,,", "GPGSA,A,1,,,,,,,,,,,,,,,")
    assert len(out) == 1 and out[0].time_utc_ns == 0 and out[0].fix_quality == FixQuality.NONE
    assert len(b.flush()) == 1


def test_late_sentence_after_early_emit_is_dropped_and_relearned() -> None:
    b = GnssFixBuilder(clock_ns=lambda: 5)
    cycle = ["GPGGA,{t},4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
             "GPRMC,{t},A,4807.038,N,01131.000,E,0.0,0.0,010125,,,A"]
    assert _add_all(b, *(c.format(t="000001.00") for c in cycle)) == []
    # GGA at 00:00:02 closes 00:00:01 by its new time; RMC is then known to end a cycle,
    # so the RMC at 00:00:02 emits its own epoch at once.
    out = _add_all(b, *(c.format(t="000002.00") for c in cycle))
    assert [iso_ms(f.time_utc_ns)[11:] for f in out] == ["00:00:01.000Z", "00:00:02.000Z"]
    out = _add_all(b, *(c.format(t="000003.00") for c in cycle))
    assert len(out) == 1 and iso_ms(out[0].time_utc_ns).endswith("00:00:03.000Z")
    assert _add_all(b, "GPGST,000003.00,1.0,,,,0.3,0.4,0.8") == []  # arrived too late
    assert b.stats.late == 1
    assert _add_all(b, *(c.format(t="000004.00") for c in cycle)) == []  # waits again
    assert len(b.flush()) == 1


def test_garbled_fields_are_counted_not_raised() -> None:
    b = GnssFixBuilder(clock_ns=lambda: 5)
    out = _add_all(b, "GPGGA,999999,4807.038,N,01131.000,E,x,yy,zz,alt,M,,M,,",
                   "GPRMC,120000.00,A,48AB.038,N,01131.000,E,fast,,991399,,,A")
    out += b.flush()
    assert b.stats.field_errors >= 1
    for f in out:
        GNSS_FIX.table([f])


# Hostile input --------------------------------------------------------------------------------

_MUTATIONS = mutations(40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(muts=_MUTATIONS, seed=st.integers(0, 2**16))
def test_mutated_capture_recovers_on_the_next_sentence(shared_data: Path, muts: Any,
                                                      seed: int) -> None:
    data = load(shared_data, "gpsd/ublox-f9p-hpnmea.log")
    clean, _ = parse_chunked(data, None)
    bad, clean_from = mutate(data, muts)
    rng = random.Random(seed)
    p = NmeaParser(max_buffer=2048)
    out: list[NmeaSentence] = []
    i = 0
    while i < len(bad):
        n = rng.randint(1, 600)
        p.feed(bad[i : i + n])
        i += n
        out.extend(events(p))
        assert p.buffered <= 2048
    p.feed_eof()
    out.extend(events(p))
    assert p.buffered == 0
    for s in out:  # nothing accepted without a valid checksum
        body, star = s.raw[1:].rsplit("*", 1)
        assert int(star, 16) == checksum(body.encode())
    # Every sentence that starts after the damage comes out unchanged.
    tail = bad[clean_from:]
    first = tail.find(b"$")
    if first >= 0:
        expected, _ = parse_chunked(tail[first:], None)
        assert expected and out[-len(expected):] == expected
    assert len(out) <= len(clean) + 8 + len(muts)
    fixes, _ = build_fixes(out)  # duplicated or missing sentences never break the builder
    GNSS_FIX.table(fixes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 20),
                                st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                                      exclude_characters="$!*,"), max_size=12)),
                      min_size=1, max_size=30))
def test_builder_survives_any_field_content_with_a_valid_checksum(
        shared_data: Path, picks: list[tuple[int, int, str]]) -> None:
    sentences, _ = parse_chunked(load(shared_data, "gpsd/ublox-zed-f9p-nmea.log"), None)
    useful = [s for s in sentences if s.sentence_type in ("GGA", "RMC", "VTG", "GSA", "GST")]
    b = GnssFixBuilder(clock_ns=lambda: 1)
    fixes = []
    for which, field_no, text in picks:
        s = useful[which % len(useful)]
        fields = s.raw[1:].rsplit("*", 1)[0].split(",")
        fields[field_no % len(fields) or 1] = text
        raw = encode_sentence(",".join(fields)).decode().strip()
        fixes += b.add(NmeaSentence(s.talker, s.sentence_type, raw))
    fixes += b.flush()
    GNSS_FIX.table(fixes)
    for f in fixes:
        assert math.isnan(f.lat) or -90 <= f.lat <= 90
        assert 0 <= f.fix_quality <= 8 and 0 <= f.satellites <= 255


def test_random_bytes_never_raise_and_never_yield() -> None:
    rng = random.Random(3)
    blob = bytes(rng.randrange(256) for _ in range(200_000))
    events_, stats = parse_chunked(blob, [997])
    assert all(isinstance(s, NmeaSentence) for s in events_)
    assert len(events_) <= 2  # a random valid sentence is very unlikely
    assert stats["skipped_bytes"] > 150_000


def test_parse_all_helper_gives_the_same_sentences(shared_data: Path) -> None:
    data = load(shared_data, "gpsd/bu353s4.log")
    p = NmeaParser(max_buffer=8192)
    assert parse_all(p, data, 4096) == parse_chunked(data, None)[0]
