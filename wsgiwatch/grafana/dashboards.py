"""wsgiwatch's Grafana dashboards, generated from code (grafana-foundation-sdk, Grafana 11).

:func:`build_all` returns every dashboard as the JSON model Grafana imports, keyed by file
name; ``python -m wsgiwatch.grafana`` writes them to ``grafana/dashboards/`` and a test checks
the committed files equal what this module builds. The overview's rows are built in
:mod:`wsgiwatch.grafana.overview_blocking` and :mod:`wsgiwatch.grafana.overview_capacity`;
this module puts them together with the variables. Panel titles are referred to by the alert
runbooks (``docs/alerts.md``): rename one there too.

Metric names and labels are the sidecar's contract (``wsgiwatch/sidecar/collector.py``).
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from wsgiwatch.grafana.fleet import FLEET_UID, fleet
from wsgiwatch.grafana.overview_blocking import hol_row, wait_row
from wsgiwatch.grafana.overview_capacity import backlog_row, sidecar_row, traffic_row, worker_row
from wsgiwatch.grafana.panels import DATASOURCE

OVERVIEW_UID = "wsgiwatch-overview"


def _variables() -> list[dashboard_builders.QueryVariable | dashboard_builders.DatasourceVariable]:
    datasource = dashboard_builders.DatasourceVariable("datasource")
    datasource.label("Data source").type("prometheus")
    datasource.description("The Prometheus that scrapes the wsgiwatch sidecars.")
    job = dashboard_builders.QueryVariable("job")
    job.label("Job").datasource(DATASOURCE).query("label_values(wsgiwatch_workers, job)")
    job.description("Prometheus jobs that scrape a wsgiwatch sidecar.")
    instance = dashboard_builders.QueryVariable("instance")
    instance.label("Instance").datasource(DATASOURCE)
    instance.query('label_values(wsgiwatch_workers{job=~"$job"}, instance)')
    instance.description("Sidecars (one per server) of the selected jobs.")
    for variable in (job, instance):
        variable.refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        variable.sort(model.VariableSort.ALPHABETICAL_ASC)
        variable.multi(True).include_all(True).all_value(".*")
        variable.current(model.VariableOption(selected=True, text="All", value="$__all"))
    return [datasource, job, instance]


def overview() -> model.Dashboard:
    """The overview: is anything stalled now, who blocks whom, and why (workers, backlog)."""
    board = dashboard_builders.Dashboard("wsgiwatch: head-of-line blocking")
    board.uid(OVERVIEW_UID)
    board.description(
        "WSGI requests stalled behind other requests in the same worker process, who blocked "
        "them, and the worker and kernel state around it. From wsgiwatch's sidecar."
    )
    board.tags(["wsgiwatch", "wsgi", "head-of-line-blocking"])
    board.time("now-1h", "now").refresh("30s").timezone("browser")
    board.tooltip(model.DashboardCursorSync.CROSSHAIR).editable()
    board.annotation(
        dashboard_builders.AnnotationQuery()
        .name("Annotations & Alerts")
        .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .type("dashboard")
        .built_in(1)
    )
    for variable in _variables():
        board.with_variable(variable)
    for row in (hol_row, wait_row, worker_row, backlog_row, traffic_row, sidecar_row):
        for item in row():
            if isinstance(item, dashboard_builders.Row):
                board.with_row(item)
            else:
                board.with_panel(item)
    built: model.Dashboard = board.build()
    _tidy(built)
    return built


def _tidy(board: model.Dashboard) -> None:
    """Number the panels (the SDK leaves ids unset or 0) and drop the interval-variable
    fields (``auto``...) the SDK puts on every variable: Grafana 11.6's schema has them
    on no variable model, and they mean nothing on a query or data source variable."""
    number = 0
    for panel in board.panels or []:
        inner = panel.panels if isinstance(panel, model.RowPanel) else []
        for each in (panel, *inner):
            number += 1
            each.id_val = number
    templating = board.templating
    for variable in templating.list_val or [] if templating else []:
        if variable.type_val != model.VariableType.INTERVAL:
            variable.auto = variable.auto_min = variable.auto_count = None


def to_json(board: model.Dashboard) -> dict[str, Any]:
    """The dashboard as the plain JSON model Grafana imports."""
    data = json.loads(json.dumps(board, cls=JSONEncoder))
    if not isinstance(data, dict):
        raise TypeError(f"a dashboard serialised to {type(data).__name__}, not an object")
    return data


def build_all() -> dict[str, dict[str, Any]]:
    """Every dashboard, keyed by its file name in ``grafana/dashboards/``."""
    fleet_board = fleet()
    _tidy(fleet_board)
    return {
        f"{OVERVIEW_UID}.json": to_json(overview()),
        f"{FLEET_UID}.json": to_json(fleet_board),
    }
