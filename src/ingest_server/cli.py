"""``cvis server`` and ``cvis archive ls|info|export``.

``cvis server [--config server.toml] [--broker URL] [--data-dir D] [--index URL] [--workers N]
[--mqtt-version 5|3.1.1] [--no-hazards]`` runs the ingest workers and the hazard workers
(``[hazards]`` in the config; ``--no-hazards`` turns them off) in the foreground until Ctrl-C or
SIGTERM.

``cvis archive ls|info|export --data-dir D [--index URL] [--agent A] [--stream S] [--from T]
[--to T] [--json]`` queries an archive; ``T`` is ISO 8601 (``2018-08-02T16:34:47Z``, UTC when
no zone is given) or Unix seconds, compared with log time (server time). ``export -o FILE``
writes the slice as MCAP (``--format mcap``, the default) or the raw CAN frames of one agent as
a candump ``-L`` log (``--format candump``), with a progress bar on a terminal.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from ingest_server.errors import IngestServerError, QueryError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the server: N ingest workers (archive, index, acks) "
                                      "and hazard workers (warnings)")
    p.add_argument("--config", type=Path, help="server TOML (see ingest_server.config)")
    p.add_argument("--broker", help="broker URL, e.g. mqtt://127.0.0.1:1883")
    p.add_argument("--data-dir", type=Path, help="archive directory")
    p.add_argument("--index", help="index URL (default: SQLite in the data directory)")
    p.add_argument("--workers", type=int, help="ingest worker processes")
    p.add_argument("--mqtt-version", choices=("5", "3.1.1"),
                   help="MQTT protocol of the ingest workers (default 5; 3.1.1 has no shared "
                        "subscriptions, so it runs one worker)")
    p.add_argument("--no-hazards", action="store_true",
                   help="run no hazard workers (default: as [hazards] in the config says)")
    p.set_defaults(func=run_server)

    a = sub.add_parser("archive", help="list, inspect and export what the server archived")
    asub = a.add_subparsers(dest="archive_command", metavar="ACTION")
    asub.required = True
    for name, helptext, func in (
        ("ls", "streams per agent: batches, records, bytes, time range", run_ls),
        ("info", "segments, totals and refused messages", run_info),
        ("export", "a time-range slice as MCAP or a candump -L log", run_export),
    ):
        q = asub.add_parser(name, help=helptext)
        q.add_argument("--data-dir", type=Path, required=True, help="archive directory")
        q.add_argument("--index", help="index URL (default: SQLite in the data directory)")
        q.add_argument("--agent", help="only this agent")
        q.add_argument("--stream", help="only this stream")
        q.add_argument("--from", dest="start", help="start (ISO 8601 or Unix seconds)")
        q.add_argument("--to", dest="end", help="end, inclusive (ISO 8601 or Unix seconds)")
        q.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if name == "export":
            q.add_argument("-o", "--output", type=Path, required=True, help="file to write")
            q.add_argument("--format", choices=("mcap", "candump"), default="mcap")
            q.add_argument("--clock", choices=("capture", "server"), default="capture",
                           help="candump timestamps: the agent's capture time or server time")
        q.set_defaults(func=func)


# cvis server ---------------------------------------------------------------------------


def run_server(args: argparse.Namespace) -> int:
    from ingest_server.config import load_config
    from ingest_server.server import Supervisor

    overrides: dict[str, Any] = {}
    if args.broker:
        overrides["broker"] = {"url": args.broker}
    if args.data_dir:
        overrides["data_dir"] = str(args.data_dir)
    if args.index:
        overrides["index_url"] = args.index
    if args.mqtt_version:
        overrides.setdefault("broker", {})["mqtt_version"] = args.mqtt_version
    if args.workers:
        overrides["workers"] = args.workers
    if args.no_hazards:
        overrides["hazards"] = {"enabled": False}
    try:
        config = load_config(args.config, overrides=overrides)
    except IngestServerError as exc:
        print(f"cvis server: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sup = Supervisor(config)
    try:
        sup.start()
    except IngestServerError as exc:
        print(f"cvis server: {exc}", file=sys.stderr)
        sup.stop()
        return 1
    groups = config.hazards.tile_groups
    hazards = ("no hazard workers" if not groups else
               f"{len(groups)} hazard worker(s) for "
               + ("every tile" if groups == [[]] else "tiles " + " ".join(t for g in groups for t in g)))
    print(f"cvis server: {config.workers} worker(s) on {config.broker.url}, archive in "
          f"{sup.config.data_dir}, {hazards}; Ctrl-C stops", flush=True)
    try:
        sup.run(stop)
    finally:
        sup.stop()
    return 0


# cvis archive --------------------------------------------------------------------------


def parse_time(text: str | None) -> int | None:
    """ISO 8601 (UTC unless a zone is given) or Unix seconds -> ns."""
    if text is None:
        return None
    try:
        secs = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(secs):
            raise QueryError(f"time {text!r} is not finite")
        return round(secs * 1e9)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"time {text!r}: use ISO 8601 (2018-08-02T16:34:47Z) or Unix "
                         "seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1e9)


def _fmt_time(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _fmt_bytes(n: int | None) -> str:
    v = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TiB"


def _open(args: argparse.Namespace) -> Any:
    from ingest_server.index.queries import Index

    if not args.data_dir.is_dir():
        raise QueryError(f"{args.data_dir} is not an archive directory")
    url = args.index or f"sqlite:///{(args.data_dir / 'index.sqlite').resolve()}"
    if url.startswith("sqlite") and not args.index and not (args.data_dir / "index.sqlite").exists():
        raise QueryError(f"{args.data_dir} has no index.sqlite; pass --index for PostgreSQL")
    return Index.open(url, migrate=False)


def _query(args: argparse.Namespace) -> dict[str, Any]:
    start, end = parse_time(args.start), parse_time(args.end)
    if start is not None and end is not None and end < start:
        raise QueryError("--to is before --from")
    return {"agent": args.agent, "stream": args.stream, "start_ns": start, "end_ns": end}


def _guard(fn: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except IngestServerError as exc:
            print(f"cvis archive {args.archive_command}: {exc}", file=sys.stderr)
            return 1
    wrapped.__name__ = fn.__name__
    return wrapped


@_guard
def run_ls(args: argparse.Namespace) -> int:
    index = _open(args)
    try:
        rows = index.stream_summary(**_query(args))
    finally:
        index.close()
    if args.json:
        print(json.dumps(rows))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"archive {args.data_dir}")
    for col in ("agent", "stream", "schema", "batches", "records", "bytes", "first", "last",
                "seqs", "segments"):
        t.add_column(col, justify="right" if col in ("batches", "records", "bytes") else "left")
    for r in rows:
        t.add_row(r["agent"], r["stream"], r["schema"], str(r["batches"]), str(r["records"]),
                  _fmt_bytes(r["bytes"]), _fmt_time(r["first_ns"]), _fmt_time(r["last_ns"]),
                  f"{r['seq_min']}-{r['seq_max']}", str(r["segments"]))
    Console().print(t)
    if not rows:
        print("nothing archived matches")
    return 0


@_guard
def run_info(args: argparse.Namespace) -> int:
    index = _open(args)
    try:
        q = _query(args)
        filtered = any(v is not None for v in q.values())
        seg_ids = {r.segment_id for r in index.batch_rows(**q)} if filtered else None
        segs = [s for s in index.segments() if seg_ids is None or s.id in seg_ids]
        streams = index.stream_summary(**q)
        rejects = index.reject_totals()
        quarantined = index.quarantine_entries(20)
    finally:
        index.close()
    info = {
        "segments": [{
            "path": s.path, "worker": s.worker, "state": s.state, "recovered": s.recovered,
            "start_ns": s.start_ns, "end_ns": s.end_ns, "bytes": s.bytes,
            "messages": s.messages, "batches": s.batches,
        } for s in segs],
        "totals": {
            "agents": len({r["agent"] for r in streams}), "streams": len(streams),
            "batches": sum(r["batches"] for r in streams),
            "records": sum(r["records"] for r in streams),
            "segment_bytes": sum(s.bytes for s in segs),
        },
        "rejected": rejects,
        "quarantine": [{
            "received_ns": e["received_ns"], "worker": e["worker"], "topic": e["topic"],
            "reason": e["reason"], "detail": e["detail"], "size": e["size"],
        } for e in quarantined],
    }
    if args.json:
        print(json.dumps(info))
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"segments of {args.data_dir}")
    for col in ("path", "worker", "state", "start", "end", "bytes", "messages", "batches"):
        t.add_column(col)
    for s in info["segments"]:
        state = s["state"] + (" (recovered)" if s["recovered"] else "")
        t.add_row(s["path"], str(s["worker"]), state, _fmt_time(s["start_ns"]),
                  _fmt_time(s["end_ns"]), _fmt_bytes(s["bytes"]), str(s["messages"]),
                  str(s["batches"]))
    con.print(t)
    tot = info["totals"]
    con.print(f"{tot['agents']} agents, {tot['streams']} streams, {tot['batches']} batches, "
              f"{tot['records']} records, {_fmt_bytes(tot['segment_bytes'])} of segments")
    if rejects:
        con.print("refused: " + ", ".join(f"{k} {v}" for k, v in sorted(rejects.items())))
        for e in info["quarantine"][:5]:
            con.print(f"  {_fmt_time(e['received_ns'])} {e['reason']} on {e['topic']}: "
                      f"{e['detail']}")
    return 0


@_guard
def run_export(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ingest_server.archive.export import export_candump, export_mcap
    from ingest_server.archive.reader import ArchiveReader

    index = _open(args)
    q = _query(args)
    show = sys.stderr.isatty() and not args.json
    progress = Progress(TextColumn("export"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeRemainingColumn(), disable=not show, transient=True)
    try:
        reader = ArchiveReader(args.data_dir, index)
        with progress:
            task = progress.add_task("export", total=None)

            def report(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            if args.format == "candump":
                tmp = args.output.with_name(args.output.name + ".part")
                try:
                    with open(tmp, "w", encoding="ascii", newline="\n") as out:
                        n = export_candump(reader, out, **q, clock=args.clock, progress=report)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                tmp.replace(args.output)
                result: dict[str, Any] = {"format": "candump", "frames": n,
                                          "path": str(args.output)}
            else:
                r = export_mcap(reader, args.output, **q, progress=report)
                result = {"format": "mcap", "messages": r.messages, "batches": r.batches,
                          "bytes": r.bytes, "path": str(args.output)}
    finally:
        index.close()
    if args.json:
        print(json.dumps(result))
    elif args.format == "candump":
        print(f"wrote {result['frames']} CAN frames to {args.output}")
    else:
        print(f"wrote {result['messages']} messages of {result['batches']} batches "
              f"({_fmt_bytes(result['bytes'])}) to {args.output}")
    return 0
