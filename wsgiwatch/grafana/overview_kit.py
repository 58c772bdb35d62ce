"""What the overview dashboard's rows share: PromQL writers, panel sizes, query formats.

The rows (:mod:`wsgiwatch.grafana.overview_blocking`, :mod:`wsgiwatch.grafana.overview_capacity`)
write every query through these, so the ``$job``/``$instance`` filter and the windows
(``$__rate_interval``, ``$__range``) are the same on every panel.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from wsgiwatch.grafana.panels import DASHED, NO_FILL, Query, Size, override, sel

#: A row and the panels under it.
Section = list[dashboard_builders.Row | Builder[model.Panel]]

STAT = Size(4, 5)
HALF = Size(12, 8)
THIRD = Size(8, 8)

RATE = "[$__rate_interval]"
RANGE = "[$__range]"
PER_WORKER = "{{instance}} worker {{worker}}"
TABLE = PromQueryFormat("table")
HEATMAP = PromQueryFormat("heatmap")
RIGHT_AXIS = (override("custom.axisPlacement", "right"), DASHED, NO_FILL)


def rate(metric: str, by: str = "") -> str:
    """``sum [by (labels)] (rate(metric{filter}[$__rate_interval]))``."""
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate({sel(metric)}{RATE}))"


def increase(metric: str, by: str = "") -> str:
    """``sum [by (labels)] (increase(metric{filter}[$__range]))``: over the time range."""
    group = f" by ({by})" if by else ""
    return f"sum{group} (increase({sel(metric)}{RANGE}))"


def quantile(q: float, histogram: str, by: str = "", window: str = RATE, fn: str = "rate") -> str:
    """``histogram_quantile`` over a histogram's ``_bucket`` series, summed ``by (le, ...)``."""
    labels = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({labels}) ({fn}({sel(histogram + '_bucket')}{window})))"
    )


def quantile_lines(histogram: str) -> list[Query]:
    """The p50, p95 and p99 of a histogram, one line each."""
    return [Query(quantile(q, histogram), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)]
