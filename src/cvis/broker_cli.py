"""``cvis broker``: run a managed Mosquitto in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from cvis.broker import BrokerError, ManagedBroker, TlsFiles


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tls = None
    if args.certfile or args.keyfile or args.cafile:
        if not (args.certfile and args.keyfile and args.cafile):
            print("cvis broker: TLS needs --cafile, --certfile and --keyfile together")
            return 2
        tls = TlsFiles(args.cafile, args.certfile, args.keyfile)
    broker = ManagedBroker(
        args.port, args.data_dir, host=args.host, tls=tls, acl_file=args.acl_file,
        password_file=args.password_file,
    )
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
    print(f"broker listening on {broker.url} (data {broker.data_dir}); Ctrl-C stops it", flush=True)
    try:
        while not stop.wait(0.5):
            if not broker.running():
                print("cvis broker: mosquitto exited unexpectedly; see", broker.log_path)
                return 1
    finally:
        broker.cleanup()
    return 0
