"""candump -L: the real RAV4 log parsed whole, byte by byte and in random chunks; writer round trip;
every notation; garbage, truncation and bounds; hypothesis mutation of the real log."""

from __future__ import annotations

import gzip
import io
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridges.candump import (
    DEFAULT_MAX_LINE,
    CandumpParser,
    CandumpWriter,
    format_frame,
    read_candump,
)
from firmware_bridges.errors import BridgeError, ConfigError
from firmware_bridges.parser import NEED_DATA, events
from wire.schemas import CanFrame
from wire.schemas.can_frames import BRS, ERROR, ESI, EXTENDED, FD, REMOTE, TX


def feed_chunks(parser: CandumpParser, data: bytes, sizes: list[int] | None = None) -> list[CanFrame]:
    """Feed ``data`` in the given chunk sizes (cycled), draining after every feed."""
    out: list[CanFrame] = []
    i = 0
    k = 0
    while i < len(data):
        n = sizes[k % len(sizes)] if sizes else 1
        k += 1
        parser.feed(data[i : i + n])
        i += n
        assert parser.buffered <= DEFAULT_MAX_LINE
        out.extend(events(parser))
    parser.flush()
    out.extend(events(parser))
    return out


def parse(
    text: bytes, clock_ns: Callable[[], int] | None = None
) -> tuple[list[CanFrame], CandumpParser]:
    p = CandumpParser(clock_ns)
    p.feed(text)
    p.flush()
    return list(events(p)), p


# -- the real log ----------------------------------------------------------------------------


def test_whole_log_agrees_with_python_can(can_log_path: Path, can_log_frames: list[CanFrame]) -> None:
    reference = list(can.LogReader(can_log_path))
    assert len(reference) == len(can_log_frames) == 135_468
    channels: dict[str, int] = {}
    for ours, ref in zip(can_log_frames, reference, strict=True):
        assert ours.arbitration_id == ref.arbitration_id
        assert ours.data == bytes(ref.data)
        assert ours.dlc == ref.dlc
        assert ours.is_extended == ref.is_extended_id
        assert not ours.is_remote and not ours.is_fd and not ours.is_error
        assert ours.channel == ref.channel
        # python-can keeps a float; ours is exact, so they agree to well under a microsecond.
        assert abs(ours.timestamp_ns / 1e9 - ref.timestamp) < 1e-7
        channels[ours.channel] = channels.get(ours.channel, 0) + 1
    assert channels == {"can0": 53800, "can1": 45000, "can0tx": 12434, "can1tx": 24234}


def test_timestamps_are_the_exact_decimal_seconds(
    can_log_lines: list[bytes], can_log_frames: list[CanFrame]
) -> None:
    assert can_log_lines[0].startswith(b"(46408.584930) ")
    assert can_log_frames[0].timestamp_ns == 46408_584930_000
    for line, frame in zip(can_log_lines, can_log_frames, strict=True):
        digits = line[1 : line.index(b")")].replace(b".", b"")
        assert frame.timestamp_ns == int(digits) * 1000


def test_format_frame_reproduces_every_line(
    can_log_lines: list[bytes], can_log_frames: list[CanFrame]
) -> None:
    for line, frame in zip(can_log_lines, can_log_frames, strict=True):
        assert format_frame(frame) == line.decode()


def test_byte_at_a_time_equals_whole(can_log_lines: list[bytes], can_log_frames: list[CanFrame]) -> None:
    start = 60_000  # a slice from the middle of the drive
    text = b"".join(line + b"\n" for line in can_log_lines[start : start + 3000])
    got = feed_chunks(CandumpParser(), text)
    assert got == can_log_frames[start : start + 3000]


def test_random_chunks_equal_whole(can_log_bytes: bytes, can_log_frames: list[CanFrame]) -> None:
    rng = random.Random(40)
    sizes = [rng.randint(1, 9000) for _ in range(1000)]
    parser = CandumpParser()
    assert feed_chunks(parser, can_log_bytes, sizes) == can_log_frames
    assert parser.stats.frames == 135_468
    assert parser.stats.skipped_bytes == parser.stats.truncated == 0


