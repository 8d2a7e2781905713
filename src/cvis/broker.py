"""Managed brokers: generated config, a child process, readiness and clean shutdown.

``ManagedBroker`` runs Mosquitto (MQTT 5, shared subscriptions: what production uses).
``EmbeddedBroker`` runs amqtt, a pure-Python broker, for machines without Mosquitto; it speaks
MQTT 3.1.1 only, so ingest workers connect with ``mqtt_version = "3.1.1"`` and one worker.
Used by ``cvis broker``, ``cvis demo`` and the test suite's broker fixture.

Queue limits are set on purpose. Mosquitto's default ``max_queued_messages``
of 1000 silently drops QoS 1 messages once a slow subscriber's queue holds
that many; cvis's end-to-end acks would repair the loss by resending, but
only after an ack timeout. We allow a deep queue bounded by bytes instead.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

log = logging.getLogger(__name__)

#: Largest MQTT packet the broker accepts: wire.Limits.max_encoded_bytes plus headers.
DEFAULT_MAX_PACKET = 16 * 1024 * 1024 + 64 * 1024
DEFAULT_MAX_QUEUED_MESSAGES = 100_000
DEFAULT_MAX_QUEUED_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_INFLIGHT = 100


class BrokerError(RuntimeError):
    """The broker could not be started or stopped."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class BrokerProcess:
    """A broker as a child process: start, wait until it accepts connections, stop, kill.

    Subclasses say how to run it (``_command``) and how to write its configuration
    (``_prepare``). Use as a context manager or call start()/stop().
    """

    #: What the broker is, for messages ("Mosquitto", "amqtt").
    name = "broker"
    #: The MQTT version clients should speak: "5" or "3.1.1".
    mqtt_version = "5"

    def __init__(self, port: int | None, data_dir: Path | str | None, host: str) -> None:
        self.host = host
        self.port = port
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cvis-broker-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write whatever the broker needs in ``data_dir`` before it starts."""

    def _stderr(self) -> int | IO[bytes]:
        """Where the child's stderr goes (read for the error when it exits at start)."""
        return subprocess.PIPE

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> Self:
        if self._proc is not None and self._proc.poll() is None:
            raise BrokerError("broker already running")
        if self.port is None:
            self.port = free_port(self.host)
        elif port_accepts(self.host, self.port):
            raise BrokerError(f"port {self.host}:{self.port} is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = self._command()
        self._prepare()
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr(),
            start_new_session=True,  # a Ctrl-C to our group is ours to forward
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = ""
                if self._proc.stderr:
                    err = self._proc.stderr.read(4096).decode(errors="replace")
                self._close(self._proc)
                raise BrokerError(f"{self.name} exited at start: {err.strip() or self._log_tail()}")
            if port_accepts(self.host, self.port):
                log.info("broker: %s pid %d listening on %s (data %s)",
                         self.name, self._proc.pid, self.url, self.data_dir)
                return self
            time.sleep(0.02)
        self.kill()
        raise BrokerError(f"{self.name} did not accept connections on {self.url} within {timeout} s")

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - 2048))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait (Mosquitto saves its persistence file); SIGKILL after ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("broker: %s did not stop in %.1f s, killing it", self.name, timeout)
                proc.kill()
                proc.wait()
        self._close(proc)
        log.info("broker: %s stopped (exit %s)", self.name, proc.returncode)

    def kill(self) -> None:
        """SIGKILL, as a crash would; Mosquitto's persistence file keeps only what was last saved."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close(proc)

    def _close(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.stderr:
            proc.stderr.close()
        self._proc = None
        # Wait until the kernel has released the listening port.
        deadline = time.monotonic() + 5
        while self.port and port_accepts(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class ManagedBroker(BrokerProcess):
    """Mosquitto as a child process."""

    name = "Mosquitto"
    mqtt_version = "5"

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        executable: str = "mosquitto",
        tls: TlsFiles | None = None,
        acl_file: Path | None = None,
        password_file: Path | None = None,
        max_packet_size: int = DEFAULT_MAX_PACKET,
        max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        max_inflight_messages: int = DEFAULT_MAX_INFLIGHT,
        persistence: bool = True,
    ) -> None:
        super().__init__(port, data_dir, host)
        self.executable = executable
        self.tls = tls
        self.acl_file = acl_file
        self.password_file = password_file
        self.max_packet_size = max_packet_size
        self.max_queued_messages = max_queued_messages
        self.max_queued_bytes = max_queued_bytes
        self.max_inflight_messages = max_inflight_messages
        self.persistence = persistence

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.log"

    def config_text(self) -> str:
        lines = [
            "# generated by cvis; edits are overwritten on the next start",
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
        ]
        if self.tls:
            lines += [
                f"cafile {self.tls.cafile}",
                f"certfile {self.tls.certfile}",
                f"keyfile {self.tls.keyfile}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
                # The client certificate's CN becomes the username, so ACL %u pins an agent.
                f"use_identity_as_username {'true' if self.tls.require_certificate else 'false'}",
            ]
        if self.password_file:
            lines += [f"password_file {self.password_file}", "allow_anonymous false"]
        elif not (self.tls and self.tls.require_certificate):
            lines.append("allow_anonymous true")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        lines += [
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 60",
            f"max_packet_size {self.max_packet_size}",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_queued_bytes {self.max_queued_bytes}",
            f"max_inflight_messages {self.max_inflight_messages}",
            "set_tcp_nodelay true",
            "persistent_client_expiration 7d",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # Mosquitto drops root privileges to user 'mosquitto' unless told otherwise,
            # and then cannot write our data directory.
            lines.append(f"user {getpass.getuser()}")
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        exe = shutil.which(self.executable)
        if exe is None:
            raise BrokerError(
                f"{self.executable!r} not found on PATH: install the Debian/Ubuntu package "
                "'mosquitto' (apt-get install mosquitto)"
            )
        return [exe, "-c", str(self.config_path)]

    def _prepare(self) -> None:
        self.config_path.write_text(self.config_text())


class EmbeddedBroker(BrokerProcess):
    """amqtt, a pure-Python MQTT 3.1.1 broker, as a child process (``python -m cvis.embedded_broker``).

    For machines without Mosquitto. It has no shared subscriptions (so one ingest worker), no
    packet-size limit of its own and keeps offline sessions in memory only: cvis's end-to-end
    acks make up for what it drops, at the cost of resends after the agents' ack timeout.
    """

    name = "amqtt"
    mqtt_version = "3.1.1"

    def __init__(self, port: int | None = None, data_dir: Path | str | None = None, *,
                 host: str = "127.0.0.1") -> None:
        super().__init__(port, data_dir, host)
        self._log: IO[bytes] | None = None

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "cvis.embedded_broker", "--host", self.host,
                "--port", str(self.port)]

    def _stderr(self) -> int | IO[bytes]:
        self._log = self.log_path.open("ab")
        return self._log

    def _close(self, proc: subprocess.Popen[bytes]) -> None:
        super()._close(proc)
        if self._log is not None:
            self._log.close()
            self._log = None


def embedded_broker_available() -> bool:
    """True if the amqtt package (cvis's embedded broker) can be imported."""
    return importlib.util.find_spec("amqtt") is not None


def mosquitto_executable() -> str | None:
    """Mosquitto's path, on PATH or where Debian puts it (not on a normal user's PATH)."""
    exe = shutil.which("mosquitto")
    if exe is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        exe = "/usr/sbin/mosquitto"
    return exe
