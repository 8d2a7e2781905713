"""SLCAN: the real RAV4 log encoded as an adapter would send it (with and without timestamps),
parsed whole, byte by byte and in random chunks; replies and the bell; commands; garbage;
hypothesis mutation of the encoded capture."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridges.errors import BridgeError, ConfigError
from firmware_bridges.parser import NEED_DATA, events
from firmware_bridges.slcan import (
    BITRATE_COMMANDS,
    MAX_LINE,
    TIMESTAMP_WRAP_MS,
    SlcanParser,
    SlcanReply,
    adapter_timestamp_ms,
    cmd_bitrate,
    cmd_close,
    cmd_open,
    cmd_timestamps,
    encode_frame,
    encode_frames,
)
from wire.schemas import CanFrame
from wire.schemas.can_frames import BRS, ERROR, ESI, EXTENDED, FD, REMOTE, TX


class TickClock:
    """A host clock that advances 1 ms per reading, starting far from the log's times."""

    def __init__(self, start: int = 1_700_000_000_000_000_000) -> None:
        self._it: Iterator[int] = itertools.count(start, 1_000_000)

    def __call__(self) -> int:
        return next(self._it)


def key(f: CanFrame) -> tuple[int, int, int, bytes]:
    return (f.arbitration_id, f.flags, f.dlc, f.data)


def feed_chunks(
    parser: SlcanParser, data: bytes, sizes: list[int] | None = None
) -> list[CanFrame | SlcanReply]:
    out: list[CanFrame | SlcanReply] = []
    i = 0
    for n in itertools.cycle(sizes or [1]):
        if i >= len(data):
            break
        parser.feed(data[i : i + n])
        i += n
        assert parser.buffered <= MAX_LINE
        out.extend(events(parser))
    return out


def frames_of(evs: list[CanFrame | SlcanReply]) -> list[CanFrame]:
    return [e for e in evs if isinstance(e, CanFrame)]


def drain(parser: SlcanParser) -> list[CanFrame]:
    """Every event the parser holds, which must all be frames."""
    out = []
    for e in events(parser):
        assert isinstance(e, CanFrame), e
        out.append(e)
    return out


@pytest.fixture(scope="module")
def slcan_plain(can_log_frames: list[CanFrame]) -> bytes:
    return encode_frames(can_log_frames)


@pytest.fixture(scope="module")
def slcan_stamped(can_log_frames: list[CanFrame]) -> bytes:
    return encode_frames(can_log_frames, timestamps=True)


# -- the real log ----------------------------------------------------------------------------


@pytest.mark.parametrize("stamped", [False, True])
def test_real_log_whole(stamped: bool, can_log_frames: list[CanFrame], slcan_plain: bytes,
                        slcan_stamped: bytes) -> None:
    data = slcan_stamped if stamped else slcan_plain
    assert data.count(b"\r") == 135_468
    parser = SlcanParser("slcan0", clock_ns=lambda: 5)
    parser.feed(data)
    got = drain(parser)
    assert [key(f) for f in got] == [key(f) for f in can_log_frames]
    assert all(f.channel == "slcan0" for f in got)
    assert parser.stats.frames == 135_468 and parser.stats.skipped_bytes == 0
    if not stamped:
        assert {f.timestamp_ns for f in got} == {5}


