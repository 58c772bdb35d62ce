"""Nothing lost at full speed: the sidecar polls early when a ring would fill before the
next scheduled poll (Monitor.drain_by, PollLoop)."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request

from apps.small_ring import RING_SIZE
from support.hol_scenario import wait_until
from support.servers import gunicorn, sidecar

from wsgiwatch.sidecar.poll_loop import PollLoop

CONNECTIONS = 8


class Busy:
    """A monitor whose ring fills in 20 ms while ``busy`` is set."""

    def __init__(self) -> None:
        self.polls = 0
        self.busy = True
        self.due: float | None = None

    def poll(self) -> None:
        self.polls += 1
        self.due = time.monotonic() + 0.02 if self.busy else None

    def degraded(self) -> list[str]:
        return []

    def drain_by(self) -> float | None:
        return self.due


def test_the_loop_polls_early_while_a_ring_fills_and_keeps_its_schedule_otherwise() -> None:
    monitor = Busy()
    loop = PollLoop(monitor, interval_s=5.0)  # type: ignore[arg-type]
    loop.start()
    try:
        wait_until(lambda: monitor.polls >= 6, 5, "early polls")
        monitor.busy = False
        time.sleep(0.1)
        settled = monitor.polls
        time.sleep(0.3)
        assert monitor.polls == settled  # back on the 5 s schedule
        assert loop.early_polls >= 5 and loop.status()["early_polls"] == loop.early_polls
    finally:
        loop.stop()


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(m.group(1))
        for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.MULTILINE)
    )


def test_no_record_lost_when_the_ring_fills_many_times_per_poll_interval(spool_dir: str) -> None:
    """gunicorn gthread, one worker, a 1,024-record ring, as fast as wrk can for 3 s, the
    real sidecar on its default 0.5 s schedule: the load overflows the ring many times per
    interval, yet every request is counted and none dropped."""
    with gunicorn(
        "apps.small_ring:application", spool_dir, worker_class="gthread", workers=1, threads=4
    ) as server:
        running, port = sidecar(spool_dir, "--poll-interval", "0.5")
        with running:
            with urllib.request.urlopen(server.url + "/fast", timeout=5):
                pass
            wait_until(lambda: _metric(port, "wsgiwatch_workers") == 1, 10, "the worker")
            # The warm-up request's record may be read a poll after its worker is seen.
            wait_until(lambda: _metric(port, "wsgiwatch_requests_total") == 1, 10, "warm-up")
            before = _metric(port, "wsgiwatch_requests_total")
            wrk = subprocess.run(
                ["wrk", "-t1", f"-c{CONNECTIONS}", "-d3s", server.url + "/fast"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            served = int(re.search(r"(\d+) requests in", wrk.stdout).group(1))  # type: ignore[union-attr]
            # Without early polls a 0.5 s schedule would lose what exceeds the ring.
            assert served / 3 * 0.5 > RING_SIZE, wrk.stdout

            def counted() -> float:
                return _metric(port, "wsgiwatch_requests_total") - before

            def dropped() -> float:
                return _metric(port, "wsgiwatch_spool_records_dropped_total")

            wait_until(lambda: counted() + dropped() >= served, 10, "every request read")
            # wrk counts the requests that completed within its 3 s; up to one per connection
            # was still in flight then, served and recorded all the same.
            assert served <= counted() <= served + CONNECTIONS and dropped() == 0
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                assert b'"early_polls"' in r.read()
