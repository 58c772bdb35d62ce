"""What a configuration would have done with the traffic just recorded: per-route p50 and
p99 latency, requests blocked inside a busy worker, and waiting in the kernel backlog.

First the model replays today's configuration with the recorded dispatch; only if that
replay lands near what was measured (:data:`TOLERANCE` of the p99, or
:data:`TOLERANCE_FLOOR_S`) are the other shapes' figures offered as predictions. A miss
says that an assumption of :mod:`.model` does not hold here (CPU-bound requests, missing
records, another worker shape than reported), and the caller says so instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from wsgiwatch.remedies.model import Outcome, Shape, percentile, simulate
from wsgiwatch.remedies.recorded import Recorded

#: Today's replay must land within this share of the measured p99...
TOLERANCE = 0.25
#: ...or within this many seconds of it, whichever is wider (short p99s are noisy).
TOLERANCE_FLOOR_S = 0.020
#: Fewer timed requests than this make no forecast.
MIN_JOBS = 20


@dataclass(frozen=True)
class RouteFigures:
    route: str
    requests: int
    p50_s: float
    p99_s: float


@dataclass(frozen=True)
class Scenario:
    """One configuration's figures over the same traffic."""

    label: str
    shape: Shape | None  # None: what was measured
    p50_s: float
    p99_s: float
    blocked: int  # waited inside a busy worker longer than the threshold
    backlog_p99_s: float
    routes: list[RouteFigures]

    def route(self, name: str) -> RouteFigures | None:
        return next((r for r in self.routes if r.route == name), None)


@dataclass
class Forecast:
    recorded: Recorded
    today_shape: Shape
    measured: Scenario | None = None
    today: Scenario | None = None
    options: list[Scenario] = field(default_factory=list)
    trusted: bool = False
    reason: str = ""  # why there is no prediction, when there is none

    def to_json(self) -> dict[str, Any]:
        return {
            "today": asdict(self.today_shape),
            "timed_requests": len(self.recorded.jobs),
            "untimed_requests": self.recorded.untimed,
            "trusted": self.trusted,
            "reason": self.reason,
            "measured": asdict(self.measured) if self.measured else None,
            "replayed": asdict(self.today) if self.today else None,
            "options": [asdict(o) for o in self.options],
        }


def _figures(
    label: str,
    shape: Shape | None,
    routes: Sequence[str],
    latencies_ns: Sequence[int],
    blocked: int,
    backlog_ns: Iterable[int],
) -> Scenario:
    by_route: dict[str, list[int]] = defaultdict(list)
    for route, latency in zip(routes, latencies_ns, strict=True):
        by_route[route].append(latency)
    per_route = [
        RouteFigures(
            route, len(values), percentile(values, 0.5) / 1e9, percentile(values, 0.99) / 1e9
        )
        for route, values in by_route.items()
    ]
    per_route.sort(key=lambda r: (-r.requests, r.route))
    return Scenario(
        label,
        shape,
        percentile(latencies_ns, 0.5) / 1e9,
        percentile(latencies_ns, 0.99) / 1e9,
        blocked,
        percentile(backlog_ns, 0.99) / 1e9,
        per_route,
    )


def _scenario(label: str, shape: Shape, outcomes: list[Outcome], threshold_ns: int) -> Scenario:
    return _figures(
        label,
        shape,
        [o.job.route for o in outcomes],
        [o.latency_ns for o in outcomes],
        sum(1 for o in outcomes if o.process_wait_ns > threshold_ns),
        [o.backlog_wait_ns for o in outcomes],
    )


def within_tolerance(predicted_s: float, measured_s: float) -> bool:
    return abs(predicted_s - measured_s) <= max(TOLERANCE * measured_s, TOLERANCE_FLOOR_S)


def misfit(measured: Scenario, replayed: Scenario) -> tuple[str, float, float] | None:
    """The first p99 the replay misses: of all requests, or of a route with at least
    :data:`MIN_JOBS` requests (the slow routes' own times make the overall p99 easy to
    hit; the fast routes' p99 is what the waiting decides). None: all within tolerance."""
    checks = [("all requests", replayed.p99_s, measured.p99_s)]
    for route in measured.routes:
        again = replayed.route(route.route)
        if route.requests >= MIN_JOBS and again is not None:
            checks.append((route.route, again.p99_s, route.p99_s))
    return next((c for c in checks if not within_tolerance(c[1], c[2])), None)


def forecast(
    recorded: Recorded,
    today: Shape,
    options: Sequence[tuple[str, Shape]],
    threshold_s: float,
    seed: int = 1,
) -> Forecast:
    """Replay ``recorded`` through today's shape, check it, then through each option."""
    result = Forecast(recorded, today)
    jobs = recorded.jobs
    if len(jobs) < MIN_JOBS:
        result.reason = (
            f"{len(jobs)} timed requests in the window, fewer than the {MIN_JOBS} a "
            "prediction needs"
        )
        return result
    threshold_ns = int(threshold_s * 1e9)
    result.measured = _figures(
        "measured",
        None,
        [j.route for j in jobs],
        recorded.measured_ns,
        recorded.blocked,
        [max(0, j.ready_ns - j.arrival_ns) for j in jobs],
    )
    replay = simulate(jobs, today, "recorded", seed)
    result.today = _scenario("today, replayed", today, replay, threshold_ns)
    miss = misfit(result.measured, result.today)
    if miss is not None:
        name, replayed_s, measured_s = miss
        result.reason = (
            f"replaying today's configuration ({today.describe()}) gives {name} a p99 of "
            f"{replayed_s * 1000:.0f} ms where {measured_s * 1000:.0f} ms was measured: the "
            "model does not fit this traffic (CPU-bound requests? records missing? another "
            "worker shape?), so it predicts nothing"
        )
        return result
    result.trusted = True
    for label, shape in options:
        outcomes = simulate(jobs, shape, "policy", seed)
        result.options.append(_scenario(label, shape, outcomes, threshold_ns))
    return result
