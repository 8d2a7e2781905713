"""One GNSS receiver port where NMEA, UBX and RTCM3 interleave: split it into frames (sans-IO).

A u-blox receiver (or a base station link) writes NMEA sentences, UBX frames
and RTCM3 correction frames on the same serial line. :class:`GnssDemux` finds
the earliest frame marker (``$``/``!``, ``B5 62``, ``D3``) and hands the
bytes from there to that protocol's framer (:func:`firmware_bridges.nmea.take_sentence`,
:func:`firmware_bridges.ubx.take_frame`, :func:`take_rtcm3`). RTCM3 frames
(preamble ``D3``, 6 reserved zero bits, 10-bit length, payload, CRC-24Q) are
checked and skipped: only their message type and length come out. Bytes
that belong to no frame count as ``skipped_bytes`` (line ends between NMEA
sentences excepted), and so does the body of a UBX or RTCM3 frame rejected
by its checksum, which is rescanned because its length cannot be trusted;
false markers found while rescanning it are not counted as bad frames again.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from firmware_bridges.nmea import MAX_SENTENCE, NmeaSentence, Take, count_gap, take_sentence
from firmware_bridges.parser import DEFAULT_MAX_BUFFER, NEED_DATA, BufferedInput, NeedData, ParserStats
from firmware_bridges.ubx import MAX_PAYLOAD, UbxMessage, claimed_end, take_frame

log = logging.getLogger(__name__)

RTCM3_PREAMBLE = 0xD3
RTCM3_MAX_PAYLOAD = 1023
_MARK = re.compile(rb"[$!\xd3]|\xb5b")
PROTOCOLS = ("nmea", "ubx", "rtcm3")


def _crc24q_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i << 16
        for _ in range(8):
            c <<= 1
            if c & 0x1000000:
                c ^= 0x1864CFB
        table.append(c & 0xFFFFFF)
    return tuple(table)


_CRC24Q = _crc24q_table()


def crc24q(data: bytes | bytearray) -> int:
    """CRC-24Q (Qualcomm), the checksum of RTCM3 and SBAS frames."""
    crc = 0
    table = _CRC24Q
    for b in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ table[(crc >> 16) ^ b]
    return crc


@dataclass(frozen=True, slots=True)
class Rtcm3Frame:
    """An RTCM3 frame that passed its CRC; its payload is not kept (cvis does not use corrections)."""

    msg_type: int
    length: int

    def __post_init__(self) -> None:
        if not (0 <= self.msg_type <= 4095 and 0 <= self.length <= RTCM3_MAX_PAYLOAD):
            raise ValueError(f"RTCM3 message type {self.msg_type} / length {self.length} "
                             "out of range")


def encode_rtcm3(payload: bytes) -> bytes:
    """A complete RTCM3 frame around ``payload`` (its first 12 bits are the message type)."""
    if len(payload) > RTCM3_MAX_PAYLOAD:
        raise ValueError(f"RTCM3 payload of {len(payload)} bytes exceeds {RTCM3_MAX_PAYLOAD}")
    head = bytes((RTCM3_PREAMBLE, len(payload) >> 8, len(payload) & 0xFF)) + payload
    return head + crc24q(head).to_bytes(3, "big")


def take_rtcm3(buf: bytes | bytearray, start: int) -> tuple[Take, int, Rtcm3Frame | None]:
    """Try to decode one RTCM3 frame whose preamble is ``buf[start]``."""
    n = len(buf)
    if n - start < 3:
        return "need_data", start, None
    if buf[start + 1] & 0xFC:  # reserved bits must be zero: not a frame start
        return "garbage", start + 1, None
    length = (buf[start + 1] & 0x03) << 8 | buf[start + 2]
    end = start + 6 + length
    if n < end:
        return "need_data", start, None
    if crc24q(buf[start : end - 3]) != int.from_bytes(buf[end - 3 : end], "big"):
        return "bad_checksum", start + 1, None
    msg_type = (buf[start + 3] << 4 | buf[start + 4] >> 4) if length >= 2 else 0
    return "frame", end, Rtcm3Frame(msg_type, length)


class GnssDemux(BufferedInput):
    """Sans-IO splitter of a mixed NMEA/UBX/RTCM3 stream.

    ``next_event()`` returns NmeaSentence | UbxMessage | Rtcm3Frame | NEED_DATA.
    ``stats`` totals every protocol (and holds ``skipped_bytes`` and
    ``buffer_overflows``); ``protocol_stats["nmea" | "ubx" | "rtcm3"]`` splits
    frames, bad checksums and truncations by protocol.
    """

    protocol = "GNSS"

    def __init__(self, *, max_sentence: int = MAX_SENTENCE, max_payload: int = MAX_PAYLOAD,
                 max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        need = max(max_sentence + 2, max_payload + 8, RTCM3_MAX_PAYLOAD + 6)
        if max_buffer < need:
            raise ValueError(f"max_buffer ({max_buffer}) must hold one frame ({need})")
        self.stats = ParserStats()
        self.protocol_stats = {p: ParserStats() for p in PROTOCOLS}
        self._max_sentence = max_sentence
        self._max_payload = max_payload
        self._init_buffer(max_buffer)
        self._rejected_end = 0  # end of the span claimed by the last rejected UBX/RTCM3 frame

    def _shifted(self, n: int) -> None:
        self._rejected_end -= n

    def next_event(self) -> NmeaSentence | UbxMessage | Rtcm3Frame | NeedData:
        buf, stats = self._buf, self.stats
        pos = self._pos
        while True:
            m = _MARK.search(buf, pos)
            if m is None:
                # Keep a trailing B5: it may be the first half of a UBX sync.
                hold = buf.endswith(b"\xb5") and not self._eof
                stop = len(buf) - 1 if hold else len(buf)
                if stop > pos:
                    count_gap(stats, buf, pos, stop)
                    pos = stop
                self._pos = pos
                return NEED_DATA
            s = m.start()
            count_gap(stats, buf, pos, s)
            first = buf[s]
            event: NmeaSentence | UbxMessage | Rtcm3Frame | None
            if first == 0xB5:
                proto = "ubx"
                outcome, pos, event = take_frame(buf, s, self._max_payload)
                if outcome == "truncated":
                    # take_frame resumes at the next whole UBX frame inside the span the cut
                    # frame claimed; NMEA or RTCM3 frames before it would be lost, so rescan
                    # right after this sync instead.
                    pos = s + 2
            elif first == RTCM3_PREAMBLE:
                proto = "rtcm3"
                outcome, pos, event = take_rtcm3(buf, s)
            else:
                proto = "nmea"
                outcome, pos, event = take_sentence(buf, s, self._max_sentence)
            if event is not None:
                stats.frames += 1
                self.protocol_stats[proto].frames += 1
                self._pos = pos
                return event
            if outcome == "need_data":
                if not self._eof:
                    self._pos = s
                    return NEED_DATA
                # The input ended inside this frame: give it up and rescan what follows it
                # (an NMEA sentence without its line end holds no other frame).
                outcome, pos = "truncated", (len(buf) if proto == "nmea" else s + 1)
            self._count(proto, outcome, buf, s, pos)

    def _count(self, proto: str, outcome: Take, buf: bytearray, s: int, resume: int) -> None:
        if outcome == "garbage" or s < self._rejected_end:
            # Stray bytes, or a false marker inside the span of a binary frame already rejected.
            count_gap(self.stats, buf, s, resume)
            return
        if proto == "ubx" and len(buf) - s >= 6:
            self._rejected_end = claimed_end(buf, s)
        elif proto == "rtcm3" and len(buf) - s >= 3:
            self._rejected_end = s + 6 + ((buf[s + 1] & 0x03) << 8 | buf[s + 2])
        per = self.protocol_stats[proto]
        if outcome == "bad_checksum":
            self.stats.bad_checksum += 1
            per.bad_checksum += 1
        elif outcome == "truncated":
            self.stats.truncated += 1
            per.truncated += 1
        else:
            self.stats.unsupported += 1
            per.unsupported += 1

    def feed_eof(self) -> None:
        """The input ended: ``next_event()`` gives up a partial frame (counted as truncated)
        and still returns any whole frame found inside the span it claimed."""
        self._eof = True
