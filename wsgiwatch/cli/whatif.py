"""``wsgiwatch whatif``: what another configuration would have done with the traffic the
sidecar just recorded.

It replays the window's requests (when each arrived, how long each ran, on which route)
through a queueing model (:mod:`wsgiwatch.remedies.model`): first today's configuration, to
check the model against what was measured, then each remedy proven for this server, or the
shape given with ``--workers``, ``--threads``, ``--gate``, ``--worker-connections``. It
prints per-route p50 and p99 latency, the requests blocked inside a busy worker and the
kernel backlog's p99 for each.

Exit status: 0 a prediction was printed, 1 none could be made (too few timed requests, or
the model did not reproduce today's figures), 2 the sidecar could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from wsgiwatch.cli.advice import change_line
from wsgiwatch.cli.client import SidecarClient, SidecarUnreachable
from wsgiwatch.cli.common import (
    EXIT_UNREACHABLE,
    add_sidecar_options,
    count_arg,
    duration_arg,
    paragraph,
    seconds_text,
    sidecar_url,
    window_text,
)
from wsgiwatch.remedies.catalog import Deployment
from wsgiwatch.remedies.forecast import TOLERANCE, TOLERANCE_FLOOR_S, Forecast, Scenario
from wsgiwatch.remedies.model import Shape
from wsgiwatch.remedies.predict import predict
from wsgiwatch.remedies.recorded import deployment_from

EXIT_PREDICTED = 0
EXIT_NO_PREDICTION = 1
#: Routes shown in the table, busiest first.
MAX_ROUTES = 8


def shape_asked(deployment: Deployment, args: argparse.Namespace) -> list[tuple[str, Shape]] | None:
    """The shape the command line asks for (today's where not given); None: none asked."""
    asked = (args.workers, args.threads, args.gate, args.worker_connections)
    if all(v is None for v in asked):
        return None
    today = deployment.shape()
    shape = Shape(
        args.workers or today.workers,
        args.threads or today.threads,
        today.gate if args.gate is None else args.gate == "on",
        args.worker_connections or today.worker_connections,
    )
    return [(shape.describe(), shape)]


def _pair(s: Scenario, route: str | None) -> str:
    """``p50 / p99`` of ``route`` in ``s`` (of all requests when None)."""
    if route is None:
        return f"{seconds_text(s.p50_s)} / {seconds_text(s.p99_s)}"
    figures = s.route(route)
    if figures is None:
        return "-"
    return f"{seconds_text(figures.p50_s)} / {seconds_text(figures.p99_s)}"


def render(f: Forecast, window_s: float, server: str, source: str = "") -> str:
    rec = f.recorded
    out = [
        f"wsgiwatch whatif{': ' + source if source else ''}, last {window_text(window_s)}: "
        f"{len(rec.jobs)} timed requests over {rec.span_s:.1f} s"
        + (f" on {server}" if server else "")
        + f" ({f.today_shape.describe()})",
        "",
    ]
    if rec.untimed:
        out.append(paragraph(f"{rec.untimed} requests had no known arrival time and are left out."))
    if f.measured is None or f.today is None or not f.trusted:
        return "\n".join([*out, paragraph(f"No prediction: {f.reason}."), ""])
    limit = f"within {TOLERANCE:.0%} or {TOLERANCE_FLOOR_S * 1000:.0f} ms"
    out.append(
        paragraph(
            f"Model check: today's configuration replayed gives p99 "
            f"{seconds_text(f.today.p99_s)}, measured {seconds_text(f.measured.p99_s)}, and "
            f"every busy route's p99 is {limit} of its measured one: the predictions "
            "below follow."
        )
    )
    if not f.options:
        out += ["", "No remedy to try for this server: give --workers, --threads or --gate."]
    for i, option in enumerate(f.options, 1):
        assert option.shape is not None
        out += ["", paragraph(f"[{i}] {option.label}: {option.shape.describe()}")]
        out.append(paragraph(change_line(f.measured, option), "    "))
    columns = [("measured", f.measured), ("replayed", f.today)]
    columns += [(f"[{i}]", o) for i, o in enumerate(f.options, 1)]
    out += ["", f"{'p50 / p99':<24}{'n':>6}  " + "".join(f"{name:<22}" for name, _ in columns)]
    for route in f.measured.routes[:MAX_ROUTES]:
        cells = "".join(f"{_pair(s, route.route):<22}" for _, s in columns)
        out.append(f"{route.route[:24]:<24}{route.requests:>6}  {cells}")
    all_cells = "".join(f"{_pair(s, None):<22}" for _, s in columns)
    out.append(f"{'all routes':<24}{len(rec.jobs):>6}  {all_cells}")
    out.append(f"{'blocked in a worker':<32}" + "".join(f"{s.blocked:<22}" for _, s in columns))
    out.append(
        f"{'kernel backlog p99':<32}"
        + "".join(f"{seconds_text(s.backlog_p99_s):<22}" for _, s in columns)
    )
    return "\n".join(line.rstrip() for line in out) + "\n"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "whatif",
        help="replay the recorded traffic through another configuration and predict its latency",
        description="Replay the requests a running sidecar recorded through a queueing "
        "model of today's configuration (checked against what was measured) and of each "
        "remedy proven for this server, or of the shape given, and print per-route p50 and "
        "p99 latency, requests blocked in a worker and the kernel backlog's p99.",
        epilog="Exit status: 0 predicted, 1 no prediction could be made, 2 the sidecar "
        "could not be read.",
    )
    add_sidecar_options(parser, timeout_s=5.0)
    parser.add_argument(
        "--since", default="5m", type=duration_arg, help="the traffic to replay (default 5m)"
    )
    parser.add_argument("--workers", type=count_arg, help="worker processes (default: as now)")
    parser.add_argument("--threads", type=count_arg, help="threads per worker (default: as now)")
    parser.add_argument(
        "--gate",
        choices=["on", "off"],
        help="on: a worker accepts only with a free thread; off: greedily (default: as now)",
    )
    parser.add_argument(
        "--worker-connections",
        type=count_arg,
        help="connections a greedy worker holds before it stops accepting",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        client = SidecarClient(sidecar_url(args, environ), args.timeout)
        recent, state = client.recent_requests(args.since), client.state()
    except (SidecarUnreachable, ValueError) as exc:
        print(f"wsgiwatch whatif: cannot read the sidecar: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    requests = recent.get("requests", [])
    seen = len({r.get("worker") for r in requests})
    deployment = deployment_from(state.get("workers", []), seen)
    threshold = float(state.get("threshold_s") or 0.0)
    result = predict(requests, deployment, threshold, shape_asked(deployment, args))
    server = next((str(w["server"]) for w in state.get("workers", []) if w.get("server")), "")
    if args.json:
        data = {"url": client.url, "server": server, "kind": deployment.kind}
        data.update(result.to_json())
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(render(result, args.since, server, client.url))
    return EXIT_PREDICTED if result.trusted else EXIT_NO_PREDICTION
