"""NMEA 0183: sentence framing and checksum (sans-IO), and ``gnss.fix`` records from sentences.

Framing is done here, not by pynmea2: a sentence starts with ``$`` (or ``!``
for encapsulated sentences such as AIS), carries printable ASCII only, ends
with ``*HH`` (the XOR of every character between the start mark and ``*``) and
CR/LF. The standard caps a sentence at 82 characters; real receivers exceed it
(u-blox ``$PUBX,03`` reaches 400+), so the bound is tolerant
(:data:`MAX_SENTENCE`) and only stops runaway text without a line end.

Resynchronisation: a new ``$``/``!`` before the line end means the sentence
was cut (``truncated``) and parsing restarts at the new mark; a non-printable
byte ends the attempt the same way; a wrong or missing checksum counts as
``bad_checksum``; bytes outside sentences count as ``skipped_bytes`` (line
ends between sentences are not counted).

:class:`GnssFixBuilder` parses the fields of GGA, RMC, VTG, GSA, GST and HDT
(any talker id) with pynmea2 and merges the sentences of one epoch (one UTC
time of fix) into one :class:`wire.schemas.GnssFix`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pynmea2

from firmware_bridges.parser import DEFAULT_MAX_BUFFER, NEED_DATA, BufferedInput, NeedData, ParserStats
from wire.schemas import FixQuality, GnssFix

log = logging.getLogger(__name__)

#: Longest accepted sentence, start mark to checksum, without CR/LF.
MAX_SENTENCE = 1024

#: Outcome of :func:`take_sentence` (shared with :mod:`firmware_bridges.gnss_demux`).
Take = Literal["frame", "need_data", "bad_checksum", "truncated", "garbage", "unsupported"]

_START = re.compile(rb"[$!]")
# The first byte that ends a sentence body: CR, LF, a new start mark, or anything unprintable.
_STOP = re.compile(rb"[^\x20-\x7e]|[$!]")
_HEX = {f"{i:02X}".encode(): i for i in range(256)} | {f"{i:02x}".encode(): i for i in range(256)}
_CR, _LF, _STAR, _COMMA = 13, 10, 42, 44

KNOT_MPS = 1852.0 / 3600.0
NAN = float("nan")


@dataclass(frozen=True, slots=True)
class NmeaSentence:
    """One framed sentence with a good checksum. ``raw`` is the text without CR/LF.

    ``talker`` is the two-letter talker id (``GP``, ``GN``, ``GL``, ``GA``,
    ``GB``, ``BD``...) or ``P`` for proprietary sentences, whose
    ``sentence_type`` is then the rest of the address (``UBX``, ``GRME``...).
    """

    talker: str
    sentence_type: str
    raw: str

    def __post_init__(self) -> None:
        if not self.raw or self.raw[0] not in "$!":
            raise ValueError(f"an NMEA sentence starts with '$' or '!', not {self.raw[:1]!r}")

    @property
    def fields(self) -> list[str]:
        """The comma-separated fields after the address, without the checksum."""
        body = self.raw[1:]
        star = body.rfind("*")
        if star >= 0 and star == len(body) - 3:
            body = body[:star]
        return body.split(",")[1:]


def checksum(body: bytes) -> int:
    """XOR of every byte of ``body`` (the text between the start mark and ``*``)."""
    c = 0
    for b in body:
        c ^= b
    return c


def encode_sentence(body: str, start: str = "$") -> bytes:
    """``body`` (for example ``"GPGGA,..."``) framed as a sentence with checksum and CR/LF."""
    if start not in ("$", "!"):
        raise ValueError(f"an NMEA sentence starts with '$' or '!', not {start!r}")
    raw = body.encode("ascii")
    if _STOP.search(raw) or b"*" in raw:
        raise ValueError(f"NMEA body must be printable ASCII without '$', '!' or '*': {body!r}")
    return b"%s%s*%02X\r\n" % (start.encode(), raw, checksum(raw))


def take_sentence(buf: bytes | bytearray, start: int, max_len: int = MAX_SENTENCE,
                  require_checksum: bool = True) -> tuple[Take, int, NmeaSentence | None]:
    """Try to frame one sentence whose start mark is ``buf[start]``.

    Returns ``(outcome, resume, sentence)``: on ``"frame"`` the sentence and
    the index after its line end; on ``"need_data"`` ``resume == start`` (wait
    for more bytes); otherwise the index where scanning must resume. Decisions
    depend only on the bytes up to the one that ended the attempt, so the
    outcome is the same however the input was chunked.
    """
    n = len(buf)
    limit = start + 1 + max_len
    m = _STOP.search(buf, start + 1, min(n, limit))
    if m is None:
        if n >= limit:
            return "truncated", start + 1, None
        return "need_data", start, None
    e = m.start()
    c = buf[e]
    if c != _CR and c != _LF:
        # A new start mark or a binary byte cut the sentence. Only a body that got past its
        # address (a comma) is counted as a cut sentence; anything shorter is stray text.
        return ("truncated" if buf.find(b",", start + 1, e) >= 0 else "garbage"), e, None
    body = bytes(buf[start + 1 : e])
    if len(body) >= 3 and body[-3] == _STAR:
        want = _HEX.get(body[-2:])
        if want is None or checksum(body[:-3]) != want:
            return "bad_checksum", e + 1, None
        text = body[:-3]
    elif require_checksum or not body:
        return "bad_checksum", e + 1, None
    else:
        text = body
    comma = text.find(b",")
    addr = text if comma < 0 else text[:comma]
    if len(addr) < 2 or not addr.isalnum():
        return "unsupported", e + 1, None
    a = addr.decode("ascii")
    if a[0] == "P":
        talker, kind = "P", a[1:]
    else:
        talker, kind = a[:2], a[2:]
    raw = chr(buf[start]) + body.decode("ascii")
    return "frame", e + 1, NmeaSentence(talker, kind, raw)


def count_gap(stats: ParserStats, buf: bytes | bytearray, start: int, stop: int) -> None:
    """Count the bytes ``buf[start:stop]`` as skipped, except line ends between frames."""
    if stop > start:
        stats.skipped_bytes += (stop - start) - buf.count(b"\r", start, stop) - buf.count(
            b"\n", start, stop)


class NmeaParser(BufferedInput):
    """Sans-IO NMEA 0183 framer: ``feed(bytes)``, then ``next_event()`` -> NmeaSentence | NEED_DATA.

    ``max_buffer`` bounds the bytes held between calls: a caller that feeds
    more without draining loses the oldest bytes (counted in
    ``buffer_overflows`` and ``skipped_bytes``). ``require_checksum=False``
    accepts old devices that send sentences without ``*HH``. ``feed_eof()``
    marks the end of the input (a file, a closed port); feeding again
    resumes streaming.
    """

    protocol = "NMEA"

    def __init__(self, *, max_sentence: int = MAX_SENTENCE, require_checksum: bool = True,
                 max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        if max_sentence < 8:
            raise ValueError(f"max_sentence must be at least 8, got {max_sentence}")
        if max_buffer < max_sentence + 2:
            raise ValueError(f"max_buffer ({max_buffer}) must hold one sentence ({max_sentence + 2})")
        self.stats = ParserStats()
        self._max_sentence = max_sentence
        self._require_checksum = require_checksum
        self._init_buffer(max_buffer)

    def next_event(self) -> NmeaSentence | NeedData:
        buf, stats = self._buf, self.stats
        pos = self._pos
        while True:
            m = _START.search(buf, pos)
            if m is None:
                count_gap(stats, buf, pos, len(buf))
                self._pos = len(buf)
                return NEED_DATA
            s = m.start()
            count_gap(stats, buf, pos, s)
            outcome, pos, sentence = take_sentence(buf, s, self._max_sentence,
                                                   self._require_checksum)
            if sentence is not None:
                stats.frames += 1
                self._pos = pos
                return sentence
            if outcome == "need_data":
                if not self._eof:
                    self._pos = s
                    return NEED_DATA
                stats.truncated += 1  # the input ended inside this sentence
                pos = len(buf)
                continue
            _count_failure(stats, outcome, buf, s, pos)

    def feed_eof(self) -> None:
        """The input ended: ``next_event()`` counts a partial sentence as truncated."""
        self._eof = True


def _count_failure(stats: ParserStats, outcome: Take, buf: bytes | bytearray, s: int,
                   resume: int) -> None:
    if outcome == "bad_checksum":
        stats.bad_checksum += 1
    elif outcome == "truncated":
        stats.truncated += 1
    elif outcome == "unsupported":
        stats.unsupported += 1
    else:  # garbage: a stray start mark and the text after it
        count_gap(stats, buf, s, resume)


# gnss.fix from sentences ----------------------------------------------------------------

#: Sentence types that contribute to a fix; every other type is ignored.
FIX_SENTENCES = frozenset({"GGA", "RMC", "VTG", "GSA", "GST", "HDT"})
_TIMED = frozenset({"GGA", "RMC", "GST"})
_POSITION = frozenset({"GGA", "RMC"})
# RMC/VTG/GNS mode indicator -> fix quality (NMEA 2.3+).
_MODE_QUALITY = {"A": FixQuality.GPS, "D": FixQuality.DGPS, "P": FixQuality.PPS,
                 "R": FixQuality.RTK_FIXED, "F": FixQuality.RTK_FLOAT,
                 "E": FixQuality.DEAD_RECKONING, "M": FixQuality.MANUAL,
                 "S": FixQuality.SIMULATION, "N": FixQuality.NONE}
_DAY_NS = 86_400 * 10**9
_EPOCH_DATE = dt.date(1970, 1, 1)


def _num(v: Any) -> float:
    """A pynmea2 field as float; NaN when empty or not a number."""
    if v is None or v == "":
        return NAN
    try:
        f = float(v)
    except (TypeError, ValueError):
        return NAN
    return f if math.isfinite(f) else NAN


def _tod_ns(t: Any) -> int | None:
    """Nanoseconds since midnight from pynmea2's ``datetime.time``; None if absent/invalid."""
    if not isinstance(t, dt.time):
        return None
    return (((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond) * 1000


@dataclass(slots=True)
class _Epoch:
    """The sentences of one fix being merged (mutable while open)."""

    opened_ns: int
    tod_ns: int | None = None
    date: dt.date | None = None
    lat: float = NAN
    lon: float = NAN
    rmc_lat: float = NAN
    rmc_lon: float = NAN
    alt_m: float = NAN
    gga_quality: int | None = None
    rmc_quality: int | None = None
    gga_sats: int | None = None
    gsa_sats: int = 0
    gga_hdop: float = NAN
    gsa_hdop: float = NAN
    rmc_speed: float = NAN
    vtg_speed: float = NAN
    rmc_course: float = NAN
    vtg_course: float = NAN
    heading: float = NAN
    h_acc_m: float = NAN
    v_acc_m: float = NAN
    counts: dict[str, int] = field(default_factory=dict)
    last: tuple[str, int] | None = None


@dataclass(slots=True)
class FixBuilderStats:
    """What a :class:`GnssFixBuilder` did with the sentences it was given."""

    sentences: int = 0
    ignored: int = 0
    field_errors: int = 0
    fixes: int = 0
    epochs_without_position: int = 0
    late: int = 0


class GnssFixBuilder:
    """Merges NMEA sentences into one :class:`GnssFix` per epoch (UTC time of fix).

    ``add(sentence)`` returns the fixes completed by that sentence (usually
    none or one); ``flush()`` returns the open epoch at the end of input.

    How an epoch closes:

    1. GGA, RMC and GST carry the UTC time of fix. One whose time differs
       from the open epoch's closes that epoch and opens the next. VTG, GSA
       and HDT carry no time and join the open epoch.
    2. Learned cycle end, for low latency: when an epoch is closed by rule 1,
       its last contributing sentence (type and how many of that type it
       held, e.g. the 4th GSA) is remembered as the receiver's cycle end. An
       epoch that reaches that sentence is emitted at once, without waiting
       for the next epoch. A sentence with an emitted epoch's time arriving
       afterwards is dropped (``stats.late``); it also proves a learned cycle
       end wrong, so that is learned again.
    3. A GGA or RMC without a time of fix (a receiver that has none yet)
       closes an untimed epoch that already holds one of its type.
    4. ``flush()`` closes the open epoch.

    Only epochs with a GGA or RMC become fixes. Position, altitude (above
    mean sea level), quality, satellites and HDOP come from GGA (RMC and GSA
    fill what GGA lacks); speed and course from RMC, else VTG (course falls
    back to HDT heading); ``h_acc_m``/``v_acc_m`` from GST (hypot of the
    latitude and longitude standard deviations; altitude deviation).
    ``time_utc_ns`` joins the time of fix with the RMC date of the epoch,
    else the last date seen (rolled over at midnight), else it is 0.
    ``timestamp_ns`` is ``clock_ns()`` when the epoch's first sentence arrived.
    """

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.stats = FixBuilderStats()
        self._clock_ns = clock_ns
        self._epoch: _Epoch | None = None
        self._cycle_end: tuple[str, int] | None = None
        self._emitted_tod: int | None = None
        self._last_date: dt.date | None = None
        self._last_tod: int | None = None

    def add(self, sentence: NmeaSentence) -> list[GnssFix]:
        self.stats.sentences += 1
        kind = sentence.sentence_type
        if kind not in FIX_SENTENCES or sentence.talker == "P":
            self.stats.ignored += 1
            return []
        try:
            msg = pynmea2.parse(sentence.raw)
        except Exception as exc:  # pynmea2 raises several unrelated types on odd content
            self.stats.field_errors += 1
            log.debug("pynmea2 could not parse %r: %s", sentence.raw, exc)
            return []
        tod = _tod_ns(getattr(msg, "timestamp", None)) if kind in _TIMED else None
        out: list[GnssFix] = []
        ep = self._epoch
        if tod is not None:
            if tod == self._emitted_tod:
                self.stats.late += 1
                self._cycle_end = None
                return out
            if ep is not None and ep.tod_ns is not None and ep.tod_ns != tod:
                self._cycle_end = ep.last
                out.extend(self._close())
                ep = None
        elif kind in _POSITION and ep is not None and ep.tod_ns is None and kind in ep.counts:
            out.extend(self._close())  # a receiver without time repeats its cycle
            ep = None
        if ep is None:
            ep = self._epoch = _Epoch(opened_ns=self._clock_ns())
        if tod is not None:
            ep.tod_ns = tod
        try:
            _MERGE[kind](ep, msg)
        except Exception as exc:  # a field pynmea2 returned in an unexpected shape
            self.stats.field_errors += 1
            log.debug("bad fields in %r: %s", sentence.raw, exc)
        n = ep.counts.get(kind, 0) + 1
        ep.counts[kind] = n
        ep.last = (kind, n)
        if ep.last == self._cycle_end:
            out.extend(self._close())
        return out

    @property
    def pending(self) -> bool:
        """True while an epoch is open: sentences were added whose fix is not emitted yet."""
        return self._epoch is not None

    def flush(self) -> list[GnssFix]:
        """Close the open epoch (end of input) and return its fix, if it makes one."""
        return self._close()

    def _close(self) -> list[GnssFix]:
        ep = self._epoch
        self._epoch = None
        if ep is None:
            return []
        self._emitted_tod = ep.tod_ns
        if not (ep.counts.keys() & _POSITION):
            self.stats.epochs_without_position += 1
            return []
        fix = self._fix(ep)
        self.stats.fixes += 1
        return [fix]

    def _utc_ns(self, ep: _Epoch) -> int:
        tod = ep.tod_ns
        if tod is None:
            return 0
        date = ep.date
        if date is None and self._last_date is not None:
            date = self._last_date
            if self._last_tod is not None and tod < self._last_tod - _DAY_NS // 2:
                date = date + dt.timedelta(days=1)  # midnight passed since the last dated epoch
        if date is None:
            return 0
        self._last_date, self._last_tod = date, tod
        return (date - _EPOCH_DATE).days * _DAY_NS + tod

    def _fix(self, ep: _Epoch) -> GnssFix:
        lat, lon = ep.lat, ep.lon
        if math.isnan(lat) or math.isnan(lon):
            lat, lon = ep.rmc_lat, ep.rmc_lon
        if ep.gga_quality is not None:
            quality = ep.gga_quality
        elif ep.rmc_quality is not None:
            quality = ep.rmc_quality
        else:
            quality = FixQuality.NONE
        sats = ep.gga_sats if ep.gga_sats is not None else ep.gsa_sats
        hdop = ep.gga_hdop if not math.isnan(ep.gga_hdop) else ep.gsa_hdop
        speed = ep.rmc_speed if not math.isnan(ep.rmc_speed) else ep.vtg_speed
        course = ep.rmc_course
        if math.isnan(course):
            course = ep.vtg_course if not math.isnan(ep.vtg_course) else ep.heading
        return GnssFix(
            timestamp_ns=ep.opened_ns, time_utc_ns=self._utc_ns(ep), lat=lat, lon=lon,
            alt_m=ep.alt_m, speed_mps=speed, course_deg=course, fix_quality=int(quality),
            satellites=min(max(sats, 0), 255), hdop=hdop, h_acc_m=ep.h_acc_m, v_acc_m=ep.v_acc_m,
        )


def _position(msg: Any) -> tuple[float, float]:
    """Signed degrees from a pynmea2 sentence with lat/lon fields; NaN when empty."""
    if not msg.lat or not msg.lon or msg.lat_dir not in ("N", "S") or msg.lon_dir not in ("E", "W"):
        return NAN, NAN
    lat, lon = float(msg.latitude), float(msg.longitude)
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return NAN, NAN
    return lat, lon


def _merge_gga(ep: _Epoch, msg: Any) -> None:
    ep.lat, ep.lon = _position(msg)
    q = msg.gps_qual
    ep.gga_quality = q if isinstance(q, int) and 0 <= q <= max(FixQuality) else FixQuality.NONE
    sats = _num(msg.num_sats)
    ep.gga_sats = int(sats) if not math.isnan(sats) else None
    ep.gga_hdop = _num(msg.horizontal_dil)
    ep.alt_m = _num(msg.altitude)


def _merge_rmc(ep: _Epoch, msg: Any) -> None:
    ep.rmc_lat, ep.rmc_lon = _position(msg)
    if msg.status == "A":
        ep.rmc_quality = _MODE_QUALITY.get(getattr(msg, "mode_indicator", "") or "A",
                                           FixQuality.GPS)
    else:
        ep.rmc_quality = FixQuality.NONE
    ep.rmc_speed = _num(msg.spd_over_grnd) * KNOT_MPS
    ep.rmc_course = _num(msg.true_course)
    date = msg.datestamp
    if isinstance(date, dt.date):
        ep.date = date


def _merge_vtg(ep: _Epoch, msg: Any) -> None:
    kmph = _num(msg.spd_over_grnd_kmph)
    ep.vtg_speed = kmph / 3.6 if not math.isnan(kmph) else _num(msg.spd_over_grnd_kts) * KNOT_MPS
    ep.vtg_course = _num(msg.true_track)


def _merge_gsa(ep: _Epoch, msg: Any) -> None:
    ep.gsa_sats += sum(1 for i in range(1, 13) if getattr(msg, f"sv_id{i:02d}", ""))
    if math.isnan(ep.gsa_hdop):
        ep.gsa_hdop = _num(msg.hdop)


def _merge_gst(ep: _Epoch, msg: Any) -> None:
    ep.h_acc_m = math.hypot(_num(msg.std_dev_latitude), _num(msg.std_dev_longitude))
    ep.v_acc_m = _num(msg.std_dev_altitude)


def _merge_hdt(ep: _Epoch, msg: Any) -> None:
    ep.heading = _num(msg.heading)


_MERGE: dict[str, Callable[[_Epoch, Any], None]] = {
    "GGA": _merge_gga, "RMC": _merge_rmc, "VTG": _merge_vtg, "GSA": _merge_gsa,
    "GST": _merge_gst, "HDT": _merge_hdt,
}
