"""The sidecar's poll, end to end: each poll reads every spool and the kernel, joins them,
and decides which requests were blocked behind which.

This module only orchestrates; each step has a module of its own:
:mod:`~wsgiwatch.sidecar.workers` (which spools, which processes live),
:mod:`~wsgiwatch.sidecar.kernel_view` (the kernel's sockets),
:mod:`~wsgiwatch.sidecar.arrivals` (since when each request could have been served),
:mod:`~wsgiwatch.sidecar.accounting` and :mod:`~wsgiwatch.sidecar.verdicts` (finished
requests: counters, verdicts, incidents), :mod:`~wsgiwatch.sidecar.stalls` (live stalls),
:mod:`~wsgiwatch.sidecar.losses` (requests that die with their worker),
:mod:`~wsgiwatch.sidecar.processes` (CPU and memory), :mod:`~wsgiwatch.sidecar.collector`
(the Prometheus families), :mod:`~wsgiwatch.sidecar.live_view` and
:mod:`~wsgiwatch.sidecar.views` (the JSON payloads).
"""

from __future__ import annotations

import itertools
import operator
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

import structlog
from prometheus_client.metrics_core import Metric

from wsgiwatch.errors import SpoolFormatError
from wsgiwatch.kernel import KernelObserver, visibility
from wsgiwatch.kernel import supported as kernel_supported
from wsgiwatch.sidecar import accumulate as acc
from wsgiwatch.sidecar.accounting import Accountant, Tallies
from wsgiwatch.sidecar.arrivals import ArrivalJoin, PeerKey, peer_key, serving
from wsgiwatch.sidecar.collector import SidecarCollector
from wsgiwatch.sidecar.connections import Waiting
from wsgiwatch.sidecar.detect import Run
from wsgiwatch.sidecar.incidents import IncidentLog
from wsgiwatch.sidecar.kernel_view import KernelView
from wsgiwatch.sidecar.live_view import live_state
from wsgiwatch.sidecar.looks import FAST_INTERVAL_S, Looks
from wsgiwatch.sidecar.losses import LostRequests, Unstarted
from wsgiwatch.sidecar.processes import ProcessSampler
from wsgiwatch.sidecar.spool_dir import spool_dir_problem
from wsgiwatch.sidecar.stalls import Stall, find_stalls
from wsgiwatch.sidecar.views import (
    Incident,
    LiveState,
    RecentRequests,
    UnseenWorker,
)
from wsgiwatch.sidecar.workers import Worker, WorkerRegistry
from wsgiwatch.spool.records import Record, SlotState

log = structlog.get_logger("wsgiwatch.sidecar")

Drained = dict[Worker, list[Record]]


T = TypeVar("T")


def _exit_ns(item: tuple[Worker, Record]) -> int:
    return item[1].exit_ns


