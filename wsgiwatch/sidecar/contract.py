"""What the sidecar's HTTP side and CLI need from the monitor that does the detection."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client.metrics_core import Metric

from wsgiwatch.sidecar.views import Incident, LiveState, RecentRequests


class MonitorProtocol(Protocol):
    def poll(self) -> None:
        """Read every spool and the kernel once, update all state. Never raises for bad
        input (damaged spools, vanished processes): those are counted and logged."""

    def collect(self) -> Iterable[Metric]:
        """Metric families from the current state (a prometheus_client custom collector)."""

    def incidents(self, limit: int = 100) -> list[Incident]:
        """The most recent head-of-line incidents, newest first, as JSON-ready dicts."""

    def recent_requests(self, since_s: float = 60.0) -> RecentRequests:
        """Finished requests of the last ``since_s`` seconds, oldest first, with their waits
        and verdicts: ``{"now_ns", "wall_offset_ns", "requests": [...]}`` (monotonic ns;
        ``wall_offset_ns`` turns them into wall-clock ns)."""

    def state(self) -> LiveState:
        """The live view: ``{"now_ns", "wall_offset_ns", "workers", "stalls", "listeners",
        "kernel"}`` (what each worker runs now, stalled requests, kernel backlogs)."""

    def health(self) -> dict[str, Any]:
        """Liveness facts: last poll time and duration, spools read, kernel available."""