def test_adapter_stamps_space_the_frames_of_one_read(
    can_log_frames: list[CanFrame], slcan_stamped: bytes
) -> None:
    # One read holding the whole minute (it wraps the 60 s stamp once): the last frame gets the
    # receive time, every other one sits before it by the adapter's millisecond stamps.
    now = 1_700_000_000_000_000_000
    parser = SlcanParser(clock_ns=lambda: now)
    parser.feed(slcan_stamped)
    got = drain(parser)
    assert got[-1].timestamp_ns == now
    ms = [f.timestamp_ns // 1_000_000 for f in can_log_frames]
    assert ms[-1] - ms[0] < TIMESTAMP_WRAP_MS
    wrap = TIMESTAMP_WRAP_MS
    assert any(m1 % wrap < m0 % wrap for m0, m1 in itertools.pairwise(ms))  # the stamp wraps
    for f, m in zip(got, ms, strict=True):
        assert f.timestamp_ns == now - (ms[-1] - m) * 1_000_000


def test_byte_at_a_time_and_random_chunks_equal_whole(
    can_log_frames: list[CanFrame], slcan_stamped: bytes, slcan_plain: bytes
) -> None:
    want = [key(f) for f in can_log_frames]
    cut = slcan_stamped.index(b"\r", 150_000) + 1  # a few thousand frames, byte by byte
    n = slcan_stamped[:cut].count(b"\r")
    got = frames_of(feed_chunks(SlcanParser(clock_ns=TickClock()), slcan_stamped[:cut]))
    assert [key(f) for f in got] == want[:n]
    assert all(a.timestamp_ns <= b.timestamp_ns for a, b in itertools.pairwise(got))
    rng = random.Random(3)
    for data in (slcan_plain, slcan_stamped):
        sizes = [rng.randint(1, 5000) for _ in range(500)]
        parser = SlcanParser(clock_ns=TickClock())
        got = frames_of(feed_chunks(parser, data, sizes))
        assert [key(f) for f in got] == want
        assert all(a.timestamp_ns <= b.timestamp_ns for a, b in itertools.pairwise(got))
        assert parser.stats.skipped_bytes == 0


def test_back_fill_never_goes_before_the_previous_read() -> None:
    parser = SlcanParser(clock_ns=iter([1_000_000_000, 1_001_000_000]).__next__)
    parser.feed(b"t1230EA5F\r")  # stamp 59999 ms
    # the adapter says this frame came 10 s after the last one, but it arrived 1 ms later
    parser.feed(b"t12300000\rt12302710\r")  # stamps 0 and 10000 ms
    times = [f.timestamp_ns for f in drain(parser)]
    assert times == [1_000_000_000, 1_000_000_000, 1_001_000_000]


# -- replies, commands, encoding -------------------------------------------------------------


def test_replies_and_bell_interleaved_with_frames() -> None:
    parser = SlcanParser(clock_ns=lambda: 7)
    evs = feed_chunks(parser, b"\r\aV1013\rNA1B2\rF00\rz\rt1231AA\rZ\r\a", [3])
    assert evs == [
        SlcanReply(True, ""),
        SlcanReply(False, ""),
        SlcanReply(True, "V1013"),
        SlcanReply(True, "NA1B2"),
        SlcanReply(True, "F00"),
        SlcanReply(True, "z"),
        CanFrame(7, "slcan0", 0x123, 0, 1, b"\xaa"),
        SlcanReply(True, "Z"),
        SlcanReply(False, ""),
    ]
    assert parser.buffered == 0


def test_bell_is_reported_without_waiting_for_a_cr() -> None:
    parser = SlcanParser()
    parser.feed(cmd_open())  # a device would answer ...
    parser.feed(b"\a")
    assert parser.next_event() == SlcanReply(False, "")
    assert parser.next_event() is NEED_DATA


def test_commands() -> None:
    assert cmd_open() == b"O\r"
    assert cmd_close() == b"C\r"
    assert cmd_timestamps(True) == b"Z1\r" and cmd_timestamps(False) == b"Z0\r"
    rates = [10_000, 20_000, 50_000, 100_000, 125_000, 250_000, 500_000, 800_000, 1_000_000]
    assert [cmd_bitrate(r) for r in rates] == [b"S%d\r" % i for i in range(9)]
    assert set(BITRATE_COMMANDS) == set(rates)
    with pytest.raises(ConfigError, match="33333"):
        cmd_bitrate(33_333)


ENCODED = [
    (CanFrame(0, "c", 0x123, 0, 3, b"\x01\x02\x03"), b"t1233010203\r"),
    (CanFrame(0, "c", 0x1ABCDEF0, EXTENDED, 0, b""), b"T1ABCDEF00\r"),
    (CanFrame(0, "c", 0x7FF, REMOTE, 4, b""), b"r7FF4\r"),
    (CanFrame(0, "c", 0x12345, EXTENDED | REMOTE, 8, b""), b"R000123458\r"),
    (CanFrame(0, "c", 0x100, FD, 9, bytes(12)), b"d1009" + b"00" * 12 + b"\r"),
    (CanFrame(0, "c", 0x100, FD | BRS | EXTENDED, 15, b"\xff" * 64), b"B00000100F" + b"FF" * 64 + b"\r"),
]


@pytest.mark.parametrize(("frame", "wire"), ENCODED)
def test_encode_and_parse_every_kind(frame: CanFrame, wire: bytes) -> None:
    assert encode_frame(frame) == wire
    stamped = encode_frame(frame, timestamp_ms=59_999)
    assert stamped == wire[:-1] + b"EA5F\r"
    for data in (wire, stamped):
        parser = SlcanParser("c", clock_ns=lambda: 0)
        parser.feed(data)
        assert list(events(parser)) == [frame]


def test_encode_refuses_what_slcan_cannot_carry() -> None:
    with pytest.raises(ConfigError, match="error frames"):
        encode_frame(CanFrame(0, "c", 0x80, ERROR | EXTENDED, 8, bytes(8)))
    with pytest.raises(ConfigError, match="DLC"):
        encode_frame(CanFrame(0, "c", 0x80, 0, 12, bytes(8)))
    with pytest.raises(ConfigError, match="0-59999"):
        encode_frame(CanFrame(0, "c", 0x80, 0, 0, b""), timestamp_ms=60_000)
    # what SLCAN drops: the TX flag and the FD error state indicator
    parser = SlcanParser("c", clock_ns=lambda: 0)
    parser.feed(encode_frame(CanFrame(0, "c", 0x80, FD | ESI | TX, 1, b"\x01")))
    assert list(events(parser)) == [CanFrame(0, "c", 0x80, FD, 1, b"\x01")]
    assert adapter_timestamp_ms(61_234_567_890) == 1_234


# -- garbage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("junk", "truncated"),
    [
        (b"hello", 0),
        (b"t12", 1),  # cut inside the id
        (b"t1238AABB", 1),  # DLC 8 but two bytes
        (b"t8001AA", 0),  # 11-bit id out of range
        (b"t1239" + b"00" * 9, 0),  # DLC 9 on classic CAN
        (b"t123GAA", 0),
        (b"t12+1AA", 0),
        (b"t1231AA12", 0),  # two digits where a timestamp needs four
        (b"V10", 0),
        (b"\x00\xff\x80", 0),
    ],
)
def test_garbage_lines_are_skipped_and_counted(junk: bytes, truncated: int) -> None:
    parser = SlcanParser(clock_ns=lambda: 0)
    parser.feed(b"t3211BB\r" + junk + b"\rt3211BB\r")
    assert [key(e) for e in drain(parser)] == [(0x321, 0, 1, b"\xbb")] * 2
    assert parser.stats.skipped_bytes == len(junk) + 1
    assert parser.stats.truncated == truncated


