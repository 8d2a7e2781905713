"""Cameras through OpenCV: a device index, a video file or an RTSP URL; and video-file replay.

Two threads per camera keep the event loop free: a *capture* thread reads frames
(``cv2.VideoCapture``) and stamps them, an *encoder* thread resizes and JPEG-encodes them
(``cv2.imencode``, quality ``jpeg_quality``) and hands each :class:`wire.schemas.CameraFrame`
to the loop. Between the two sits a queue of ``queue_frames`` raw frames: when the encoder
cannot keep up (the CPU is busy), a live camera drops the *oldest* waiting frame and counts it
(``dropped`` in health) rather than falling ever further behind; a file replay waits instead
(a file can always be read later, so it loses nothing).

Capture time: a live frame is stamped with the agent clock when ``read()`` returns. A replayed
file's frame ``i`` is stamped ``base + i / fps`` (see :mod:`edge_agent.sources.replay`), and its
index is the resume position after a crash.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from edge_agent.errors import SourceError
from edge_agent.sources.base import Source, SourceContext, SourceOptions
from edge_agent.sources.replay import Position, file_identity
from wire.columns import TableSchema
from wire.schemas import CAMERA_JPEG, CameraFrame

log = logging.getLogger(__name__)
#: How long a replayed video waits for the batchers to take more frames before it goes on.
READY_TIMEOUT_S = 30.0


class CameraOptions(SourceOptions):
    #: A device index (0), a file path or a URL (rtsp://...).
    device: int | str = 0
    #: Output size (frames are resized before encoding); default: as captured.
    width: int | None = Field(default=None, ge=16, le=8192)
    height: int | None = Field(default=None, ge=16, le=8192)
    #: Requested capture rate (devices) or replay rate (files; default the file's own).
    fps: float | None = Field(default=None, gt=0, le=240)
    jpeg_quality: int = Field(default=80, ge=1, le=100)
    #: Stream name (default: the source's name).
    stream: str | None = None
    #: Raw frames waiting for the encoder; beyond this a live camera drops its oldest.
    queue_frames: int = Field(default=4, ge=1, le=256)
    #: Drop frames when the encoder falls behind (default: yes for devices and URLs).
    drop_when_behind: bool | None = None


class _Pipeline:
    """Capture thread -> bounded queue -> encoder thread -> event loop."""

    def __init__(self, source: CameraSource, cap: Any, loop: asyncio.AbstractEventLoop,
                 drop: bool, stamp: Any, pace: Any, first_index: int) -> None:
        self.source = source
        self.cap = cap
        self.loop = loop
        self.drop = drop
        self.stamp = stamp
        self.pace = pace
        self.index = first_index
        self.queue: deque[tuple[int, int, Any]] = deque()
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.capture_done = False
        self.error: str | None = None
        self.done = asyncio.Event()
        self.threads = [
            threading.Thread(target=self._capture, name=f"cvis-cam-{source.name}-read", daemon=True),
            threading.Thread(target=self._encode, name=f"cvis-cam-{source.name}-jpeg", daemon=True),
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _capture(self) -> None:
        cap, limit = self.cap, self.source.options.queue_frames  # type: ignore[attr-defined]
        try:
            while not self.stop.is_set():
                self.pace(self.index)
                ok, img = cap.read()
                if not ok:
                    break
                ts = self.stamp(self.index)
                with self.cond:
                    while not self.drop and len(self.queue) >= limit and not self.stop.is_set():
                        self.cond.wait(0.1)
                    if len(self.queue) >= limit:
                        self.queue.popleft()
                        self.source.stats.dropped += 1
                    self.queue.append((ts, self.index, img))
                    self.cond.notify_all()
                self.index += 1
        except Exception as exc:  # OpenCV raises cv2.error and others
            self.error = f"capture failed: {exc}"
        finally:
            with self.cond:
                self.capture_done = True
                self.cond.notify_all()

    def _encode(self) -> None:
        import cv2

        o: CameraOptions = self.source.options  # type: ignore[assignment]
        params = [int(cv2.IMWRITE_JPEG_QUALITY), o.jpeg_quality]
        name = self.source.stream
        # OpenCV's own worker pool makes one 720p JPEG quicker but costs more CPU in all (here
        # 4.4 ms of CPU a frame with the pool, 2.7 ms without). An agent's CPU is the scarcer
        # resource, and several cameras still encode in parallel, one encoder thread each.
        cv2.setNumThreads(1)
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.capture_done and not self.stop.is_set():
                        self.cond.wait(0.1)
                    if self.stop.is_set() or (not self.queue and self.capture_done):
                        break
                    ts, idx, img = self.queue.popleft()
                    self.cond.notify_all()
                if o.width and o.height and (img.shape[1], img.shape[0]) != (o.width, o.height):
                    shrink = o.width * o.height < img.shape[0] * img.shape[1]
                    img = cv2.resize(img, (o.width, o.height),
                                     interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
                ok, buf = cv2.imencode(".jpg", img, params)
                if not ok:
                    self.error = "JPEG encoding failed"
                    break
                frame = CameraFrame(ts, name, idx, img.shape[1], img.shape[0], buf.tobytes())
                self.loop.call_soon_threadsafe(self.source.deliver, frame)
        except Exception as exc:
            self.error = f"encoding failed: {exc}"
        finally:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.done.set)

    def join(self) -> None:
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        for t in self.threads:
            t.join(5)
        self.cap.release()


class CameraSource(Source):
    """A live camera (device index or RTSP URL; a file path is read as if live)."""

    Options: ClassVar[type[SourceOptions]] = CameraOptions

    def __init__(self, name: str, options: Any, ctx: SourceContext) -> None:
        super().__init__(name, options, ctx)
        self.stream = options.stream or name
        self._replay_position: Position | None = None

    def streams(self) -> dict[str, TableSchema]:
        return {self.stream: CAMERA_JPEG}

    def deliver(self, frame: CameraFrame) -> None:
        """Runs on the loop: emit one encoded frame (and, for replays, its position)."""
        self.emit(self.stream, frame)
        pos = self._replay_position
        if pos is not None:
            self.ctx.mark(self.stream, self.name, (frame.frame_index, f"{pos.base_ns}|0|{pos.file}"))

    def _open(self, device: int | str) -> Any:
        import cv2

        cap = cv2.VideoCapture(device)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"camera {self.name}: cannot open {device!r}")
        return cap

    async def run(self) -> None:
        o: CameraOptions = self.options  # type: ignore[assignment]
        cap = await asyncio.to_thread(self._open, o.device)
        if o.fps:
            cap.set(5, o.fps)  # cv2.CAP_PROP_FPS
        drop = True if o.drop_when_behind is None else o.drop_when_behind
        clock = self.ctx.clock
        await self._run_pipeline(cap, drop, lambda i: clock.now_ns(), lambda i: None, 0)
        raise SourceError(f"camera {self.name}: the device stopped delivering frames")

    async def _run_pipeline(self, cap: Any, drop: bool, stamp: Any, pace: Any, first: int) -> None:
        pipe = _Pipeline(self, cap, asyncio.get_running_loop(), drop, stamp, pace, first)
        pipe.start()
        try:
            await pipe.done.wait()
        finally:
            await asyncio.to_thread(pipe.join)
        if pipe.error:
            raise SourceError(f"camera {self.name}: {pipe.error}")


class VideoReplayOptions(CameraOptions):
    path: Path
    #: Multiple of real time; 0 replays as fast as the encoder goes.
    speed: float = Field(default=1.0, ge=0)
    from_start: bool = False
    #: Start again at the end, stamping frames with the agent clock like a live camera (a demo
    #: or test camera that never ends). Loops keep no resume position.
    loop: bool = False

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"video file {v} does not exist")
        return v


class VideoReplaySource(CameraSource):
    """A video file replayed as a camera at its own frame rate (times ``speed``)."""

    Options = VideoReplayOptions
    finite = True

    async def run(self) -> None:
        o: VideoReplayOptions = self.options  # type: ignore[assignment]
        if o.loop:
            await self._run_looping(o)
            return
        ident = file_identity(o.path)
        stored = None if o.from_start else Position.decode(await self.ctx.checkpoint(self.name))
        if stored is not None and stored.file == ident:
            pos, first = stored, stored.index + 1
            log.info("replay %s: resuming %s after frame %d", self.name, o.path.name, stored.index)
        else:
            pos, first = Position(ident, -1, self.ctx.replay_base_ns, 0), 0
        self._replay_position = pos
        cap = await asyncio.to_thread(self._open, str(o.path))
        fps = o.fps or cap.get(5) or 10.0  # cv2.CAP_PROP_FPS
        if first:
            await asyncio.to_thread(_skip, cap, first)
        period_ns = 1e9 / fps
        base = pos.base_ns
        start = time.monotonic()
        speed = o.speed

        def stamp(i: int) -> int:
            return base + round(i * period_ns)

        loop = asyncio.get_running_loop()

        def pace(i: int) -> None:
            if speed > 0:
                delay = start + (i - first) / (fps * speed) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            # A file can wait: never outrun the batchers (the CAN and GNSS replays do the same).
            ready = asyncio.run_coroutine_threadsafe(self.ctx.ready(), loop)
            try:
                ready.result(timeout=READY_TIMEOUT_S)
            except concurrent.futures.TimeoutError:
                ready.cancel()

        drop = False if o.drop_when_behind is None else o.drop_when_behind
        self.stats.extra["fps"] = fps
        await self._run_pipeline(cap, drop, stamp, pace, first)

    async def _run_looping(self, o: VideoReplayOptions) -> None:
        """Play the file again and again at its frame rate; frame indexes keep counting."""
        clock = self.ctx.clock
        start = time.monotonic()
        index = 0
        drop = True if o.drop_when_behind is None else o.drop_when_behind
        while True:
            cap = await asyncio.to_thread(self._open, str(o.path))
            fps = o.fps or cap.get(5) or 10.0  # cv2.CAP_PROP_FPS
            self.stats.extra["fps"] = fps
            speed = o.speed

            def pace(i: int, fps: float = fps, speed: float = speed) -> None:
                if speed > 0:
                    delay = start + i / (fps * speed) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)

            pipe = _Pipeline(self, cap, asyncio.get_running_loop(), drop, lambda i: clock.now_ns(),
                             pace, index)
            pipe.start()
            try:
                await pipe.done.wait()
            finally:
                await asyncio.to_thread(pipe.join)
            if pipe.error:
                raise SourceError(f"camera {self.name}: {pipe.error}")
            if pipe.index == index:
                raise SourceError(f"camera {self.name}: {o.path} has no frames")
            index = pipe.index
            log.debug("replay %s: %s ended, looping (%d frames so far)", self.name, o.path.name, index)


def _skip(cap: Any, n: int) -> None:
    for _ in range(n):
        if not cap.grab():
            return
