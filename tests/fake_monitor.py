"""A stand-in for ``wsgiwatch.sidecar.monitor.Monitor`` (implements ``MonitorProtocol``).

Used in-process by the HTTP-side tests and, through the CLI's hidden ``--monitor-factory
fake_monitor:FakeMonitor`` (with ``tests/`` on PYTHONPATH), by subprocess tests. It reports
the keyword arguments it was built with in ``health()``, so a test can check what the CLI
passed from flags and environment variables.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

INCIDENTS = [
    {"victim": {"route": f"/fast/{i}"}, "blockers": [{"route": "/slow"}]} for i in range(5)
]


class FakeMonitor:
    def __init__(
        self,
        spool_dir: str = "",
        *,
        poll_interval_s: float = 0.5,
        threshold_s: float = 0.05,
        listener_ports: Collection[int] | None = None,
        poll_sleep_s: float = 0.0,
        fail_polls: bool = False,
    ) -> None:
        self.built_with = {
            "spool_dir": spool_dir,
            "poll_interval_s": poll_interval_s,
            "threshold_s": threshold_s,
            "listener_ports": None if listener_ports is None else list(listener_ports),
        }
        self.poll_sleep_s = poll_sleep_s
        self.fail_polls = fail_polls
        self.fail_collect = False
        self.fail_health = False
        self.polls = 0
        self.poll_starts: list[float] = []
        self.in_poll = threading.Event()
        self.closed = False

    def poll(self) -> None:
        self.poll_starts.append(time.monotonic())
        self.in_poll.set()
        try:
            if self.poll_sleep_s:
                time.sleep(self.poll_sleep_s)
            if self.fail_polls:
                raise RuntimeError("spool exploded")
            self.polls += 1
        finally:
            self.in_poll.clear()

    def collect(self) -> Iterable[Metric]:
        if self.fail_collect:
            raise RuntimeError("dictionary changed size during iteration")
        blocked = CounterMetricFamily(
            "wsgiwatch_hol_blocked_requests",
            "Requests blocked, by blocker route.",
            labels=["blocker_route"],
        )
        blocked.add_metric(["/slow"], 3)
        yield blocked
        yield GaugeMetricFamily("wsgiwatch_fake_polls", "Polls done.", value=self.polls)

    def incidents(self, limit: int = 100) -> list[dict[str, Any]]:
        return INCIDENTS[:limit]

    def health(self) -> dict[str, Any]:
        if self.fail_health:
            raise OSError("health exploded")
        return {"polls": self.polls, "built_with": self.built_with}

    def close(self) -> None:
        self.closed = True


class NotAMonitor:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
