"""Byte-level damage for the parsers' hypothesis tests: flip, drop, duplicate, insert."""

from __future__ import annotations

from hypothesis import strategies as st

Mutation = tuple[str, float, int, bytes]


def mutations(max_len: int) -> st.SearchStrategy[list[Mutation]]:
    """One to four mutations, each touching at most ``max_len`` bytes."""
    return st.lists(
        st.tuples(st.sampled_from(["flip", "drop", "dup", "insert"]), st.floats(0, 1),
                  st.integers(1, max_len), st.binary(min_size=1, max_size=max_len)),
        min_size=1, max_size=4,
    )


def mutate(data: bytes, muts: list[Mutation]) -> tuple[bytes, int]:
    """Apply mutations; return the result and the offset in it after which it is undamaged."""
    out = bytearray(data)
    clean_from = 0
    for kind, where, n, blob in muts:
        at = int(where * (len(out) - 1))
        before = len(out)
        if kind == "flip":
            out[at] ^= blob[0] or 0xFF
            damaged = at + 1
        elif kind == "drop":
            del out[at : at + n]
            damaged = at + 1
        elif kind == "dup":
            out[at:at] = out[at : at + n]
            damaged = at + 2 * n
        else:
            out[at:at] = blob
            damaged = at + len(blob)
        if clean_from > at:
            clean_from += len(out) - before
        clean_from = max(clean_from, damaged)
    return bytes(out), min(clean_from, len(out))
