"""Columnar tables: the in-memory and on-the-wire form of high-rate records.

A :class:`Table` holds one numpy array per numeric field, a
:class:`Categorical` per text field and a list per bytes/map field (or, as
decoded from a schema that sends payloads padded, a :class:`PaddedBytes`,
which reads as a list of bytes). On the
wire every integer column is narrowed to the smallest integer type that
holds it (time columns after delta coding and division by their common
step), floats keep their declared width, and text is dictionary coded. All of
it is lossless.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from wire.errors import LimitError, SchemaError, ValidationError
from wire.limits import Limits

INT_KINDS = {"i1": np.int8, "i2": np.int16, "i4": np.int32, "i8": np.int64,
             "u1": np.uint8, "u2": np.uint16, "u4": np.uint32, "bool": np.bool_}
FLOAT_KINDS = {"f4": np.float32, "f8": np.float64}
OTHER_KINDS = ("str", "bytes", "obj")
_NARROW = [np.dtype(t) for t in ("<i1", "<u1", "<i2", "<u2", "<i4", "<u4", "<i8")]
_NARROW_RANGES = [(dt, int(np.iinfo(dt).min), int(np.iinfo(dt).max)) for dt in _NARROW]
_RANGES = {np.dtype(t): (int(np.iinfo(t).min), int(np.iinfo(t).max))
           for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32)}
#: The narrow dtypes by the spelling pack_ints writes (``dtype.str``); other spellings are parsed.
_NARROW_BY_STR = {dt.str: dt for dt in _NARROW}
_INT64 = np.dtype(np.int64)
#: (wire dtype, column dtype) pairs where every wire value fits the column: no range check.
_WIDENING = frozenset((src, dst) for src in _NARROW for dst in _RANGES
                      if _RANGES[dst][0] <= _RANGES[src][0] and _RANGES[src][1] <= _RANGES[dst][1])


@dataclass(frozen=True, slots=True)
class Categorical:
    """A text column as codes into a list of categories."""

    categories: tuple[str, ...]
    codes: np.ndarray

    @classmethod
    def from_values(cls, values: Iterable[str]) -> Categorical:
        vals = values if isinstance(values, list | tuple) else list(values)
        cats = tuple(dict.fromkeys(vals))  # first-appearance order
        if any(type(k) is not str for k in cats):
            raise TypeError("expected text values")
        index = {c: i for i, c in enumerate(cats)}
        codes = np.fromiter(map(index.__getitem__, vals), dtype=np.int32, count=len(vals))
        return cls(cats, codes)

    def values(self) -> list[str]:
        cats = self.categories
        return [cats[c] for c in self.codes.tolist()]

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, idx: np.ndarray) -> Categorical:
        return Categorical(self.categories, self.codes[idx])


class PaddedBytes(Sequence[bytes]):
    """A bytes column held as a zero-padded ``uint8`` matrix (one row per value) and lengths.

    It reads as a sequence of ``bytes`` (value ``i`` is ``matrix[i, :lengths[i]]``; bytes past
    a length are ignored) and equals the list of the same values. The ``bytes`` objects are made
    only when something reads them one by one; :meth:`joined` and :attr:`matrix` serve code
    that wants the whole column at once.
    """

    __slots__ = ("_rows", "lengths", "matrix")

    def __init__(self, matrix: np.ndarray, lengths: np.ndarray) -> None:
        if matrix.ndim != 2 or matrix.dtype != np.uint8 or lengths.shape != (matrix.shape[0],):
            raise ValueError("PaddedBytes needs an (n, width) uint8 matrix and n lengths")
        if len(lengths) and (int(np.minimum.reduce(lengths)) < 0
                             or int(np.maximum.reduce(lengths)) > matrix.shape[1]):
            raise ValueError("PaddedBytes: a length is negative or exceeds the width")
        self.matrix = matrix
        self.lengths = lengths
        self._rows: list[bytes] | None = None

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        return self.rows()[index]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.rows())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PaddedBytes):
            return self.rows() == other.rows()
        if isinstance(other, list):
            return self.rows() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PaddedBytes({self.rows()!r})"

    def rows(self) -> list[bytes]:
        """The values as a list of ``bytes`` (made once, then kept)."""
        if self._rows is None:
            n, width = self.matrix.shape
            buf = self.matrix.tobytes()
            if width == 0:
                self._rows = [b""] * n
            elif n and int(self.lengths.min()) == width:
                self._rows = [buf[i : i + width] for i in range(0, n * width, width)]
            else:
                self._rows = [buf[i * width : i * width + ln]
                              for i, ln in enumerate(self.lengths.tolist())]
        return self._rows

    def joined(self) -> bytes:
        """Every value, concatenated (``b"".join(self)`` without making the values)."""
        n, width = self.matrix.shape
        if n == 0 or width == 0:
            return b""
        if int(np.minimum.reduce(self.lengths)) == width:
            return self.matrix.tobytes()
        return self.matrix[_prefix_masks(width).take(self.lengths, axis=0)].tobytes()


@functools.cache
def _prefix_masks(width: int) -> np.ndarray:
    """Row ``k``: the first ``k`` of ``width`` columns (``k`` = 0..width), as booleans."""
    out: np.ndarray = np.arange(width) < np.arange(width + 1)[:, None]
    return out


# Integer packing -------------------------------------------------------------------------


def _narrowest(lo: int, hi: int) -> np.dtype:
    for dt, dmin, dmax in _NARROW_RANGES:
        if dmin <= lo and hi <= dmax:
            return dt
    return np.dtype("<i8")


def pack_ints(values: np.ndarray, *, delta: bool = False) -> dict[str, Any]:
    """Pack an integer column losslessly into ``{"t": dtype, "b": bytes, ...}``."""
    arr = np.asarray(values)
    if not delta and arr.dtype.itemsize == 1 and arr.dtype.kind in "iu":
        return {"t": arr.dtype.str, "b": arr.tobytes()}  # already as narrow as it gets
    v = arr.astype(np.int64, copy=False)
    out: dict[str, Any] = {}
    if delta and len(v):
        out["d0"] = int(v[0])
        # int64 arithmetic wraps; decoding wraps back identically (mod 2**64).
        v = np.diff(v)
        if len(v):
            q = int(np.gcd.reduce(v)) if v.min() > np.iinfo(np.int64).min else 1
            if q > 1:
                out["q"] = q
                v = v // q
    if len(v):
        dt = _narrowest(int(v.min()), int(v.max()))
    else:
        dt = np.dtype("<i1")
    out["t"] = dt.str
    out["b"] = v.astype(dt).tobytes()
    return out


def unpack_ints(obj: Any, n: int, dtype: np.dtype, *, delta: bool, name: str) -> np.ndarray:
    if not isinstance(obj, dict):
        raise SchemaError(f"column {name!r}: expected packed integers")
    t, b = obj.get("t"), obj.get("b")
    if not isinstance(t, str) or not isinstance(b, bytes):
        raise SchemaError(f"column {name!r}: expected packed integers")
    dt = _NARROW_BY_STR.get(t)
    if dt is None:  # another spelling of a dtype than the one pack_ints writes
        try:
            dt = np.dtype(t)
        except TypeError as exc:
            raise SchemaError(f"column {name!r}: bad dtype {t!r}") from exc
        if dt not in _NARROW:
            raise SchemaError(f"column {name!r}: dtype {t!r} not allowed")
    count = n - 1 if (delta and n > 0) else n
    if len(b) != count * dt.itemsize:
        raise SchemaError(f"column {name!r}: {len(b)} bytes for {count} values of {dt}")
    target = np.dtype(dtype)
    if delta and n > 0:
        d0 = obj.get("d0")
        q = obj.get("q", 1)
        if not isinstance(d0, int) or not isinstance(q, int) or q < 1:
            raise SchemaError(f"column {name!r}: bad delta header")
        v = np.empty(n, dtype=np.int64)
        try:
            v[0] = d0
            step = np.int64(q)
        except OverflowError as exc:
            raise SchemaError(f"column {name!r}: delta header out of range") from exc
        v[1:] = np.frombuffer(b, dtype=dt)
        if q != 1:
            rest = v[1:]
            np.multiply(rest, step, out=rest)  # int64 arithmetic wraps, as the encoder's did
        np.add.accumulate(v, out=v)
        if target == _INT64:
            return v
    else:
        v = np.frombuffer(b, dtype=dt)
        if (dt, target) in _WIDENING:  # every value of dt fits: nothing to check
            return v.astype(target)
    lo, hi = (0, 1) if target == np.bool_ else _RANGES[target]
    if len(v) and (int(np.minimum.reduce(v)) < lo or int(np.maximum.reduce(v)) > hi):
        what = "boolean out of range" if target == np.bool_ else f"value out of range for {target}"
        raise SchemaError(f"column {name!r}: {what}")
    return v.astype(target)


# Tables ----------------------------------------------------------------------------------

Column = np.ndarray | Categorical | list | PaddedBytes


class Table:
    """Rows of one schema, stored column by column."""

    __slots__ = ("columns", "n", "schema")

    def __init__(self, schema: TableSchema, columns: dict[str, Column]) -> None:
        self.schema = schema
        self.columns = columns
        lengths = {k: len(v) for k, v in columns.items()}
        if set(lengths) != set(schema.columns):
            missing = set(schema.columns) - set(lengths)
            extra = set(lengths) - set(schema.columns)
            raise ValidationError(
                f"{schema.key}: columns missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        ns = set(lengths.values())
        if len(ns) > 1:
            raise ValidationError(f"{schema.key}: columns have different lengths {lengths}")
        self.n = ns.pop() if ns else 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, name: str) -> Column:
        return self.columns[name]

    def records(self) -> list[Any]:
        return self.schema.records(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Table) or other.schema.key != self.schema.key or other.n != self.n:
            return False
        for name, a in self.columns.items():
            b = other.columns[name]
            if isinstance(a, np.ndarray):
                if not isinstance(b, np.ndarray) or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                    return False
            elif isinstance(a, Categorical):
                if not isinstance(b, Categorical) or a.values() != b.values():
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Table {self.schema.key} rows={self.n}>"


class TableSchema:
    """A record schema (``name/version``) bound to a frozen record dataclass.

    ``columns`` maps each dataclass field to a kind: an integer kind
    (``i1``..``i8``, ``u1``..``u4``, ``bool``), a float kind (``f4``, ``f8``),
    ``str`` (dictionary coded), ``bytes`` or ``obj`` (a msgpack value, for
    low-rate maps). ``delta`` names integer columns that are delta coded.
    """

    def __init__(
        self,
        name: str,
        version: int,
        record: type,
        columns: dict[str, str],
        *,
        delta: Sequence[str] = ("timestamp_ns",),
        time_column: str = "timestamp_ns",
    ) -> None:
        fields = list(getattr(record, "__dataclass_fields__", {}))
        if fields != list(columns):
            raise ValidationError(f"{name}/{version}: columns {list(columns)} != fields {fields}")
        for col, kind in columns.items():
            if kind not in INT_KINDS and kind not in FLOAT_KINDS and kind not in OTHER_KINDS:
                raise ValidationError(f"{name}/{version}: column {col!r} has unknown kind {kind!r}")
        self.name = name
        self.version = version
        self.key = f"{name}/{version}"
        self.record = record
        self.columns = columns
        self.delta = frozenset(delta)
        self.time_column = time_column

    def __repr__(self) -> str:
        return f"<TableSchema {self.key}>"

    # records <-> table

    def table(self, records: Sequence[Any]) -> Table:
        """Build a table from record dataclasses (values are range-checked)."""
        cols: dict[str, Column] = {}
        for col, kind in self.columns.items():
            values = [getattr(r, col) for r in records]
            cols[col] = self._column(col, kind, values)
        return Table(self, cols)

    def from_columns(self, **columns: Any) -> Table:
        """Build a table from column values (arrays, lists)."""
        cols: dict[str, Column] = {}
        for col, kind in self.columns.items():
            if col not in columns:
                raise ValidationError(f"{self.key}: column {col!r} missing")
            cols[col] = self._column(col, kind, columns[col])
        extra = set(columns) - set(self.columns)
        if extra:
            raise ValidationError(f"{self.key}: unknown columns {sorted(extra)}")
        return Table(self, cols)

    def empty(self) -> Table:
        return self.table([])

    def _column(self, col: str, kind: str, values: Any) -> Column:
        try:
            if kind in INT_KINDS:
                return _int_array(values, INT_KINDS[kind])
            if kind in FLOAT_KINDS:
                return np.asarray(values, dtype=FLOAT_KINDS[kind])
            if kind == "str":
                if isinstance(values, Categorical):
                    return values
                return Categorical.from_values(values)
            if kind == "bytes":
                vals = list(values)
                if set(map(type, vals)) - {bytes}:
                    if any(not isinstance(v, bytes | bytearray | memoryview) for v in vals):
                        raise TypeError("expected bytes values")
                    vals = list(map(bytes, vals))
                return vals
            return list(values)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValidationError(f"{self.key}: column {col!r}: {exc}") from exc

    def records(self, table: Table) -> list[Any]:
        lists: list[list[Any]] = []
        for col in self.columns:
            c = table.columns[col]
            if isinstance(c, Categorical):
                lists.append(c.values())
            elif isinstance(c, np.ndarray):
                lists.append(c.tolist())
            else:
                lists.append(list(c))
        rec = self.record
        return [rec(*row) for row in zip(*lists, strict=True)]

    # table <-> msgpack-able object

    def encode(self, table: Table) -> dict[str, Any]:
        out: dict[str, Any] = {"n": table.n}
        for col, kind in self.columns.items():
            c = table.columns[col]
            if kind in INT_KINDS:
                assert isinstance(c, np.ndarray)
                out[col] = pack_ints(c, delta=col in self.delta)
            elif kind in FLOAT_KINDS:
                assert isinstance(c, np.ndarray)
                out[col] = c.astype(np.dtype(FLOAT_KINDS[kind]).newbyteorder("<")).tobytes()
            elif kind == "str":
                assert isinstance(c, Categorical)
                out[col] = {"c": list(c.categories), "i": pack_ints(c.codes)}
            else:
                assert isinstance(c, list)
                out[col] = list(c)
        return out

    def decode(self, obj: Any, limits: Limits) -> Table:
        if not isinstance(obj, dict):
            raise SchemaError(f"{self.key}: payload is not a map")
        n = obj.get("n")
        if not isinstance(n, int) or n < 0:
            raise SchemaError(f"{self.key}: bad row count {n!r}")
        if n > limits.max_records:
            raise LimitError(f"{self.key}: {n} records exceed the limit of {limits.max_records}")
        cols: dict[str, Column] = {}
        for col, kind in self.columns.items():
            if col not in obj:
                raise SchemaError(f"{self.key}: column {col!r} missing")
            cols[col] = self._decode_column(col, kind, obj[col], n, limits)
        return Table(self, cols)

    def _decode_column(self, col: str, kind: str, v: Any, n: int, limits: Limits) -> Column:
        if kind in INT_KINDS:
            return unpack_ints(v, n, np.dtype(INT_KINDS[kind]), delta=col in self.delta, name=col)
        if kind in FLOAT_KINDS:
            dt = np.dtype(FLOAT_KINDS[kind]).newbyteorder("<")
            if not isinstance(v, bytes) or len(v) != n * dt.itemsize:
                raise SchemaError(f"{self.key}: column {col!r}: expected {n} values of {dt}")
            return np.frombuffer(v, dtype=dt).astype(FLOAT_KINDS[kind])
        if kind == "str":
            if not isinstance(v, dict) or not isinstance(v.get("c"), list):
                raise SchemaError(f"{self.key}: column {col!r}: expected categories")
            cats = v["c"]
            if any(not isinstance(c, str) or len(c) > limits.max_string_chars for c in cats):
                raise SchemaError(f"{self.key}: column {col!r}: bad category")
            codes = unpack_ints(v.get("i"), n, np.dtype(np.int32), delta=False, name=col)
            if n and (codes.min() < 0 or codes.max() >= len(cats)):
                raise SchemaError(f"{self.key}: column {col!r}: category code out of range")
            return Categorical(tuple(cats), codes)
        if not isinstance(v, list) or len(v) != n:
            raise SchemaError(f"{self.key}: column {col!r}: expected a list of {n}")
        if kind == "bytes" and any(not isinstance(x, bytes) for x in v):
            raise SchemaError(f"{self.key}: column {col!r}: expected bytes")
        return v


def _int_array(values: Any, dtype: type) -> np.ndarray:
    arr = values if isinstance(values, np.ndarray) else np.asarray(list(values))
    if arr.dtype.kind not in "iub":
        if len(arr) == 0:
            arr = arr.astype(np.int64)
        elif arr.dtype.kind == "O":
            raise ValueError("values do not fit a 64-bit integer")
        else:
            raise ValueError(f"expected integers, got {arr.dtype}")
    if dtype is np.bool_:
        return arr.astype(np.bool_)
    lo, hi = _RANGES[np.dtype(dtype)]
    if len(arr) and (int(arr.min()) < lo or int(arr.max()) > hi):
        raise ValueError(f"value out of range for {np.dtype(dtype)}")
    return arr.astype(dtype, copy=False)
