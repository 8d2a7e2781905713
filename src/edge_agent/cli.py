"""``cvis agent run`` and ``cvis agent replay``.

``cvis agent run --config agent.toml`` runs the agent from a configuration file until Ctrl-C
or SIGTERM, then drains (``drain_timeout_s``) and exits 0 (1 if something stays unacknowledged
in the spool).

``cvis agent replay --agent-id ID --broker mqtt://HOST:PORT --spool DIR [--can LOG --dbc DBC]
[--gnss LOG] [--video FILE] [--speed X]`` drives the full agent from recorded captures as if
they were live devices. When the captures end it waits until every batch is acknowledged and
exits 0, or exits 1 after ``--drain-timeout`` saying how much is unacknowledged (it stays in the
spool: the next run with the same spool sends it). Ctrl-C stops capture, drains what it can
within ``--drain-timeout`` and exits 130; a second Ctrl-C stops at once.

Exit codes: 0 done, 1 not everything acknowledged, 2 bad configuration or arguments, 130
replay interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent, DrainResult
from edge_agent.config import AgentConfig, config_from_dict, load_config
from edge_agent.errors import AgentError, ConfigError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_UNACKED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="the edge agent: capture, spool and upload")
    asub = p.add_subparsers(dest="agent_command", metavar="ACTION")
    asub.required = True

    run = asub.add_parser("run", help="run the agent from a configuration file")
    run.add_argument("--config", type=Path, required=True, help="agent.toml")
    run.add_argument("--drain-timeout", type=float, default=None,
                     help="seconds to drain at shutdown (default: the config's drain_timeout_s)")
    run.set_defaults(func=cmd_run)

    rp = asub.add_parser("replay", help="drive the agent from recorded captures")
    rp.add_argument("--agent-id", required=True)
    rp.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    rp.add_argument("--spool", type=Path, required=True, help="spool directory")
    rp.add_argument("--can", type=Path, help="candump -L log (plain or .gz)")
    rp.add_argument("--dbc", type=Path, help="DBC to decode the CAN log's signals")
    rp.add_argument("--dbc-channel", action="append", default=None, metavar="CH",
                    help="bus the DBC describes (repeatable; default every channel)")
    rp.add_argument("--signals", default=None, metavar="LIST",
                    help="comma-separated MESSAGE or MESSAGE.SIGNAL[=HZ] to decode (default: all)")
    rp.add_argument("--radar-dbc", type=Path, help="DBC of a radar object list on the CAN log")
    rp.add_argument("--radar-channel", action="append", default=None, metavar="CH")
    rp.add_argument("--gnss", type=Path, help="raw GNSS capture (NMEA, UBX)")
    rp.add_argument("--video", type=Path, help="video file replayed as a camera")
    rp.add_argument("--camera-size", default=None, metavar="WxH", help="resize frames, e.g. 1280x720")
    rp.add_argument("--camera-fps", type=float, default=None, help="camera rate (default: the file's)")
    rp.add_argument("--jpeg-quality", type=int, default=80)
    rp.add_argument("--speed", type=float, default=1.0, help="multiple of real time (0: as fast as possible)")
    rp.add_argument("--drain-timeout", type=float, default=60.0,
                    help="seconds to wait for acknowledgements after the captures end (default 60)")
    rp.add_argument("--config", type=Path, default=None,
                    help="agent.toml for everything else (campaigns, batching, uplink, live)")
    rp.add_argument("--from-start", action="store_true",
                    help="replay from the start even if this spool already holds a position")
    rp.set_defaults(func=cmd_replay)


def _parse_signals(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, rate = item.partition("=")
        try:
            out[name] = float(rate) if rate else 0.0
        except ValueError:
            raise ConfigError(f"--signals: bad rate in {item!r}") from None
    return out


def replay_config(args: argparse.Namespace) -> AgentConfig:
    """The AgentConfig of ``cvis agent replay``: --config (if any) plus the capture options."""
    base: dict[str, Any] = {}
    if args.config is not None:
        base = load_config(args.config).model_dump(mode="json", exclude_none=True)
    base["agent_id"] = args.agent_id
    base.setdefault("broker", {})["url"] = args.broker
    base.setdefault("spool", {})["dir"] = str(args.spool)
    sources = list(base.get("sources", []))
    common = {"speed": args.speed, "from_start": args.from_start}
    if args.can is not None:
        can: dict[str, Any] = {"type": "replay_can", "name": "can", "path": str(args.can), **common}
        if args.dbc is not None:
            can["dbc"] = str(args.dbc)
            sig = _parse_signals(args.signals)
            if sig is not None:
                can["signals"] = sig
            if args.dbc_channel:
                can["dbc_channels"] = args.dbc_channel
        if args.radar_dbc is not None:
            can["radar_dbc"] = str(args.radar_dbc)
            if args.radar_channel:
                can["radar_channels"] = args.radar_channel
        sources.append(can)
    if args.gnss is not None:
        sources.append({"type": "replay_gnss", "name": "gnss", "path": str(args.gnss), **common})
    if args.video is not None:
        cam: dict[str, Any] = {"type": "replay_video", "name": "camera.front", "path": str(args.video),
                               "jpeg_quality": args.jpeg_quality, **common}
        if args.camera_size:
            try:
                w, h = (int(x) for x in args.camera_size.lower().split("x"))
            except ValueError:
                raise ConfigError(f"--camera-size {args.camera_size!r}: expected WIDTHxHEIGHT") from None
            cam["width"], cam["height"] = w, h
        if args.camera_fps:
            cam["fps"] = args.camera_fps
        sources.append(cam)
    if not sources:
        raise ConfigError("nothing to replay: give --can, --gnss and/or --video")
    base["sources"] = sources
    return config_from_dict(base)


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        cfg = replay_config(args)
    except ConfigError as exc:
        print(f"cvis agent replay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return _run_async(cfg, replay=True, drain_timeout=args.drain_timeout)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"cvis agent run: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    timeout = cfg.drain_timeout_s if args.drain_timeout is None else args.drain_timeout
    return _run_async(cfg, replay=False, drain_timeout=timeout)


def _run_async(cfg: AgentConfig, *, replay: bool, drain_timeout: float) -> int:
    try:
        return asyncio.run(_main(cfg, replay=replay, drain_timeout=drain_timeout))
    except ConfigError as exc:
        print(f"cvis agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as exc:
        print(f"cvis agent: {exc}", file=sys.stderr)
        return EXIT_UNACKED


async def _main(cfg: AgentConfig, *, replay: bool, drain_timeout: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hard_stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            hard_stop.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with Agent(cfg) as agent:
            agent.drain_on_exit = False
            progress = asyncio.create_task(_progress(agent), name="cvis-progress")
            try:
                waiters: set[asyncio.Task[Any]] = {asyncio.create_task(stop.wait())}
                if replay:
                    waiters.add(asyncio.create_task(agent.sources_finished()))
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                interrupted = stop.is_set()
                await agent.stop_sources()
                if interrupted:
                    log.info("agent: interrupted; draining for up to %.0f s (Ctrl-C again to stop now)",
                             drain_timeout)
                elif replay:
                    log.info("agent: captures ended; waiting up to %.0f s for every batch to be acknowledged",
                             drain_timeout)
                drain = asyncio.create_task(agent.drain(drain_timeout))
                hard = asyncio.create_task(hard_stop.wait())
                await asyncio.wait({drain, hard}, return_when=asyncio.FIRST_COMPLETED)
                hard.cancel()
                if drain.done():
                    result = drain.result()
                else:
                    drain.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await drain
                    result = agent.unacknowledged()
            finally:
                progress.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await progress
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    _report(result)
    if interrupted and replay:
        return EXIT_INTERRUPTED  # the captures did not end: the replay was cut short
    return EXIT_OK if result.complete else EXIT_UNACKED


def _report(result: DrainResult) -> None:
    if result.complete:
        print("every batch acknowledged", file=sys.stderr)
    else:
        print(f"not acknowledged: {result.batches} batches, {result.records} records, "
              f"{result.bytes} bytes (kept in the spool)", file=sys.stderr)


async def _progress(agent: Agent) -> None:
    """A status line on a terminal; nothing when stderr is not one."""
    if not sys.stderr.isatty():
        return
    from rich.console import Console
    from rich.status import Status

    console = Console(stderr=True)
    start = time.monotonic()
    with Status("starting", console=console) as status:
        while True:
            await asyncio.sleep(0.5)
            recs = sum(sum(s.stats.records.values()) for s in agent.sources)
            up = agent.uplink
            spool = agent.spool
            status.update(
                f"{time.monotonic() - start:6.1f} s  captured {recs:,} records  "
                f"spool {spool.pending_batches if spool else 0:,} batches  "
                f"acked {up.acked if up else 0:,}  "
                f"{'connected' if up and up.link.connected else 'offline'}"
            )
