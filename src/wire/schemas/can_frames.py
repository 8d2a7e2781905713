"""``can.frames/1``: raw CAN and CAN FD frames, lossless and columnar.

Wire layout of the payload map (all little-endian):

* ``timestamp_ns``: delta coded, divided by the common step, narrowed.
* ``channel``: dictionary coded channel names.
* ``arbitration_id``: the batch's distinct ids plus one narrow code per frame.
* ``flags``: bit 0 extended id, 1 remote, 2 error frame, 3 FD, 4 bit-rate
  switch, 5 error state indicator, 6 transmitted by this node.
* ``dlc``: the raw DLC (0-15).
* ``data``: ``w`` (widest payload), ``len`` (bytes per frame) and ``d``: the
  payloads zero-padded to ``w``, ordered by (channel, flags, id) stably,
  each byte replaced by its difference (mod 256) from the previous frame of
  the same id, then stored byte plane by byte plane. Counters and slowly
  changing signals become runs of equal bytes, which zstd compresses to
  almost nothing. The decoder recomputes the order from the other columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wire.columns import Categorical, PaddedBytes, Table, TableSchema, pack_ints, unpack_ints
from wire.errors import LimitError, SchemaError, ValidationError
from wire.limits import Limits

EXTENDED = 1
REMOTE = 2
ERROR = 4
FD = 8
BRS = 16
ESI = 32
TX = 64
_ALL_FLAGS = 127

#: CAN FD DLC -> payload length.
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)
_LEN_TO_FD_DLC = {n: i for i, n in enumerate(FD_LENGTHS)}


def dlc_for_length(length: int, fd: bool) -> int:
    if fd:
        try:
            return _LEN_TO_FD_DLC[length]
        except KeyError:
            raise ValidationError(f"{length} bytes is not a valid CAN FD payload length") from None
    if not 0 <= length <= 8:
        raise ValidationError(f"classic CAN payload of {length} bytes (max 8)")
    return length


@dataclass(frozen=True, slots=True)
class CanFrame:
    """One CAN frame as captured. ``timestamp_ns`` is UTC ns from the agent's clock."""

    timestamp_ns: int
    channel: str
    arbitration_id: int
    flags: int
    dlc: int
    data: bytes

    def __post_init__(self) -> None:
        ext = self.flags & EXTENDED
        if not 0 <= self.arbitration_id <= (0x1FFFFFFF if ext else 0x7FF):
            raise ValidationError(
                f"arbitration id 0x{self.arbitration_id:X} out of range for "
                f"{'extended' if ext else 'standard'} frame"
            )
        if not 0 <= self.flags <= _ALL_FLAGS:
            raise ValidationError(f"unknown CAN flag bits 0x{self.flags:X}")
        if not 0 <= self.dlc <= 15:
            raise ValidationError(f"DLC {self.dlc} out of range 0-15")
        n = len(self.data)
        if self.flags & FD:
            if n > 64 or n != FD_LENGTHS[self.dlc]:
                raise ValidationError(f"CAN FD frame: DLC {self.dlc} but {n} data bytes")
        elif self.flags & REMOTE:
            if n:
                raise ValidationError("remote frame carries no data")
        elif n != min(self.dlc, 8):
            raise ValidationError(f"CAN frame: DLC {self.dlc} but {n} data bytes")

    @property
    def is_extended(self) -> bool:
        return bool(self.flags & EXTENDED)

    @property
    def is_remote(self) -> bool:
        return bool(self.flags & REMOTE)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & ERROR)

    @property
    def is_fd(self) -> bool:
        return bool(self.flags & FD)

    @classmethod
    def make(
        cls,
        timestamp_ns: int,
        channel: str,
        arbitration_id: int,
        data: bytes = b"",
        *,
        is_extended: bool = False,
        is_remote: bool = False,
        is_error: bool = False,
        is_fd: bool = False,
        bitrate_switch: bool = False,
        error_state_indicator: bool = False,
        is_tx: bool = False,
        dlc: int | None = None,
    ) -> CanFrame:
        flags = (
            (EXTENDED if is_extended else 0)
            | (REMOTE if is_remote else 0)
            | (ERROR if is_error else 0)
            | (FD if is_fd else 0)
            | (BRS if bitrate_switch else 0)
            | (ESI if error_state_indicator else 0)
            | (TX if is_tx else 0)
        )
        if dlc is None:
            dlc = dlc_for_length(len(data), is_fd)
        return cls(timestamp_ns, channel, arbitration_id, flags, dlc, bytes(data))