_PEER_AND_PORT = operator.itemgetter(
    Record._fields.index("peer"), Record._fields.index("peer_port")
)


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
        stuck_after_s: float = 3600.0,
    ) -> None:
        self.spool_dir = spool_dir
        self.poll_interval_s = poll_interval_s
        self.fast_interval_s = min(FAST_INTERVAL_S, poll_interval_s)
        self.threshold_ns = int(threshold_s * 1e9)
        # A slot busy this long is not a request any more but a server that never called
        # close(): shown as stuck, no longer counted as busy (else its worker would look
        # full, with stalls behind it, for good).
        self.stuck_after_ns = int(stuck_after_s * 1e9)
        self.registry = WorkerRegistry(spool_dir, procfs_root)
        self.kernel: KernelView | None = None
        if use_kernel and kernel_supported:
            self.kernel = KernelView(kernel or KernelObserver(procfs_root), listener_ports or ())
        self.tallies = Tallies(route_limit)
        self.arrivals = ArrivalJoin(self.kernel.unix if self.kernel is not None else None)
        self.incident_log = IncidentLog()
        self.accountant = Accountant(
            self.tallies, self.arrivals, self.incident_log, self.threshold_ns
        )
        self.processes = ProcessSampler(procfs_root)
        self.losses = LostRequests(self.tallies.route)
        # Per live pid, the connections it had accepted and not started, at the last poll:
        # when it dies, they die with it.
        self._unstarted = Unstarted()
        self._stuck_logged: set[tuple[int, int]] = set()
        self.collector = SidecarCollector(self)
        self.stalls: list[Stall] = []
        #: Finished requests read but not judged yet (see ``poll``).
        self._deferred: list[tuple[Worker, Record]] = []
        self.torn = 0  # records claimed by writers that never finished them
        # What the poll loop asks between polls (at_capacity, drain_by, look_interval_s).
        self.looks = Looks(self.fast_interval_s)
        self.spool_dir_problem: str | None = None  # why workers would refuse the directory
        self.poll_durations = acc.Histogram(acc.POLL_BUCKETS)
        self.polls = 0
        self.last_poll_mono = 0.0
        self.last_poll_duration = 0.0

    # -- the poll ----------------------------------------------------------------------------
    def at_capacity(self) -> bool:
        """Is some worker at capacity right now (a look between polls, :class:`Looks`), or a
        stall still on? The poll loop then polls at once, and keeps polling fast while it
        lasts: a request queued behind a busy worker is on /metrics within moments."""
        return bool(self.stalls) or self.looks.look(time.monotonic()).full

    def look_interval_s(self) -> float:
        """How soon the poll loop should look again (:meth:`Looks.interval_s`)."""
        return self.looks.interval_s(stalled=bool(self.stalls))

    def drain_by(self) -> float | None:
        """``time.monotonic()`` by which the next poll should run so that no worker's ring
        overflows (None: whenever the schedule says; :meth:`Looks.drain_by`)."""
        return self.looks.drain_by()

    def poll(self) -> None:
        started = time.monotonic()
        self.registry.refresh()
        self._check_spool_dir()  # after: it asks whether any worker writes there now
        now = time.monotonic_ns()
        wall_offset = time.time_ns() - now
        final_slots: dict[Worker, list[SlotState]] = {}
        for worker in list(self.registry.workers.values()):
            slots = self._guarded(worker, self._read_scoreboard, now)
            if slots is not None:
                final_slots[worker] = slots
        workers = list(final_slots)
        live = [w for w in workers if w.alive]
        kernel_waiting = None
        if self.kernel is not None:
            answered = {w.pid: self.accountant.answered(w.index) or () for w in live}
            if self.kernel.poll(live, answered, now) is not None:
                kernel_waiting = self.kernel.waiting
                self.arrivals.waiting(kernel_waiting, now)
                self.arrivals.in_backlog(self.kernel.in_backlog, now)
        drained: Drained = {}
        for worker in workers:
            records = self._guarded(worker, self._read_new, now)
            if records is not None:
                drained[worker] = records
        workers = list(drained)
        live = [w for w in workers if w.alive]
        finished, self._deferred = self._deferred, []
        soonest_ns: int | None = None
        for worker, records in drained.items():
            finished.extend(zip(itertools.repeat(worker), records))
            fill_ns = self.looks.time_to_fill(worker, now)
            if fill_ns is not None and (soonest_ns is None or fill_ns < soonest_ns):
                soonest_ns = fill_ns
        self.looks.drain_in(soonest_ns)
        finished.sort(key=_exit_ns)
        ready: list[tuple[Worker, Record]] = []
        for item in finished:
            if item[1].exit_ns >= now and item[0].alive:
                # It ended after this poll's scoreboard read: a request that began after
                # that read and still runs is in neither the scoreboard nor the records,
                # and may have blocked this one. Judged next poll, when it is in one.
                self._deferred.append(item)
            else:
                ready.append(item)
        self.accountant.finished_all(ready, workers, now, wall_offset)
        kernel = self.kernel
        self.stalls = find_stalls(
            live,
            kernel_waiting=kernel_waiting,
            unix_waiting=kernel.unix.waiting_now() if kernel is not None else (),
            pending_accepts=self.arrivals.pending_accepts(),
            now=now,
        )
        for worker, _ in self.stalls:
            worker.accepts_when_full = True
        self._note_unstarted(live, kernel_waiting, drained)
        self.processes.sample(live)
        for worker in workers:
            if not worker.alive:  # drained above: its last records are in
                self._retire(worker, final_slots[worker], now)
        self.looks.polled(w for w in self.registry.workers.values() if w.alive)
        self.polls += 1
        self.last_poll_mono = time.monotonic()
        self.last_poll_duration = self.last_poll_mono - started
        self.poll_durations.observe((), self.last_poll_duration)

    def _check_spool_dir(self) -> None:
        problem = spool_dir_problem(self.spool_dir, workers=len(self.registry.live()))
        if problem is not None and problem != self.spool_dir_problem:
            log.warning("spool.dir_refused", path=self.spool_dir, problem=problem)
        self.spool_dir_problem = problem

    def _guarded(self, worker: Worker, read: Callable[[Worker, int], T], now: int) -> T | None:
        """``read()`` of one worker's spool; None if the file failed under us (truncated,
        overwritten): that worker is dropped, counted and logged, the poll goes on."""
        try:
            return read(worker, now)
        except SpoolFormatError as exc:
            self.looks.forget(worker.pid)
            self.arrivals.forget(worker.pid)
            self.registry.drop(worker, exc)
            return None

    def _read_new(self, worker: Worker, now: int) -> list[Record]:
        """Accept events and finished records since the last poll."""
        resyncs = worker.reader.resyncs
        events = worker.reader.read_accepts()
        if events:
            self.tallies.accepted.inc((str(worker.index),), float(len(events)))
        self.arrivals.accepted(worker.pid, events, serving(worker.slots), now)
        records = self._read_records(worker)
        if worker.reader.resyncs != resyncs:  # a forged or corrupted head: said once each
            log.warning("spool.resynced", worker=worker.index, detail=worker.reader.last_resync)
        return records

    def _read_scoreboard(self, worker: Worker, now: int) -> list[SlotState]:
        """Read what the worker runs now; returns the raw slots (a dead worker's last)."""
        worker.header, slots = worker.reader.header_and_scoreboard()
        if worker.alive:
            worker.stuck = [s for s in slots if now - s.entry_ns > self.stuck_after_ns]
            worker.slots = [s for s in slots if now - s.entry_ns <= self.stuck_after_ns]
        else:
            worker.slots, worker.stuck = [], []
        for slot in worker.stuck:
            if (worker.pid, slot.request) not in self._stuck_logged:
                self._stuck_logged.add((worker.pid, slot.request))
                log.warning(
                    "slot.stuck",
                    worker=worker.index,
                    pid=worker.pid,
                    method=slot.method,
                    route=slot.path,
                    running_s=round((now - slot.entry_ns) / 1e9, 3),
                )
        worker.running = [
            Run(worker.pid, s.request, s.entry_ns, 0, s.path, s.method) for s in worker.slots
        ]
        self.arrivals.started(worker.pid, worker.slots)
        return slots

    def _read_records(self, worker: Worker) -> list[Record]:
        result = worker.reader.read_records()
        self.torn += result.torn
        worker.last_lost = worker.reader.header().reader_lost
        if result.records and worker.running:
            # Finished between the scoreboard read and now: one run, not two.
            done = {r.request for r in result.records}
            worker.running = [r for r in worker.running if r.request not in done]
        worker.history.extend(result.records)  # a Record is a finished run as it is
        return result.records

    def _note_unstarted(
        self, live: list[Worker], kernel_waiting: list[Waiting] | None, drained: Drained
    ) -> None:
        unstarted: dict[int, set[PeerKey]] = {w.pid: set() for w in live}
        for item in kernel_waiting or ():
            if item.pid in unstarted:
                unstarted[item.pid].add(peer_key(item.pid, item.peer_addr, item.peer_port))
        if self.kernel is not None:
            for wait in self.kernel.unix.waiting_now():
                if wait.pid in unstarted:
                    unstarted[wait.pid].add((wait.pid, "unix", wait.inode))
        if kernel_waiting is None:
            # Without the kernel's view, the accept hook's "accepted, not started" is all
            # there is (with it, the kernel knows better: a connection that sent nothing and
            # closed, such as a port probe, is no longer there).
            for key, _ in self.arrivals.pending_accepts():
                if key[0] in unstarted:
                    unstarted[key[0]].add(key)
        for worker in live:
            # Distinct connections first, in C (a Record is a tuple): keep-alive traffic
            # repeats a few peers thousands of times.
            pairs = set(map(_PEER_AND_PORT, drained.get(worker, ())))
            answered = {peer_key(worker.pid, peer, port) for peer, port in pairs}
            self._unstarted.seen(worker.pid, unstarted[worker.pid], answered)

    def _retire(self, worker: Worker, final_slots: list[SlotState], now: int) -> None:
        self.looks.forget(worker.pid)
        running = {peer_key(worker.pid, s.peer, s.peer_port) for s in final_slots}
        unstarted = self._unstarted.at_death(worker.pid, running)
        if worker.gone:  # its process ended: what it was running died with it
            self.losses.worker_gone(worker, final_slots, unstarted, now)
        self._stuck_logged = {k for k in self._stuck_logged if k[0] != worker.pid}
        self.arrivals.forget(worker.pid)
        self.accountant.forget(worker.index)
        self.registry.retire(worker)

    # -- the contract ------------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        return self.collector.collect()

    def incidents(self, limit: int = 100) -> list[Incident]:
        return self.incident_log.latest(limit)

    def recent_requests(self, since_s: float = 60.0) -> RecentRequests:
        """Finished requests of the last ``since_s`` seconds, oldest first, with the clock
        offset that turns their monotonic times into wall-clock ones."""
        now = time.monotonic_ns()
        cutoff = now - int(since_s * 1e9)
        recent = self.accountant.recent.views(cutoff)
        return {"now_ns": now, "wall_offset_ns": time.time_ns() - now, "requests": recent}

    def state(self) -> LiveState:
        """The live view (``wsgiwatch top``): workers and what each runs, stalls, backlog."""
        return live_state(
            self.registry.live(),
            list(self.stalls),
            self.listen_backlog(),
            kernel=self.kernel_usable(),
            unseen=self.unseen_views(),
            threshold_s=self.threshold_ns / 1e9,
        )

    def health(self) -> dict[str, Any]:
        return {
            "polls": self.polls,
            "last_poll_age_s": (time.monotonic() - self.last_poll_mono if self.polls else None),
            "last_poll_duration_s": self.last_poll_duration,
            "poll_interval_s": self.poll_interval_s,
            "spool_dir": self.spool_dir,
            "spool_dir_problem": self.spool_dir_problem,
            "workers": len(self.registry.live()),
            "kernel": self.kernel_usable(),
            "kernel_notices": list(self.kernel.notices) if self.kernel is not None else [],
            "kernel_unseen_workers": self.unseen_views(),
        }

    def degraded(self) -> list[str]:
        """Why what the sidecar publishes is incomplete right now (empty: it is not)."""
        reasons = []
        if self.spool_dir_problem is not None:
            reasons.append(f"workers would refuse the spool directory: {self.spool_dir_problem}")
        if self.registry.directory_error is not None:
            reasons.append(f"{self.registry.directory_error}: no worker is recorded")
        if self.registry.unreadable:
            reasons.append(f"{self.registry.unreadable} spool file(s) cannot be read")
        stuck = sum(len(w.stuck) for w in self.registry.live())
        if stuck:
            reasons.append(
                f"{stuck} request(s) busy for over {self.stuck_after_ns / 1e9:g} s: "
                "a server that never calls close()?"
            )
        return reasons

    def kernel_unseen(self) -> dict[int, str]:
        """pid -> why the kernel view cannot see that live worker's sockets."""
        return dict(self.kernel.blind) if self.kernel is not None else {}

    def unseen_views(self) -> list[UnseenWorker]:
        by_pid = {w.pid: w for w in self.registry.live()}
        return [
            {
                "worker": by_pid[pid].index,
                "pid": pid,
                "reason": reason,
                "remedy": visibility.REMEDIES[reason],
            }
            for pid, reason in sorted(self.kernel_unseen().items())
            if pid in by_pid
        ]

    # -- facts the collector and the views share ---------------------------------------------
    def kernel_usable(self) -> bool:
        return self.kernel is not None and self.kernel.usable

    def listen_backlog(self) -> dict[str, tuple[int, int]]:
        return self.kernel.listen_backlog if self.kernel is not None else {}

    @property
    def backlog_connections(self) -> int:
        return self.kernel.backlog_connections if self.kernel is not None else 0

    def dropped_records(self) -> int:
        return self.registry.totals().dropped + self.torn

    def close(self) -> None:
        self.registry.close()
