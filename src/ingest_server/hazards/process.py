"""A hazard worker as a child process of ``cvis server``.

``python -m ingest_server.hazards.process --config <data_dir>/run/server.toml --worker-id N``
reads the configuration the supervisor wrote, runs a
:class:`~ingest_server.hazards.worker.HazardWorker` for the tiles of group ``N`` of
``[hazards] tiles`` (every tile by default) against the server's broker, and records every
warning in the ``warnings`` table of the server's index, which the supervisor has migrated.

A process of its own, like each ingest worker: the hazard worker hands the GIL between paho's
network thread and its evaluation thread every millisecond (as ``cvis hazards`` does), and
neither it nor the ingest workers should wait for the other's Python code. SIGTERM or SIGINT
stops it: disconnect, finish the evaluation thread, flush the recorder, exit 0. Exit 2 is a
configuration error, 1 a broker or index that cannot be used; the supervisor restarts it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from ingest_server.config import load_config
from ingest_server.errors import IngestServerError
from ingest_server.hazards.errors import HazardError
from ingest_server.hazards.record import WarningRecorder
from ingest_server.hazards.worker import HazardWorker
from ingest_server.index import migrations

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_CONFIG = 2
#: GIL switch interval of a hazard worker process (Python's default is 5 ms).
SWITCH_INTERVAL_S = 0.001


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ingest_server.hazards.process",
                                description="one cvis hazard worker (started by `cvis server`)")
    p.add_argument("--config", type=Path, help="server TOML")
    p.add_argument("--worker-id", type=int, default=0, help="which [hazards] tiles group to own")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
    except IngestServerError as exc:
        print(f"hazard worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    n = args.worker_id
    groups = config.hazards.tile_groups
    if not 0 <= n < len(groups):
        log.error("hazard worker %d: the configuration has %d hazard worker(s)", n, len(groups))
        return EXIT_CONFIG
    b = config.broker
    try:
        engine = migrations.create_engine(config.resolved_index_url,
                                          busy_timeout_s=config.index.busy_timeout_s,
                                          synchronous=config.index.sqlite_synchronous)
        migrations.check_version(engine)
        recorder = WarningRecorder(engine, create=False)
        worker = HazardWorker(
            b.url, tiles=groups[n], config=config.hazards.thresholds(), recorder=recorder,
            client_id=f"{b.client_id_prefix}-hazards-{n}", username=b.username,
            password=b.password, tls_ca=str(b.tls_ca) if b.tls_ca else None,
            tls_cert=str(b.tls_cert) if b.tls_cert else None,
            tls_key=str(b.tls_key) if b.tls_key else None,
        )
    except (IngestServerError, HazardError) as exc:
        log.error("hazard worker %d: %s", n, exc)
        return EXIT_FAILED
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.start()
    except HazardError as exc:
        log.error("hazard worker %d: %s", n, exc)
        engine.dispose()
        return EXIT_FAILED
    log.info("hazard worker %d: started (tiles: %s, warnings recorded in the index)", n,
             " ".join(groups[n]) or "all")
    every = config.hazards.stats_every_s
    try:
        while not stop.wait(every if every > 0 else 3600.0):
            if every > 0:
                log.info("hazard worker %d: %s", n, worker.stats())
    finally:
        worker.stop()
        engine.dispose()
    log.info("hazard worker %d: stopped cleanly (%d warnings published, %d recorded)", n,
             worker.published, recorder.written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
