"""The uplink over a real Mosquitto: resend until acknowledged, bandwidth cap, TLS client
certificates, drain timeout and Ctrl-C of the replay command."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cvis.broker import ManagedBroker, TlsFiles, free_port
from edge_agent.agent import Agent
from edge_agent.config import config_from_dict
from tests.edge_agent.ack_server import AckingServer
from tests.edge_agent.conftest import replay_cmd, spool_batches, until, wait_for

T = TypeVar("T")


def run_agent(cfg: dict[str, Any], body: Callable[[Agent], Awaitable[T]]) -> T:
    async def main() -> T:
        async with Agent(config_from_dict(cfg, {})) as agent:
            return await body(agent)

    return asyncio.run(main())


def can_config(agent: str, url: str, spool: Path, log: Path, **extra: Any) -> dict[str, Any]:
    return {"agent_id": agent, "broker": {"url": url}, "spool": {"dir": str(spool)},
            "sources": [{"type": "replay_can", "name": "can", "path": str(log), "speed": 0}],
            "drain_timeout_s": 0, **extra}


def test_unacknowledged_batches_are_resent_until_acked(
    broker: ManagedBroker, short_can_log: Path, tmp_path: Path
) -> None:
    cfg = can_config("veh-resend", broker.url, tmp_path / "spool", short_can_log,
                     uplink={"ack_timeout_s": 1.0}, batch={"max_records": 2000})

    async def body(agent: Agent) -> None:
        await agent.sources_finished()
        await agent.flush()
        assert agent.uplink is not None
        await until(lambda: agent.uplink.resent_after_timeout > 0, 30, "a resend after the ack timeout")
        assert agent.spool is not None and agent.spool.pending_batches == 10  # nothing deleted unacked
        server.acking = True
        result = await agent.drain(30)
        assert result.complete

    with AckingServer(broker.host, broker.port, acking=False) as server:
        run_agent(cfg, body)
        assert server.received.duplicates > 0  # the same batches arrived again
        assert not server.received.conflicts  # ... byte for byte
        assert len(server.records("veh-resend", "can")) == 20_000
        assert server.seqs("veh-resend", "can") == set(range(10))


def test_bandwidth_cap(broker: ManagedBroker, short_can_log: Path, tmp_path: Path) -> None:
    rate, burst = 20 * 1024, 8 * 1024
    cfg = can_config("veh-slow", broker.url, tmp_path / "spool", short_can_log,
                     uplink={"max_kbyte_s": rate / 1024, "burst_kbyte": burst / 1024},
                     batch={"max_records": 1000})

    async def body(agent: Agent) -> tuple[float, int]:
        await agent.sources_finished()
        await agent.flush()
        t0 = time.monotonic()
        result = await agent.drain(60)
        assert result.complete
        assert agent.uplink is not None
        return time.monotonic() - t0, agent.uplink.published_bytes

    with AckingServer(broker.host, broker.port):
        elapsed, sent = run_agent(cfg, body)
    assert sent > 4 * burst
    # A lower bound only: the bucket cannot let more than burst + rate * t bytes through.
    assert elapsed >= (sent - 2 * burst) / rate * 0.9


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and two client certificates, made with openssl."""
    p = {n: d / n for n in ("ca.key", "ca.pem", "server.key", "server.pem", "agent.key", "agent.pem",
                            "srv.key", "srv.pem", "san.cnf")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cvis-test-ca",
             "-keyout", p["ca.key"], "-out", p["ca.pem"])
    p["san.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "127.0.0.1"), ("agent", "veh-tls"), ("srv", "ingest")):
        csr = d / f"{name}.csr"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                 "-keyout", p[f"{name}.key"], "-out", csr)
        extra = ["-extfile", p["san.cnf"]] if name == "server" else []
        _openssl("x509", "-req", "-in", csr, "-CA", p["ca.pem"], "-CAkey", p["ca.key"], "-CAcreateserial",
                 "-days", "2", "-out", p[f"{name}.pem"], *extra)
    return p


