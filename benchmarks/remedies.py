"""Before and after each proven remedy, over several seeds: the figures of docs/fixing.md.

    .venv/bin/python benchmarks/remedies.py [--seeds 7 8 9] [--pictures docs/]

For each seed, gunicorn gthread 2 workers x 2 threads (accept hook on) gets seeded Poisson
traffic (30 requests/s for 10 s, 12% slow requests of 120 to 800 ms, each on its own
connection; tests/support/poisson_load.py); ``wsgiwatch diagnose`` reads the sidecar and
prints the remedy and its prediction; the server is restarted with the remedy's flags
exactly as printed and gets the same traffic. Printed side by side per seed: requests
blocked inside a worker, the fast route's p50 and p99 as its clients saw them, the p99
predicted before the change, and throughput.

``--pictures DIR`` also writes the first seed's timelines (``wsgiwatch timeline``) before
and after, as HTML and, with Debian's chromium, as PNG screenshots.

Everything listens on 127.0.0.1; the servers and sidecars are ours and stopped by pid.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from support.poisson_load import Traffic  # noqa: E402  (tests/support: the proof's own runs)
from support.remedy_proof import Run, predicted_p99, run  # noqa: E402


def screenshot(html: str, png: str, height: int) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        print(f"no chromium: {png} not written", file=sys.stderr)
        return
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--hide-scrollbars",
            f"--window-size=1340,{height}",
            f"--screenshot={png}",
            f"file://{os.path.abspath(html)}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def row(label: str, r: Run, predicted: str = "") -> str:
    c = r.clients
    return (
        f"{label:<8} {r.diagnose['blocked']:>8} {c.fast_p50_s * 1000:>9.1f} "
        f"{c.fast_p99_s * 1000:>9.0f} {predicted:>10} {c.throughput:>9.2f} {c.errors:>7}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--pictures", metavar="DIR", help="write timelines of the first seed")
    args = parser.parse_args()
    print(
        f"{'seed/run':<8} {'blocked':>8} {'fast p50':>9} {'fast p99':>9} {'predicted':>10} "
        f"{'req/s':>9} {'errors':>7}   (ms)"
    )
    for n, seed in enumerate(args.seeds):
        traffic = Traffic(seed=seed)
        pictures = args.pictures if n == 0 else None
        with tempfile.TemporaryDirectory(prefix="wsgiwatch-remedies-") as tmp:
            where = {
                k: os.path.join(pictures, f"fixing-gthread-{k}.html") if pictures else None
                for k in ("before", "after")
            }
            before = run(os.path.join(tmp, "b"), [], traffic, timeline=where["before"])
            printed = re.findall(r"^\s+add: (.+)$", before.diagnose_text, re.MULTILINE)
            if not printed:
                print(f"seed {seed}: diagnose printed no remedy\n{before.diagnose_text}")
                continue
            flags = printed[0]
            predicted = predicted_p99(before.diagnose, flags, "/fast")
            after = run(os.path.join(tmp, "a"), flags.split(), traffic, timeline=where["after"])
        print(f"seed {seed}: {flags}")
        print(row("  before", before))
        print(row("  after", after, f"{predicted * 1000:.0f}"))
        # Before: the table of blocked requests starts below the chart; after: no table.
        for html, height in ((where["before"], 620), (where["after"], 420)):
            if html:
                screenshot(html, html.replace(".html", ".png"), height)


if __name__ == "__main__":
    main()