def test_lost_cr_recovers_the_frame_glued_behind() -> None:
    parser = SlcanParser(clock_ns=lambda: 0)
    parser.feed(b"t1238001122334455667\x00t4561CC\r")
    assert [key(e) for e in drain(parser)] == [(0x456, 0, 1, b"\xcc")]
    assert parser.stats.skipped_bytes == len(b"t1238001122334455667\x00")


def test_endless_line_stays_within_bound() -> None:
    parser = SlcanParser(clock_ns=lambda: 0)
    for _ in range(50):
        parser.feed(b"0" * 1000)
        assert parser.buffered <= MAX_LINE
    parser.feed(b"\rt1231AA\r")
    assert [key(e) for e in drain(parser)] == [(0x123, 0, 1, b"\xaa")]
    assert parser.stats.buffer_overflows > 0 and parser.stats.skipped_bytes == 50_001


def test_crlf_line_ends_are_tolerated() -> None:
    parser = SlcanParser(clock_ns=lambda: 0)
    parser.feed(b"t1231AA\r\nt1241BB\r\n\r\n")
    assert list(events(parser)) == [
        CanFrame(0, "slcan0", 0x123, 0, 1, b"\xaa"),
        CanFrame(0, "slcan0", 0x124, 0, 1, b"\xbb"),
        SlcanReply(True, ""),
    ]


