"""Panel builders for wsgiwatch's Grafana dashboards, on grafana-foundation-sdk's builders.

Every panel reads the Prometheus data source picked by the ``$datasource`` variable and
filters every series by the ``$job`` and ``$instance`` variables (:func:`sel` writes the
selector, so a query cannot forget it). Every panel carries a description: what it shows
and what to do about it. The functions here set every option the plugin's schema requires,
so Grafana does not have to guess defaults and the schema test can hold the JSON to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from grafana_foundation_sdk.builders import bargauge, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

#: The data source every panel and query uses: the dashboard's ``datasource`` variable.
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: The label filter on every series the dashboards read.
FILTER = 'job=~"$job", instance=~"$instance"'

# The SDK's string enums derive from enum.StrEnum (Python 3.11); where mypy checks for 3.10
# their members type as plain str. Calling an enum with its value types the same under both,
# and a typo still fails at once, when the dashboards are built.

GREEN = "green"
ORANGE = "orange"
RED = "red"


def sel(metric: str) -> str:
    """``metric{job=~"$job", instance=~"$instance"}``."""
    return f"{metric}{{{FILTER}}}"


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    legend: str | None = None
    #: Instant queries answer "now" (or "over the whole range" with ``$__range``).
    instant: bool = False
    fmt: PromQueryFormat | None = None


@dataclass(frozen=True)
class Size:
    """Grid width (of 24 columns) and height (rows of 30 px)."""

    w: int
    h: int


def steps(*pairs: tuple[float | None, str]) -> Builder[model.ThresholdsConfig]:
    """Absolute thresholds; the first pair's value is None (the base color)."""
    config = dashboard_builders.ThresholdsConfig()
    config.mode(model.ThresholdsMode("absolute"))
    config.steps([model.Threshold(value=value, color=color) for value, color in pairs])
    return config


def override(prop: str, value: object) -> model.DynamicConfigValue:
    """One field property set by an override (``custom.lineStyle``, ``unit``...)."""
    return model.DynamicConfigValue(id_val=prop, value=value)


