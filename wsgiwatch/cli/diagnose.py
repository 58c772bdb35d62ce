"""``wsgiwatch diagnose``: a running sidecar's findings as a plain-language verdict.

It reads the sidecar's recent requests (the ``--since`` window), its live state and its
metrics, and says: whether requests waited inside busy workers behind other requests, how
many and how long, behind which routes, in which workers; whether waiting happens in the
kernel backlog (healthy) or inside busy processes; whether one worker takes most
connections; and what to change for the server it found (:mod:`wsgiwatch.cli.advice`).

Exit status: 0 no blocking, 1 blocking found (in the window, or a stall right now),
2 the sidecar could not be read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO

from wsgiwatch.cli.advice import Situation, advise, server_family
from wsgiwatch.cli.client import (
    DEFAULT_URL,
    Metrics,
    SidecarClient,
    SidecarUnreachable,
    parse_duration,
)
from wsgiwatch.sidecar.contract import MonitorProtocol
from wsgiwatch.sidecar.views import (
    RECENT_KEPT,
    ListenerView,
    LiveState,
    RecentRequests,
    RequestView,
    WorkerView,
)

EXIT_HEALTHY = 0
EXIT_BLOCKING = 1
EXIT_UNREACHABLE = 2
#: The monitor keeps this many finished requests; a window that holds as many is cut short.
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


@dataclass
class Diagnosis:
    verdict: Verdict
    window_s: float
    server: str
    workers_live: int
    capacity: int
    accept_hook: bool
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
    notes: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_BLOCKING if self.verdict == "blocking" else EXIT_HEALTHY

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
        if source != "none":
            timed += 1
        if source not in ("none", "header"):
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
    server = next((w["server"] for w in live if w.get("server")), "")
    capacity = max((int(w.get("capacity") or 1) for w in live), default=1)
    hook = any(w.get("accept_hook") for w in live)
    blocked = len(waits)
    verdict: Verdict = "blocking" if blocked or stalls else ("healthy" if requests else "idle")
    # Co-blockers (requests queued just ahead, already running when the slot freed) get a
    # sliver of the blame: list a route only if it was the main blocker or carries weight.
    total_blamed = sum(route_seconds.values())
    blame = [
        RouteBlame(route, route_blocked[route], round(seconds, 6))
        for route, seconds in route_seconds.items()
        if route_blocked[route] or seconds >= MIN_BLAME_SHARE * total_blamed
    ]
    blame.sort(key=lambda b: (-b.blocked, -b.blamed_s))
    diagnosis = Diagnosis(
        verdict=verdict,
        window_s=snapshot.window_s,
        server=server,
        workers_live=len(live),
        capacity=capacity,
        accept_hook=hook,
        requests=len(requests),
        timed=timed,
        blocked=blocked,
        blocked_wait_s=round(sum(waits), 6),
        worst_wait_s=max(waits, default=0.0),
        median_wait_s=statistics.median(waits) if waits else 0.0,
        misrouted=misrouted,
        keep_alive_victims=keep_alive,
        blocking_routes=blame,
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
    )
    diagnosis.notes = _notes(diagnosis, snapshot)
    diagnosis.advice = advise(
        Situation(
            family=server_family(server),
            server=server,
            capacity=capacity,
            workers=len(live),
            blocking=verdict == "blocking",
            slow_routes=tuple(b.route for b in blame),
            worst_wait_s=diagnosis.worst_wait_s,
            keep_alive_victims=keep_alive,
            accept_hook=hook,
            cooperative=any(w.get("cooperative") for w in live),
            backlog_mean_s=backlog_sum / backlog_count if backlog_count else None,
        )
    )
    return diagnosis


def _example(r: RequestView | None) -> dict[str, Any] | None:
    if r is None:
        return None
    blockers = r.get("blockers") or []
    first = blockers[0] if blockers else None
    return {
        "method": r.get("method"),
        "route": r.get("route"),
        "worker": r.get("worker"),
        "pid": r.get("pid"),
        "wait_s": r.get("wait_s"),
        "misrouted": bool(r.get("misrouted")),
        "blocker_route": first["route"] if first else None,
        "blocker_request": first["request"] if first else None,
    }


def _notes(d: Diagnosis, snapshot: Snapshot) -> list[str]:
    notes = []
    if d.requests >= RECENT_KEPT:
        notes.append(
            f"The sidecar keeps the last {RECENT_KEPT} requests: the window is shorter than "
            "asked for."
        )
    if d.requests and not d.timed:
        notes.append(
            "No request had a known accept or arrival time, so queue waits could not be "
            "measured: turn on the accept hook, or run the sidecar where it can read the "
            "workers' sockets (same user, same network namespace)."
        )
    pure = [w for w in snapshot.state.get("workers", []) if w.get("accelerated") is False]
    if pure:
        notes.append(
            f"{_plural(len(pure), 'worker')} record{'s' if len(pure) == 1 else ''} in pure "
            "Python: wsgiwatch's C accelerator "
            "is not built there (no C compiler at install time) or WSGIWATCH_PURE_PYTHON is "
            "set. That costs about 3.3 us per request instead of 0.4; reinstall with gcc and "
            "the Python headers to get it."
        )
    if not snapshot.state.get("kernel", False):
        notes.append(
            "The sidecar cannot read the kernel's socket tables here: live stalls and "
            "backlogs are seen only through the accept hook."
        )
    dropped = snapshot.metrics.total("wsgiwatch_spool_records_dropped_total")
    if dropped:
        notes.append(
            f"{int(dropped)} request records were dropped before the sidecar read "
            "them: these figures undercount."
        )
    return notes


# -- text -----------------------------------------------------------------------------------


def _window(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _para(text: str, indent: str = "", bullet: str = "") -> str:
    return textwrap.fill(
        text, 88, initial_indent=indent + bullet, subsequent_indent=indent + " " * len(bullet)
    )


def render(d: Diagnosis, source: str = "") -> str:
    out: list[str] = []
    head = f"wsgiwatch diagnose{': ' + source if source else ''}, last {_window(d.window_s)}"
    if d.workers_live:
        server = f" of {d.server}" if d.server else ""
        head += (
            f" ({_plural(d.workers_live, 'worker')}{server}, {_plural(d.capacity, 'slot')} "
            f"each, accept hook {'on' if d.accept_hook else 'off'})"
        )
    out += [head, ""]
    if d.verdict == "idle":
        out.append(
            _para(
                f"No finished requests in the last {_window(d.window_s)}: nothing to judge yet. "
                f"The sidecar sees {_plural(d.workers_live, 'live worker')}; if that is 0, "
                "check that the app is wrapped with WSGIWatch and writes to the spool "
                "directory the sidecar reads."
            )
        )
    elif d.blocked:
        share = d.blocked / d.requests if d.requests else 0.0
        out.append(
            _para(
                f"HEAD-OF-LINE BLOCKING: {d.blocked} of {d.requests} requests ({share:.1%}) "
                f"waited inside a busy worker behind another request: {_s(d.blocked_wait_s)} "
                f"of waiting in all, longest {_s(d.worst_wait_s)}, median "
                f"{_s(d.median_wait_s)}."
            )
        )
    elif d.stalls_now:
        out.append(
            _para(
                f"HEAD-OF-LINE BLOCKING right now: {_plural(d.stalls_now, 'request')} "
                f"stalled inside busy workers (oldest {_s(d.oldest_stall_s)}); none of the "
                f"{d.requests} requests finished in the window was blocked."
            )
        )
    else:
        out.append(
            _para(
                f"HEALTHY: none of the {d.requests} requests of the last "
                f"{_window(d.window_s)} waited inside a busy worker behind another request."
            )
        )
    if d.blocking_routes:
        out += ["", "Blocking routes (what they waited behind):"]
        for b in d.blocking_routes[:8]:
            out.append(
                f"  {b.route:<28} {_plural(b.blocked, 'request'):>13} blocked, "
                f"{_s(b.blamed_s):>9} of their waiting"
            )
    if d.waiting_routes:
        waiting = ", ".join(f"{route} ({n})" for route, n in d.waiting_routes[:6])
        out.append(_para(f"Routes that waited: {waiting}.", "  "))
    if d.example:
        e = d.example
        out.append(
            _para(
                f"Worst: {e['method']} {e['route']} waited {_s(e['wait_s'] or 0)} in worker "
                f"{e['worker']} (pid {e['pid']}) behind {e['blocker_route']}"
                + (", while another worker had a free slot." if e["misrouted"] else "."),
                "  ",
            )
        )
    blocked_workers = [w for w in d.workers if w.blocked]
    if blocked_workers:
        out += ["", "Workers where requests waited:"]
        for w in blocked_workers:
            out.append(
                f"  worker {w.worker} (pid {w.pid}): {w.blocked} of {w.requests} requests "
                f"blocked, {_s(w.blocked_wait_s)} of waiting"
            )
    if d.misrouted:
        out.append(
            _para(
                f"{d.misrouted} of the {d.blocked} blocked requests waited while another "
                "worker of the same server had a free slot (misrouted): a worker that could "
                "not serve them accepted them anyway.",
                "  ",
            )
        )
    out += ["", "Where requests waited:"]
    out.append(
        f"  inside busy worker processes: {_s(d.process_wait_s)} over the window"
        + (" (the problem)" if d.blocked else "")
    )
    if d.backlog_wait_s is not None:
        out.append(
            _para(
                f"in the kernel accept backlog: {_s(d.backlog_wait_s)} over "
                f"{_plural(d.backlog_waits, 'connection')} since the sidecar started "
                "(healthy: the next free worker takes them)",
                "  ",
            )
        )
    else:
        out.append("  in the kernel accept backlog: not measured (the accept hook measures it)")
    for listener in d.backlog_now:
        out.append(
            f"  backlog now on {listener['listener']}: {listener['backlog']} of {listener['limit']}"
        )
    if d.stalls_now and d.blocked:
        out.append(
            f"  stalled right now: {_plural(d.stalls_now, 'request')}, oldest "
            f"{_s(d.oldest_stall_s)}"
        )
    if d.imbalance:
        shares = ", ".join(f"worker {w} {n} ({share:.0%})" for w, n, share in d.imbalance)
        fair = 1 / len(d.imbalance)
        out += [
            "",
            _para(
                f"Accept imbalance: connections per worker in the window: {shares}; an even "
                f"share would be {fair:.0%}. Workers that accept greedily race for new "
                "connections, and the winner is not the least busy one."
            ),
        ]
    if d.advice:
        out += ["", "What to change:"]
        out += [_para(a, "  ", "- ") for a in d.advice]
    if d.notes:
        out += ["", "Notes:"]
        out += [_para(n, "  ", "- ") for n in d.notes]
    return "\n".join(out) + "\n"


# -- the command -----------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="read a running sidecar and say whether requests stall behind others, and why",
        description="Read a running sidecar and give a plain-language verdict: whether "
        "requests waited inside busy workers behind other requests, how many and how long, "
        "behind which routes, in which workers, whether waiting happens in the kernel "
        "backlog (healthy) or inside processes, and what to change for the server found.",
        epilog="Exit status: 0 no blocking found, 1 head-of-line blocking found (in the "
        "window, or a request stalled right now), 2 the sidecar could not be read.",
    )
    parser.add_argument(
        "--url",
        default=None,
        help=f"the sidecar's address (default: $WSGIWATCH_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--since",
        default="5m",
        type=duration_arg,
        help="how far back to look at finished requests: 90s, 5m, 1h (default 5m)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the sidecar (default 5)"
    )
    parser.set_defaults(handler=command)


def duration_arg(text: str) -> float:
    """``--since`` for argparse: ``90s``, ``5m``, ``1h`` -> seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def sidecar_url(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    return str(args.url or environ.get("WSGIWATCH_URL") or DEFAULT_URL)


def command(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    url = sidecar_url(args, environ)
    try:
        client = SidecarClient(url, args.timeout)
        diagnosis = analyse(Snapshot.fetch(client, args.since))
    except (SidecarUnreachable, ValueError) as exc:
        print(f"wsgiwatch diagnose: cannot read the sidecar: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        data = diagnosis.to_json()
        data["url"] = client.url
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(render(diagnosis, client.url))
    return diagnosis.exit_code
