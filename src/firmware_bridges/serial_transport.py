"""Async, non-blocking serial transport over pyserial's ``serial_for_url``.

``SerialTransport`` opens real ports (``/dev/ttyUSB0``), ptys, ``socket://``
and ``loop://`` URLs and yields bounded chunks of bytes with ``async for``.
Ports with a file descriptor (POSIX serial devices and ptys, sockets) are
read with ``loop.add_reader``; others (``loop://``, ``rfc2217://``) are read
by one worker thread owned by the transport.

A device that goes away (USB unplugged, pty hung up, socket closed) is not
fatal: the loss is logged and counted, and the port is reopened with capped,
jittered exponential backoff until it comes back. The consumer just sees a
pause in the chunks. Bytes are handed on untouched; framing is the parser's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, TypeVar

import serial
from serial import serialposix
from serial.urlhandler import protocol_socket

from firmware_bridges.errors import ConfigError, TransportError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Default bound of one chunk handed to the consumer.
DEFAULT_READ_SIZE = 4096
#: How long a worker thread blocks in one read before it checks for shutdown.
THREAD_READ_TIMEOUT = 0.1


class Backoff:
    """Capped exponential backoff with jitter: ``initial * factor**n``, at most ``maximum``.

    Each delay is drawn uniformly from ``[d * (1 - jitter), d]`` so that many
    agents that lost the same device (or broker) do not retry in lockstep.
    """

    def __init__(
        self,
        initial: float = 0.05,
        maximum: float = 5.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ConfigError(f"backoff needs 0 < initial <= maximum, got {initial}, {maximum}")
        if factor < 1:
            raise ConfigError(f"backoff factor must be >= 1, got {factor}")
        if not 0 <= jitter < 1:
            raise ConfigError(f"backoff jitter must be in [0, 1), got {jitter}")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        return self._attempt

    def next_delay(self) -> float:
        d = min(self.maximum, self.initial * self.factor**self._attempt)
        self._attempt += 1
        return d * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self._attempt = 0


@dataclass(slots=True)
class TransportStats:
    """Counters of one transport. ``reconnects`` counts successful reopens after a loss."""

    opens: int = 0
    reconnects: int = 0
    errors: int = 0
    open_failures: int = 0
    bytes_in: int = 0
    chunks_in: int = 0
    bytes_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Reopener:
    """The reopen loop both transports share: back off, try ``open_once``, count, log."""

    def __init__(
        self,
        what: str,
        stats: TransportStats,
        backoff: Backoff | None,
        max_attempts: int | None,
    ) -> None:
        self.what = what
        self.stats = stats
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts
        self.was_connected = False
        self.closing = asyncio.Event()

    def lost(self, exc: BaseException) -> None:
        self.stats.errors += 1
        log.warning("%s lost (%s); reopening with backoff", self.what, exc)

    async def reopen(self, open_once: Callable[[], Awaitable[T]]) -> T | None:
        """Await ``open_once`` until it succeeds; None once the transport is closing.

        ``open_once`` raises :class:`TransportError` for a device that is not
        there (yet); any other error (a :class:`ConfigError`) propagates.
        """
        failures = 0
        while not self.closing.is_set():
            if self.max_attempts is not None and failures >= self.max_attempts:
                raise TransportError(f"{self.what}: gave up after {failures} failed opens")
            delay = self.backoff.next_delay()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), delay)
            if self.closing.is_set():
                return None
            try:
                handle = await open_once()
            except TransportError as exc:
                failures += 1
                self.stats.open_failures += 1
                log.debug("%s: reopen attempt %d failed: %s", self.what, failures, exc)
                continue
            self.opened(failures + 1)
            return handle
        return None

    def opened(self, attempts: int = 1) -> None:
        self.stats.opens += 1
        self.backoff.reset()
        if self.was_connected:
            self.stats.reconnects += 1
            log.info("%s reopened after %d attempt(s)", self.what, attempts)
        else:
            log.info("%s open", self.what)
        self.was_connected = True


def _native_fd(port: serial.SerialBase) -> int | None:
    """The descriptor to poll, for port classes whose reads are plain ``read(2)``/``recv(2)``."""
    if isinstance(port, serialposix.Serial | protocol_socket.Serial):
        return int(port.fileno())
    return None


class SerialTransport:
    """Bytes from a serial device, as an async iterator of chunks (at most ``read_size`` bytes).

    ``async with SerialTransport("/dev/ttyUSB0", 115200) as port: async for chunk in port: ...``
    The first open is tried on enter; if the device is absent it is retried
    in the background of the iteration (never fatal unless ``max_attempts``
    is set, then :class:`TransportError`). A URL pyserial cannot understand
    is a :class:`ConfigError` at once.
    """

    def __init__(
        self,
        url: str,
        baudrate: int = 115200,
        *,
        read_size: int = DEFAULT_READ_SIZE,
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
        write_timeout: float = 1.0,
        **serial_options: Any,
    ) -> None:
        if not url:
            raise ConfigError("serial transport needs a port or URL")
        if not 1 <= read_size <= 1 << 20:
            raise ConfigError(f"read_size must be in 1..1 MiB, got {read_size}")
        self.url = url
        self.baudrate = baudrate
        self.read_size = read_size
        self.write_timeout = write_timeout
        self.serial_options = serial_options
        self.stats = TransportStats()
        self._reopener = Reopener(f"serial {url}", self.stats, backoff, max_attempts)
        self._port: serial.SerialBase | None = None
        self._fd: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._entered = False

    @property
    def connected(self) -> bool:
        return self._port is not None

    # open / close ----------------------------------------------------------------------------

    def _open_once(self) -> serial.SerialBase:
        try:
            port = serial.serial_for_url(
                self.url, baudrate=self.baudrate, timeout=0, write_timeout=0, do_not_open=True,
                **self.serial_options,
            )
        except ValueError as exc:
            raise ConfigError(f"serial port {self.url!r}: {exc}") from exc
        except serial.SerialException as exc:
            raise TransportError(f"serial port {self.url!r}: {exc}") from exc
        try:
            port.open()
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"cannot open serial port {self.url!r}: {exc}") from exc
        fd = _native_fd(port)
        if fd is None:
            port.timeout = THREAD_READ_TIMEOUT
            port.write_timeout = self.write_timeout
        self._port, self._fd = port, fd
        return port

    async def _open_async(self) -> serial.SerialBase:
        return self._open_once()

    def _drop_port(self) -> None:
        port, self._port, self._fd = self._port, None, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()

    async def __aenter__(self) -> SerialTransport:
        self._entered = True
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="serial-io")
        try:
            self._open_once()
        except TransportError as exc:
            self.stats.open_failures += 1
            log.warning("%s; will keep retrying", exc)
        else:
            self._reopener.opened()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop iterating, close the port and join the worker threads."""
        self._reopener.closing.set()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        port = self._port
        if port is not None and self._fd is None:
            cancel_read = getattr(port, "cancel_read", None)
            if cancel_read is not None:
                with contextlib.suppress(Exception):
                    cancel_read()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)  # reads were cancelled above: this returns at once
        self._drop_port()

    # reading ---------------------------------------------------------------------------------

    def __aiter__(self) -> SerialTransport:
        return self

    async def __anext__(self) -> bytes:
        if not self._entered:
            raise TransportError("use SerialTransport as an async context manager")
        while not self._reopener.closing.is_set():
            if self._port is None:
                await self._reopener.reopen(self._open_async)
                continue
            try:
                data = await self._read_chunk(self._port, self._fd)
            except (serial.SerialException, OSError, TransportError) as exc:
                if self._reopener.closing.is_set():
                    break
                self._reopener.lost(exc)
                self._drop_port()
                continue
            if data:
                self.stats.bytes_in += len(data)
                self.stats.chunks_in += 1
                return data
        raise StopAsyncIteration

    async def _read_chunk(self, port: serial.SerialBase, fd: int | None) -> bytes:
        if fd is None:
            assert self._executor is not None
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._blocking_read, port)
        # A tty in raw mode with VMIN=0 (as pyserial sets it) reads b"" both when it has
        # no data and when it was hung up; a read that finds nothing right after the
        # poller said "readable" is the hang-up (or a socket's end of file).
        polled = False
        while True:
            try:
                data = os.read(fd, self.read_size)
            except BlockingIOError:
                data = b""
            if data:
                return data
            if polled:
                raise TransportError("device went away (readable but no data: hung up or EOF)")
            await self._wait_fd(fd, write=False)
            if self._reopener.closing.is_set():
                return b""
            polled = True

    def _blocking_read(self, port: serial.SerialBase) -> bytes:
        data = port.read(1)
        if not data:
            return b""
        waiting = int(getattr(port, "in_waiting", 0))
        if waiting:
            data += port.read(min(waiting, self.read_size - 1))
        return bytes(data)

    async def _wait_fd(self, fd: int, *, write: bool) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        if write:
            loop.add_writer(fd, ready)
        else:
            self._waiter = waiter  # aclose() wakes a waiting reader
            loop.add_reader(fd, ready)
        try:
            await waiter
        finally:
            if write:
                loop.remove_writer(fd)
            else:
                self._waiter = None
                loop.remove_reader(fd)

    # writing ---------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Send ``data`` (for example an SLCAN command) without blocking the event loop.

        Raises :class:`TransportError` if the device is not connected or does
        not take the bytes within ``write_timeout``.
        """
        port, fd = self._port, self._fd
        if port is None:
            raise TransportError(f"serial {self.url}: not connected")
        try:
            if fd is None:
                assert self._executor is not None
                await asyncio.get_running_loop().run_in_executor(self._executor, port.write, data)
            else:
                await asyncio.wait_for(self._write_fd(fd, memoryview(data)), self.write_timeout)
        except TimeoutError as exc:
            raise TransportError(f"serial {self.url}: write timed out") from exc
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"serial {self.url}: write failed: {exc}") from exc
        self.stats.bytes_out += len(data)

    async def _write_fd(self, fd: int, view: memoryview) -> None:
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                await self._wait_fd(fd, write=True)
                continue
            view = view[n:]
