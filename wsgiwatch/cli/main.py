"""The ``wsgiwatch`` command: parses the command line and hands over to a subcommand.

Each subcommand lives in its own module with ``register(subparsers)``, which sets a
``handler(args, environ) -> int`` default; ``main`` only dispatches. Environment variables
(``WSGIWATCH_*``) are read here, through the ``environ`` handed to the handler, and nowhere
in the library.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from wsgiwatch import __version__
from wsgiwatch.cli import demo, diagnose, grafana_export, run, timeline, top, whatif
from wsgiwatch.cli import sidecar as cli_sidecar
from wsgiwatch.cli.sidecar import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgiwatch",
        description="See WSGI requests stalled behind other requests in the same worker "
        "process (head-of-line blocking).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="subcommand", metavar="COMMAND")
    cli_sidecar.register(subparsers)
    run.register(subparsers)
    demo.register(subparsers)
    diagnose.register(subparsers)
    whatif.register(subparsers)
    top.register(subparsers)
    timeline.register(subparsers)
    grafana_export.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.subcommand is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = args.handler(args, os.environ)
    except ConfigError as exc:
        print(f"wsgiwatch {args.subcommand}: error: {exc}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
