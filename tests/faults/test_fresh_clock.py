"""A machine booted a minute ago: ``scripts/fresh-clock`` gives a command such a clock (a
time namespace), and what broke 48 tests on fresh machines works there. ``scripts/test``
runs the clock-sensitive part of the suite this way; these tests check the mechanism itself
on this kernel, so that run cannot silently be a normal one."""

from __future__ import annotations

import os
import subprocess
import sys

from support.servers import TESTS_DIR

FRESH_CLOCK = os.path.join(os.path.dirname(TESTS_DIR), "scripts", "fresh-clock")

PROBE = """
import tempfile, time
from support.sidecar_support import make_spool, created_before, S
from wsgiwatch.spool.reader import SpoolReader
with open("/proc/uptime") as f:
    uptime = float(f.read().split()[0])
assert created_before(3600 * S) == 0
with tempfile.TemporaryDirectory() as d:
    writer = make_spool(d, 5_300_000)  # created "an hour ago": before boot, so at 0
    with SpoolReader(writer.path, track=False) as reader:
        assert reader.header().created_mono_ns == 0
    writer.close()
print(time.monotonic(), uptime)
"""


def test_fresh_clock_reads_about_a_minute_since_boot() -> None:
    done = subprocess.run(
        [FRESH_CLOCK, sys.executable, "-c", PROBE],
        env=dict(os.environ, PYTHONPATH=TESTS_DIR),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    monotonic, uptime = (float(v) for v in done.stdout.split())
    assert 55 < monotonic < 120
    assert 55 < uptime < 120  # /proc/uptime follows the namespace
