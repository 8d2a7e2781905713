"""``cvis server``: migrate the index once, then run and watch the worker processes.

Each ingest worker is ``python -m ingest_server.worker --config <data_dir>/run/server.toml
--worker-id N`` with the effective configuration written out, so a worker restarted alone sees
exactly what the supervisor saw. Unless ``[hazards] enabled = false`` (``cvis server
--no-hazards``), hazard workers run beside them the same way, one process per group of
``[hazards] tiles`` (one for every tile by default): ``python -m ingest_server.hazards.process
--config ... --worker-id N``; they record their warnings in the same index.

A worker that exits is restarted with exponential backoff (1 s doubling to 30 s, reset after a
minute of good running); an ingest worker's recovery repairs whatever it left half-written.
Stopping sends SIGTERM to every worker (an ingest worker flushes, acks and closes its segment;
a hazard worker flushes its warnings to the index) and SIGKILL to any that is still running
after the timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from ingest_server.config import ServerConfig, config_to_toml
from ingest_server.index.queries import Index

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0


#: Module run by each kind of worker process, and its name in logs.
INGEST = ("ingest_server.worker", "worker")
HAZARDS = ("ingest_server.hazards.process", "hazard worker")


@dataclass(slots=True)
class _Slot:
    worker: int
    kind: tuple[str, str] = INGEST
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = BACKOFF_MIN_S
    restart_at: float = 0.0
    restarts: int = 0


class Supervisor:
    """Runs ``config.workers`` ingest workers and the hazard workers, and keeps them running."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config.model_copy(update={"data_dir": config.data_dir.resolve()})
        self.run_dir = self.config.data_dir / "run"
        self.config_path = self.run_dir / "server.toml"
        self.slots = [_Slot(i) for i in range(self.config.workers)]
        self.hazard_slots = [_Slot(i, HAZARDS)
                             for i in range(len(self.config.hazards.tile_groups))]
        self._stopping = False

    def _all(self) -> list[_Slot]:
        return self.slots + self.hazard_slots

    def start(self) -> Supervisor:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        Index.open(cfg.resolved_index_url, busy_timeout_s=cfg.index.busy_timeout_s,
                   synchronous=cfg.index.sqlite_synchronous).close()
        data = config_to_toml(cfg.model_copy(update={"index_url": cfg.resolved_index_url}))
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(data)
        os.chmod(tmp, 0o600)  # may hold broker or database credentials
        tmp.replace(self.config_path)
        for slot in self._all():
            self._spawn(slot)
        log.info("server: %d ingest worker(s) and %d hazard worker(s) on %s, archive in %s",
                 len(self.slots), len(self.hazard_slots), cfg.broker.url, cfg.data_dir)
        return self

    def _spawn(self, slot: _Slot) -> None:
        module, name = slot.kind
        slot.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(self.config_path),
             "--worker-id", str(slot.worker)],
            stdin=subprocess.DEVNULL,
        )
        slot.started = time.monotonic()
        log.info("server: %s %d started (pid %d)", name, slot.worker, slot.proc.pid)

    def poll(self) -> None:
        """Restart workers that exited (call every few hundred ms)."""
        now = time.monotonic()
        for slot in self._all():
            proc = slot.proc
            if proc is not None and proc.poll() is not None:
                code = proc.returncode
                slot.proc = None
                if now - slot.started >= HEALTHY_AFTER_S:
                    slot.backoff = BACKOFF_MIN_S
                slot.restart_at = now + slot.backoff
                log.warning("server: %s %d exited with %s; restarting in %.0f s",
                            slot.kind[1], slot.worker, code, slot.backoff)
                slot.backoff = min(slot.backoff * 2, BACKOFF_MAX_S)
            if slot.proc is None and not self._stopping and now >= slot.restart_at:
                slot.restarts += 1
                self._spawn(slot)

    def pids(self) -> list[int | None]:
        """Process ids of the ingest workers (None while one waits for its restart)."""
        return [s.proc.pid if s.proc else None for s in self.slots]

    def hazard_pids(self) -> list[int | None]:
        return [s.proc.pid if s.proc else None for s in self.hazard_slots]

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(0.2):
            self.poll()

    def stop(self, timeout: float = 20.0) -> None:
        self._stopping = True
        procs = [s.proc for s in self._all() if s.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("server: worker pid %d did not stop in %.0f s; killing it", p.pid,
                            timeout)
                p.kill()
                p.wait()
        # An ingest worker that was down (waiting out its restart backoff) or did not stop
        # cleanly left its segment open: finish it now, so a stopped server leaves only
        # complete MCAP files. Every worker has exited, so nothing else writes them.
        unclean = [s.worker for s in self.slots if s.proc is None or s.proc.returncode != 0]
        if unclean:
            self._recover(unclean)
        for s in self._all():
            s.proc = None
        log.info("server: stopped")

    def _recover(self, workers: list[int]) -> None:
        from ingest_server.archive.recovery import recover_worker

        cfg = self.config
        index = Index.open(cfg.resolved_index_url, busy_timeout_s=cfg.index.busy_timeout_s,
                           synchronous=cfg.index.sqlite_synchronous)
        try:
            for worker in workers:
                n = recover_worker(cfg.data_dir, worker, index)
                if n:
                    log.info("server: finished %d segment(s) worker %d left open", n, worker)
        finally:
            index.close()

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
