"""The ``cvis`` command line. Each package adds its subcommands through a ``register`` function.

A command module exposes ``register(subparsers)``, which adds one or more
subparsers and sets ``func`` on each (a callable taking the parsed args and
returning an exit code). Modules are imported only when ``cvis`` starts, so
a missing optional dependency breaks only its own command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cvis import __version__

#: Modules that register subcommands, in --help order.
COMMAND_MODULES = [
    "cvis.broker_cli",
    "firmware_bridges.cli",
    "edge_agent.cli",
    "ingest_server.cli",
    "ingest_server.hazards.cli",
    "cvis.simulate.cli",
    "cvis.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvis",
        description="cvis: vehicle-road data edge ingestion (agents, broker, server, clips).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    v = sub.add_parser("version", help="print the cvis version")
    v.set_defaults(func=lambda args: print(f"cvis {__version__}") or 0)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
