"""Fixtures for the ingest server tests: an index on SQLite or on a fresh PostgreSQL schema,
a server config pointing at the session broker, and an in-process worker."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvis.broker import BrokerProcess
from ingest_server.config import ServerConfig, build_config
from ingest_server.worker import IngestWorker
from tests.postgres import fresh_schema, schema_url


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    with fresh_schema(postgres_url, "cvis_t") as (_, schema):
        yield schema_url(postgres_url, schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


def private_broker(broker: BrokerProcess) -> dict[str, object]:
    """Broker settings private to one test: the session broker keeps persistent sessions, and a
    stale worker session in the same share group would take its turn of every message."""
    tag = uuid.uuid4().hex[:8]
    return {"url": broker.url, "client_id_prefix": f"test-{tag}", "share_group": f"g{tag}",
            "session_expiry_s": 5}


def make_config(data_dir: Path, broker: BrokerProcess, index_url: str | None = None,
                **overrides: object) -> ServerConfig:
    data: dict[str, object] = {"data_dir": str(data_dir), "broker": private_broker(broker)}
    if index_url:
        data["index_url"] = index_url
    for k, v in overrides.items():
        section, _, key = k.partition("__")
        if key:
            data.setdefault(section, {})[key] = v  # type: ignore[index]
        else:
            data[section] = v
    return build_config(data, env={})


class ThreadedWorker:
    """An IngestWorker running in a thread of the test process (stop it with ``stop()``)."""

    def __init__(self, config: ServerConfig, worker: int = 0) -> None:
        self.worker = IngestWorker(config, worker)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> ThreadedWorker:
        self.worker.start()
        self._thread = threading.Thread(target=self._run, name="ingest-worker")
        self._thread.start()
        if not self.worker.connected.wait(timeout):
            self.stop()
            raise AssertionError("ingest worker did not connect to the broker")
        return self

    def _run(self) -> None:
        try:
            self.worker.run(self._stop)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.worker.close(flush=self.error is None)
        if self.error is not None:
            raise self.error

    def __enter__(self) -> ThreadedWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
