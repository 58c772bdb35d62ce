"""Accounting for finished requests: the counters they feed, the view each leaves for the
API, and the verdict and incident when one was blocked.

The counters are plain sums (:mod:`wsgiwatch.sidecar.accumulate`) that the collector turns
into metric families at scrape time. Per-worker series are keyed by the worker's stable
index, which outlives its process, so counters stay monotonic across replacements.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

from wsgiwatch.sidecar import accumulate as acc
from wsgiwatch.sidecar.arrivals import (
    BACKLOG,
    PROXY_ROUNDING_NS,
    ArrivalJoin,
    Ready,
    unix_record,
)
from wsgiwatch.sidecar.connections import plain_addr
from wsgiwatch.sidecar.incidents import IncidentLog
from wsgiwatch.sidecar.recent import (
    ENTRY_BYTES,
    READY_BYTES,
    Entry,
    Outcome,
    RecentBuffer,
    entry_bytes,
)
from wsgiwatch.sidecar.verdicts import Verdict, judge
from wsgiwatch.sidecar.workers import Worker
from wsgiwatch.spool.records import Record, queue_wait_ns

#: Connections remembered per worker, to tell a kept-alive connection from a new one.
SEEN_CONNECTIONS = 4096


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "unknown"


_STATUS_CLASS = {status: status_class(status) for status in range(100, 600)}


@dataclass
class Tallies:
    """Everything finished requests add up to, until the sidecar exits."""

    route_limit: int = 100
    requests: acc.Counter = field(default_factory=acc.Counter)
    durations: acc.Histogram = field(default_factory=lambda: acc.Histogram(acc.DURATION_BUCKETS))
    queue_waits: acc.Histogram = field(default_factory=lambda: acc.Histogram(acc.WAIT_BUCKETS))
    wait_phases: acc.Histogram = field(default_factory=lambda: acc.Histogram(acc.WAIT_BUCKETS))
    wait_sources: acc.Counter = field(default_factory=acc.Counter)
    blocked: acc.Counter = field(default_factory=acc.Counter)
    blocked_seconds: acc.Counter = field(default_factory=acc.Counter)
    misrouted: acc.Counter = field(default_factory=acc.Counter)
    accepted: acc.Counter = field(default_factory=acc.Counter)  # per worker index
    busy_seconds: acc.Counter = field(default_factory=acc.Counter)  # per worker index

    def __post_init__(self) -> None:
        self.route = acc.LabelCap(self.route_limit)
        self.blocker_route = acc.LabelCap(self.route_limit)
        self._blame_series: set[str] = set()

    def new_route(self, label: str, route: str) -> None:
        """Export a route's blame counters at 0 before it ever blocks anyone: a series born
        at 1 is invisible to rate() and increase(), and so is the first incident. ``label``
        is the route as capped (so this set stays as small as the labels)."""
        if label not in self._blame_series:
            self._blame_series.add(label)
            blocker = (self.blocker_route(route),)
            self.blocked.inc(blocker, 0.0)
            self.blocked_seconds.inc(blocker, 0.0)


def _by_label(pairs: list[tuple[str, float]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for label, value in pairs:
        out.setdefault(label, []).append(value)
    return out


class Accountant:
    """Takes finished requests, oldest first, and accounts for each once."""

    def __init__(
        self, tallies: Tallies, arrivals: ArrivalJoin, incidents: IncidentLog, threshold_ns: int
    ) -> None:
        self.tallies = tallies
        self.arrivals = arrivals
        self.incidents = incidents
        self.threshold_ns = threshold_ns
        self.recent = RecentBuffer()
        self._seen_conns: dict[int, collections.OrderedDict[tuple[str, int], None]] = {}
        # Waits and their phases of the requests of one finished_all() call, by label.
        self._waits: list[tuple[str, float]] = []
        self._phase_values: list[tuple[str, float]] = []

    def answered(self, index: int) -> collections.OrderedDict[tuple[str, int], None] | None:
        """Peers the worker with this index has answered (its kept-alive connections)."""
        return self._seen_conns.get(index)

    def forget(self, index: int) -> None:
        self._seen_conns.pop(index, None)

    def finished(
        self,
        worker: Worker,
        record: Record,
        workers: Sequence[Worker],
        now_ns: int,
        wall_offset: int,
    ) -> None:
        """Account for one finished request (see :meth:`finished_all`)."""
        self.finished_all([(worker, record)], workers, now_ns, wall_offset)

    def finished_all(
        self,
        items: Sequence[tuple[Worker, Record]],
        workers: Sequence[Worker],
        now_ns: int,
        wall_offset: int,
    ) -> None:
        """Account for finished requests, oldest first.

        Per request only what cannot wait: the route's label (its cap counts candidates
        per request), the duration's bucket, the connection, the join. Sums are kept in
        local dicts and added to the counters once per call: most requests (no source
        says when they came: no wait, no verdict) touch nothing else.
        """
        t = self.tallies
        cap = t.route
        blame_series = t._blame_series
        ready_of = self.arrivals.ready
        note = self._note_connection
        seen_conns = self._seen_conns
        requests: dict[tuple[str, str], int] = {}
        durations: dict[str, list[float]] = {}
        busy: dict[Worker, float] = {}
        sources: dict[tuple[Worker, str], int] = {}
        threshold_ns = self.threshold_ns
        waits = self._waits
        process: list[float] = []  # waits spent in the process alone
        plain: dict[str, str] = {}  # peer as recorded -> plain_addr(peer)
        kept: list[Entry] = []
        keep = kept.append
        for worker, record in items:
            route = cap(record.route)
            if route not in blame_series:
                t.new_route(route, record.route)
            key = (route, _STATUS_CLASS.get(record.status) or status_class(record.status))
            requests[key] = requests.get(key, 0) + 1
            duration_ns = record.exit_ns - record.entry_ns
            duration_s = duration_ns / 1e9 if duration_ns > 0 else 0.0
            same_route = durations.get(route)
            if same_route is None:
                durations[route] = [duration_s]
            else:
                same_route.append(duration_s)
            busy[worker] = busy.get(worker, 0.0) + duration_s
            addr = plain.get(record.peer)
            if addr is None:
                addr = plain[record.peer] = plain_addr(record.peer)
            seen = seen_conns.get(worker.index)
            conn = (addr, record.peer_port)
            if seen is not None and conn in seen and (record.peer or record.peer_port):
                seen.move_to_end(conn)  # a kept-alive connection: the usual case, inline
            else:
                note(worker, record)
            ready = ready_of(record, wall_offset, addr)
            if ready is None:
                sources[worker, "none"] = sources.get((worker, "none"), 0) + 1
                keep(
                    (record, worker.index, None, ENTRY_BYTES + len(record.route) + len(record.peer))
                )
                continue
            wait_ns = record.entry_ns - ready.ns
            if (
                wait_ns <= threshold_ns
                and ready.inside
                and not record.proxy_wall_ns
                and not (record.arrival_ns and record.arrival_ns < record.accept_ns)
            ):
                # The usual request with a known wait: too short for a verdict, spent in the
                # process alone (no backlog, no proxy phase). Summed; its view is built
                # from the Ready when asked (recent.request_view).
                wait_s = wait_ns / 1e9 if wait_ns > 0 else 0.0
                sources[worker, ready.source] = sources.get((worker, ready.source), 0) + 1
                waits.append((route, wait_s))
                process.append(wait_s)
                keep(
                    (
                        record,
                        worker.index,
                        ready,
                        ENTRY_BYTES + READY_BYTES + len(record.route) + len(record.peer),
                    )
                )
                continue
            outcome = self._waited(worker, record, route, ready, workers, now_ns, wall_offset)
            keep((record, worker.index, outcome, entry_bytes(record, outcome)))
        for key, count in requests.items():
            t.requests.inc(key, float(count))
        for route, values in durations.items():
            t.durations.observe_all((route,), values)
        for worker, seconds in busy.items():
            t.busy_seconds.inc((str(worker.index),), seconds)
        for (worker, source), count in sources.items():
            t.wait_sources.inc((source,), float(count))
            worker.wait_sources[source] += count
        if waits:
            for route, values in _by_label(waits).items():
                t.queue_waits.observe_all((route,), values)
            if process:
                t.wait_phases.observe_all(("process",), process)
            for phase, values in _by_label(self._phase_values).items():
                t.wait_phases.observe_all((phase,), values)
            self._waits, self._phase_values = [], []
        self.recent.extend(kept)

    def _waited(
        self,
        worker: Worker,
        record: Record,
        route: str,
        ready: Ready,
        workers: Sequence[Worker],
        now_ns: int,
        wall_offset: int,
    ) -> Outcome:
        """A request whose wait a source knows: its wait, phases and verdict."""
        t = self.tallies
        ready_ns, source = ready.ns, ready.source
        t.wait_sources.inc((source,))
        worker.wait_sources[source] += 1
        wait_ns = record.entry_ns - ready_ns
        if wait_ns < 0:
            wait_ns = 0  # queue_wait_ns(), inline: clocks may disagree by a jiffy
        wait_s = wait_ns / 1e9
        outcome = Outcome(ready_ns, wait_s, source)
        self._waits.append((route, wait_s))
        outcome.phases = phases = self._phases(record, ready, wall_offset, wait_s)
        self._phase_values.extend(phases.items())
        # judge() says no verdict at or below the threshold: asked only above it.
        if wait_ns > self.threshold_ns:
            verdict = judge(
                worker,
                record,
                ready_ns,
                ready.inside,
                workers,
                threshold_ns=self.threshold_ns,
                now_ns=now_ns,
            )
            if verdict is not None:
                self._blocked(worker, record, source, wait_ns, verdict, outcome)
        return outcome

    def _blocked(
        self,
        worker: Worker,
        record: Record,
        source: str,
        wait_ns: int,
        verdict: Verdict,
        outcome: Outcome,
    ) -> None:
        t = self.tallies
        t.blocked.inc((t.blocker_route(verdict.blames[0].run.route),))
        for blame in verdict.blames:
            t.blocked_seconds.inc((t.blocker_route(blame.run.route),), blame.share_s)
        if verdict.misrouted:
            t.misrouted.inc()
        outcome.blocked = True
        outcome.misrouted = verdict.misrouted
        outcome.blockers = [
            {
                "pid": b.run.pid,
                "request": b.run.request,
                "route": b.run.route,
                "blamed_s": round(b.share_s, 6),
            }
            for b in verdict.blames
        ]
        self.incidents.add(worker.index, record, source, wait_ns, verdict)

    def _note_connection(self, worker: Worker, record: Record) -> None:
        """Remember the connections each worker answered. Without the accept hook, a new
        peer on a worker is also our count of the connections it accepted; a request on a
        unix socket has no peer to tell connections apart, and counts as one (nginx opens
        one upstream connection per request unless told to keep them alive)."""
        if unix_record(record):
            if not worker.header.accept_hook:
                self.tallies.accepted.inc((str(worker.index),))
            return
        seen = self._seen_conns.setdefault(worker.index, collections.OrderedDict())
        key = (plain_addr(record.peer), record.peer_port)
        if key in seen:
            seen.move_to_end(key)
            return
        seen[key] = None
        if len(seen) > SEEN_CONNECTIONS:
            seen.popitem(last=False)
        if not worker.header.accept_hook:
            self.tallies.accepted.inc((str(worker.index),))

    @staticmethod
    def _phases(
        record: Record, ready: Ready, wall_offset: int, wait_s: float | None = None
    ) -> dict[str, float]:
        """The wait split where it was spent, in seconds: ``proxy`` (from the front proxy's
        or Apache's own start to the worker's socket), ``backlog`` (the kernel's accept
        queue: accept - arrival) and ``process`` (inside the worker: entry - ready). Only
        what the sources know: a proxy's time alone cannot be split. A wait seen in the
        backlog (uWSGI) is all backlog: the worker began it as soon as it accepted it."""
        if ready.source == BACKLOG:
            phases = {"backlog": queue_wait_ns(record.entry_ns, ready.ns) / 1e9}
            if record.proxy_wall_ns:  # nginx's uwsgi_pass over TCP: its time came first
                proxy_ns = ready.ns - (record.proxy_wall_ns - wall_offset)
                if proxy_ns >= -PROXY_ROUNDING_NS:
                    phases["proxy"] = max(0, proxy_ns) / 1e9
            return phases
        if not ready.inside:
            return {}
        if wait_s is None:
            wait_s = queue_wait_ns(record.entry_ns, ready.ns) / 1e9
        phases = {"process": wait_s}
        accept = record.accept_ns if record.accept_source != "none" else 0
        arrival = record.arrival_ns
        if arrival and accept and arrival < accept:
            phases["backlog"] = (accept - arrival) / 1e9
        if record.proxy_wall_ns and ready.source != "header":
            first_seen = min(x for x in (accept, record.arrival_ns, ready.ns) if x)
            proxy_ns = first_seen - (record.proxy_wall_ns - wall_offset)
            if proxy_ns >= -PROXY_ROUNDING_NS:  # nginx's ${msec} is truncated to the ms
                phases["proxy"] = max(0, proxy_ns) / 1e9
        return phases
