"""``cvis broker``: run a managed Mosquitto (or, with ``--embedded``, the pure-Python amqtt
broker) in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from cvis.broker import BrokerError, BrokerProcess, EmbeddedBroker, ManagedBroker, TlsFiles


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="run a managed Mosquitto broker for cvis")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="config, persistence and log (default: a temp dir)")
    p.add_argument("--cafile", type=Path, help="TLS: CA certificate that signs client certificates")
    p.add_argument("--certfile", type=Path, help="TLS: server certificate")
    p.add_argument("--keyfile", type=Path, help="TLS: server key")
    p.add_argument("--acl-file", type=Path,
                   help="Mosquitto ACL file (for example: pattern readwrite cvis/v1/%%u/#)")
    p.add_argument("--password-file", type=Path, help="Mosquitto password file; disables anonymous access")
    p.add_argument("--embedded", action="store_true",
                   help="run the embedded amqtt broker instead of Mosquitto (MQTT 3.1.1, no shared "
                        "subscriptions, no TLS or ACLs: for one machine without Mosquitto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    broker: BrokerProcess
    if args.embedded:
        if args.certfile or args.keyfile or args.cafile or args.acl_file or args.password_file:
            print("cvis broker: --embedded takes no TLS, ACL or password options (Mosquitto only)")
            return 2
        broker = EmbeddedBroker(args.port, args.data_dir, host=args.host)
    else:
        mosquitto = _mosquitto(args)
        if mosquitto is None:
            return 2
        broker = mosquitto
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        broker.start()
    except BrokerError as exc:
        print(f"cvis broker: {exc}")
        return 1
    print(f"broker listening on {broker.url} ({broker.name}, MQTT {broker.mqtt_version}; data "
          f"{broker.data_dir}); Ctrl-C stops it", flush=True)
    try:
        while not stop.wait(0.5):
            if not broker.running():
                print(f"cvis broker: {broker.name} exited unexpectedly; see", broker.log_path)
                return 1
    finally:
        broker.cleanup()
    return 0


def _mosquitto(args: argparse.Namespace) -> ManagedBroker | None:
    tls = None
    if args.certfile or args.keyfile or args.cafile:
        if not (args.certfile and args.keyfile and args.cafile):
            print("cvis broker: TLS needs --cafile, --certfile and --keyfile together")
            return None
        tls = TlsFiles(args.cafile, args.certfile, args.keyfile)
    return ManagedBroker(
        args.port, args.data_dir, host=args.host, tls=tls, acl_file=args.acl_file,
        password_file=args.password_file,
    )
