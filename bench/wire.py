"""Wire benchmark: bytes per CAN frame and encode/decode speed, on the real RAV4 log.

Cuts ../shared/data/can/toyota_rav4_comma2k19_seg40.log.gz (135,468 frames, 60 s) into
100 ms and 1 s batches and compares, on one core:

  (a) candump -L text, (b) JSON per frame, (c) row-wise msgpack + zstd per batch (the
  baseline), (d) can.frames/1 with default settings, (e) can.frames/1 with a trained zstd
  dictionary (trained on the first 20 s, measured on the remaining 40 s).

Every variant is decoded again and compared frame by frame: the round trip must be lossless.
Encode time for can.frames/1 starts from the column lists a batcher holds (timestamps,
channel names, ids, flags, DLCs, payloads) and ends with the envelope bytes.

    python bench/wire.py [--json] [--repeat N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# This script is named after the package it measures: keep its own folder off the import path.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import msgpack
import numpy as np
import zstandard
from rich.console import Console
from rich.table import Table as RichTable

from wire import Batch, Dictionaries, encode_batch, train_dictionary
from wire.codec import pack
from wire.schemas import CAN_FRAMES, CanFrame

ROOT = Path(__file__).resolve().parent.parent
LOG = ROOT.parent / "shared" / "data" / "can" / "toyota_rav4_comma2k19_seg40.log.gz"
Frames = list[CanFrame]


def load_frames(path: Path) -> tuple[Frames, list[str]]:
    from firmware_bridges.candump import format_frame, read_candump

    frames = list(read_candump(path))
    lines = [format_frame(f) for f in frames]
    with gzip.open(path, "rt") as f:
        original = f.read().splitlines()
    if lines != original:
        raise SystemExit("candump round trip is not lossless: cannot benchmark")
    return frames, lines


def cut(frames: Frames, window_ns: int) -> list[Frames]:
    ts = np.fromiter((f.timestamp_ns for f in frames), dtype=np.int64, count=len(frames))
    edges = np.arange(ts[0], ts[-1] + window_ns, window_ns)
    idx = np.searchsorted(ts, edges)
    return [frames[a:b] for a, b in zip(idx[:-1], idx[1:], strict=True) if b > a]


def as_columns(batch: Frames) -> dict[str, list[Any]]:
    return {
        "timestamp_ns": [f.timestamp_ns for f in batch],
        "channel": [f.channel for f in batch],
        "arbitration_id": [f.arbitration_id for f in batch],
        "flags": [f.flags for f in batch],
        "dlc": [f.dlc for f in batch],
        "data": [f.data for f in batch],
    }


# Variants: each returns (encode(batch_columns) -> bytes, decode(bytes) -> list of frame tuples).


def frame_tuples(batch: Frames) -> list[tuple[Any, ...]]:
    return [(f.timestamp_ns, f.channel, f.arbitration_id, f.flags, f.dlc, f.data) for f in batch]


def candump_variant() -> tuple[Callable[..., bytes], Callable[..., Any]]:
    from firmware_bridges.candump import CandumpParser, format_frame, read_candump  # noqa: F401
    from firmware_bridges.parser import parse_all

    def enc(cols: dict[str, list[Any]], batch: Frames) -> bytes:
        return ("\n".join(format_frame(f) for f in batch) + "\n").encode()

    def dec(data: bytes) -> list[tuple[Any, ...]]:
        return frame_tuples(parse_all(CandumpParser(), data, chunk=len(data) or 1))

    return enc, dec


def json_variant() -> tuple[Callable[..., bytes], Callable[..., Any]]:
    def enc(cols: dict[str, list[Any]], batch: Frames) -> bytes:
        return b"".join(
            json.dumps({"t": f.timestamp_ns, "ch": f.channel, "id": f.arbitration_id,
                        "fl": f.flags, "dlc": f.dlc, "data": f.data.hex()},
                       separators=(",", ":")).encode() + b"\n"
            for f in batch
        )

    def dec(data: bytes) -> list[tuple[Any, ...]]:
        out = []
        for line in data.splitlines():
            o = json.loads(line)
            out.append((o["t"], o["ch"], o["id"], o["fl"], o["dlc"], bytes.fromhex(o["data"])))
        return out

    return enc, dec


def row_msgpack_variant() -> tuple[Callable[..., bytes], Callable[..., Any]]:
    cctx = zstandard.ZstdCompressor(level=3)
    dctx = zstandard.ZstdDecompressor()

    def enc(cols: dict[str, list[Any]], batch: Frames) -> bytes:
        rows = [[f.timestamp_ns, f.channel, f.arbitration_id, f.flags, f.dlc, f.data] for f in batch]
        return cctx.compress(msgpack.packb(rows, use_bin_type=True))

    def dec(data: bytes) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in msgpack.unpackb(dctx.decompress(data), raw=False)]

    return enc, dec


def cvis_variant(dicts: Dictionaries | None) -> tuple[Callable[..., bytes], Callable[..., Any]]:
    dict_id = dicts.ids()[0] if dicts else None
    d = dicts or Dictionaries()
    seq = iter(range(1 << 62))

    def enc(cols: dict[str, list[Any]], batch: Frames) -> bytes:
        table = CAN_FRAMES.from_columns(**cols)
        return encode_batch("bench-car", "can0", table, next(seq), dict_id=dict_id, dicts=d).encode()

    def dec(data: bytes) -> list[tuple[Any, ...]]:
        t = Batch.decode(data).table(dicts=d)
        return list(zip(t["timestamp_ns"].tolist(), t["channel"].values(),  # type: ignore[union-attr]
                        t["arbitration_id"].tolist(), t["flags"].tolist(),  # type: ignore[union-attr]
                        t["dlc"].tolist(), t["data"], strict=True))  # type: ignore[union-attr]

    return enc, dec


def measure(
    name: str,
    variant: tuple[Callable[..., bytes], Callable[..., Any]],
    batches: list[Frames],
    repeat: int,
) -> dict[str, float]:
    enc, dec = variant
    cols = [as_columns(b) for b in batches]
    n = sum(len(b) for b in batches)
    best_enc = best_dec = float("inf")
    encoded: list[bytes] = []
    for _ in range(repeat):
        t0 = time.process_time()
        encoded = [enc(c, b) for c, b in zip(cols, batches, strict=True)]
        best_enc = min(best_enc, time.process_time() - t0)
    for _ in range(repeat):
        t0 = time.process_time()
        decoded = [dec(e) for e in encoded]
        best_dec = min(best_dec, time.process_time() - t0)
    for b, d in zip(batches, decoded, strict=True):
        if frame_tuples(b) != [tuple(x) for x in d]:
            raise SystemExit(f"{name}: round trip is not lossless")
    return {
        "bytes_per_frame": sum(map(len, encoded)) / n,
        "encode_frames_per_s": n / best_enc if best_enc else float("inf"),
        "decode_frames_per_s": n / best_dec if best_dec else float("inf"),
    }


def run(repeat: int) -> dict[str, Any]:
    frames, _ = load_frames(LOG)
    t_split = frames[0].timestamp_ns + 20 * 10**9
    train_frames = [f for f in frames if f.timestamp_ns < t_split]
    test_frames = [f for f in frames if f.timestamp_ns >= t_split]
    samples = [pack(CAN_FRAMES.encode(CAN_FRAMES.from_columns(**as_columns(b))))
               for b in cut(train_frames, 100_000_000)]
    dicts = Dictionaries([train_dictionary(samples, 32 * 1024)])
    variants: list[tuple[str, Any, Frames]] = [
        ("candump text", candump_variant(), frames),
        ("JSON per frame", json_variant(), frames),
        ("row msgpack+zstd (baseline)", row_msgpack_variant(), frames),
        ("can.frames/1", cvis_variant(None), frames),
        ("can.frames/1 on last 40 s", cvis_variant(None), test_frames),
        ("can.frames/1 + dict, last 40 s", cvis_variant(dicts), test_frames),
    ]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, variant, fr in variants:
        results[name] = {}
        for label, window in (("100ms", 100_000_000), ("1s", 1_000_000_000)):
            results[name][label] = measure(name, variant, cut(fr, window), repeat)
    return {"results": results, "frames": len(frames), "dict_bytes": len(dicts.raw(dicts.ids()[0]))}


def report(out: dict[str, Any], as_json: bool, console: Console) -> dict[str, Any]:
    res = out["results"]
    t = RichTable(title=f"CAN frames on the wire: real RAV4 log, {out['frames']} frames, one core")
    for col in ("variant", "B/frame 100 ms", "B/frame 1 s", "encode fr/s (100 ms)",
                "decode fr/s (100 ms)", "encode fr/s (1 s)"):
        t.add_column(col, justify="right" if col != "variant" else "left")
    for name, r in res.items():
        t.add_row(name, f"{r['100ms']['bytes_per_frame']:.2f}", f"{r['1s']['bytes_per_frame']:.2f}",
                  f"{r['100ms']['encode_frames_per_s']:,.0f}", f"{r['100ms']['decode_frames_per_s']:,.0f}",
                  f"{r['1s']['encode_frames_per_s']:,.0f}")
    console.print(t)
    cv = res["can.frames/1"]
    base = res["row msgpack+zstd (baseline)"]
    dct = res["can.frames/1 + dict, last 40 s"]
    summary = {
        "bytes_per_frame_100ms": round(cv["100ms"]["bytes_per_frame"], 3),
        "bytes_per_frame_1s": round(cv["1s"]["bytes_per_frame"], 3),
        "encode_frames_per_s": round(cv["100ms"]["encode_frames_per_s"]),
        "decode_frames_per_s": round(cv["100ms"]["decode_frames_per_s"]),
        "encode_frames_per_s_1s": round(cv["1s"]["encode_frames_per_s"]),
        "baseline_row_msgpack_zstd_bytes_per_frame_100ms": round(base["100ms"]["bytes_per_frame"], 3),
        "baseline_row_msgpack_zstd_bytes_per_frame_1s": round(base["1s"]["bytes_per_frame"], 3),
        "dict_bytes_per_frame_100ms": round(dct["100ms"]["bytes_per_frame"], 3),
        "nodict_same_frames_bytes_per_frame_100ms": round(
            res["can.frames/1 on last 40 s"]["100ms"]["bytes_per_frame"], 3
        ),
        "candump_text_bytes_per_frame": round(res["candump text"]["100ms"]["bytes_per_frame"], 3),
        "json_bytes_per_frame": round(res["JSON per frame"]["100ms"]["bytes_per_frame"], 3),
        "dict_size_bytes": out["dict_bytes"],
        "goal_bytes_per_frame_100ms": 5.0,
        "goal_encode_frames_per_s": 1_000_000,
    }
    console.print(
        f"can.frames/1 at 100 ms: {summary['bytes_per_frame_100ms']} B/frame "
        f"({summary['baseline_row_msgpack_zstd_bytes_per_frame_100ms']} for the row-wise baseline), "
        f"{summary['dict_bytes_per_frame_100ms']} with a {out['dict_bytes']} B trained dictionary; "
        f"encode {summary['encode_frames_per_s']:,} frames/s"
    )
    if as_json:
        print(json.dumps(summary))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--repeat", type=int, default=3, help="best of N timing runs (default 3)")
    args = p.parse_args(argv)
    if not LOG.exists():
        print(f"real log not found: {LOG}", file=sys.stderr)
        return 2
    console = Console(stderr=args.json, width=max(Console().width, 130))
    report(run(args.repeat), args.json, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
