"""Shared fixtures: a real Mosquitto per session (through cvis's own managed broker), paths to
the real captures in ../shared/data, and a guard that fails tests which leak threads or
child processes."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from cvis.broker import ManagedBroker
from tests.postgres import postgres_server

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("CVIS_SHARED_DATA", ROOT.parent / "shared" / "data"))

# The property tests run the same examples on every run ("ci", the default), so a red CI means
# the change broke something, not that a new random example turned up an old bug. Exploring
# new examples is a separate, deliberate run: HYPOTHESIS_PROFILE=explore scripts/test
# (repeat it; failures it finds become fixed regression tests).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real third-party captures (read-only). Tests that need them fail loudly if absent."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real captures not found at {SHARED_DATA}; set CVIS_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedBroker]:
    """A Mosquitto started by cvis.broker on a free port, shared by the session."""
    b = ManagedBroker(data_dir=tmp_path_factory.mktemp("broker"))
    b.start()
    try:
        yield b
    finally:
        b.cleanup()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server URL for the session (see tests/postgres.py for which one)."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_server())
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield url


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[ManagedBroker]:
    """A broker of the test's own, which the test may stop, kill or restart."""
    b = ManagedBroker(data_dir=tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.cleanup()


def _child_pids() -> set[int]:
    me = str(os.getpid())
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[1].decode() == me and fields[0] != b"Z":
            out.add(int(entry))
    return out


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves threads or child processes behind (session fixtures excepted)."""
    threads_before = set(threading.enumerate())
    children_before = _child_pids()
    yield
    deadline = time.monotonic() + 3.0
    while True:
        leaked_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        leaked_children = _child_pids() - children_before
        if not (leaked_threads or leaked_children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if leaked_threads or leaked_children:
        pytest.fail(
            f"{request.node.nodeid} leaked threads {[t.name for t in leaked_threads]} "
            f"and child processes {sorted(leaked_children)}"
        )
