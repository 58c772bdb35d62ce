"""Follow one spool from a separate process, as the sidecar does, while a test loads it.

``python -m apps.spool_follower PATH [--poll-ms MS] [--track] [--timeout S]``

Prints ``ready`` once the spool is open, then polls ``SpoolReader.read_records()`` every
``--poll-ms`` until a line ``stop N`` arrives on stdin (N: how many records the writers
published in all). It then drains until its cursor reaches N (bounded by time) and prints
one JSON object: every record it got (with ``read_ns``, when it got it), and its lost and
torn counts.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from typing import Any

from wsgiwatch.spool.reader import SpoolReader


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--poll-ms", type=float, default=1.0)
    parser.add_argument("--track", action="store_true")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    reader = SpoolReader(args.path, track=args.track)
    records: list[dict[str, Any]] = []
    lost = torn = polls = polls_with_records = 0

    def poll() -> None:
        nonlocal lost, torn, polls, polls_with_records
        result = reader.read_records()
        now = time.monotonic_ns()
        polls += 1
        polls_with_records += bool(result.records)
        lost += result.lost
        torn += result.torn
        for record in result.records:
            records.append(dict(record._asdict(), read_ns=now))

    print("ready", flush=True)
    deadline = time.monotonic() + args.timeout
    expected = None
    while expected is None and time.monotonic() < deadline:
        ready, _, _ = select.select([sys.stdin], [], [], args.poll_ms / 1000)
        poll()
        if ready:
            expected = int(sys.stdin.readline().split()[1])
    live_polls = polls
    drain_deadline = time.monotonic() + 5.0
    while expected is not None and reader.cursor < expected and time.monotonic() < drain_deadline:
        time.sleep(0.005)
        poll()
    json.dump(
        {
            "records": records,
            "lost": lost,
            "torn": torn,
            "cursor": reader.cursor,
            "polls": polls,
            "live_polls": live_polls,
            "polls_with_records": polls_with_records,
        },
        sys.stdout,
    )
    reader.close()


class Follower:
    """The test's side: run the follower on one spool file, then collect what it read."""

    def __init__(self, path: str, *, poll_ms: float = 1.0, track: bool = False) -> None:
        tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        argv = [sys.executable, "-m", "apps.spool_follower", path, "--poll-ms", str(poll_ms)]
        self.proc = subprocess.Popen(
            [*argv, *(["--track"] if track else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # the "ready" line must not be read ahead of communicate()
            env=dict(os.environ, PYTHONPATH=tests_dir),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the follower exits on any error
        if line.strip() != b"ready":
            self.close()
            raise RuntimeError(f"spool follower did not start: {line!r}")

    def finish(self, expected: int) -> dict[str, Any]:
        """Tell it the writers published ``expected`` records; its report."""
        out, err = self.proc.communicate(f"stop {expected}\n".encode(), timeout=30)
        if self.proc.returncode:
            raise RuntimeError(f"spool follower failed ({self.proc.returncode}): {err!r}")
        report: dict[str, Any] = json.loads(out)
        return report

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