def test_read_candump_streams_gzip_plain_and_by_magic(
    tmp_path: Path, can_log_path: Path, can_log_bytes: bytes, can_log_frames: list[CanFrame]
) -> None:
    parser = CandumpParser()
    assert list(read_candump(can_log_path, parser=parser)) == can_log_frames
    assert parser.stats.frames == 135_468
    plain = tmp_path / "rav4.log"
    plain.write_bytes(can_log_bytes[:200_000])
    n = can_log_bytes[:200_000].count(b"\n")
    first = list(read_candump(plain))
    assert first == can_log_frames[:n]
    # gzip without a .gz name is recognised by its magic bytes
    disguised = tmp_path / "rav4.txt"
    disguised.write_bytes(can_log_path.read_bytes())
    assert list(read_candump(disguised, chunk_size=777))[:n] == first


def test_writer_round_trip_through_gzip(tmp_path: Path, can_log_frames: list[CanFrame]) -> None:
    frames = can_log_frames[::7]
    path = tmp_path / "out.log.gz"
    with gzip.open(path, "wt", encoding="ascii") as fp:
        w = CandumpWriter(fp)
        w.write_all(frames)
        assert w.frames == len(frames)
    assert list(read_candump(path)) == frames
    # python-can reads what we wrote
    assert [m.arbitration_id for m in can.LogReader(path)] == [f.arbitration_id for f in frames]
    buf = io.BytesIO()
    CandumpWriter(buf).write(frames[0])
    assert buf.getvalue() == (format_frame(frames[0]) + "\n").encode()


def test_cut_short_gzip_yields_what_it_has(tmp_path: Path, can_log_path: Path,
                                           can_log_frames: list[CanFrame]) -> None:
    blob = can_log_path.read_bytes()
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    parser = CandumpParser()
    got = list(read_candump(cut, parser=parser))
    assert 10_000 < len(got) < 135_468
    assert got == can_log_frames[: len(got)]
    assert parser.stats.truncated >= 1


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open candump log"):
        list(read_candump(tmp_path / "nope.log"))


# -- notations ---------------------------------------------------------------------------


NOTATIONS = [
    # line, expected frame, round trips byte for byte
    (b"(1.000001) can0 123#", CanFrame(1_000_001_000, "can0", 0x123, 0, 0, b""), True),
    (b"(1533199735.123456) vcan0 1F334455#1122", CanFrame(1533199735_123456_000, "vcan0", 0x1F334455,
                                                          EXTENDED, 2, b"\x11\x22"), True),
    (b"(2.5) can0 7FF#R", CanFrame(2_500_000_000, "can0", 0x7FF, REMOTE, 0, b""), False),
    (b"(2.500000) can0 7FF#R", CanFrame(2_500_000_000, "can0", 0x7FF, REMOTE, 0, b""), True),
    (b"(2.500000) can0 12345678#R5", CanFrame(2_500_000_000, "can0", 0x12345678, EXTENDED | REMOTE,
                                              5, b""), True),
    (b"(3.000000) can1 123##1" + b"AB" * 12, CanFrame(3 * 10**9, "can1", 0x123, FD | BRS, 9,
                                                       b"\xab" * 12), True),
    (b"(3.000000) can1 123##3" + b"00" * 64, CanFrame(3 * 10**9, "can1", 0x123, FD | BRS | ESI, 15,
                                                       bytes(64)), True),
    (b"(3.000000) can1 123##0", CanFrame(3 * 10**9, "can1", 0x123, FD, 0, b""), True),
    (b"(4.000000) can0 20000080#0000000000000000", CanFrame(4 * 10**9, "can0", 0x80, ERROR | EXTENDED,
                                                           8, bytes(8)), True),
    (b"(5.000000) can0 123#1122334455667788_C", CanFrame(5 * 10**9, "can0", 0x123, 0, 12,
                                                         bytes.fromhex("1122334455667788")), True),
    (b"(6.000000) can0 123#11 T", CanFrame(6 * 10**9, "can0", 0x123, TX, 1, b"\x11"), True),
    (b"(6.000000) can0 123#11 R", CanFrame(6 * 10**9, "can0", 0x123, 0, 1, b"\x11"), False),
    (b"(7.123456789) can0 123#11.22", CanFrame(7_123456789, "can0", 0x123, 0, 2, b"\x11\x22"), False),
    (b"(8.000000) can0 123#aabb", CanFrame(8 * 10**9, "can0", 0x123, 0, 2, b"\xaa\xbb"), False),
]


