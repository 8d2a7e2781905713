"""``cvis hazards``: run hazard workers on their own until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from ingest_server.errors import IngestServerError
from ingest_server.hazards.errors import HazardError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    p = sub.add_parser("hazards", help="run live-plane hazard workers (FCW, EBW, ICW, VRUCW)")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL (mqtt://host:port)")
    p.add_argument("--tiles", nargs="*", default=[], metavar="TILE",
                   help="own these tiles (like n3776w12243); default: every tile")
    p.add_argument("--config", type=Path, help="hazard settings (TOML, [hazards] table or top level)")
    p.add_argument("--db", metavar="URL",
                   help="record warnings in this index (SQLAlchemy URL, e.g. the server's "
                        "sqlite:///DATA/index.sqlite; migrated to the current schema)")
    p.add_argument("--stats-every", type=float, default=30.0, metavar="S",
                   help="log a statistics line this often (0: never)")
    p.add_argument("--stats-json", type=Path, metavar="FILE",
                   help="write the final statistics as JSON here on exit (for benchmarks)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: every cvis command builds its parser from this module.
    from ingest_server.hazards.config import HazardConfig
    from ingest_server.hazards.record import WarningRecorder
    from ingest_server.hazards.worker import HazardWorker

    try:
        config = HazardConfig.load_file(args.config) if args.config else HazardConfig()
        recorder = None
        if args.db:
            from ingest_server.index import migrations

            engine = migrations.create_engine(args.db)
            migrations.migrate(engine)
            recorder = WarningRecorder(engine, create=False)
        worker = HazardWorker(args.broker, tiles=args.tiles, config=config, recorder=recorder)
    except (HazardError, IngestServerError, ValueError) as exc:
        print(f"cvis hazards: {exc}")
        return 2
    # Hand the GIL between paho's network thread and the evaluation thread every 1 ms instead
    # of 5 ms, so a warning being published does not wait behind a batch of evaluations.
    sys.setswitchinterval(0.001)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.start()
    except HazardError as exc:
        print(f"cvis hazards: {exc}")
        return 1
    print(f"hazard worker on {args.broker}, tiles: {' '.join(args.tiles) or 'all'}; Ctrl-C stops it",
          flush=True)
    try:
        every = args.stats_every if args.stats_every > 0 else None
        while not stop.wait(every or 3600.0):
            if every:
                log.info("hazards: %s", worker.stats())
    finally:
        worker.stop()
        if args.stats_json:
            args.stats_json.write_text(json.dumps(worker.stats()))
    return 0
