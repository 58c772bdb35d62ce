"""``wsgiwatch diagnose``: a running sidecar's findings as a plain-language verdict.

It reads the sidecar's recent requests (the ``--since`` window), its live state and its
metrics (:class:`~.diagnosis.Snapshot`), judges them (:func:`~.diagnosis.analyse`), picks
what to change for the server it found (:mod:`.advice`) and prints it
(:mod:`.diagnosis_text`), or the same as JSON.

Exit status: 0 no blocking, 1 blocking found (in the window, or a stall right now),
2 the sidecar could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, TextIO

from wsgiwatch.cli.advice import advice_for
from wsgiwatch.cli.client import SidecarClient, SidecarUnreachable
from wsgiwatch.cli.common import EXIT_UNREACHABLE, add_sidecar_options, duration_arg, sidecar_url
from wsgiwatch.cli.diagnosis import Snapshot, analyse
from wsgiwatch.cli.diagnosis_text import notes, render


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="read a running sidecar and say whether requests stall behind others, and why",
        description="Read a running sidecar and give a plain-language verdict: whether "
        "requests waited inside busy workers behind other requests, how many and how long, "
        "behind which routes, in which workers, whether waiting happens in the kernel "
        "backlog (healthy) or inside processes, and what to change for the server found.",
        epilog="Exit status: 0 no blocking found, 1 head-of-line blocking found (in the "
        "window, or a request stalled right now), 2 the sidecar could not be read.",
    )
    add_sidecar_options(parser, timeout_s=5.0)
    parser.add_argument(
        "--since",
        default="5m",
        type=duration_arg,
        help="how far back to look at finished requests: 90s, 5m, 1h (default 5m)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        client = SidecarClient(sidecar_url(args, environ), args.timeout)
        snapshot = Snapshot.fetch(client, args.since)
    except (SidecarUnreachable, ValueError) as exc:
        print(f"wsgiwatch diagnose: cannot read the sidecar: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    diagnosis = analyse(snapshot)
    advice, forecast = advice_for(snapshot, diagnosis)
    if args.json:
        data = diagnosis.to_json()
        data.update(
            url=client.url,
            advice=[asdict(a) for a in advice],
            forecast=forecast.to_json(),
            notes=notes(diagnosis),
        )
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(render(diagnosis, advice, client.url))
    return diagnosis.exit_code