@pytest.mark.timeout(120)
def test_tls_with_client_certificates(short_can_log: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    tls = TlsFiles(pki["ca.pem"], pki["server.pem"], pki["server.key"], require_certificate=True)
    with ManagedBroker(data_dir=tmp_path / "broker", tls=tls) as broker, AckingServer(
        broker.host, broker.port, tls=(pki["ca.pem"], pki["srv.pem"], pki["srv.key"])
    ) as server:
        cfg = can_config("veh-tls", broker.url, tmp_path / "spool", short_can_log)
        cfg["broker"].update(tls_ca=str(pki["ca.pem"]), tls_cert=str(pki["agent.pem"]),
                             tls_key=str(pki["agent.key"]))

        async def body(agent: Agent) -> None:
            await agent.sources_finished()
            assert (await agent.drain(30)).complete

        run_agent(cfg, body)
        assert len(server.records("veh-tls", "can")) == 20_000

        # Without a client certificate the broker refuses the agent; it keeps retrying.
        bare = can_config("veh-tls", broker.url, tmp_path / "spool", short_can_log)
        bare["broker"]["tls_ca"] = str(pki["ca.pem"])

        async def refused(agent: Agent) -> None:
            assert agent.link is not None
            await until(lambda: agent.link.failed_connects >= 2, 30, "failed connects")
            assert not agent.link.connected

        run_agent(bare, refused)


def test_replay_exits_1_after_drain_timeout_saying_what_is_left(short_can_log: Path, tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens
    r = subprocess.run(replay_cmd("veh-nobroker", url, tmp_path / "spool", "--can", short_can_log,
                                  "--speed", "0", "--drain-timeout", "1"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "not acknowledged: 1 batches, 20000 records" in r.stderr
    assert len(spool_batches(tmp_path / "spool", "veh-nobroker")) == 1  # kept for the next run


def test_ctrl_c_drains_and_exits_cleanly(broker: ManagedBroker, short_can_log: Path, tmp_path: Path) -> None:
    cmd = replay_cmd("veh-ctrlc", broker.url, tmp_path / "spool", "--can", short_can_log,
                     "--speed", "1", "--drain-timeout", "20")
    with AckingServer(broker.host, broker.port) as server:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: server.received.messages >= 2, 30, "batches")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130, err[-2000:]
        assert "every batch acknowledged" in err
        assert "Traceback" not in err
        got = len(server.records("veh-ctrlc", "can"))
    assert 0 < got < 20_000  # stopped mid-replay ...
    assert spool_batches(tmp_path / "spool", "veh-ctrlc") == []  # ... with everything captured delivered


def test_agent_run_stops_on_sigterm_after_draining(
    broker: ManagedBroker, short_can_log: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
agent_id = "veh-run"
drain_timeout_s = 20
[broker]
url = "{broker.url}"
[spool]
dir = "{tmp_path / 'spool'}"
[[sources]]
type = "replay_can"
name = "can"
path = "{short_can_log}"
speed = 2
""")
    with AckingServer(broker.host, broker.port) as server:
        proc = subprocess.Popen([sys.executable, "-m", "cvis", "agent", "run", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: server.received.messages >= 1, 30, "a batch")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err[-2000:]
        assert "every batch acknowledged" in err
        received = len(server.records("veh-run", "can"))
    assert 0 < received <= 20_000
    assert spool_batches(tmp_path / "spool", "veh-run") == []


def test_reconnect_backoff_is_capped_and_jittered() -> None:
    import random

    from edge_agent.uplink import Backoff

    b = Backoff(0.5, 8.0, random.Random(7))
    delays = [b.next() for _ in range(10)]
    nominal = [min(8.0, 0.5 * 2**i) for i in range(10)]
    assert all(n / 2 <= d <= n for d, n in zip(delays, nominal, strict=True))
    assert len({round(d / n, 6) for d, n in zip(delays, nominal, strict=True)}) > 5  # jittered
    b.reset()
    assert b.next() <= 0.5
