"""What happened, from what a sidecar saw: a :class:`Snapshot` of its views in, a
:class:`Diagnosis` out.

:func:`analyse` is a pure function of the snapshot: no I/O, no clock, no text. It counts
the requests that waited inside busy workers behind other requests, charges their waiting
to the routes they waited behind, finds the workers concerned, the requests that came on
kept-alive connections or waited while a sibling had a free slot, and uneven accepting
among sibling workers. What it means and what to change is worded elsewhere
(:mod:`.diagnosis_text`, :mod:`.advice`).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from wsgiwatch.cli.client import Metrics, SidecarClient
from wsgiwatch.cli.common import EXIT_BLOCKING, EXIT_HEALTHY
from wsgiwatch.remedies.catalog import Deployment
from wsgiwatch.remedies.recorded import deployment_from
from wsgiwatch.sidecar.contract import MonitorProtocol
from wsgiwatch.sidecar.views import (
    RECENT_KEPT,
    ListenerView,
    LiveState,
    RecentRequests,
    RequestView,
    UnseenWorker,
    WorkerView,
)

#: Accept imbalance is reported when a worker took this much more than its fair share...
IMBALANCE_FACTOR = 1.5
#: ...of at least this many connections.
IMBALANCE_MIN_CONNECTIONS = 8
#: A blocked request whose bytes arrived this long after its connection was accepted came
#: on a kept-alive connection.
KEEP_ALIVE_GAP_NS = 5_000_000
#: A route that was never the main blocker is listed only with this share of the blame.
MIN_BLAME_SHARE = 0.05

Verdict = Literal["blocking", "healthy", "idle"]


@dataclass
class Snapshot:
    """What a diagnosis is made from: the sidecar's three views, read at about one time."""

    window_s: float
    recent: RecentRequests  # /api/requests
    state: LiveState  # /api/state
    metrics: Metrics  # /metrics

    @classmethod
    def fetch(cls, client: SidecarClient, window_s: float) -> Snapshot:
        return cls(window_s, client.recent_requests(window_s), client.state(), client.metrics())

    @classmethod
    def from_monitor(cls, monitor: MonitorProtocol, window_s: float) -> Snapshot:
        """In-process, from a ``Monitor`` (as ``wsgiwatch demo`` runs one)."""
        return cls(
            window_s,
            monitor.recent_requests(window_s),
            monitor.state(),
            Metrics.from_families(monitor.collect()),
        )


@dataclass
class RouteBlame:
    route: str
    blocked: int  # requests that waited mostly behind this route
    blamed_s: float  # seconds of waiting charged to it (split among co-blockers)


@dataclass
class WorkerFacts:
    worker: int
    pid: int | None
    requests: int = 0
    connections: int = 0
    blocked: int = 0
    blocked_wait_s: float = 0.0
    misrouted: int = 0
    #: Where its requests' queue waits came from: hook, mod_wsgi, kernel, header, none.
    wait_sources: dict[str, int] = field(default_factory=dict)


@dataclass
class Diagnosis:
    verdict: Verdict
    window_s: float
    server: str
    workers_live: int
    capacity: int
    deployment: Deployment  # the server and its worker shape, as the workers report it
    accept_hook: bool  # on in every live worker (or, none live, it timed the requests)
    hook_workers: int  # live workers whose accepts the hook records
    requests: int
    timed: int  # requests whose queue wait is known
    blocked: int
    blocked_wait_s: float
    worst_wait_s: float
    median_wait_s: float
    misrouted: int
    keep_alive_victims: int
    blocking_routes: list[RouteBlame]
    waiting_routes: list[tuple[str, int]]  # routes of the requests that waited
    workers: list[WorkerFacts]
    process_wait_s: float  # all waiting inside processes in the window
    backlog_wait_s: float | None  # kernel accept queue, since the sidecar started
    backlog_waits: int
    backlog_now: list[ListenerView]
    stalls_now: int
    oldest_stall_s: float
    imbalance: list[tuple[int, int, float]]  # (worker, connections, share) when uneven
    example: dict[str, Any] | None
    window_cut: bool  # the sidecar kept fewer requests than the window held
    pure_python_workers: int  # live workers recording without the C accelerator
    kernel_visible: bool  # the sidecar reads the kernel's socket tables
    unseen_workers: list[UnseenWorker]  # live workers whose sockets it cannot see, and why
    records_dropped: int  # request records lost before the sidecar read them

    @property
    def exit_code(self) -> int:
        return EXIT_BLOCKING if self.verdict == "blocking" else EXIT_HEALTHY

    @property
    def backlog_mean_s(self) -> float | None:
        if self.backlog_wait_s is None or not self.backlog_waits:
            return None
        return self.backlog_wait_s / self.backlog_waits

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return data


def _imbalance(
    facts: dict[int, WorkerFacts], groups: list[list[int]]
) -> list[tuple[int, int, float]]:
    """Per group of sibling workers: each one's connections and share, if one is uneven."""
    for members in groups:
        if len(members) < 2:
            continue
        total = sum(facts[w].connections for w in members if w in facts)
        if total < IMBALANCE_MIN_CONNECTIONS:
            continue
        shares = [(w, facts[w].connections, facts[w].connections / total) for w in members]
        if max(share for _, _, share in shares) >= IMBALANCE_FACTOR / len(members):
            return sorted(shares, key=lambda x: -x[1])
    return []


