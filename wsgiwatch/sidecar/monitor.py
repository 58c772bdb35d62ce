"""The sidecar's brain: each poll reads every spool and the kernel, joins them, and decides
which requests were blocked behind which (see :mod:`wsgiwatch.sidecar.detect`).

Queue wait = entry - max(accept, arrival), from the best source a request has:
the accept hook (exact accept time; arrival from ``TCP_INFO`` at accept), mod_wsgi's
request start, the kernel (arrival seen while the request waited, +/-5 ms), and last a
front proxy's ``X-Request-Start`` (an upper bound: it includes the proxy and the backlog).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Collection, Container, Iterable
from typing import Any

import psutil
import structlog
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from wsgiwatch.kernel import KernelError, KernelObserver, KernelSnapshot, UnixSocket
from wsgiwatch.kernel import supported as kernel_supported
from wsgiwatch.kernel.socket_watch import SocketWatch
from wsgiwatch.sidecar import accumulate as acc
from wsgiwatch.sidecar.connections import (
    Waiting,
    classify,
    find_listeners,
    listener_label,
    unix_listeners,
    unix_unread,
)
from wsgiwatch.sidecar.detect import Run, blockers, had_free_slot, time_at_capacity
from wsgiwatch.sidecar.workers import Worker, WorkerRegistry
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import Record

log = structlog.get_logger("wsgiwatch.sidecar")
stdlog = logging.getLogger("wsgiwatch.sidecar")

#: A kernel arrival estimate may be this much later than the entry it belongs to (jiffies).
ARRIVAL_TOLERANCE_NS = 8_000_000
#: Kernel arrival estimates not refreshed for this long are forgotten.
PENDING_TTL_NS = 120_000_000_000
#: Accept-hook accepts with no request after this long were connections that sent nothing.
ACCEPT_TTL_NS = 60_000_000_000
#: Without the kernel's view, an accept with no request after this long is not a stall.
ACCEPT_ALONE_TTL_NS = 10_000_000_000
INCIDENTS_KEPT = 1000
#: Finished requests kept for the timeline and the API (a few minutes of a busy server).
RECENT_KEPT = 20000


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "unknown"


def _peer_text(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _addr(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


class Monitor:
    """Implements :class:`wsgiwatch.sidecar.contract.MonitorProtocol`."""

    def __init__(
        self,
        spool_dir: str,
        *,
        poll_interval_s: float = 0.5,
        threshold_s: float = 0.05,
        listener_ports: Collection[int] | None = None,
        kernel: KernelObserver | None = None,
        use_kernel: bool = True,
        procfs_root: str = "/proc",
        route_limit: int = 100,
    ) -> None:
        self.spool_dir = spool_dir
        self.poll_interval_s = poll_interval_s
        self.threshold_ns = int(threshold_s * 1e9)
        self.listener_ports = set(listener_ports or ())
        self.registry = WorkerRegistry(spool_dir, procfs_root)
        self.kernel = (
            (kernel or KernelObserver(procfs_root)) if (use_kernel and kernel_supported) else None
        )
        # The kernel's view at a cost that does not grow with idle connections.
        self._sockets = SocketWatch(
            self.kernel or KernelObserver(procfs_root), listener_ports=self.listener_ports
        )
        self._route = acc.LabelCap(route_limit)
        self._blocker_route = acc.LabelCap(route_limit)
        # Finished requests.
        self.requests = acc.Counter()
        self.durations = acc.Histogram(acc.DURATION_BUCKETS)
        self.queue_waits = acc.Histogram(acc.WAIT_BUCKETS)
        self.wait_phases = acc.Histogram(acc.WAIT_BUCKETS)
        self.wait_sources = acc.Counter()
        self.blocked = acc.Counter()
        self._blame_series: set[str] = set()
        self.blocked_seconds = acc.Counter()
        self.misrouted = acc.Counter()
        # Per worker index (the label outlives the process, so counters stay monotonic).
        self.accepted = acc.Counter()
        self.busy_seconds = acc.Counter()
        self.cpu_seconds: dict[int, float] = {}
        self.cpu_base: dict[int, float] = {}
        self._cpu_pids: dict[int, int] = {}
        self._processes: dict[int, psutil.Process] = {}
        # Live state.
        self.stalls: list[tuple[Worker, Waiting]] = []
        self._kernel_waiting: list[Waiting] = []
        self._kernel_error_logged = False
        self._unix_unread: dict[int, list[UnixSocket]] = {}
        self._unix_first_seen: dict[int, int] = {}
        self.listen_backlog: dict[str, tuple[int, int]] = {}
        self.backlog_connections = 0
        self._pending: dict[tuple[int, str, int], tuple[int, int]] = {}  # -> (arrival, seen)
        self._accepted_pending: dict[tuple[int, str, int], int] = {}
        self._seen_conns: dict[int, collections.OrderedDict[tuple[str, int], None]] = {}
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_KEPT)
        self._incidents: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=INCIDENTS_KEPT
        )
        # Health.
        self.poll_durations = acc.Histogram(acc.POLL_BUCKETS)
        self.polls = 0
        self.last_poll_mono = 0.0
        self.last_poll_duration = 0.0
        self.kernel_notices: tuple[str, ...] = ()
        self.torn = 0

    # -- the poll ----------------------------------------------------------------------------
    def poll(self) -> None:
        started = time.monotonic()
        self.registry.refresh()
        workers = list(self.registry.workers.values())
        now = time.monotonic_ns()
        wall_offset = time.time_ns() - now
        for worker in workers:
            self._read_scoreboard(worker)
        snapshot = self._poll_kernel(workers, now)
        for worker in workers:
            self._read_accepts(worker, now)
        finished: list[tuple[Worker, Record]] = []
        for worker in workers:
            result = worker.reader.read_records()
            self.torn += result.torn
            worker.last_lost = worker.reader.header().reader_lost
            if result.records and worker.running:
                # Finished between the scoreboard read and now: one run, not two.
                done = {r.request for r in result.records}
                worker.running = [r for r in worker.running if r.request not in done]
            for record in result.records:
                worker.history.append(
                    Run(
                        record.pid,
                        record.request,
                        record.entry_ns,
                        record.exit_ns,
                        record.route,
                        record.method,
                    )
                )
                finished.append((worker, record))
        finished.sort(key=lambda item: item[1].exit_ns)
        for worker, record in finished:
            self._account(worker, record, workers, now, wall_offset)
        self._find_stalls(workers, snapshot, now)
        self._sample_processes(workers)
        for worker in workers:
            if not worker.alive:  # drained above: its last records are in
                self._forget_worker(worker)
                self.registry.retire(worker)
        self.polls += 1
        self.last_poll_mono = time.monotonic()
        self.last_poll_duration = self.last_poll_mono - started
        self.poll_durations.observe((), self.last_poll_duration)

    def _read_scoreboard(self, worker: Worker) -> None:
        reader = worker.reader
        worker.header = reader.header()
        worker.slots = reader.scoreboard() if worker.alive else []
        worker.running = [
            Run(worker.pid, s.request, s.entry_ns, 0, s.path, s.method) for s in worker.slots
        ]
        for slot in worker.slots:
            self._accepted_pending.pop((worker.pid, _addr(slot.peer), slot.peer_port), None)

    def _read_accepts(self, worker: Worker, now: int) -> None:
        serving = {(_addr(s.peer), s.peer_port) for s in worker.slots}
        for event in worker.reader.read_accepts():
            self.accepted.inc((str(worker.index),))
            peer = (_addr(event.peer), event.peer_port)
            if event.peer_port and peer not in serving:
                # Ready since the accept, or since its bytes came if they came later.
                self._accepted_pending[(worker.pid, peer[0], peer[1])] = max(
                    event.accept_ns, event.arrival_ns
                )
        for key, accept_ns in list(self._accepted_pending.items()):
            if now - accept_ns > ACCEPT_TTL_NS:
                del self._accepted_pending[key]

    def _poll_kernel(self, workers: list[Worker], now: int) -> KernelSnapshot | None:
        if self.kernel is None:
            return None
        live = [w for w in workers if w.alive]
        try:
            snapshot, inodes = self._sockets.poll(
                [w.pid for w in live], connections=any(w.busy >= w.blocking_capacity for w in live)
            )
        except KernelError as exc:  # a reply we cannot parse: report it, keep the spools
            self.kernel_notices = (f"kernel dump failed: {exc}",)
            if not self._kernel_error_logged:
                self._kernel_error_logged = True
                log.error("kernel.dump_failed", error=str(exc))
            return None
        self.kernel_notices = snapshot.notices
        listeners = find_listeners(snapshot, inodes, self.listener_ports or None)
        unix = unix_listeners(snapshot, inodes)
        backlog = {listener_label(s): (s.rqueue, s.wqueue) for s in listeners}
        backlog.update({f"unix:{s.path}": (s.rqueue, s.wqueue) for s in unix})
        self.listen_backlog = backlog  # replaced whole: scrapes read it from other threads
        self._unix_unread = unix_unread(snapshot, unix, inodes)
        seen_inodes = {s.inode for socks in self._unix_unread.values() for s in socks}
        for inode in list(self._unix_first_seen):
            if inode not in seen_inodes:
                del self._unix_first_seen[inode]
        for inode in seen_inodes:
            self._unix_first_seen.setdefault(inode, now)
        serving = {w.pid: {(_addr(s.peer), s.peer_port) for s in w.slots} for w in live}
        served: dict[int, Container[tuple[str, int]]] = {
            w.pid: self._seen_conns.get(w.index, ()) for w in live
        }
        waiting, self.backlog_connections = classify(snapshot, listeners, inodes, serving, served)
        for item in waiting:
            self._pending[(item.pid, _addr(item.peer_addr), item.peer_port)] = (
                item.arrival_ns,
                now,
            )
        for key, (_, seen) in list(self._pending.items()):
            if now - seen > PENDING_TTL_NS:
                del self._pending[key]
        self._kernel_waiting = waiting
        return snapshot

    # -- one finished request --------------------------------------------------------------
    def _ready(self, worker: Worker, record: Record, wall_offset: int) -> tuple[int, str] | None:
        """(max(accept, arrival), the source that says so) or None if nothing does."""
        reused = bool(record.flags & fmt.FLAG_REUSED_CONNECTION)
        key = (worker.pid, _addr(record.peer), record.peer_port)
        kernel = self._pending.get(key)
        kernel_arrival = 0
        if kernel and kernel[0] <= record.entry_ns + ARRIVAL_TOLERANCE_NS:
            kernel_arrival = kernel[0]
            del self._pending[key]  # a later one belongs to the connection's next request
        self._accepted_pending.pop(key, None)
        if record.accept_source == "hook":
            accept = 0 if reused else record.accept_ns  # a kept-alive request came later
            arrival = record.arrival_ns or kernel_arrival
            ready = max(accept, arrival)
            if ready:
                return (
                    ready,
                    "kernel" if ready == kernel_arrival and not record.arrival_ns else "hook",
                )
        if record.accept_source == "mod_wsgi" and record.accept_ns:
            return max(record.accept_ns, kernel_arrival), "mod_wsgi"
        if kernel_arrival:
            return kernel_arrival, "kernel"
        if record.proxy_wall_ns:
            return record.proxy_wall_ns - wall_offset, "header"
        return None

    def _account(
        self, worker: Worker, record: Record, workers: list[Worker], now: int, wall_offset: int
    ) -> None:
        route = self._route(record.route)
        if route not in self._blame_series:
            # Export the route's blame counters at 0 before it ever blocks anyone: a series
            # born at 1 is invisible to rate() and increase(), and so is the first incident.
            self._blame_series.add(route)
            blocker = (self._blocker_route(record.route),)
            self.blocked.inc(blocker, 0.0)
            self.blocked_seconds.inc(blocker, 0.0)
        label = str(worker.index)
        self.requests.inc((route, _status_class(record.status)))
        duration_s = max(0, record.exit_ns - record.entry_ns) / 1e9
        self.durations.observe((route,), duration_s)
        self.busy_seconds.inc((label,), duration_s)
        self._note_connection(worker, record)
        # What `wsgiwatch timeline` and the API show of this request; filled in below.
        view: dict[str, Any] = {
            "worker": worker.index,
            "pid": record.pid,
            "tid": record.tid,
            "request": record.request,
            "method": record.method,
            "route": record.route,
            "status": record.status,
            "peer": _peer_text(record.peer, record.peer_port),
            "accept_ns": record.accept_ns or None,
            "arrival_ns": record.arrival_ns or None,
            "ready_ns": None,
            "entry_ns": record.entry_ns,
            "exit_ns": record.exit_ns,
            "wait_s": None,
            "wait_source": "none",
            "blocked": False,
            "misrouted": False,
            "blockers": [],
        }
        self.recent.append(view)
        ready = self._ready(worker, record, wall_offset)
        if ready is None:
            self.wait_sources.inc(("none",))
            return
        ready_ns, source = ready
        self.wait_sources.inc((source,))
        wait_ns = max(0, record.entry_ns - ready_ns)
        view.update(ready_ns=ready_ns, wait_s=wait_ns / 1e9, wait_source=source)
        self.queue_waits.observe((route,), wait_ns / 1e9)
        self._observe_phases(record, ready_ns, source, wall_offset)
        # A proxy's timestamp also covers the proxy and the kernel backlog, where waiting is
        # healthy: it sizes the wait, but cannot say the process was at fault.
        if wait_ns <= self.threshold_ns or source == "header":
            return
        others = [
            r for r in worker.recent_runs() if (r.pid, r.request) != (record.pid, record.request)
        ]
        full_ns = time_at_capacity(ready_ns, record.entry_ns, others, worker.blocking_capacity, now)
        if full_ns <= self.threshold_ns:
            return  # it waited while a slot stood free: not behind these requests
        blames = blockers(ready_ns, record.entry_ns, (record.pid, record.request), others, now)
        if not blames:
            return
        main = blames[0].run
        self.blocked.inc((self._blocker_route(main.route),))
        for blame in blames:
            self.blocked_seconds.inc((self._blocker_route(blame.run.route),), blame.share_s)
        siblings = [w for w in workers if w is not worker and w.alive and w.ppid == worker.ppid]
        misrouted = any(
            had_free_slot(
                ready_ns,
                record.entry_ns,
                s.recent_runs(),
                s.capacity,
                now,
                s.header.created_mono_ns,
            )
            for s in siblings
        )
        if misrouted:
            self.misrouted.inc()
        view.update(
            blocked=True,
            misrouted=misrouted,
            blockers=[
                {
                    "pid": b.run.pid,
                    "request": b.run.request,
                    "route": b.run.route,
                    "blamed_s": round(b.share_s, 6),
                }
                for b in blames
            ],
        )
        self._incident(worker, record, ready_ns, source, wait_ns, blames, misrouted)

    def _note_connection(self, worker: Worker, record: Record) -> None:
        """Remember the connections each worker answered. Without the accept hook, a new
        peer on a worker is also our count of the connections it accepted."""
        seen = self._seen_conns.setdefault(worker.index, collections.OrderedDict())
        key = (_addr(record.peer), record.peer_port)
        if key in seen:
            seen.move_to_end(key)
            return
        seen[key] = None
        if len(seen) > 4096:
            seen.popitem(last=False)
        if not worker.header.accept_hook:
            self.accepted.inc((str(worker.index),))

    def _observe_phases(self, record: Record, ready_ns: int, source: str, wall_offset: int) -> None:
        entry = record.entry_ns
        accept = record.accept_ns if record.accept_source != "none" else 0
        if source != "header":
            self.wait_phases.observe(("process",), max(0, entry - ready_ns) / 1e9)
        if record.arrival_ns and accept and record.arrival_ns < accept:
            self.wait_phases.observe(("backlog",), (accept - record.arrival_ns) / 1e9)
        if record.proxy_wall_ns and source != "header":
            first_seen = min(x for x in (accept, record.arrival_ns, ready_ns) if x)
            proxy_ns = first_seen - (record.proxy_wall_ns - wall_offset)
            if proxy_ns >= 0:
                self.wait_phases.observe(("proxy",), proxy_ns / 1e9)

    def _incident(
        self,
        worker: Worker,
        record: Record,
        ready_ns: int,
        source: str,
        wait_ns: int,
        blames: list[Any],
        misrouted: bool,
    ) -> None:
        event: dict[str, Any] = {
            "victim": {
                "method": record.method,
                "route": record.route,
                "status": record.status,
                "peer": _peer_text(record.peer, record.peer_port),
                "worker": worker.index,
                "pid": record.pid,
                "queue_wait_s": round(wait_ns / 1e9, 6),
                "wait_source": source,
                "duration_s": round(record.duration_ns / 1e9, 6),
            },
            "blockers": [
                {
                    "method": b.run.method,
                    "route": b.run.route,
                    "started_s_before_victim": round((record.entry_ns - b.run.entry_ns) / 1e9, 6),
                    "duration_s": (
                        round((b.run.exit_ns - b.run.entry_ns) / 1e9, 6) if b.run.exit_ns else None
                    ),
                    "running": not b.run.exit_ns,
                    "blamed_s": round(b.share_s, 6),
                }
                for b in blames
            ],
            "misrouted": misrouted,
            "wall_time": time.time() - (time.monotonic_ns() - record.entry_ns) / 1e9,
        }
        self._incidents.append(event)
        log.warning("hol.incident", **event)

    # -- live stalls -----------------------------------------------------------------------
    def _find_stalls(
        self, workers: list[Worker], snapshot: KernelSnapshot | None, now: int
    ) -> None:
        by_pid = {w.pid: w for w in workers if w.alive}
        stalls: dict[tuple[int, str, int], tuple[Worker, Waiting]] = {}
        if snapshot is not None:
            for item in self._kernel_waiting:
                worker = by_pid.get(item.pid)
                if worker is not None and worker.busy >= worker.capacity:
                    stalls[(item.pid, _addr(item.peer_addr), item.peer_port)] = (worker, item)
        for pid, socks in self._unix_unread.items():
            worker = by_pid.get(pid)
            if worker is None or worker.busy < worker.capacity:
                continue
            for sock in socks:
                first_seen = self._unix_first_seen.get(sock.inode, now)
                stalls[(pid, "unix", sock.inode)] = (
                    worker,
                    Waiting(pid, "unix", sock.inode, first_seen, True),
                )
        if snapshot is None:
            # Without the kernel, the accept hook's "accepted, not started" is all there is.
            # A connection that never sends (a TCP health check) looks the same until it
            # expires, so these expire sooner (ACCEPT_ALONE_TTL_NS).
            for (pid, peer, port), ready_ns in list(self._accepted_pending.items()):
                worker = by_pid.get(pid)
                if worker is None or worker.busy < worker.capacity:
                    continue
                if now - ready_ns > ACCEPT_ALONE_TTL_NS:
                    continue
                stalls[(pid, peer, port)] = (worker, Waiting(pid, peer, port, ready_ns, False))
        self.stalls = list(stalls.values())

    def _sample_processes(self, workers: list[Worker]) -> None:
        for worker in workers:
            if not worker.alive:
                continue
            proc = self._processes.get(worker.pid)
            try:
                if proc is None:
                    proc = self._processes[worker.pid] = psutil.Process(worker.pid)
                times = proc.cpu_times()
                worker_cpu = times.user + times.system
                rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # it ended between the listing and now: expected
            # Per index, cumulative over the processes that held it: stays monotonic.
            if self._cpu_pids.get(worker.index) != worker.pid:
                self._cpu_pids[worker.index] = worker.pid
                self.cpu_base[worker.index] = self.cpu_seconds.get(worker.index, 0.0)
            self.cpu_seconds[worker.index] = self.cpu_base[worker.index] + worker_cpu
            worker.rss = rss

    def _forget_worker(self, worker: Worker) -> None:
        self._processes.pop(worker.pid, None)
        self._seen_conns.pop(worker.index, None)
        for table in (self._pending, self._accepted_pending):
            for key in [k for k in table if k[0] == worker.pid]:
                del table[key]

    # -- the contract ------------------------------------------------------------------------
    def incidents(self, limit: int = 100) -> list[dict[str, Any]]:
        # Copied first: the poll thread may append meanwhile (the HTTP side never locks).
        return list(reversed(list(self._incidents)))[: max(0, limit)]

    def recent_requests(self, since_s: float = 60.0) -> dict[str, Any]:
        """Finished requests of the last ``since_s`` seconds, oldest first, with the clock
        offset that turns their monotonic times into wall-clock ones."""
        now = time.monotonic_ns()
        cutoff = now - int(since_s * 1e9)
        recent = [dict(v) for v in list(self.recent) if v["exit_ns"] >= cutoff]
        return {"now_ns": now, "wall_offset_ns": time.time_ns() - now, "requests": recent}

    def state(self) -> dict[str, Any]:
        """The live view (``wsgiwatch top``): workers and what each runs, stalls, backlog."""
        now = time.monotonic_ns()
        workers = []
        for w in sorted(self.registry.live(), key=lambda w: w.index):
            workers.append(
                {
                    "worker": w.index,
                    "pid": w.pid,
                    "ppid": w.ppid,
                    "capacity": w.capacity,
                    "busy": w.busy,
                    "server": w.header.server_software,
                    "accept_hook": w.header.accept_hook,
                    "cooperative": w.header.cooperative,
                    "accelerated": w.header.accelerated,
                    "multithread": bool(w.header.flags & fmt.HEADER_FLAG_MULTITHREAD),
                    "rss_bytes": w.rss,
                    "slots": [
                        {
                            "request": s.request,
                            "method": s.method,
                            "path": s.path,
                            "peer": _peer_text(s.peer, s.peer_port),
                            "tid": s.tid,
                            "running_s": max(0, now - s.entry_ns) / 1e9,
                        }
                        for s in list(w.slots)
                    ],
                }
            )
        stalls = [
            {
                "worker": w.index,
                "peer": _peer_text(s.peer_addr, s.peer_port)
                if s.peer_addr != "unix"
                else f"unix inode {s.peer_port}",
                "age_s": max(0, now - s.arrival_ns) / 1e9,
                "unread": s.unread,
            }
            for w, s in list(self.stalls)
        ]
        listeners = [
            {"listener": name, "backlog": q, "limit": cap}
            for name, (q, cap) in sorted(self.listen_backlog.items())
        ]
        return {
            "now_ns": now,
            "wall_offset_ns": time.time_ns() - now,
            "workers": workers,
            "stalls": stalls,
            "listeners": listeners,
            "kernel": self.kernel is not None and not self.kernel_notices,
            "threshold_s": self.threshold_ns / 1e9,
        }

    def health(self) -> dict[str, Any]:
        return {
            "polls": self.polls,
            "last_poll_age_s": (time.monotonic() - self.last_poll_mono if self.polls else None),
            "last_poll_duration_s": self.last_poll_duration,
            "poll_interval_s": self.poll_interval_s,
            "spool_dir": self.spool_dir,
            "workers": len(self.registry.live()),
            "kernel": self.kernel is not None and not self.kernel_notices,
            "kernel_notices": list(self.kernel_notices),
        }

    def dropped_records(self) -> int:
        live = 0
        for worker in self.registry.workers.values():
            h = worker.header
            live += worker.last_lost + h.slots_exhausted + h.write_errors
        return int(live + self.registry.retired_lost + self.torn)

    def collect(self) -> Iterable[Metric]:
        yield self.requests.family(
            "wsgiwatch_requests_total",
            "Finished requests, by route and status class.",
            ["route", "status_class"],
        )
        yield self.durations.family(
            "wsgiwatch_request_duration_seconds",
            "Time in the app, entry to the response's close().",
            ["route"],
        )
        yield self.queue_waits.family(
            "wsgiwatch_queue_wait_seconds",
            "Time a request waited inside its worker process before the app was entered.",
            ["route"],
        )
        yield self.wait_sources.family(
            "wsgiwatch_queue_wait_source_total",
            "Finished requests by where their queue wait came from (none: unknown).",
            ["source"],
        )
        yield self.blocked.family(
            "wsgiwatch_hol_blocked_requests_total",
            "Requests that waited behind other requests in the same process, by the route "
            "of the request that blocked them most.",
            ["blocker_route"],
        )
        yield self.blocked_seconds.family(
            "wsgiwatch_hol_blocked_seconds_total",
            "Seconds blocked requests waited, split among the routes that blocked them.",
            ["blocker_route"],
        )
        yield self.misrouted.family(
            "wsgiwatch_misrouted_requests_total",
            "Blocked requests that waited while a sibling worker had a free slot.",
        )
        yield self.wait_phases.family(
            "wsgiwatch_wait_seconds",
            "Where requests waited: proxy (proxy to accept), backlog (kernel accept queue), "
            "process (inside the worker).",
            ["phase"],
        )
        yield from self._live_families()
        yield from self._worker_families()
        drops = acc.Counter()
        drops.inc((), float(self.dropped_records()))
        yield drops.family(
            "wsgiwatch_spool_records_dropped_total",
            "Records lost: overwritten before the sidecar read them, torn, "
            "or not written (all slots busy, internal errors).",
        )
        errors = acc.Counter()
        errors.inc((), float(self.registry.spool_errors))
        yield errors.family("wsgiwatch_spool_errors_total", "Spool files that could not be read.")
        yield self.poll_durations.family(
            "wsgiwatch_sidecar_poll_duration_seconds", "Time one sidecar poll took.", []
        )

    def _live_families(self) -> Iterable[Metric]:
        stalled = GaugeMetricFamily(
            "wsgiwatch_stalled_requests",
            "Requests in a worker, not being served, while that worker is at capacity: right now.",
            labels=["worker"],
        )
        counts: dict[int, int] = {w.index: 0 for w in self.registry.live()}
        for worker, _ in self.stalls:
            counts[worker.index] = counts.get(worker.index, 0) + 1
        for index, count in sorted(counts.items()):
            stalled.add_metric([str(index)], count)
        yield stalled
        now = time.monotonic_ns()
        oldest = max(((now - w.arrival_ns) / 1e9 for _, w in self.stalls), default=0.0)
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
        for name, (queued, cap) in sorted(self.listen_backlog.items()):
            backlog.add_metric([name], queued)
            limit.add_metric([name], cap)
        yield backlog
        yield limit

    def _worker_families(self) -> Iterable[Metric]:
        live = sorted(self.registry.live(), key=lambda w: w.index)
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
        yield self.busy_seconds.family(
            "wsgiwatch_worker_busy_seconds_total",
            "Seconds a worker spent running requests.",
            ["worker"],
        )
        yield self.accepted.family(
            "wsgiwatch_worker_accepted_total", "Connections a worker accepted.", ["worker"]
        )
        cpu = acc.Counter()
        for index, seconds in list(self.cpu_seconds.items()):
            cpu.inc((str(index),), seconds)
        yield cpu.family("wsgiwatch_worker_cpu_seconds_total", "CPU time of a worker.", ["worker"])

    def close(self) -> None:
        self.registry.close()
