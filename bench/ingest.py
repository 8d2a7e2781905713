"""Ingest benchmark: one cvis ingest worker against a subscriber that only counts.

In one run, on a managed Mosquitto, with publishers in their own process:

  (a) raw capacity: a paho subscriber on the same shared subscription that only counts;
  (b) one cvis ingest worker (validate, MCAP + fsync, SQLite index, acks) on the same load.

Load is made of reference vehicles built from the real captures: the RAV4 CAN log (2,258
frames/s) in 100 ms batches, comma's u-blox fixes (10 Hz, 1 s batches) and comma's decoded
speed/steering/wheel-speed signals (1 s batches); the camera vehicle adds a 1280x720 JPEG
camera at 10 fps (vtest.avi frames, 0.5 s batches). Each saturation phase publishes a fixed
set of batches as fast as the publisher can and times the consumer from its first message to
its last (for the worker: to the last one stored and acked). A paced phase then runs N
non-camera vehicles in real time and measures the ack latency the agents see (publish ->
Ack received).

Reported: batches/s, records/s, MB/s, CPU (one core = 100 %), peak RSS, ack latency p50/p99,
the ratio (b)/(a), and the number of non-camera reference vehicles one worker keeps up with
(per worker core: divided by the CPU the worker used). The machine is shared: publishers,
Mosquitto and the consumer compete for its cores, so figures are noisy.

    python bench/ingest.py [--json] [--vehicles 200] [--seconds 5] [--paced 100]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# bench/ holds scripts named like the packages they measure (wire.py): keep it off the path.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CVIS_SHARED_DATA", ROOT.parent / "shared" / "data"))
CAN_PER_S, GNSS_PER_S, SIGNALS_PER_S, CAMERA_PER_S = 10, 1, 1, 2


# Load ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Template:
    """A batch encoded once; each vehicle gets a copy with its own agent id and seq."""

    stream: str
    batch: Any  # wire.envelope.Batch


def templates(camera: bool) -> dict[str, list[Template]]:
    """Per stream, batches cut from the real captures (encoded once)."""
    import numpy as np

    from firmware_bridges.candump import read_candump
    from wire.envelope import TimeQuality, encode_batch
    from wire.schemas import CAMERA_JPEG, CAN_FRAMES, GNSS_FIX, VEHICLE_SIGNALS, GnssFix

    out: dict[str, list[Template]] = {}
    frames = list(read_candump(DATA / "can" / "toyota_rav4_comma2k19_seg40.log.gz"))
    t0 = frames[0].timestamp_ns
    out["can"] = [
        Template("can", encode_batch("tmpl", "can", CAN_FRAMES.table(list(g)), 0,
                                     time_quality=TimeQuality.SERVER_SYNCED))
        for _, g in itertools.groupby(frames, key=lambda f: (f.timestamp_ns - t0) // 100_000_000)
    ]
    with open(DATA / "can" / "comma2k19_seg40_gnss_ublox.csv", newline="") as f:
        fixes = [GnssFix(round(float(r["t_boot_s"]) * 1e9), round(float(r["utc_timestamp_s"])) * 10**6,
                         float(r["lat_deg"]), float(r["lon_deg"]), float(r["alt_m"]),
                         float(r["speed_mps"]), float(r["bearing_deg"]), 1, 9, 0.9)
                 for r in csv.DictReader(f)]
    out["gnss"] = [Template("gnss", encode_batch("tmpl", "gnss", GNSS_FIX.table(fixes[i:i + 10]), 0))
                   for i in range(0, len(fixes) - 9, 10)]
    with open(DATA / "can" / "comma2k19_seg40_reference_signals.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    tcol = "t_boot_s"
    names = [k for k in rows[0] if k != tcol]
    sig: list[Template] = []
    t_first = float(rows[0][tcol])
    for _, g in itertools.groupby(rows, key=lambda r: int(float(r[tcol]) - t_first)):
        g = list(g)
        ts = [round(float(r[tcol]) * 1e9) for r in g for _ in names]
        nm = [n for _ in g for n in names]
        val = [float(r[n]) if r[n] not in ("", None) else float("nan") for r in g for n in names]
        table = VEHICLE_SIGNALS.from_columns(timestamp_ns=np.asarray(ts), name=nm, value=val)
        sig.append(Template("signals", encode_batch("tmpl", "signals", table, 0)))
    out["signals"] = sig
    if camera:
        import cv2

        from wire.schemas import CameraFrame

        cap = cv2.VideoCapture(str(DATA / "video" / "vtest.avi"))
        jpgs = []
        for _ in range(50):
            ok, img = cap.read()
            if not ok:
                break
            ok, jpg = cv2.imencode(".jpg", cv2.resize(img, (1280, 720)),
                                   [cv2.IMWRITE_JPEG_QUALITY, 85])
            jpgs.append(jpg.tobytes())
        cap.release()
        cam = []
        for i in range(0, len(jpgs) - 4, 5):
            recs = [CameraFrame(t0 + (i + k) * 100_000_000, "front", i + k, 1280, 720, jpgs[i + k])
                    for k in range(5)]
            cam.append(Template("camera.front", encode_batch("tmpl", "camera.front",
                                                             CAMERA_JPEG.table(recs), 0)))
        out["camera.front"] = cam
    return out


def schedule(tmpl: dict[str, list[Template]], vehicles: int, seconds: int,
             camera: bool) -> list[list[tuple[str, str, int, int]]]:
    """Per 100 ms tick: (agent, stream, template index, seq) of the batches sent then."""
    per_s = {"can": CAN_PER_S, "gnss": GNSS_PER_S, "signals": SIGNALS_PER_S}
    if camera:
        per_s["camera.front"] = CAMERA_PER_S
    ticks: list[list[tuple[str, str, int, int]]] = []
    for tick in range(seconds * 10):
        now: list[tuple[str, str, int, int]] = []
        for v in range(vehicles):
            agent = f"{'cam' if camera else 'veh'}{v:04d}"
            for stream, n in per_s.items():
                every = 10 // n
                if (tick + v) % every == 0:
                    seq = tick // every
                    now.append((agent, stream, seq % len(tmpl[stream]), seq))
        ticks.append(now)
    return ticks


def records_of(tmpl: dict[str, list[Template]], ticks: list[list[tuple[str, str, int, int]]]) -> int:
    return sum(tmpl[s][i].batch.count for tick in ticks for _, s, i, _ in tick)


# Processes -------------------------------------------------------------------------------


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def publisher(port: int, vehicles: int, seconds: int, camera: bool, paced: bool,
              q: Any) -> None:
    """Publishes the schedule (as fast as possible, or paced in real time with ack latency)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from wire.control import Ack
    from wire.topics import batch_topic

    tmpl = templates(camera)
    ticks = schedule(tmpl, vehicles, seconds, camera)
    sent_at: dict[tuple[str, str, int], float] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)

    def on_message(client: Any, u: Any, msg: Any) -> None:
        now = time.monotonic()
        agent = msg.topic.split("/")[2]
        ack = Ack.decode(msg.payload)
        with lock:
            for stream, ranges in ack.ranges.items():
                for lo, hi in ranges:
                    for seq in range(lo, hi + 1):
                        t = sent_at.pop((agent, stream, seq), None)
                        if t is not None:
                            latencies.append(now - t)

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    if paced:
        c.subscribe("cvis/v1/+/ack", qos=1)
        time.sleep(0.3)
    encoded = []
    for tick in ticks:
        encoded.append([(agent, stream, seq, dataclasses.replace(
            tmpl[stream][i].batch, agent=agent, seq=seq).encode()) for agent, stream, i, seq in tick])
    q.put(("ready", None))
    start = time.monotonic()
    infos = []
    for k, tick in enumerate(encoded):
        if paced:
            delay = start + k * 0.1 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for agent, stream, seq, payload in tick:
            with lock:
                sent_at[(agent, stream, seq)] = time.monotonic()
            infos.append(c.publish(batch_topic(agent, stream), payload, qos=1))
    for info in infos:
        info.wait_for_publish(120)
    published = time.monotonic() - start
    if paced:
        deadline = time.monotonic() + 10
        while sent_at and time.monotonic() < deadline:
            time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    q.put(("published", {"seconds": published, "messages": len(infos),
                         "latencies": latencies, "unacked": len(sent_at)}))


