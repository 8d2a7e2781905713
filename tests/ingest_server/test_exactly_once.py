"""Exactly once, end to end, under kill -9 and network cuts.

Three agent stand-ins (:class:`AgentPublisher`: keep each batch until acked, resend after a
reconnect or an ack timeout) replay the real RAV4 CAN log, comma's u-blox fixes and vtest.avi
frames through a TCP proxy to a real Mosquitto, where two ingest workers (real processes, one
shared subscription) archive them. Meanwhile the test kills workers (SIGKILL) and the broker
(SIGKILL, then restarts it), and cuts every connection through the proxy for a second or two.
After draining, the archive must hold every CAN frame of the log exactly once per agent
(frame by frame), every fix and camera frame, every acked batch, and no duplicate message in
any segment file, read both through the index and raw.

``CVIS_EXACTLY_ONCE_KILLS`` sets the number of kills (default 20).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from cvis.broker import ManagedBroker, free_port
from ingest_server.archive.foxglove_schemas import CAN_SCHEMA_NAME, decode_can_frames
from ingest_server.archive.reader import ArchiveReader
from ingest_server.archive.recovery import scan_segment
from ingest_server.config import build_config, config_to_toml
from ingest_server.index.queries import Index
from tests.ingest_server.publisher import (
    AgentPublisher,
    camera_batches,
    camera_frames,
    can_batches,
    can_frames,
    gnss_batches,
    gnss_fixes,
    interleave,
)

KILLS = int(os.environ.get("CVIS_EXACTLY_ONCE_KILLS", "20"))
AGENTS = ("veh1", "veh2", "veh3")
WORKERS = 2


class TcpProxy:
    """Forwards TCP connections to a target; ``cut()`` drops them all and refuses new ones."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = free_port(host)
        self._listener = socket.create_server((host, self.port))
        self._listener.settimeout(0.1)
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._refusing = False
        self._stop = threading.Event()
        self.cuts = 0
        self._accept_thread = threading.Thread(target=self._accept, name="proxy-accept")
        self._accept_thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=1)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    t = threading.Thread(target=self._pump, args=(a, b), name="proxy-pump")
                    self._threads.append(t)
                    t.start()
                self._threads = [t for t in self._threads if t.is_alive() or not t.ident]

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self, seconds: float) -> None:
        self.cuts += 1
        self._refusing = True
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._conns = []
        time.sleep(seconds)
        self._refusing = False

    def close(self) -> None:
        self._stop.set()
        self._accept_thread.join(5)
        self._listener.close()
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            threads = list(self._threads)
        for t in threads:
            t.join(5)