def _example(r: RequestView | None) -> dict[str, Any] | None:
    if r is None:
        return None
    blockers = r.get("blockers")
    first: dict[str, Any] = dict(blockers[0]) if blockers else {}
    return {
        "method": r.get("method"),
        "route": r.get("route"),
        "worker": r.get("worker"),
        "pid": r.get("pid"),
        "wait_s": r.get("wait_s"),
        "misrouted": bool(r.get("misrouted")),
        "blocker_route": first.get("route"),
        "blocker_request": first.get("request"),
    }


def _blame(route_blocked: Counter[str], route_seconds: dict[str, float]) -> list[RouteBlame]:
    """Co-blockers (requests queued just ahead, already running when the slot freed) get a
    sliver of the blame: list a route only if it was the main blocker or carries weight."""
    total_blamed = sum(route_seconds.values())
    blame = [
        RouteBlame(route, route_blocked[route], round(seconds, 6))
        for route, seconds in route_seconds.items()
        if route_blocked[route] or seconds >= MIN_BLAME_SHARE * total_blamed
    ]
    blame.sort(key=lambda b: (-b.blocked, -b.blamed_s))
    return blame


def analyse(snapshot: Snapshot) -> Diagnosis:
    requests: list[RequestView] = snapshot.recent.get("requests", [])
    live: list[WorkerView] = snapshot.state.get("workers", [])
    facts: dict[int, WorkerFacts] = {
        int(w["worker"]): WorkerFacts(int(w["worker"]), int(w["pid"])) for w in live
    }
    peers: dict[int, set[str]] = defaultdict(set)
    route_blocked: Counter[str] = Counter()
    route_seconds: dict[str, float] = defaultdict(float)
    waiting_routes: Counter[str] = Counter()
    waits: list[float] = []
    process_wait = 0.0
    timed = misrouted = keep_alive = 0
    worst: RequestView | None = None
    for r in requests:
        index = int(r["worker"])
        wf = facts.setdefault(index, WorkerFacts(index, r.get("pid")))
        wf.requests += 1
        peers[index].add(f"{r.get('pid')}/{r.get('peer')}")
        source = r.get("wait_source", "none")
        wf.wait_sources[source] = wf.wait_sources.get(source, 0) + 1
        if source != "none":
            timed += 1
        if source not in ("none", "header", "backlog"):  # waits outside any process
            process_wait += r.get("wait_s") or 0.0
        if not r.get("blocked"):
            continue
        wait = float(r.get("wait_s") or 0.0)
        waits.append(wait)
        waiting_routes[r["route"]] += 1
        wf.blocked += 1
        wf.blocked_wait_s += wait
        if r.get("misrouted"):
            misrouted += 1
            wf.misrouted += 1
        blockers = r.get("blockers") or []
        if blockers:
            route_blocked[blockers[0]["route"]] += 1
        for b in blockers:
            route_seconds[b["route"]] += float(b.get("blamed_s") or 0.0)
        accept, ready = r.get("accept_ns"), r.get("ready_ns")
        if accept and ready and ready - accept > KEEP_ALIVE_GAP_NS:
            keep_alive += 1
        if worst is None or wait > (worst["wait_s"] or 0.0):
            worst = r
    for index, conns in peers.items():
        facts[index].connections = len(conns)
    by_parent: dict[int, list[int]] = defaultdict(list)
    for w in live:
        by_parent[int(w.get("ppid") or 0)].append(int(w["worker"]))

    metrics = snapshot.metrics
    backlog_count = metrics.total("wsgiwatch_wait_seconds_count", phase="backlog")
    backlog_sum = metrics.total("wsgiwatch_wait_seconds_sum", phase="backlog")
    stalls = snapshot.state.get("stalls", [])
    hook_workers = sum(1 for w in live if w.get("accept_hook"))
    hooked = (
        hook_workers == len(live) if live else any(r.get("wait_source") == "hook" for r in requests)
    )
    verdict: Verdict = "blocking" if waits or stalls else ("healthy" if requests else "idle")
    return Diagnosis(
        verdict=verdict,
        window_s=snapshot.window_s,
        server=next((w["server"] for w in live if w.get("server")), ""),
        workers_live=len(live),
        capacity=max((int(w.get("capacity") or 1) for w in live), default=1),
        deployment=deployment_from(live, len(facts)),
        accept_hook=hooked,
        hook_workers=hook_workers,
        requests=len(requests),
        timed=timed,
        blocked=len(waits),
        blocked_wait_s=round(sum(waits), 6),
        worst_wait_s=max(waits, default=0.0),
        median_wait_s=statistics.median(waits) if waits else 0.0,
        misrouted=misrouted,
        keep_alive_victims=keep_alive,
        blocking_routes=_blame(route_blocked, route_seconds),
        waiting_routes=waiting_routes.most_common(),
        workers=[facts[i] for i in sorted(facts)],
        process_wait_s=round(process_wait, 6),
        backlog_wait_s=backlog_sum if backlog_count else None,
        backlog_waits=int(backlog_count),
        backlog_now=list(snapshot.state.get("listeners", [])),
        stalls_now=len(stalls),
        oldest_stall_s=max((float(s["age_s"]) for s in stalls), default=0.0),
        imbalance=_imbalance(facts, list(by_parent.values())),
        example=_example(worst),
        window_cut=len(requests) >= RECENT_KEPT,
        pure_python_workers=sum(1 for w in live if w.get("accelerated") is False),
        kernel_visible=bool(snapshot.state.get("kernel", False)),
        unseen_workers=list(snapshot.state.get("kernel_unseen_workers", [])),
        records_dropped=int(metrics.total("wsgiwatch_spool_records_dropped_total")),
    )