@pytest.mark.parametrize(("line", "frame", "exact"), NOTATIONS)
def test_notations(line: bytes, frame: CanFrame, exact: bool) -> None:
    frames, p = parse(line + b"\n")
    assert frames == [frame], p.stats
    assert p.stats.skipped_bytes == 0
    again, _ = parse(format_frame(frame).encode() + b"\n")
    # candump writes microseconds: finer digits are cut, nothing else changes
    assert again == [replace(frame, timestamp_ns=frame.timestamp_ns // 1000 * 1000)]
    if exact:
        assert format_frame(frame) == line.decode()


def test_parser_with_a_clock_stamps_receive_time() -> None:
    frames, _ = parse(b"(1.000000) can0 123#11\n(2.000000) can0 124#22\n", clock_ns=lambda: 42)
    assert [f.timestamp_ns for f in frames] == [42, 42]


BAD_LINES = [
    b"garbage",
    b"(1.000000) can0",  # cut before the frame
    b"(1.000000) can0 123#1",  # odd number of hex digits
    b"(1.000000) can0 800#11",  # 11-bit id out of range
    b"(1.000000) can0 1234#11",  # 4-digit id
    b"(1.000000) can0 123#112233445566778899",  # 9 bytes on classic CAN
    b"(1.000000) can0 123#1G",
    b"(1.000000) can0 0x1#11",
    b"(1.000000) can0 +12#11",
    b"(1.000000) can0 C0000123#11",  # flag bits that are not the error flag
    b"(1.00000a) can0 123#11",
    b"1.000000 can0 123#11",
    b"(1.000000) can0 123##1" + b"00" * 11,  # not a CAN FD length
    b"(1.000000) can0 123#R9",
    b"(1.000000) can0 123#11 X",
    b"(1.000000) can0 123#1122_5",  # raw DLC needs 8 data bytes
    b"(1.000000) ca\x00n0 123#11",
]


@pytest.mark.parametrize("bad", BAD_LINES)
def test_bad_lines_are_skipped_and_counted(bad: bytes) -> None:
    good = b"(9.000000) can0 321#99\n"
    frames, p = parse(good + bad + b"\n" + good)
    assert [f.arbitration_id for f in frames] == [0x321, 0x321]
    assert p.stats.skipped_bytes == len(bad) + 1
    assert p.stats.frames == 2


def test_line_cut_before_its_frame_counts_truncated() -> None:
    frames, p = parse(b"(1.000000) can0\n(2.000000) can0 321#99\n")
    assert len(frames) == 1 and p.stats.truncated == 1


def test_unterminated_last_line_is_truncated_not_guessed() -> None:
    frames, p = parse(b"(1.000000) can0 123#11\n(2.000000) can0 124#2233")
    assert [f.arbitration_id for f in frames] == [0x123]
    assert p.stats.truncated == 1


def test_lost_newline_recovers_the_second_line() -> None:
    frames, p = parse(b"(1.000000) can0 123#11(2.000000) can0 124#22\n")
    assert [f.arbitration_id for f in frames] == [0x124]
    assert p.stats.skipped_bytes == len(b"(1.000000) can0 123#11")


def test_endless_line_stays_within_bound() -> None:
    p = CandumpParser()
    for _ in range(100):
        p.feed(b"x" * 1000)
        assert p.buffered <= DEFAULT_MAX_LINE
    p.feed(b"\n(1.000000) can0 123#11\n")
    assert [f.arbitration_id for f in events(p)] == [0x123]
    assert p.stats.buffer_overflows > 0
    assert p.stats.skipped_bytes == 100_000 + 1


def test_format_refuses_what_candump_cannot_write() -> None:
    with pytest.raises(ConfigError):
        format_frame(CanFrame(-1, "can0", 1, 0, 0, b""))
    with pytest.raises(ConfigError):
        format_frame(CanFrame(1, "can 0", 1, 0, 0, b""))


# -- hypothesis: mutations of the real log ---------------------------------------------------

SLICE_LINES = 120


@st.composite
def mutations(draw: st.DrawFn, n: int) -> tuple[str, int, int, bytes]:
    kind = draw(st.sampled_from(["flip", "drop", "dup", "insert"]))
    pos = draw(st.integers(0, n - 1))
    if kind == "flip":
        return kind, pos, pos + 1, bytes([draw(st.integers(1, 255))])
    if kind == "insert":
        return kind, pos, pos, draw(st.binary(min_size=1, max_size=40))
    length = draw(st.integers(1, 60))
    return kind, pos, min(n, pos + length), b""


def mutate(data: bytes, m: tuple[str, int, int, bytes]) -> tuple[bytes, int, int]:
    """The mutated bytes and the region [a, b) of the original that it touched."""
    kind, a, b, extra = m
    if kind == "flip":
        return data[:a] + bytes([data[a] ^ extra[0]]) + data[a + 1 :], a, b
    if kind == "insert":
        return data[:a] + extra + data[a:], a, a
    if kind == "drop":
        return data[:a] + data[b:], a, b
    return data[:b] + data[a:b] + data[b:], b, b  # dup: a copy inserted after the original


def intact_counts(data: bytes, a: int, b: int, end: bytes) -> tuple[int, int]:
    """Lines wholly before the damage, and lines after the first terminator at or after it."""
    before = data[:a].count(end)
    first_end = data.find(end, b)
    after = 0 if first_end < 0 else data[first_end + 1 :].count(end)
    return before, after


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_log_never_breaks_the_parser(
    data: st.DataObject, can_log_lines: list[bytes], can_log_frames: list[CanFrame]
) -> None:
    start = data.draw(st.integers(0, len(can_log_lines) - SLICE_LINES), label="start")
    original = b"".join(line + b"\n" for line in can_log_lines[start : start + SLICE_LINES])
    want = can_log_frames[start : start + SLICE_LINES]
    m = data.draw(mutations(len(original)), label="mutation")
    mutated, a, b = mutate(original, m)
    sizes = data.draw(st.lists(st.integers(1, 300), min_size=1, max_size=8), label="chunks")
    parser = CandumpParser()
    try:
        got = feed_chunks(parser, mutated, sizes)
    except BridgeError:  # the package's own errors are allowed; nothing else is
        return
    assert parser.next_event() is NEED_DATA
    assert parser.buffered == 0
    before, after = intact_counts(original, a, b, b"\n")
    assert got[:before] == want[:before]
    assert got[len(got) - after :] == want[len(want) - after :]
    assert parser.stats.frames == len(got)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.integers(0, 135_468 - SLICE_LINES), at=st.integers(0, 10_000),
       junk=st.binary(min_size=1, max_size=8).map(lambda b: bytes(0x80 | (c & 0x7F) for c in b)))
def test_garbage_inside_a_line_is_counted(
    start: int, at: int, junk: bytes, can_log_lines: list[bytes], can_log_frames: list[CanFrame]
) -> None:
    original = b"".join(line + b"\n" for line in can_log_lines[start : start + SLICE_LINES])
    at %= len(original)
    frames, parser = parse(original[:at] + junk + original[at:])
    assert parser.stats.skipped_bytes > 0
    assert len(frames) >= SLICE_LINES - 1
    hit = original[:at].count(b"\n")  # the line the junk landed in
    want = can_log_frames[start : start + SLICE_LINES]
    after = SLICE_LINES - hit - 1
    assert frames[:hit] == want[:hit]
    if after:
        assert frames[-after:] == want[-after:]
