"""A stand-in for ``wsgiwatch.sidecar.monitor.Monitor`` (implements ``MonitorProtocol``).

Used in-process by the HTTP-side tests and, through the CLI's hidden ``--monitor-factory
support.fake_monitor:FakeMonitor`` (with ``tests/`` on PYTHONPATH), by subprocess tests. It reports
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
#: What ``state()`` answers: worker 0 runs a slow request with one request stalled behind it.
STATE: dict[str, Any] = {
    "now_ns": 10_000_000_000,
    "wall_offset_ns": 1_700_000_000_000_000_000,
    "workers": [
        {
            "worker": 0,
            "pid": 4242,
            "ppid": 4241,
            "capacity": 1,
            "busy": 1,
            "server": "gunicorn/23.0.0",
            "accept_hook": True,
            "rss_bytes": 40_000_000,
            "slots": [
                {
                    "request": 7,
                    "method": "GET",
                    "path": "/slow",
                    "peer": "127.0.0.1:50000",
                    "tid": 4250,
                    "running_s": 1.25,
                }
            ],
        },
    ],
    "stalls": [{"worker": 0, "peer": "127.0.0.1:50001", "age_s": 0.75, "unread": False}],
    "listeners": [{"listener": "127.0.0.1:8000", "backlog": 0, "limit": 2048}],
    "kernel": True,
}
#: What ``recent_requests()`` answers: /fast waited 0.5 s behind /slow in worker 0.
RECENT: list[dict[str, Any]] = [
    {
        "worker": 0,
        "pid": 4242,
        "tid": 4250,
        "request": 5,
        "method": "GET",
        "route": "/slow",
        "status": 200,
        "peer": "127.0.0.1:50000",
        "accept_ns": 8_000_000_000,
        "ready_ns": 8_000_000_000,
        "entry_ns": 8_000_100_000,
        "exit_ns": 9_000_000_000,
        "wait_s": 0.0001,
        "wait_source": "hook",
        "blocked": False,
        "misrouted": False,
        "blockers": [],
    },
    {
        "worker": 0,
        "pid": 4242,
        "tid": 4250,
        "request": 6,
        "method": "GET",
        "route": "/fast",
        "status": 200,
        "peer": "127.0.0.1:50001",
        "accept_ns": 8_500_000_000,
        "ready_ns": 8_500_000_000,
        "entry_ns": 9_000_100_000,
        "exit_ns": 9_001_000_000,
        "wait_s": 0.5001,
        "wait_source": "hook",
        "blocked": True,
        "misrouted": False,
        "blockers": [{"pid": 4242, "request": 5, "route": "/slow", "blamed_s": 0.5001}],
    },
]


class FakeMonitor:
    def __init__(
        self,
        spool_dir: str = "",
        *,
        poll_interval_s: float = 0.5,
        threshold_s: float = 0.05,
        listener_ports: Collection[int] | None = None,
        stuck_after_s: float = 3600.0,
        poll_sleep_s: float = 0.0,
        fail_polls: bool = False,
    ) -> None:
        self.built_with = {
            "spool_dir": spool_dir,
            "poll_interval_s": poll_interval_s,
            "threshold_s": threshold_s,
            "listener_ports": None if listener_ports is None else list(listener_ports),
            "stuck_after_s": stuck_after_s,
        }
        self.poll_sleep_s = poll_sleep_s
        self.fail_polls = fail_polls
        self.fail_collect = False
        self.fail_health = False
        self.fail_api = False
        self.since_asked: list[float] = []
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

    def recent_requests(self, since_s: float = 60.0) -> dict[str, Any]:
        if self.fail_api:
            raise RuntimeError("deque mutated during iteration")
        self.since_asked.append(since_s)
        now = STATE["now_ns"]
        requests = [dict(r) for r in RECENT if r["exit_ns"] >= now - since_s * 1e9]
        return {"now_ns": now, "wall_offset_ns": STATE["wall_offset_ns"], "requests": requests}

    def state(self) -> dict[str, Any]:
        if self.fail_api:
            raise RuntimeError("deque mutated during iteration")
        return dict(STATE)

    def health(self) -> dict[str, Any]:
        if self.fail_health:
            raise OSError("health exploded")
        return {"polls": self.polls, "built_with": self.built_with}

    def degraded(self) -> list[str]:
        return []

    def close(self) -> None:
        self.closed = True


class NotAMonitor:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
