"""``python -m wsgiwatch.grafana [--check] [--out DIR] [--job NAME]``: regenerate grafana/.

Without ``--check`` it writes every generated file that changed. With ``--check`` it writes
nothing and exits 1 when a committed file differs from what the code generates (CI runs it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from wsgiwatch.grafana import artifacts
from wsgiwatch.grafana.definitions import DEFAULT_JOB, Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsgiwatch.grafana",
        description="Generate wsgiwatch's Prometheus rules, Grafana alerts, provisioning "
        "files and dashboards.",
    )
    parser.add_argument("--out", default="grafana", help="output directory (default: grafana)")
    parser.add_argument(
        "--job",
        default=DEFAULT_JOB,
        help=f"the Prometheus job that scrapes the sidecars (default: {DEFAULT_JOB})",
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file is out of date"
    )
    args = parser.parse_args(argv)
    root = Path(args.out)
    files = artifacts.generate(Settings(job=args.job))
    if args.check:
        problems = artifacts.stale(root, files)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(
                f"{len(problems)} file(s) out of date: run `python -m wsgiwatch.grafana`",
                file=sys.stderr,
            )
            return 1
        print(f"{len(files)} generated files under {root} are up to date")
        return 0
    for path in artifacts.write(root, files):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
