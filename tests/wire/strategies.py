"""Hypothesis strategies for every wire schema, driven by the schema's column kinds."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from wire.columns import TableSchema
from wire.schemas import CanFrame
from wire.schemas.can_frames import BRS, ERROR, ESI, EXTENDED, FD, FD_LENGTHS, REMOTE, TX

INT64 = st.integers(-(2**63), 2**63 - 1)
_INT_RANGES = {
    "i1": (-(2**7), 2**7 - 1), "i2": (-(2**15), 2**15 - 1), "i4": (-(2**31), 2**31 - 1),
    "i8": (-(2**63), 2**63 - 1), "u1": (0, 255), "u2": (0, 65535), "u4": (0, 2**32 - 1),
}
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def column_strategy(kind: str) -> st.SearchStrategy[Any]:
    if kind in _INT_RANGES:
        lo, hi = _INT_RANGES[kind]
        return st.integers(lo, hi)
    if kind == "bool":
        return st.booleans()
    if kind == "f4":
        return st.floats(width=32)
    if kind == "f8":
        return st.floats()
    if kind == "str":
        return st.text(max_size=30)
    if kind == "bytes":
        return st.binary(max_size=300)
    if kind == "obj":
        return st.dictionaries(st.text(max_size=10), _JSONISH, max_size=5)
    raise AssertionError(kind)


def records(schema: TableSchema, max_size: int = 40) -> st.SearchStrategy[list[Any]]:
    fields = {name: column_strategy(kind) for name, kind in schema.columns.items()}
    return st.lists(st.builds(schema.record, **fields), max_size=max_size)


@st.composite
def can_frames(draw: st.DrawFn) -> CanFrame:
    ext = draw(st.booleans())
    kind = draw(st.sampled_from(["classic", "remote", "fd", "error"]))
    flags = EXTENDED if ext else 0
    flags |= TX if draw(st.booleans()) else 0
    if kind == "remote":
        flags |= REMOTE
        dlc = draw(st.integers(0, 15))
        data = b""
    elif kind == "fd":
        flags |= FD | (BRS if draw(st.booleans()) else 0) | (ESI if draw(st.booleans()) else 0)
        dlc = draw(st.integers(0, 15))
        data = draw(st.binary(min_size=FD_LENGTHS[dlc], max_size=FD_LENGTHS[dlc]))
    else:
        flags |= ERROR if kind == "error" else 0
        dlc = draw(st.integers(0, 15))
        n = min(dlc, 8)
        data = draw(st.binary(min_size=n, max_size=n))
    return CanFrame(
        timestamp_ns=draw(INT64),
        channel=draw(st.sampled_from(["can0", "can1", "vcan0", "can0tx", "总线"])),
        arbitration_id=draw(st.integers(0, 0x1FFFFFFF if ext else 0x7FF)),
        flags=flags,
        dlc=dlc,
        data=data,
    )