class WorkerProcs:
    """The ingest workers as real processes, killed and restarted at will."""

    def __init__(self, config_path: Path, log_dir: Path) -> None:
        self.config_path = config_path
        self.log_dir = log_dir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.starts: Counter[int] = Counter()
        self.kills = 0

    def log_path(self, i: int) -> Path:
        return self.log_dir / f"worker-{i}-{self.starts[i]}.log"

    def start(self, i: int) -> None:
        self.starts[i] += 1
        with open(self.log_path(i), "ab") as log:
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "ingest_server.worker", "--config", str(self.config_path),
                 "--worker-id", str(i)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every worker has finished starting (recovery done, subscribed)."""
        deadline = time.monotonic() + timeout
        for i in self.procs:
            path = self.log_path(i)
            while " connected to " not in path.read_text(errors="replace"):
                assert self.procs[i].poll() is None, f"worker {i} exited; see {path}"
                assert time.monotonic() < deadline, f"worker {i} did not start; see {path}"
                time.sleep(0.1)

    def kill(self, i: int) -> None:
        p = self.procs.pop(i, None)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            self.kills += 1
        if p is not None:
            p.wait()

    def ensure_running(self) -> None:
        for i in range(WORKERS):
            p = self.procs.get(i)
            if p is None or p.poll() is not None:
                if p is not None:
                    p.wait()
                self.start(i)

    def stop_all(self) -> list[int | None]:
        codes = []
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for i, p in sorted(self.procs.items()):
            try:
                codes.append(p.wait(60))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
            del i
        self.procs = {}
        return codes


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_exactly_once_through_kills_and_cuts(
    tmp_path: Path, own_broker: ManagedBroker, index_url: str, shared_data: Path
) -> None:
    rng = random.Random(5)
    frames = can_frames(shared_data)
    fixes = gnss_fixes(shared_data)
    images = camera_frames(shared_data, 20)
    plan = {
        a: interleave(can_batches(a, frames, offset_ns=k * 1_000_000),
                      gnss_batches(a, fixes), camera_batches(a, images))
        for k, a in enumerate(AGENTS)
    }
    proxy = TcpProxy(own_broker.port)
    cfg = build_config({
        "data_dir": str(tmp_path / "data"), "index_url": index_url,
        "broker": {"url": f"mqtt://127.0.0.1:{proxy.port}", "keepalive_s": 5},
        "ingest": {"flush_interval_ms": 50}, "archive": {"segment_max_s": 4.0},
    }, env={})
    cfg_path = tmp_path / "server.toml"
    cfg_path.write_text(config_to_toml(cfg))
    Index.open(cfg.resolved_index_url).close()  # migrate once, as `cvis server` does
    workers = WorkerProcs(cfg_path, tmp_path)
    pubs: list[AgentPublisher] = []
    broker_kills = 0
    try:
        workers.ensure_running()
        pubs = [AgentPublisher("127.0.0.1", proxy.port, a, b, window=32, ack_timeout=3.0,
                               rate=30.0).start() for a, b in plan.items()]
        # Chaos until enough kills happened and every batch was sent at least once.
        while workers.kills + broker_kills < KILLS or any(
                p._next < len(p.batches) for p in pubs):
            time.sleep(rng.uniform(0.5, 1.5))
            action = rng.random()
            if action < 0.7:
                workers.kill(rng.randrange(WORKERS))
                time.sleep(rng.uniform(0.0, 0.8))
            elif action < 0.85:
                own_broker.kill()
                broker_kills += 1
                time.sleep(rng.uniform(0.2, 1.0))
                own_broker.start()
            else:
                proxy.cut(rng.uniform(0.5, 2.0))
            workers.ensure_running()
        # Drain: everything up, wait for every ack.
        workers.ensure_running()
        for p in pubs:
            assert p.done.wait(120), (
                f"{p.agent}: {len(p.acked)} of {len(p.batches)} acked after the chaos "
                f"(worker logs in {tmp_path})")
        workers.wait_ready()
    finally:
        for p in pubs:
            p.stop()
        codes = workers.stop_all()
        proxy.close()
    assert codes == [0] * WORKERS, f"workers did not stop cleanly: {codes}"
    assert workers.kills + broker_kills >= KILLS
    print(f"exactly-once: {workers.kills} worker kills, {broker_kills} broker kills, "
          f"{proxy.cuts} network cuts, resends {sum(p.resends for p in pubs)}")

    for p in pubs:
        assert p.acked == {(b.stream, b.seq) for b in p.batches}
        assert p.bad_acks == 0
    index = Index.open(cfg.resolved_index_url, migrate=False)
    try:
        assert index.count_batches() == sum(len(b) for b in plan.values())
        assert all(s.state == "closed" for s in index.segments())
        reader = ArchiveReader(cfg.data_dir, index)
        for a in AGENTS:
            got = [f for m in reader.can_batches(agent=a) for f in m.table.records()]
            assert len(got) == len(frames) and got == frames, f"{a}: CAN frames differ"
            fix_msgs = list(reader.messages(agent=a, stream="gnss"))
            assert len(fix_msgs) == len(fixes)
            img_msgs = list(reader.messages(agent=a, stream="camera.front"))
            assert len(img_msgs) == len(images)
            for img, m in zip(images, img_msgs, strict=True):
                assert img.jpeg in m.message.data
    finally:
        index.close()
    # The files themselves, without the index: no message twice, none missing.
    can_seen: Counter[tuple[str, int]] = Counter()
    other_seen: Counter[tuple[str, int]] = Counter()
    for path in sorted(cfg.data_dir.glob("segments/*/*.mcap")):
        msgs, truncated = scan_segment(path)
        assert not truncated, f"{path} is not a finished MCAP file"
        for schema, ch, m in msgs:
            if schema is not None and schema.name == CAN_SCHEMA_NAME:
                c = decode_can_frames(m.data)
                can_seen[(c.agent, c.seq)] += 1
            else:
                other_seen[(ch.topic, m.log_time)] += 1
    assert not list(cfg.data_dir.glob("segments/*/*.rewrite"))
    n_can = len(can_batches("x", frames))
    assert set(can_seen) == {(a, s) for a in AGENTS for s in range(n_can)}
    assert max(can_seen.values()) == 1, "a CAN batch is stored twice in the segment files"
    assert max(other_seen.values()) == 1, "a GNSS or camera message is stored twice"
    assert len(other_seen) == len(AGENTS) * (len(fixes) + len(images))
