"""How exactly the sidecar finds head-of-line blocking, request by request, on every server.

    .venv/bin/python benchmarks/accuracy.py [--duration 20] [--repeat 2] [--servers a,b]

For each server setup (tests/support/accuracy_setups.py: gunicorn gthread 2x2 and 3x1,
waitress threads=2, cheroot numthreads=2, gunicorn gevent with a call that blocks the loop,
gunicorn sync as the control) and each wsgiwatch setup (*default*: only
``application = WSGIWatch(application)`` and ``wsgiwatch sidecar`` with its defaults;
*hook*: plus the opt-in accept hook, where the server has one), it sends seeded open-loop
Poisson traffic (30 requests/s, 12% slow requests of 120 to 800 ms among 3 ms ones, half on
fresh connections and half on a small pool of kept-alive ones) and scores every request
against the client's own truth (tests/support/traffic.py says how): recall and precision
of the "blocked" verdict, and the error of the measured queue wait (median and 95th
percentile of its absolute value, over the truly blocked requests). Runs are repeated with
different seeds; each cell shows the range over the runs. The same scoring is asserted in
tests/e2e/test_accuracy.py, on shorter runs.

Everything listens on 127.0.0.1, on free ports; servers and sidecars are ours, stopped by
process group. Timing on a shared machine: say so when quoting the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

from support import accuracy_setups, traffic


def _span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return (
        fmt.format(low)
        if fmt.format(low) == fmt.format(high)
        else f"{fmt.format(low)} to {fmt.format(high)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of traffic per run")
    parser.add_argument("--repeat", type=int, default=2, help="runs per cell (seeds 1..N)")
    parser.add_argument("--servers", default=",".join(accuracy_setups.SETUPS))
    parser.add_argument("--setups", default="default,hook", help="default, hook, or both")
    args = parser.parse_args()
    names = args.servers.split(",")
    wanted = args.setups.split(",")
    rows: list[tuple[str, ...]] = []
    for name in names:
        setup = accuracy_setups.SETUPS[name]
        for mode in wanted:
            hook = mode == "hook"
            if hook and not setup.has_hook:
                rows.append((name, mode, "both", "(no hook)", "", "", ""))
                continue
            scores: dict[str, list[traffic.Score]] = {"fresh": [], "kept": []}
            for seed in range(1, args.repeat + 1):
                shape = traffic.Shape(duration_s=args.duration, seed=seed)
                with tempfile.TemporaryDirectory() as spool:
                    os.chmod(spool, 0o700)
                    started = time.monotonic()
                    run = accuracy_setups.run(setup, shape, spool, hook=hook)
                for kind in scores:
                    scores[kind].append(run.score(kind))  # type: ignore[arg-type]
                print(
                    f"# {name} {mode} seed {seed}: {time.monotonic() - started:.0f} s; "
                    + "; ".join(f"{k}: {s[-1].row()}" for k, s in scores.items()),
                    file=sys.stderr,
                    flush=True,
                )
                for kind, kind_scores in scores.items():
                    for line in kind_scores[-1].misses():
                        print(f"#   {kind}: {line}", file=sys.stderr, flush=True)
            for kind, runs in scores.items():
                rows.append(
                    (
                        name,
                        mode,
                        kind,
                        _span([s.recall for s in runs], "{:.2f}"),
                        _span([s.precision for s in runs], "{:.2f}"),
                        _span(
                            [s.median_error_ms for s in runs if s.median_error_ms is not None],
                            "{:.1f}",
                        ),
                        _span(
                            [s.p95_error_ms for s in runs if s.p95_error_ms is not None], "{:.1f}"
                        )
                        + f"  (blocked {'/'.join(str(s.positives) for s in runs)})",
                    )
                )
    header = ("server", "setup", "connections", "recall", "precision", "wait err p50 ms", "p95 ms")
    print(
        f"accuracy, {args.duration:g} s of traffic per run, {args.repeat} run(s) per cell, "
        f"{time.strftime('%Y-%m-%d')}, on {os.cpu_count()} cores (shared machine)"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
