"""Counters and histograms kept by the sidecar, turned into metric families at scrape time.

prometheus_client's own metric objects take a lock and walk label dicts per observation;
the sidecar observes thousands of finished requests per poll, so it keeps plain sums here
and builds ``*MetricFamily`` objects only when Prometheus asks (a custom collector).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily

#: Seconds; from a millisecond (a fast request's noise) to a stall nobody should see.
WAIT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
DURATION_BUCKETS: tuple[float, ...] = WAIT_BUCKETS
POLL_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

OTHER = "other"


class LabelCap:
    """At most ``limit`` distinct values of one label; the rest become ``other``.

    First come, first served alone lets a scanner's junk paths (each requested once) take
    every label before a real route is seen, and that route then counts as ``other`` for the
    sidecar's life. So a quarter of the labels is held back for values that prove traffic:
    once the first ``limit - reserve`` values are in, a new value becomes a label only after
    ``promote_after`` requests (counted as ``other`` until then). Candidates are counted in a
    bounded table (``4 x limit`` entries; when full, the ones seen least are forgotten), so a
    flood of distinct junk costs no memory. A label, once given, stays: Prometheus series
    must not change meaning.
    """

    __slots__ = ("_candidates", "_limit", "_open", "_promote_after", "_seen")

    def __init__(self, limit: int = 100, *, promote_after: int = 5) -> None:
        self._limit = limit
        self._open = limit - limit // 4  # admitted on sight
        self._promote_after = promote_after
        self._seen: set[str] = set()
        self._candidates: dict[str, int] = {}

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        seen = len(self._seen)
        if seen < self._open:
            self._seen.add(value)
            return value
        if seen >= self._limit:
            return OTHER
        count = self._candidates.get(value, 0) + 1
        if count >= self._promote_after:
            self._candidates.pop(value, None)
            self._seen.add(value)
            return value
        if count == 1 and len(self._candidates) >= 4 * self._limit:
            # Forget the candidates seen once (a scanner's); halve the others.
            self._candidates = {k: c // 2 for k, c in self._candidates.items() if c > 1}
        self._candidates[value] = count
        return OTHER


class Histogram:
    """Non-cumulative bucket counts plus a sum, per label tuple."""

    __slots__ = ("_bounds", "_series")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            # one count per bound, one for +Inf, then the sum
            series = self._series[labels] = [0.0] * (len(self._bounds) + 2)
        series[bisect.bisect_left(self._bounds, value)] += 1
        series[-1] += value

    def observe_all(self, labels: tuple[str, ...], values: Sequence[float]) -> None:
        """``observe(labels, v)`` for each of ``values`` (one series lookup for all)."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self._bounds) + 2)
        bounds = self._bounds
        for value in values:
            series[bisect.bisect_left(bounds, value)] += 1
            series[-1] += value

    def family(
        self, name: str, documentation: str, labelnames: Sequence[str]
    ) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, documentation, labels=list(labelnames))
        for labels, series in list(self._series.items()):  # a poll may add labels meanwhile
            running = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*self._bounds, math.inf), series[:-1], strict=True):
                running += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
            fam.add_metric(list(labels), buckets, series[-1])
        return fam


class Counter:
    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def family(
        self, name: str, documentation: str, labelnames: Sequence[str] = ()
    ) -> CounterMetricFamily:
        fam = CounterMetricFamily(name, documentation, labels=list(labelnames))
        if not labelnames and not self._values:
            fam.add_metric([], 0.0)
        for labels, value in list(self._values.items()):  # a poll may add labels meanwhile
            fam.add_metric(list(labels), value)
        return fam