DASHED = override("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})
NO_FILL = override("custom.fillOpacity", 0)


class _Panel(Protocol):
    """What every SDK panel builder has (each plugin's builder is its own class)."""

    def title(self, title: str) -> object: ...
    def description(self, description: str) -> object: ...
    def datasource(self, datasource: model.DataSourceRef) -> object: ...
    def with_target(self, target: Builder[variants.Dataquery]) -> object: ...
    def span(self, w: int) -> object: ...
    def height(self, h: int) -> object: ...
    def unit(self, unit: str) -> object: ...
    def thresholds(self, thresholds: Builder[model.ThresholdsConfig]) -> object: ...


P = TypeVar("P", bound=_Panel)


def _target(query: Query, ref_id: str) -> prometheus.Dataquery:
    target = prometheus.Dataquery()
    target.expr(query.expr).ref_id(ref_id).datasource(DATASOURCE)
    if query.legend is not None:
        target.legend_format(query.legend)
    if query.instant:
        target.instant()
    else:
        target.range()
    if query.fmt is not None:
        target.format(query.fmt)
    return target


def _dress(
    panel: P,
    title: str,
    description: str,
    queries: Sequence[Query],
    size: Size,
    unit: str,
    thresholds: Builder[model.ThresholdsConfig] | None,
) -> P:
    """What every panel gets: title, description, data source, targets A, B..., size."""
    panel.title(title)
    panel.description(description)
    panel.datasource(DATASOURCE)
    for index, query in enumerate(queries):
        panel.with_target(_target(query, chr(ord("A") + index)))
    panel.span(size.w)
    panel.height(size.h)
    panel.unit(unit)
    panel.thresholds(thresholds or steps((None, GREEN)))
    return panel


def _legend() -> common_builders.VizLegendOptions:
    legend = common_builders.VizLegendOptions()
    legend.display_mode(common.LegendDisplayMode("list")).placement(
        common.LegendPlacement("bottom")
    )
    legend.show_legend(True).calcs([])
    return legend


def _reduce(calc: str) -> common_builders.ReduceDataOptions:
    reduce = common_builders.ReduceDataOptions()
    reduce.calcs([calc]).values(False)
    return reduce


def graph(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str,
    size: Size,
    overrides: Sequence[tuple[str, Sequence[model.DynamicConfigValue]]] = (),
    stack: bool = False,
    thresholds: Builder[model.ThresholdsConfig] | None = None,
) -> timeseries.Panel:
    """A time series panel; ``overrides`` are (field name regexp, properties) pairs."""
    panel = _dress(timeseries.Panel(), title, description, queries, size, unit, thresholds)
    tooltip = common_builders.VizTooltipOptions()
    tooltip.mode(common.TooltipDisplayMode("multi")).sort(common.SortOrder("desc"))
    panel.legend(_legend()).tooltip(tooltip)
    panel.line_width(1).fill_opacity(10).show_points(common.VisibilityMode("never"))
    panel.axis_soft_min(0)
    if stack:
        stacking = common_builders.StackingConfig()
        stacking.mode(common.StackingMode("normal")).group("A")
        panel.stacking(stacking)
    for regexp, properties in overrides:
        panel.override_by_regexp(regexp, list(properties))
    return panel


def single(
    title: str,
    description: str,
    query: Query,
    *,
    unit: str,
    size: Size,
    thresholds: Builder[model.ThresholdsConfig],
    calc: str = "lastNotNull",
    sparkline: bool = True,
    no_value: str = "0",
) -> stat.Panel:
    """A stat panel: one big number, colored by ``thresholds``."""
    panel = _dress(stat.Panel(), title, description, [query], size, unit, thresholds)
    panel.graph_mode(common.BigValueGraphMode("area" if sparkline else "none"))
    panel.color_mode(common.BigValueColorMode("value"))
    panel.justify_mode(common.BigValueJustifyMode("auto")).text_mode(
        common.BigValueTextMode("auto")
    )
    panel.orientation(common.VizOrientation("auto")).wide_layout(True)
    panel.show_percent_change(False)
    panel.percent_change_color_mode(common.PercentChangeColorMode("standard"))
    panel.reduce_options(_reduce(calc))
    panel.no_value(no_value)
    return panel


def bars(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str,
    size: Size,
    thresholds: Builder[model.ThresholdsConfig],
    maximum: float | None = None,
) -> bargauge.Panel:
    """A bar gauge: one horizontal bar per series, last value."""
    panel = _dress(bargauge.Panel(), title, description, queries, size, unit, thresholds)
    panel.display_mode(common.BarGaugeDisplayMode("gradient"))
    panel.value_mode(common.BarGaugeValueMode("color"))
    panel.name_placement(common.BarGaugeNamePlacement("auto"))
    panel.sizing(common.BarGaugeSizing("auto"))
    panel.orientation(common.VizOrientation("horizontal"))
    panel.show_unfilled(True).min_viz_width(8).min_viz_height(16).max_viz_height(300)
    panel.legend(_legend().show_legend(False)).reduce_options(_reduce("lastNotNull"))
    panel.min(0)
    if maximum is not None:
        panel.max(maximum)
    return panel


def buckets(title: str, description: str, query: Query, *, unit: str, size: Size) -> heatmap.Panel:
    """A heatmap of Prometheus histogram buckets (the query has ``format: heatmap``)."""
    panel = _dress(heatmap.Panel(), title, description, [query], size, "short", None)
    color = heatmap.HeatmapColorOptions()
    color.mode(heatmap_model.HeatmapColorMode("scheme")).scheme("Oranges")
    color.scale(heatmap_model.HeatmapColorScale("exponential")).exponent(0.5)
    color.fill("dark-orange").reverse(False).steps(64)
    y_axis = heatmap.YAxisConfig()
    y_axis.unit(unit).axis_placement(common.AxisPlacement("left"))
    rows = heatmap.RowsHeatmapOptions()
    rows.layout(common.HeatmapCellLayout("le"))
    panel.calculate(False).color(color).y_axis(y_axis).rows_frame(rows)
    panel.show_value(common.VisibilityMode("never")).cell_gap(1)
    panel.mode(common.TooltipDisplayMode("single")).show_y_histogram().show_color_scale(True)
    panel.show_legend().exemplars_color("rgba(255,0,255,0.7)")
    return panel


@dataclass(frozen=True)
class Column:
    """A table column: the query (instant, table format) and its header."""

    query: Query
    header: str


def table_of(
    title: str,
    description: str,
    key: tuple[str, str],
    columns: Sequence[Column],
    *,
    unit: str,
    size: Size,
    sort_by: str,
    thresholds: Builder[model.ThresholdsConfig],
) -> table.Panel:
    """A table joining instant queries on one label: ``key`` is (label, its header)."""
    panel = _dress(
        table.Panel(), title, description, [c.query for c in columns], size, unit, thresholds
    )
    rename = {key[0]: key[1]}
    for index, column in enumerate(columns):
        rename[f"Value #{chr(ord('A') + index)}"] = column.header
    panel.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
    panel.with_transformation(
        model.DataTransformerConfig(
            id_val="organize",
            options={"excludeByName": {"Time": True}, "renameByName": rename},
        )
    )
    sort = common_builders.TableSortByFieldState()
    sort.display_name(sort_by).desc(True)
    panel.sort_by([sort]).show_header(True).frame_index(0)
    panel.align(common.FieldTextAlignment("auto")).inspect(False)
    panel.cell_options(common.TableAutoCellOptions())
    return panel
