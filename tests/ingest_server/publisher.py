"""A small agent stand-in for the ingest tests and the benchmark: real batches, real acks.

:class:`AgentPublisher` behaves like the edge agent's uplink as far as the server can tell: it
keeps every batch until an :class:`wire.control.Ack` covers it, keeps at most ``window``
batches unacknowledged, resends what is unacknowledged after a reconnect or after
``ack_timeout`` seconds, and records which batches were acked and how long each ack took.

The batch builders cut the real captures in ../shared/data into wire batches: the RAV4 CAN
log in 100 ms batches, comma's u-blox fixes, and JPEG frames of vtest.avi.
"""

from __future__ import annotations

import csv
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_bridges.candump import read_candump
from wire.control import Ack
from wire.envelope import TimeQuality, encode_batch
from wire.errors import WireError
from wire.schemas import CAMERA_JPEG, CAN_FRAMES, GNSS_FIX, CameraFrame, CanFrame, GnssFix
from wire.topics import ack_topic, batch_topic

CAN_LOG = "can/toyota_rav4_comma2k19_seg40.log.gz"
GNSS_CSV = "can/comma2k19_seg40_gnss_ublox.csv"
VIDEO = "video/vtest.avi"


@dataclass(frozen=True, slots=True)
class OutBatch:
    stream: str
    seq: int
    payload: bytes
    records: int


_CAN_CACHE: dict[str, list[CanFrame]] = {}


def can_frames(shared_data: Path) -> list[CanFrame]:
    """Every frame of the real RAV4 log (cached per process)."""
    key = str(shared_data)
    if key not in _CAN_CACHE:
        _CAN_CACHE[key] = list(read_candump(shared_data / CAN_LOG))
    return _CAN_CACHE[key]