class CanFramesSchema(TableSchema):
    def __init__(self) -> None:
        super().__init__(
            "can.frames",
            1,
            CanFrame,
            {
                "timestamp_ns": "i8",
                "channel": "str",
                "arbitration_id": "u4",
                "flags": "u1",
                "dlc": "u1",
                "data": "bytes",
            },
        )

    def encode(self, table: Table) -> dict[str, Any]:
        n = table.n
        channel = table.columns["channel"]
        assert isinstance(channel, Categorical)
        ids = np.asarray(table.columns["arbitration_id"])
        flags = np.asarray(table.columns["flags"])
        dlc = np.asarray(table.columns["dlc"])
        data: list[bytes] = table.columns["data"]  # type: ignore[assignment]
        lengths = _lengths(flags, dlc)
        problem = _frame_problem(ids, flags, dlc, lengths, np.fromiter(map(len, data), np.int64, n))
        if problem:
            raise ValidationError(f"can.frames/1: {problem}")
        key = _group_key(channel.codes, flags, ids)
        _, first, codes = np.unique(key, return_index=True, return_inverse=True)
        width = int(lengths.max()) if n else 0
        matrix = _pad(data, lengths, width)
        order = np.argsort(codes, kind="stable")
        m = matrix[order]
        d = m.copy()
        ks = codes[order]
        same = np.flatnonzero(ks[1:] == ks[:-1]) + 1
        d[same] -= m[same - 1]
        out: dict[str, Any] = {
            "n": n,
            "ch": list(channel.categories),
            "keys": {
                "ch": pack_ints(channel.codes[first], delta=True),
                "id": pack_ints(ids[first], delta=True),
                "fl": pack_ints(flags[first]),
                "dlc": pack_ints(dlc[first]),
            },
            "k": pack_ints(codes),
            "t": pack_ints(table.columns["timestamp_ns"], delta=True),  # type: ignore[arg-type]
            "w": width,
            "d": d.T.tobytes(),
        }
        # Flags and DLC are nearly always constant per id; send them per frame only if not.
        if not np.array_equal(flags, flags[first][codes]):
            out["fl"] = pack_ints(flags)
        if not np.array_equal(dlc, dlc[first][codes]):
            out["dlc"] = pack_ints(dlc)
        return out

    def decode(self, obj: Any, limits: Limits) -> Table:
        if not isinstance(obj, dict):
            raise SchemaError("can.frames/1: payload is not a map")
        n = obj.get("n")
        if not isinstance(n, int) or n < 0:
            raise SchemaError(f"can.frames/1: bad frame count {n!r}")
        if n > limits.max_records:
            raise LimitError(f"can.frames/1: {n} frames exceed the limit of {limits.max_records}")
        try:
            cats = obj["ch"]
            if not isinstance(cats, list) or any(
                not isinstance(c, str) or len(c) > limits.max_string_chars for c in cats
            ):
                raise SchemaError("can.frames/1: bad channel names")
            keys = obj["keys"]
            nk = _packed_count(keys["id"]) + (1 if n else 0)
            if nk > max(n, 0):
                raise SchemaError("can.frames/1: more keys than frames")
            k_ch = unpack_ints(keys["ch"], nk, np.dtype(np.int32), delta=True, name="channel")
            k_id = unpack_ints(keys["id"], nk, np.dtype(np.uint32), delta=True, name="arbitration_id")
            k_fl = unpack_ints(keys["fl"], nk, np.dtype(np.uint8), delta=False, name="flags")
            k_dlc = unpack_ints(keys["dlc"], nk, np.dtype(np.uint8), delta=False, name="dlc")
            codes = unpack_ints(obj["k"], n, np.dtype(np.int64), delta=False, name="key")
            ts = unpack_ints(obj["t"], n, np.dtype(np.int64), delta=True, name="timestamp_ns")
            width = obj["w"]
            planes = obj["d"]
            if n and (int(codes.min()) < 0 or int(codes.max()) >= nk):
                raise SchemaError("can.frames/1: key code out of range")
            flags = (unpack_ints(obj["fl"], n, np.dtype(np.uint8), delta=False, name="flags")
                     if "fl" in obj else k_fl.take(codes))
            dlc = (unpack_ints(obj["dlc"], n, np.dtype(np.uint8), delta=False, name="dlc")
                   if "dlc" in obj else k_dlc.take(codes))
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"can.frames/1: malformed payload ({exc!r})") from exc
        if nk and (int(k_ch.min()) < 0 or int(k_ch.max()) >= len(cats)):
            raise SchemaError("can.frames/1: channel code out of range")
        if not isinstance(width, int) or not 0 <= width <= 64:
            raise SchemaError(f"can.frames/1: bad payload width {width!r}")
        if not isinstance(planes, bytes) or len(planes) != n * width:
            raise SchemaError("can.frames/1: payload bytes do not match width x frames")
        ids = k_id.take(codes)
        ch_codes = k_ch.take(codes)
        lengths = None
        if "fl" not in obj and "dlc" not in obj:
            # Every per-frame column is taken from the key table: checking the keys checks the
            # frames. If a key fails, the frames are checked one by one below (a key no frame
            # uses is no reason to refuse the batch, and the message names the first bad frame).
            k_len = _lengths(k_fl, k_dlc)
            if _frame_problem(k_id, k_fl, k_dlc, k_len, None) is None and (
                    not nk or int(k_len.max()) <= width):
                lengths = k_len.take(codes)
        if lengths is None:
            lengths = _lengths(flags, dlc)
            problem = _frame_problem(ids, flags, dlc, lengths, None)
            if problem:
                raise SchemaError(f"can.frames/1: {problem}")
            if n and int(lengths.max()) > width:
                raise SchemaError("can.frames/1: DLC longer than the payload width")
            if n and not np.array_equal(_group_key(ch_codes, flags, ids),
                                        _group_key(k_ch, k_fl, k_id)[codes]):
                raise SchemaError("can.frames/1: per-frame flags contradict the key table")
        return Table(
            self,
            {
                "timestamp_ns": ts,
                "channel": Categorical(tuple(cats), ch_codes),
                "arbitration_id": ids,
                "flags": flags,
                "dlc": dlc,
                "data": PaddedBytes(_undelta(planes, codes, nk, width), lengths),
            },
        )


