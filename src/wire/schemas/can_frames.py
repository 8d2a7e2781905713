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

from wire.columns import Categorical, Table, TableSchema, pack_ints, unpack_ints
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
            if n and (codes.min() < 0 or codes.max() >= nk):
                raise SchemaError("can.frames/1: key code out of range")
            flags = (unpack_ints(obj["fl"], n, np.dtype(np.uint8), delta=False, name="flags")
                     if "fl" in obj else k_fl[codes])
            dlc = (unpack_ints(obj["dlc"], n, np.dtype(np.uint8), delta=False, name="dlc")
                   if "dlc" in obj else k_dlc[codes])
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"can.frames/1: malformed payload ({exc!r})") from exc
        if nk and (k_ch.min() < 0 or k_ch.max() >= len(cats)):
            raise SchemaError("can.frames/1: channel code out of range")
        if not isinstance(width, int) or not 0 <= width <= 64:
            raise SchemaError(f"can.frames/1: bad payload width {width!r}")
        if not isinstance(planes, bytes) or len(planes) != n * width:
            raise SchemaError("can.frames/1: payload bytes do not match width x frames")
        ids = k_id[codes]
        ch_codes = k_ch[codes]
        lengths = _lengths(flags, dlc)
        problem = _frame_problem(ids, flags, dlc, lengths, None)
        if problem:
            raise SchemaError(f"can.frames/1: {problem}")
        if n and int(lengths.max()) > width:
            raise SchemaError("can.frames/1: DLC longer than the payload width")
        if n and not np.array_equal(_group_key(ch_codes, flags, ids), _group_key(k_ch, k_fl, k_id)[codes]):
            raise SchemaError("can.frames/1: per-frame flags contradict the key table")
        order = np.argsort(codes, kind="stable")
        d = np.frombuffer(planes, dtype=np.uint8).reshape(width, n).T
        ks = codes[order]
        csum = np.cumsum(d, axis=0, dtype=np.uint8)
        starts = np.ones(n, dtype=bool)
        starts[1:] = ks[1:] != ks[:-1]
        first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
        base = np.zeros_like(csum)
        has_prev = first > 0
        base[has_prev] = csum[first[has_prev] - 1]
        m = np.empty_like(csum)
        m[order] = csum - base
        return Table(
            self,
            {
                "timestamp_ns": ts,
                "channel": Categorical(tuple(cats), ch_codes),
                "arbitration_id": ids,
                "flags": flags,
                "dlc": dlc,
                "data": _unpad(m, lengths),
            },
        )


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
    bad = np.flatnonzero(ids > np.where(flags & EXTENDED, 0x1FFFFFFF, 0x7FF))
    if len(bad):
        return f"frame {bad[0]}: arbitration id 0x{int(ids[bad[0]]):X} out of range"
    if actual is not None:
        bad = np.flatnonzero(actual != lengths)
        if len(bad):
            i = int(bad[0])
            return f"frame {i}: DLC {int(dlc[i])} but {int(actual[i])} data bytes"
    return None


def _lengths(flags: np.ndarray, dlc: np.ndarray) -> np.ndarray:
    """Payload length of each frame, from its DLC and flags."""
    fd_len = np.asarray(FD_LENGTHS, dtype=np.int64)[np.minimum(dlc, 15)]
    classic = np.minimum(dlc, 8).astype(np.int64)
    return np.where(flags & FD, fd_len, np.where(flags & REMOTE, 0, classic))


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


def _unpad(m: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    n, width = m.shape
    buf = m.tobytes()
    if width == 0:
        return [b""] * n
    if n and int(lengths.min()) == width:
        return [buf[i : i + width] for i in range(0, n * width, width)]
    return [buf[i * width : i * width + ln] for i, ln in enumerate(lengths.tolist())]


CAN_FRAMES = CanFramesSchema()
