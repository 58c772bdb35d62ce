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
import math
import operator
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any, NamedTuple, TypeVar

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

#: Poll again, early if need be, before a worker's ring is this full at its current rate.
#: A quarter: the poll thread may wake late (a busy host), the poll itself take a while,
#: and the rate jump, by three times the interval together before a record is lost.
DRAIN_AT = 0.25
#: drain_by() looks at the ring heads itself (when at_capacity has not just done so) at most
#: this often, and at most every this much per worker (its cost grows with the workers).
HEADS_EVERY_S = 0.05
HEADS_PER_WORKER_S = 0.002

log = structlog.get_logger("wsgiwatch.sidecar")
#: How often the poll loop looks at the scoreboards between polls while some worker runs a
#: request, and polls while some worker is at capacity (:meth:`Monitor.at_capacity`).
FAST_INTERVAL_S = 0.05
#: How often it looks while every worker was idle at the last look (see look_interval_s).
IDLE_LOOK_S = 0.1

#: at_capacity() and drain_by() answer from one look when asked within this of each other
#: (the poll loop asks both on each wake-up).
LOOK_REUSE_S = 0.01

Drained = dict[Worker, list[Record]]


class Look(NamedTuple):
    """What the last between-poll look saw (:meth:`Monitor._look`)."""

    at: float  # time.monotonic() of the look
    idle: bool  # no live worker had a busy slot
    full: bool  # some live worker had every slot busy
    filling: bool  # some ring was DRAIN_AT full already


NO_LOOK = Look(-math.inf, False, False, False)
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
        # When to poll again, sooner than the schedule, so that no ring overflows: see
        # drain_by(). pid -> (when its header was last read, its ring head then).
        self._read_at: dict[int, tuple[int, int]] = {}
        self._drain_by: float | None = None
        # The between-poll look (at_capacity, drain_by): the workers it reads, as the last
        # poll left them, and what it saw last.
        self._watched: tuple[Worker, ...] = ()
        self._last_look = NO_LOOK
        self.spool_dir_problem: str | None = None  # why workers would refuse the directory
        self.poll_durations = acc.Histogram(acc.POLL_BUCKETS)
        self.polls = 0
        self.last_poll_mono = 0.0
        self.last_poll_duration = 0.0

    # -- the poll ----------------------------------------------------------------------------
    def at_capacity(self) -> bool:
        """A cheap look between polls (scoreboards only, no kernel): is some worker at
        capacity right now, or a stall still on? The poll loop then polls at once, and
        keeps polling every :data:`FAST_INTERVAL_S` while it lasts: a request queued
        behind a busy worker is on /metrics within that, not a whole poll interval later."""
        if self.stalls:
            return True
        return self._look(time.monotonic()).full

    def look_interval_s(self) -> float:
        """How soon the poll loop should look again (``at_capacity``): every
        :data:`IDLE_LOOK_S` while every worker was idle at the last look, every
        :data:`FAST_INTERVAL_S` once one runs a request.

        A worker is at capacity only after it has begun some request, so from all-idle a
        stall shows at most IDLE_LOOK_S plus a poll later (half that on average), well
        within issue 10's 250 ms; while requests run, as soon as before. Each look wakes the
        sidecar (about 50 us of CPU on this VM before any work): half as many while idle
        is a third of an idle sidecar's CPU."""
        look = self._last_look
        if look.idle and not self.stalls:
            return IDLE_LOOK_S
        return self.fast_interval_s

    def _look(self, now: float) -> Look:
        """What one pread per live worker shows (:meth:`SpoolReader.glance`): busy slots and
        ring heads. The poll loop asks twice per wake-up (``drain_by``, then
        ``at_capacity``): a look younger than :data:`LOOK_REUSE_S` is answered again.

        This runs twenty times a second whatever the load, so it builds nothing per
        worker: no header or slot objects, only a count of the non-zero request numbers
        (minus those the last poll found stuck, which are not a request any more)."""
        look = self._last_look
        if now - look.at < LOOK_REUSE_S:
            return look
        full = filling = False
        idle = True
        for worker in self._watched:
            try:
                head, requests = worker.reader.glance()
            except SpoolFormatError:  # a damaged or vanished spool: the poll deals with it
                continue
            busy = len(requests) - requests.count(0)
            if busy:
                idle = False
            if worker.stuck:
                busy -= sum(1 for s in worker.stuck if s.request in requests)
            if busy >= max(1, worker.capacity):
                full = True
            if head - worker.reader.cursor >= DRAIN_AT * worker.header.ring_capacity:
                filling = True
        look = self._last_look = Look(now, idle, full, filling)
        return look

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
            fill_ns = self._time_to_fill(worker, now)
            if fill_ns is not None and (soonest_ns is None or fill_ns < soonest_ns):
                soonest_ns = fill_ns
        self._drain_by = None if soonest_ns is None else time.monotonic() + soonest_ns / 1e9
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
        watched = self._watched = tuple(w for w in self.registry.workers.values() if w.alive)
        # This poll has just read what a look would (and drained the rings): the poll
        # loop's first question after it is answered from that, without a read.
        self._last_look = Look(
            time.monotonic(),
            idle=not any(w.slots for w in watched),
            full=any(len(w.slots) >= max(1, w.capacity) for w in watched),
            filling=False,
        )
        self.polls += 1
        self.last_poll_mono = time.monotonic()
        self.last_poll_duration = self.last_poll_mono - started
        self.poll_durations.observe((), self.last_poll_duration)

    def _time_to_fill(self, worker: Worker, now: int) -> int | None:
        """Nanoseconds until ``worker``'s ring is DRAIN_AT full again, at the rate it wrote
        since the last poll (its ring head's progress; None: it wrote nothing)."""
        head = worker.header.ring_head
        last = self._read_at.get(worker.pid)
        self._read_at[worker.pid] = (now, head)
        if last is None or head <= last[1] or now <= last[0]:
            return None
        rate_ns = (now - last[0]) / (head - last[1])  # ns per record
        return int(DRAIN_AT * worker.header.ring_capacity * rate_ns)

    def drain_by(self) -> float | None:
        """``time.monotonic()`` by which the next poll should run so that no worker's ring
        overflows (None: whenever the schedule says).

        Rings are fixed when a worker starts (4,096 records by default); a sidecar that
        polls every 0.5 s would lose records from a worker writing over 8,000 a second. So:
        at the rate each worker wrote since the last poll, the time its ring is DRAIN_AT
        full; and, for a burst out of quiet, now if a ring is that full already (the look of
        :meth:`_look`, shared with at_capacity: the poll loop asks both on each wake-up).
        The poll loop polls early then (an optional method: monitors without it poll on
        the schedule only)."""
        now = time.monotonic()
        due = self._drain_by
        if due is not None and due <= now:
            return due
        # A look costs a pread per worker: with many workers, look less often for this
        # (64 workers: every 128 ms); at_capacity() looks every time it is asked.
        every = max(HEADS_EVERY_S, HEADS_PER_WORKER_S * len(self._watched))
        if now - self._last_look.at >= every:
            self._look(now)
        if self._last_look.filling:
            return now
        return due

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
            self._read_at.pop(worker.pid, None)
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
        self._read_at.pop(worker.pid, None)
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