def can_batches(agent: str, frames: list[CanFrame], *, period_ns: int = 100_000_000,
                stream: str = "can", offset_ns: int = 0, first_seq: int = 0) -> list[OutBatch]:
    out: list[OutBatch] = []
    if not frames:
        return out
    start = frames[0].timestamp_ns
    seq = first_seq
    for _, group in itertools.groupby(frames, key=lambda f: (f.timestamp_ns - start) // period_ns):
        recs = list(group)
        b = encode_batch(agent, stream, CAN_FRAMES.table(recs), seq, clock_offset_ns=offset_ns,
                         time_quality=TimeQuality.SERVER_SYNCED)
        out.append(OutBatch(stream, seq, b.encode(), len(recs)))
        seq += 1
    return out


def gnss_fixes(shared_data: Path) -> list[GnssFix]:
    fixes = []
    with open(shared_data / GNSS_CSV, newline="") as f:
        for row in csv.DictReader(f):
            fixes.append(GnssFix(
                timestamp_ns=round(float(row["t_boot_s"]) * 1e9),
                time_utc_ns=round(float(row["utc_timestamp_s"])) * 1_000_000,
                lat=float(row["lat_deg"]), lon=float(row["lon_deg"]), alt_m=float(row["alt_m"]),
                speed_mps=float(row["speed_mps"]), course_deg=float(row["bearing_deg"]),
                fix_quality=1, satellites=9, hdop=0.9,
            ))
    return fixes


def gnss_batches(agent: str, fixes: list[GnssFix], *, per_batch: int = 10,
                 stream: str = "gnss", offset_ns: int = 0) -> list[OutBatch]:
    out = []
    for seq, i in enumerate(range(0, len(fixes), per_batch)):
        recs = fixes[i : i + per_batch]
        b = encode_batch(agent, stream, GNSS_FIX.table(recs), seq, clock_offset_ns=offset_ns)
        out.append(OutBatch(stream, seq, b.encode(), len(recs)))
    return out


def camera_frames(shared_data: Path, n: int, *, width: int = 320, quality: int = 70,
                  start_ns: int = 46_408_600_000_000, camera: str = "front") -> list[CameraFrame]:
    """``n`` JPEG frames of vtest.avi (scaled to ``width``), 10 fps from ``start_ns``."""
    import cv2

    cap = cv2.VideoCapture(str(shared_data / VIDEO))
    frames = []
    try:
        for i in range(n):
            ok, img = cap.read()
            if not ok:
                break
            h = img.shape[0] * width // img.shape[1]
            img = cv2.resize(img, (width, h))
            ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok
            frames.append(CameraFrame(start_ns + i * 100_000_000, camera, i, width, h,
                                      jpg.tobytes()))
    finally:
        cap.release()
    return frames


def camera_batches(agent: str, frames: list[CameraFrame], *, per_batch: int = 5,
                   stream: str = "camera.front", offset_ns: int = 0) -> list[OutBatch]:
    out = []
    for seq, i in enumerate(range(0, len(frames), per_batch)):
        recs = frames[i : i + per_batch]
        b = encode_batch(agent, stream, CAMERA_JPEG.table(recs), seq, clock_offset_ns=offset_ns)
        out.append(OutBatch(stream, seq, b.encode(), len(recs)))
    return out


def interleave(*lists: list[OutBatch]) -> list[OutBatch]:
    """Merge per-stream batch lists proportionally, as an agent would send them."""
    total = sum(len(x) for x in lists)
    out = []
    pos = [0] * len(lists)
    for k in range(total):
        best = min((i for i in range(len(lists)) if pos[i] < len(lists[i])),
                   key=lambda i: (pos[i] + 1) / len(lists[i]))
        out.append(lists[best][pos[best]])
        pos[best] += 1
        del k
    return out


class AgentPublisher:
    """Publishes batches at QoS 1 and keeps each until the server acks it."""

    def __init__(self, host: str, port: int, agent: str, batches: list[OutBatch], *,
                 window: int = 64, ack_timeout: float = 3.0, rate: float | None = None,
                 mqtt_version: str = "5") -> None:
        self.agent = agent
        self.host, self.port = host, port
        self.batches = batches
        self.window = window
        self.ack_timeout = ack_timeout
        self.rate = rate
        self._lock = threading.Lock()
        self._by_key = {(b.stream, b.seq): b for b in batches}
        self._next = 0
        self._unacked: dict[tuple[str, int], float] = {}
        self.acked: set[tuple[str, int]] = set()
        self.sent_at: dict[tuple[str, int], float] = {}
        self.ack_latency: list[float] = []
        self.sends = 0
        self.resends = 0
        self.reconnects = 0
        self.bad_acks = 0
        self._resend_all = threading.Event()
        self._stop = threading.Event()
        self.done = threading.Event()
        self._thread: threading.Thread | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-agent-{agent}",
                                  protocol=mqtt.MQTTv5 if mqtt_version == "5" else mqtt.MQTTv311)
        self.client.max_inflight_messages_set(max(20, window))
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.client.on_disconnect = lambda *a: self.connected.clear()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe(ack_topic(self.agent), qos=1)
        self.reconnects += 1
        self._resend_all.set()
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            ack = Ack.decode(msg.payload)
        except WireError:
            self.bad_acks += 1
            return
        now = time.monotonic()
        with self._lock:
            for stream, ranges in ack.ranges.items():
                for lo, hi in ranges:
                    for seq in range(lo, hi + 1):
                        key = (stream, seq)
                        if key not in self._by_key:
                            self.bad_acks += 1
                            continue
                        if key in self._unacked:
                            del self._unacked[key]
                            self.ack_latency.append(now - self.sent_at[key])
                        self.acked.add(key)
            if self._next >= len(self.batches) and not self._unacked:
                self.done.set()

    def start(self) -> AgentPublisher:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(self.host, self.port, keepalive=10, clean_start=False,
                                  properties=props)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._send_loop, name=f"pub-{self.agent}",
                                        daemon=True)
        self._thread.start()
        return self

    def _publish(self, key: tuple[str, int]) -> None:
        b = self._by_key[key]
        self.client.publish(batch_topic(self.agent, b.stream), b.payload, qos=1)

    def _send_loop(self) -> None:
        interval = 1.0 / self.rate if self.rate else 0.0
        next_at = time.monotonic()
        while not self._stop.is_set():
            if not self.connected.wait(0.05):
                continue
            now = time.monotonic()
            with self._lock:
                if self._resend_all.is_set():
                    self._resend_all.clear()
                    due = list(self._unacked)
                else:
                    due = [k for k, t in self._unacked.items() if now - t >= self.ack_timeout]
                for k in due:
                    self._unacked[k] = now
                self.resends += len(due)
            for k in due:
                self._publish(k)
            sent = 0
            while (self._next < len(self.batches) and len(self._unacked) < self.window
                   and not self._stop.is_set() and sent < 200):
                if interval and time.monotonic() < next_at:
                    break
                b = self.batches[self._next]
                key = (b.stream, b.seq)
                with self._lock:
                    self._unacked[key] = time.monotonic()
                    self.sent_at[key] = time.monotonic()
                    self._next += 1
                self._publish(key)
                self.sends += 1
                sent += 1
                next_at = max(next_at + interval, time.monotonic() - 1.0) if interval else 0.0
            with self._lock:
                if self._next >= len(self.batches) and not self._unacked:
                    self.done.set()
            time.sleep(0.005 if sent == 0 else 0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> AgentPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def iter_keys(batches: list[OutBatch]) -> Iterator[tuple[str, int]]:
    return ((b.stream, b.seq) for b in batches)