def _undelta(planes: bytes, codes: np.ndarray, nk: int, width: int) -> np.ndarray:
    """The (frames, width) payload matrix from the byte planes of per-key differences.

    The planes hold the frames sorted stably by key code; within a key, each row is the
    difference (mod 256) from the previous row. A running sum over all rows minus its value
    just before the key's first row gives the rows back; they are then put in frame order.
    """
    n = len(codes)
    if n == 0:
        return np.zeros((0, width), dtype=np.uint8)
    order = np.argsort(codes.astype(np.int16) if nk <= 32768 else codes, kind="stable")
    counts = np.bincount(codes, minlength=nk)
    starts = np.add.accumulate(counts) - counts  # each key's first row in sorted order
    csum = np.zeros((n + 1, width), dtype=np.uint8)  # row r + 1: sum of sorted rows 0..r
    np.add.accumulate(np.frombuffer(planes, dtype=np.uint8).reshape(width, n).T, axis=0,
                      out=csum[1:])
    rank = np.empty(n, dtype=np.intp)  # frame i is sorted row rank[i] - 1
    rank[order] = np.arange(1, n + 1)
    out: np.ndarray = csum.take(rank, axis=0) - csum.take(starts.take(codes), axis=0)
    return out


def _frame_problem(
    ids: np.ndarray, flags: np.ndarray, dlc: np.ndarray, lengths: np.ndarray, actual: np.ndarray | None
) -> str | None:
    """What is wrong with a batch of frames (vectorised), or None."""
    if not len(ids):
        return None
    if int(dlc.max()) > 15:
        return f"DLC {int(dlc.max())} out of range 0-15"
    if int(flags.max()) > _ALL_FLAGS:
        return f"unknown flag bits 0x{int(flags.max()):X}"
    bad = np.flatnonzero(ids > _MAX_ID.take(flags & EXTENDED))
    if len(bad):
        return f"frame {bad[0]}: arbitration id 0x{int(ids[bad[0]]):X} out of range"
    if actual is not None:
        bad = np.flatnonzero(actual != lengths)
        if len(bad):
            i = int(bad[0])
            return f"frame {i}: DLC {int(dlc[i])} but {int(actual[i])} data bytes"
    return None


def _length_formula(flags: np.ndarray, dlc: np.ndarray) -> np.ndarray:
    fd_len = np.asarray(FD_LENGTHS, dtype=np.int64)[np.minimum(dlc, 15)]
    classic = np.minimum(dlc, 8).astype(np.int64)
    return np.where(flags & FD, fd_len, np.where(flags & REMOTE, 0, classic))


#: Payload length by ``(flags & (FD | REMOTE)) << 8 | dlc``, for every uint8 DLC.
_LENGTH_TABLE = _length_formula(np.arange((FD | REMOTE) + 1)[:, None], np.arange(256)).ravel()
#: Highest arbitration id by the EXTENDED flag bit.
_MAX_ID = np.array([0x7FF, 0x1FFFFFFF], dtype=np.uint32)


def _lengths(flags: np.ndarray, dlc: np.ndarray) -> np.ndarray:
    """Payload length of each frame, from its DLC and flags."""
    if dlc.dtype != np.uint8:  # not a column of a can.frames/1 table
        return _length_formula(flags, dlc)
    return _LENGTH_TABLE.take(((flags & (FD | REMOTE)).astype(np.intp) << 8) | dlc)


def _packed_count(obj: Any) -> int:
    try:
        return len(obj["b"]) // np.dtype(obj["t"]).itemsize
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError("can.frames/1: malformed id table") from exc


def _group_key(channel_codes: np.ndarray, flags: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return (
        (channel_codes.astype(np.int64) << 38)
        | ((flags.astype(np.int64) & (EXTENDED | REMOTE | ERROR | FD)) << 32)
        | ids.astype(np.int64)
    )


def _pad(data: list[bytes], lengths: np.ndarray, width: int) -> np.ndarray:
    n = len(data)
    flat = np.frombuffer(b"".join(data), dtype=np.uint8)
    if n == 0 or width == 0:
        return np.zeros((n, width), dtype=np.uint8)
    if len(flat) == n * width:
        return flat.reshape(n, width).copy()
    m = np.zeros((n, width), dtype=np.uint8)
    m[np.arange(width) < lengths[:, None]] = flat
    return m


CAN_FRAMES = CanFramesSchema()
