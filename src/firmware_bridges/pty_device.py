"""A pseudo-terminal that plays a serial device.

The master side is the device; the slave path (``/dev/pts/N``) is what a
client opens, exactly as it would open ``/dev/ttyUSB0``. Both sides are put in
raw mode at once, so CR, LF and binary bytes pass through untouched even
before a client configures the port.

The device keeps its own slave descriptor open: a client may open, close and
reopen the port without hanging the line up, and data written while nobody
listens piles up in the kernel, then in a bounded queue here, and then is
dropped oldest first and counted, as a UART that nobody reads loses bytes.
Closing the device hangs the line up: a client's next read fails (EIO), the
``/dev/pts/N`` node disappears, and so does the optional stable ``link``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import termios
import tty
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from firmware_bridges.errors import ConfigError, TransportError

log = logging.getLogger(__name__)

#: Bytes kept for a client that does not read before the oldest are dropped.
DEFAULT_MAX_PENDING = 256 * 1024
#: Largest read of client input (commands) at once.
READ_SIZE = 4096
#: Client input chunks kept for :meth:`PtyDevice.read` before the oldest are dropped.
MAX_INPUT_CHUNKS = 256


@dataclass(slots=True)
class PtyStats:
    bytes_written: int = 0
    bytes_dropped: int = 0
    bytes_read: int = 0
    input_dropped: int = 0


class PtyDevice:
    """A pty whose master side this process drives as a device.

    Use as an async context manager (the pty opens on enter and hangs up on
    exit). :meth:`write` never blocks; :meth:`read` returns what a client
    wrote (commands). ``link``, if given, is a symlink to the slave path that
    stays the same across device restarts (like ``/dev/serial/by-id``).
    """

    def __init__(
        self,
        link: Path | str | None = None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if max_pending < 1:
            raise ConfigError(f"max_pending must be positive, got {max_pending}")
        self.link = Path(link) if link is not None else None
        self.max_pending = max_pending
        self.stats = PtyStats()
        self._master = -1
        self._slave = -1
        self._slave_path = ""
        self._pending = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer_armed = False
        self._input: asyncio.Queue[bytes] | None = None

    # lifecycle -----------------------------------------------------------------------------

    @property
    def slave_path(self) -> str:
        """The ``/dev/pts/N`` path a client opens."""
        if self._master < 0:
            raise TransportError("pty device is not open")
        return self._slave_path

    @property
    def path(self) -> str:
        """The path to give a client: the link if there is one, else the slave path."""
        return str(self.link) if self.link is not None else self.slave_path

    @property
    def is_open(self) -> bool:
        return self._master >= 0

    def open(self) -> None:
        if self._master >= 0:
            return
        try:
            master, slave = os.openpty()
        except OSError as exc:
            raise TransportError(f"cannot open a pty: {exc}") from exc
        try:
            tty.setraw(slave, termios.TCSANOW)
            tty.setraw(master, termios.TCSANOW)
            os.set_blocking(master, False)
            self._slave_path = os.ttyname(slave)
            if self.link is not None:
                _replace_symlink(self.link, self._slave_path)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave = master, slave
        log.info("pty device open at %s%s", self._slave_path,
                 f" (link {self.link})" if self.link is not None else "")

    def close(self) -> None:
        """Hang up: clients see EIO, the slave node and the link disappear."""
        if self._master < 0:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._master)
            self._loop.remove_writer(self._master)
        self._writer_armed = False
        if self.link is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self.link) == self._slave_path:
                    os.unlink(self.link)
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = -1
        self._pending.clear()
        log.info("pty device %s closed", self._slave_path)

    async def __aenter__(self) -> PtyDevice:
        self.open()
        self._loop = asyncio.get_running_loop()
        self._input = asyncio.Queue()
        self._loop.add_reader(self._master, self._on_readable)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        self._loop = None

    # device -> client ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the client without blocking; overflow drops the oldest bytes."""
        if self._master < 0:
            raise TransportError("write to a closed pty device")
        if not data:
            return
        if not self._pending:
            try:
                n = os.write(self._master, data)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                raise TransportError(f"pty write failed: {exc}") from exc
            self.stats.bytes_written += n
            if n == len(data):
                return
            data = data[n:]
        self._pending += data
        over = len(self._pending) - self.max_pending
        if over > 0:
            del self._pending[:over]
            self.stats.bytes_dropped += over
            log.debug("pty %s: no reader, dropped %d bytes", self._slave_path, over)
        self._arm_writer()

    @property
    def pending(self) -> int:
        """Bytes waiting in this process for the kernel to take them."""
        return len(self._pending)

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait until the kernel has taken every pending byte (False on timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending and self._master >= 0:
            if loop.time() > deadline:
                return False
            self._flush()
            if self._pending:
                await asyncio.sleep(0.005)
        return True

    def _arm_writer(self) -> None:
        if self._writer_armed or self._loop is None or not self._pending:
            return
        self._loop.add_writer(self._master, self._flush)
        self._writer_armed = True

    def _flush(self) -> None:
        if self._master < 0:
            return
        while self._pending:
            try:
                n = os.write(self._master, self._pending)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("pty %s: write failed (%s); dropping %d bytes", self._slave_path, exc,
                            len(self._pending))
                self.stats.bytes_dropped += len(self._pending)
                self._pending.clear()
                break
            self.stats.bytes_written += n
            del self._pending[:n]
        if not self._pending and self._writer_armed and self._loop is not None:
            self._loop.remove_writer(self._master)
            self._writer_armed = False

    # client -> device ----------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # no client side open; cannot happen while we hold it
                return
            raise
        if not data or self._input is None:
            return
        self.stats.bytes_read += len(data)
        if self._input.qsize() >= MAX_INPUT_CHUNKS:
            dropped = self._input.get_nowait()
            self.stats.input_dropped += len(dropped)
        self._input.put_nowait(data)

    async def read(self) -> bytes:
        """The next bytes a client wrote to the port (waits for them)."""
        if self._input is None:
            raise TransportError("pty device is not open (use it as an async context manager)")
        return await self._input.get()


def _replace_symlink(link: Path, target: str) -> None:
    if link.exists() and not link.is_symlink():
        raise ConfigError(f"pty link {link} exists and is not a symlink")
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