# -- hypothesis: mutations of the encoded real log ---------------------------------------------

SLICE = 150


@st.composite
def mutation(draw: st.DrawFn, n: int) -> tuple[bytes, int, int, bytes]:
    """(mutated-bytes recipe) -> returns (kind, a, b, extra) in original coordinates."""
    kind = draw(st.sampled_from([b"flip", b"drop", b"dup", b"insert"]))
    pos = draw(st.integers(0, n - 1))
    if kind == b"flip":
        return kind, pos, pos + 1, bytes([draw(st.integers(1, 255))])
    if kind == b"insert":
        return kind, pos, pos, draw(st.binary(min_size=1, max_size=40))
    return kind, pos, min(n, pos + draw(st.integers(1, 60))), b""


def apply(data: bytes, m: tuple[bytes, int, int, bytes]) -> tuple[bytes, int, int]:
    kind, a, b, extra = m
    if kind == b"flip":
        return data[:a] + bytes([data[a] ^ extra[0]]) + data[a + 1 :], a, b
    if kind == b"insert":
        return data[:a] + extra + data[a:], a, a
    if kind == b"drop":
        return data[:a] + data[b:], a, b
    return data[:b] + data[a:b] + data[b:], b, b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), stamped=st.booleans())
def test_mutated_capture_never_breaks_the_parser(
    data: st.DataObject, stamped: bool, can_log_frames: list[CanFrame]
) -> None:
    start = data.draw(st.integers(0, len(can_log_frames) - SLICE), label="start")
    want = can_log_frames[start : start + SLICE]
    original = encode_frames(want, timestamps=stamped)
    mutated, a, b = apply(original, data.draw(mutation(len(original)), label="mutation"))
    sizes = data.draw(st.lists(st.integers(1, 200), min_size=1, max_size=8), label="chunks")
    parser = SlcanParser(clock_ns=TickClock())
    try:
        evs = feed_chunks(parser, mutated + b"\r", sizes)
    except BridgeError:
        return
    assert parser.next_event() is NEED_DATA and parser.buffered == 0
    assert all(isinstance(e, (CanFrame, SlcanReply)) for e in evs)
    got = [key(f) for f in frames_of(evs)]
    keys = [key(f) for f in want]
    before = original[:a].count(b"\r")
    first_end = original.find(b"\r", b)
    after = original[first_end + 1 :].count(b"\r") if first_end >= 0 else 0
    assert got[:before] == keys[:before]
    assert got[len(got) - after :] == keys[len(keys) - after :]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.integers(0, 135_468 - SLICE), at=st.integers(0, 10_000),
       junk=st.binary(min_size=1, max_size=8).map(lambda b: bytes(0x80 | (c & 0x7F) for c in b)))
def test_garbage_inside_a_line_is_counted(
    start: int, at: int, junk: bytes, can_log_frames: list[CanFrame]
) -> None:
    want = can_log_frames[start : start + SLICE]
    original = encode_frames(want, timestamps=True)
    at %= len(original)
    parser = SlcanParser(clock_ns=TickClock())
    parser.feed(original[:at] + junk + original[at:])
    got = [key(f) for f in drain(parser)]
    assert parser.stats.skipped_bytes > 0
    hit = original[:at].count(b"\r")
    keys = [key(f) for f in want]
    assert got[:hit] == keys[:hit]
    after = SLICE - hit - 1
    if after:
        assert got[-after:] == keys[-after:]


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 135_468 - 10), cut=st.integers(1, 12))
def test_shortened_frame_counts_truncated(start: int, cut: int, can_log_frames: list[CanFrame]) -> None:
    frame = next(f for f in can_log_frames[start:] if f.dlc >= 6)
    line = encode_frame(frame)
    parser = SlcanParser(clock_ns=lambda: 0)
    parser.feed(line[: len(line) - 1 - cut] + b"\r" + line)
    assert [key(f) for f in drain(parser)] == [key(frame)]
    assert parser.stats.truncated == 1
