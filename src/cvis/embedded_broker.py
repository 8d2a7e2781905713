"""The embedded broker's process: amqtt on one TCP listener until SIGTERM or SIGINT.

``python -m cvis.embedded_broker --host 127.0.0.1 --port 1883``. Started by
:class:`cvis.broker.EmbeddedBroker` (``cvis demo`` on a machine without Mosquitto, or
``cvis broker --embedded``); it logs one line per client connection to stderr.
Anonymous access only, no TLS: it is meant for one machine, not for a fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

log = logging.getLogger("cvis.embedded_broker")


def broker_config(host: str, port: int) -> dict[str, object]:
    """amqtt's configuration: one TCP listener, anonymous access, no $SYS or packet logging."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker(broker_config(host, port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    log.info("amqtt (MQTT 3.1.1) listening on %s:%d", host, port)
    await stop.wait()
    log.info("stopping")
    await broker.shutdown()


def _drop_empty_connections(record: logging.LogRecord) -> bool:
    return "No data to decode MQTT packet fixed header" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cvis.embedded_broker", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # amqtt and its state machine library log every step at INFO: keep problems only, and not
    # the connections that close without a packet (readiness probes, port scans).
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("amqtt.broker").addFilter(_drop_empty_connections)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