def raw_consumer(port: int, expect: int, q: Any) -> None:
    """Counts messages on the shared subscription; nothing else."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    state = {"n": 0, "bytes": 0, "t0": 0.0, "c0": 0.0, "t1": 0.0, "c1": 0.0}
    done = threading.Event()

    def on_message(client: Any, u: Any, msg: Any) -> None:
        if state["n"] == 0:
            state["t0"], state["c0"] = time.monotonic(), _cpu()
        state["n"] += 1
        state["bytes"] += len(msg.payload)
        if state["n"] >= expect:
            state["t1"], state["c1"] = time.monotonic(), _cpu()
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.on_connect = lambda cl, *a: cl.subscribe("$share/benchraw/cvis/v1/+/batch/#", qos=1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.5)
    q.put(("ready", None))
    ok = done.wait(300)
    c.disconnect()
    c.loop_stop()
    q.put(("result", {"ok": ok, "messages": state["n"], "bytes": state["bytes"],
                      "seconds": state["t1"] - state["t0"], "cpu": state["c1"] - state["c0"],
                      "rss_mb": _rss_mb()}))


def cvis_worker(port: int, data_dir: str, expect: int, q: Any, group: str) -> None:
    """One IngestWorker; times it from its first message to ``expect`` batches stored."""
    from ingest_server.config import build_config
    from ingest_server.worker import IngestWorker

    cfg = build_config({"data_dir": data_dir,
                        "broker": {"url": f"mqtt://127.0.0.1:{port}", "session_expiry_s": 0,
                                   "share_group": group, "client_id_prefix": f"bench-{group}"}},
                       env={})
    w = IngestWorker(cfg, 0)
    w.start()
    w.connected.wait(10)
    time.sleep(0.5)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    q.put(("ready", None))
    t0 = c0 = 0.0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if not t0 and w.stats.received:
            t0, c0 = time.monotonic(), _cpu()
        if w.stats.stored_batches + w.stats.duplicates >= expect:
            break
        if not t.is_alive():
            break
        time.sleep(0.005)
    t1, c1 = time.monotonic(), _cpu()
    stop.set()
    t.join()
    w.close()
    q.put(("result", {"ok": w.stats.stored_batches >= expect, "messages": w.stats.stored_batches,
                      "records": w.stats.stored_records, "bytes": w.stats.stored_bytes,
                      "seconds": t1 - t0, "cpu": c1 - c0, "rss_mb": _rss_mb(),
                      "rejected": sum(w.stats.rejected.values())}))


def _expect(q: Any, kind: str, timeout: float = 600) -> Any:
    k, v = q.get(timeout=timeout)
    if k != kind:
        raise SystemExit(f"bench: expected {kind}, got {k}")
    return v


def saturate(ctx: Any, port: int, consumer: str, vehicles: int, seconds: int, camera: bool,
             data_dir: str, group: str) -> dict[str, Any]:
    tmpl = templates(camera)
    ticks = schedule(tmpl, vehicles, seconds, camera)
    expect = sum(len(t) for t in ticks)
    records = records_of(tmpl, ticks)
    cq, pq = ctx.Queue(), ctx.Queue()
    if consumer == "raw":
        cp = ctx.Process(target=raw_consumer, args=(port, expect, cq))
    else:
        cp = ctx.Process(target=cvis_worker, args=(port, data_dir, expect, cq, group))
    cp.start()
    _expect(cq, "ready", 60)
    pp = ctx.Process(target=publisher, args=(port, vehicles, seconds, camera, False, pq))
    pp.start()
    _expect(pq, "ready")
    pub = _expect(pq, "published")
    res = _expect(cq, "result")
    pp.join()
    cp.join()
    secs = max(res["seconds"], 1e-9)
    return {
        "consumer": consumer, "camera": camera, "ok": res["ok"], "batches": res["messages"],
        "batches_per_s": res["messages"] / secs, "records_per_s": records / secs,
        "mb_per_s": res["bytes"] / secs / 1e6, "cpu_pct": 100 * res["cpu"] / secs,
        "rss_mb": res["rss_mb"], "publish_s": pub["seconds"], "seconds": secs,
        "batches_per_vehicle_s": expect / vehicles / seconds,
    }


def paced(ctx: Any, port: int, vehicles: int, seconds: int, data_dir: str) -> dict[str, Any]:
    tmpl = templates(False)
    expect = sum(len(t) for t in schedule(tmpl, vehicles, seconds, False))
    cq, pq = ctx.Queue(), ctx.Queue()
    cp = ctx.Process(target=cvis_worker, args=(port, data_dir, expect, cq, "benchpaced"))
    cp.start()
    _expect(cq, "ready", 60)
    pp = ctx.Process(target=publisher, args=(port, vehicles, seconds, False, True, pq))
    pp.start()
    _expect(pq, "ready")
    pub = _expect(pq, "published")
    res = _expect(cq, "result")
    pp.join()
    cp.join()
    lat = sorted(pub["latencies"])

    def pct(p: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    return {"vehicles": vehicles, "batches": pub["messages"], "unacked": pub["unacked"],
            "ack_p50_ms": pct(0.50), "ack_p99_ms": pct(0.99),
            "cpu_pct": 100 * res["cpu"] / max(res["seconds"], 1e-9),
            "kept_up": pub["unacked"] == 0 and res["ok"]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument("--vehicles", type=int, default=200, help="non-camera vehicles per saturation run")
    p.add_argument("--camera-vehicles", type=int, default=10, help="camera vehicles per run")
    p.add_argument("--seconds", type=int, default=5, help="seconds of data per vehicle")
    p.add_argument("--paced", type=int, default=100, help="vehicles in the real-time ack run")
    p.add_argument("--paced-seconds", type=int, default=10)
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from cvis.broker import ManagedBroker

    console = Console(stderr=args.json)
    ctx = mp.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cvis-bench-") as tmp, \
            ManagedBroker(data_dir=Path(tmp) / "broker", persistence=False) as broker:
        assert broker.port is not None
        port = broker.port
        with console.status("benchmarking") as status:
            for camera, n in ((False, args.vehicles), (True, args.camera_vehicles)):
                for consumer in ("raw", "cvis"):
                    status.update(f"{consumer}, {'camera' if camera else 'non-camera'} vehicles")
                    group = f"b{len(rows)}"
                    rows.append(saturate(ctx, port, consumer, n, args.seconds, camera,
                                         str(Path(tmp) / group), group))
            status.update(f"{args.paced} vehicles in real time")
            pace = paced(ctx, port, args.paced, args.paced_seconds, str(Path(tmp) / "paced"))
    raw, cvis_nc = rows[0], rows[1]
    ratio = cvis_nc["records_per_s"] / raw["records_per_s"]
    per_vehicle = cvis_nc["batches_per_vehicle_s"]
    one_worker = cvis_nc["batches_per_s"] / per_vehicle
    per_core = one_worker / max(cvis_nc["cpu_pct"] / 100, 1e-9)

    t = Table(title="cvis ingest: one worker vs a counting subscriber (same publishers)")
    for col in ("consumer", "load", "batches/s", "records/s", "MB/s", "CPU %", "RSS MB", "ok"):
        t.add_column(col, justify="left" if col in ("consumer", "load") else "right")
    for r in rows:
        t.add_row(r["consumer"], "camera" if r["camera"] else "non-camera",
                  f"{r['batches_per_s']:.0f}", f"{r['records_per_s']:.0f}",
                  f"{r['mb_per_s']:.1f}", f"{r['cpu_pct']:.0f}", f"{r['rss_mb']:.0f}",
                  "yes" if r["ok"] else "NO")
    console.print(t)
    console.print(
        f"ratio cvis/raw (non-camera records/s): {ratio:.2f}; one worker keeps up with "
        f"{one_worker:.0f} non-camera vehicles ({per_core:.0f} per worker core); "
        f"{pace['vehicles']} vehicles in real time: ack p50 {pace['ack_p50_ms']:.0f} ms, "
        f"p99 {pace['ack_p99_ms']:.0f} ms, worker CPU {pace['cpu_pct']:.0f} %, "
        f"{'kept up' if pace['kept_up'] else 'FELL BEHIND'} (machine shared: figures are noisy)")
    summary = {
        "ratio_to_raw": round(ratio, 3),
        "vehicles_per_core": round(per_core, 1),
        "vehicles_one_worker": round(one_worker, 1),
        "ack_latency_p50_ms": round(pace["ack_p50_ms"], 1),
        "ack_latency_p99_ms": round(pace["ack_p99_ms"], 1),
        "paced_vehicles": pace["vehicles"],
        "paced_kept_up": pace["kept_up"],
        "paced_worker_cpu_pct": round(pace["cpu_pct"], 1),
        "runs": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
                 for r in rows],
    }
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
