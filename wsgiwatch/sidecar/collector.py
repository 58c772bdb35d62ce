"""The Prometheus families, computed at scrape time from the monitor's current state
(prometheus_client's custom-collector pattern: ``collect()`` yields families, nothing is
kept in prometheus_client's metric objects; the HTTP side registers this in a
``CollectorRegistry`` of its own, never the global one).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from wsgiwatch.kernel import visibility
from wsgiwatch.sidecar import accumulate as acc

if TYPE_CHECKING:
    from wsgiwatch.sidecar.monitor import Monitor


class SidecarCollector:
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterable[Metric]:
        t = self.monitor.tallies
        yield t.requests.family(
            "wsgiwatch_requests_total",
            "Finished requests, by route and status class.",
            ["route", "status_class"],
        )
        yield t.durations.family(
            "wsgiwatch_request_duration_seconds",
            "Time in the app, entry to the response's close().",
            ["route"],
        )
        yield t.queue_waits.family(
            "wsgiwatch_queue_wait_seconds",
            "Time a request waited inside its worker process before the app was entered.",
            ["route"],
        )
        yield t.wait_sources.family(
            "wsgiwatch_queue_wait_source_total",
            "Finished requests by where their queue wait came from (none: unknown).",
            ["source"],
        )
        yield t.blocked.family(
            "wsgiwatch_hol_blocked_requests_total",
            "Requests that waited behind other requests in the same process, by the route "
            "of the request that blocked them most.",
            ["blocker_route"],
        )
        yield t.blocked_seconds.family(
            "wsgiwatch_hol_blocked_seconds_total",
            "Seconds blocked requests waited, split among the routes that blocked them.",
            ["blocker_route"],
        )
        yield t.misrouted.family(
            "wsgiwatch_misrouted_requests_total",
            "Blocked requests that waited while a sibling worker had a free slot.",
        )
        yield t.wait_phases.family(
            "wsgiwatch_wait_seconds",
            "Where requests waited: proxy (proxy to accept), backlog (kernel accept queue), "
            "process (inside the worker).",
            ["phase"],
        )
        yield from self._live()
        yield from self._workers()
        yield from self._health()

    def _live(self) -> Iterable[Metric]:
        monitor = self.monitor
        stalls = list(monitor.stalls)
        stalled = GaugeMetricFamily(
            "wsgiwatch_stalled_requests",
            "Requests in a worker, not being served, while that worker is at capacity: right now.",
            labels=["worker"],
        )
        counts: dict[int, int] = {w.index: 0 for w in monitor.registry.live()}
        for worker, _ in stalls:
            counts[worker.index] = counts.get(worker.index, 0) + 1
        for index, count in sorted(counts.items()):
            stalled.add_metric([str(index)], count)
        yield stalled
        now = time.monotonic_ns()
        oldest = max(((now - w.arrival_ns) / 1e9 for _, w in stalls), default=0.0)
        yield GaugeMetricFamily(
            "wsgiwatch_oldest_stall_seconds",
            "Age of the oldest request stalled right now (0: none).",
            value=max(0.0, oldest),
        )
        backlog = GaugeMetricFamily(
            "wsgiwatch_listen_backlog",
            "Connections in the kernel accept queue of a listener.",
            labels=["listener"],
        )
        limit = GaugeMetricFamily(
            "wsgiwatch_listen_backlog_limit", "The accept queue's limit.", labels=["listener"]
        )
        for name, (queued, cap) in sorted(monitor.listen_backlog().items()):
            backlog.add_metric([name], queued)
            limit.add_metric([name], cap)
        yield backlog
        yield limit
        unseen = GaugeMetricFamily(
            "wsgiwatch_kernel_unseen_workers",
            "Workers whose sockets the sidecar cannot see, by reason (not_dumpable, "
            "other_user, other_netns, no_sock_diag): their stalls and backlog go unseen.",
            labels=["reason"],
        )
        reasons = list(monitor.kernel_unseen().values())
        for reason in visibility.REASONS:
            unseen.add_metric([reason], reasons.count(reason))
        yield unseen
        yield GaugeMetricFamily(
            "wsgiwatch_spool_dir_refused",
            "1 when workers of the sidecar's user would refuse the spool directory (owner, "
            "mode): they record nothing; /healthz says why.",
            value=1.0 if monitor.spool_dir_problem else 0.0,
        )

    def _workers(self) -> Iterable[Metric]:
        monitor = self.monitor
        live = sorted(monitor.registry.live(), key=lambda w: w.index)
        busy = GaugeMetricFamily(
            "wsgiwatch_worker_busy", "Requests running in a worker now.", labels=["worker"]
        )
        cap = GaugeMetricFamily(
            "wsgiwatch_worker_capacity", "Requests a worker can run at once.", labels=["worker"]
        )
        rss = GaugeMetricFamily(
            "wsgiwatch_worker_resident_memory_bytes",
            "Resident memory of a worker.",
            labels=["worker"],
        )
        for worker in live:
            label = [str(worker.index)]
            busy.add_metric(label, worker.busy)
            cap.add_metric(label, worker.capacity)
            if worker.rss is not None:
                rss.add_metric(label, worker.rss)
        yield busy
        yield cap
        yield rss
        yield GaugeMetricFamily("wsgiwatch_workers", "Live worker processes.", value=len(live))
        yield monitor.tallies.busy_seconds.family(
            "wsgiwatch_worker_busy_seconds_total",
            "Seconds a worker spent running requests.",
            ["worker"],
        )
        yield monitor.tallies.accepted.family(
            "wsgiwatch_worker_accepted_total", "Connections a worker accepted.", ["worker"]
        )
        cpu = acc.Counter()
        for index, seconds in list(monitor.processes.cpu_seconds.items()):
            cpu.inc((str(index),), seconds)
        yield cpu.family("wsgiwatch_worker_cpu_seconds_total", "CPU time of a worker.", ["worker"])

    def _health(self) -> Iterable[Metric]:
        monitor = self.monitor
        drops = acc.Counter()
        drops.inc((), float(monitor.dropped_records()))
        yield drops.family(
            "wsgiwatch_spool_records_dropped_total",
            "Records lost: overwritten before the sidecar read them, torn, "
            "or not written (all slots busy, internal errors).",
        )
        errors = acc.Counter()
        errors.inc((), float(monitor.registry.spool_errors))
        yield errors.family("wsgiwatch_spool_errors_total", "Spool files that could not be read.")
        yield monitor.poll_durations.family(
            "wsgiwatch_sidecar_poll_duration_seconds", "Time one sidecar poll took.", []
        )
