"""``wsgiwatch timeline``: a waterfall of recent requests, one row per worker thread, as
one self-contained HTML file.

The command reads ``/api/requests`` and writes the page; :mod:`.timeline_html` builds the
page and :mod:`.timeline_svg` draws it (each request where it ran, its wait and its run,
blocked ones linked to the requests they waited behind).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

from wsgiwatch.cli.client import SidecarClient, SidecarUnreachable
from wsgiwatch.cli.common import EXIT_UNREACHABLE, add_sidecar_options, duration_arg, sidecar_url
from wsgiwatch.cli.timeline_html import render_html

EXIT_WRITE_FAILED = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "timeline",
        help="write a waterfall of recent requests per worker thread, stalls linked to "
        "their blockers, as one HTML file",
        description="Read a running sidecar's recent requests and write a self-contained "
        "HTML page: one row per worker thread, each request's accept, wait and run; "
        "requests that waited behind others in red, linked to the requests they waited "
        "behind. Exit status: 0 written, 1 the file could not be written, 2 the sidecar "
        "could not be read.",
    )
    add_sidecar_options(parser, timeout_s=5.0)
    parser.add_argument(
        "--since",
        default="60s",
        type=duration_arg,
        help="how far back: 30s, 5m (default 60s)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="timeline.html",
        help="where to write (default timeline.html; - for standard output)",
    )
    parser.set_defaults(handler=command)


def write(page: str, output: str) -> None:
    if output == "-":
        sys.stdout.write(page)
        return
    tmp = f"{output}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, output)


def command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    url = sidecar_url(args, environ)
    try:
        client = SidecarClient(url, args.timeout)
        recent = client.recent_requests(args.since)
    except (SidecarUnreachable, ValueError) as exc:
        print(f"wsgiwatch timeline: cannot read the sidecar: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    page = render_html(recent, f"{client.url}, last {args.since:g} s")
    try:
        write(page, args.output)
    except OSError as exc:
        print(f"wsgiwatch timeline: cannot write {args.output}: {exc}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    if args.output != "-":
        blocked = sum(1 for r in recent["requests"] if r.get("blocked"))
        print(
            f"wrote {args.output}: {len(recent['requests'])} requests, {blocked} blocked",
            file=sys.stderr,
        )
    return 0
