"""The dashboards as code: the committed JSON is what the code builds, and it fits Grafana's
own schema (generated from the @grafana/schema npm package; see schema/README.md)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from wsgiwatch.grafana.dashboards import build_all

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "grafana" / "dashboards"
SCHEMA_DIR = Path(__file__).resolve().parent / "schema"

#: Panel titles the alert runbooks (docs/alerts.md) send operators to.
RUNBOOK_TITLES = (
    "Stalled now",
    "Head-of-line blocked requests",
    "Blame: blocker routes",
    "Workers: busy vs capacity",
    "Accepted connections per worker",
    "Kernel backlog vs limit",
    "Sidecar health",
)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Each dashboard's template variables, and the filter every selector of it starts with (the
#: fleet dashboard shows whole jobs: one instance is the overview's business).
SCOPES = {
    "wsgiwatch-overview.json": (
        {"datasource", "job", "instance"},
        '{job=~"$job", instance=~"$instance"',
    ),
    "wsgiwatch-fleet.json": ({"datasource", "job"}, '{job=~"$job"'),
}
#: A metric name where PromQL expects a selector (not a function, keyword or label name),
#: recorded series (``level:metric:operations``) included.
METRIC = re.compile(r"\b((?:[a-z_]+:)?wsgiwatch_[a-z_]+(?::[a-z0-9_]+)?|up)\b(\{[^}]*\})?")

Dashboard = dict[str, Any]


@cache
def built() -> dict[str, Dashboard]:
    return build_all()


def panels(board: Dashboard) -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed panels included; rows themselves too."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def visual_panels(board: Dashboard) -> list[dict[str, Any]]:
    return [p for p in panels(board) if p["type"] != "row"]


def all_boards() -> list[tuple[str, Dashboard]]:
    return sorted(built().items())


@cache
def schema(name: str) -> dict[str, Any]:
    loaded = json.loads((SCHEMA_DIR / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


def schema_errors(instance: object, name: str) -> list[str]:
    validator = jsonschema.Draft7Validator(schema(name))
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}"
        for e in validator.iter_errors(instance)
    ]


def plugin_errors(board: Dashboard) -> list[str]:
    """Each panel's options (and its field config's ``custom``) against its plugin's schema."""
    errors = []
    for panel in visual_panels(board):
        kind, title = panel["type"], panel["title"]
        options_schema = f"panels/{kind}.options.schema.json"
        if not (SCHEMA_DIR / options_schema).exists():
            errors.append(f"{title}: no schema for panel type {kind}: add it to generate.sh")
            continue
        if "options" in panel:
            errors += [
                f"{title}: options/{e}" for e in schema_errors(panel["options"], options_schema)
            ]
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
        custom_schema = f"panels/{kind}.fieldconfig.schema.json"
        if custom is not None and (SCHEMA_DIR / custom_schema).exists():
            errors += [f"{title}: custom/{e}" for e in schema_errors(custom, custom_schema)]
    return errors


# --- Dashboards as code ---------------------------------------------------------------------


def test_committed_dashboards_equal_the_generated_ones() -> None:
    committed = {p.name: json.loads(p.read_text()) for p in DASHBOARD_DIR.glob("*.json")}
    assert sorted(committed) == sorted(built()), "run: python -m wsgiwatch.grafana"
    for name, board in built().items():
        assert committed[name] == board, f"grafana/dashboards/{name} is stale: regenerate it"


def test_build_is_deterministic() -> None:
    assert json.dumps(build_all(), sort_keys=True) == json.dumps(built(), sort_keys=True)


# --- Schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(build_all()))
def test_dashboard_fits_grafana_schema(name: str) -> None:
    board = built()[name]
    assert schema_errors(board, "dashboard.schema.json") == []
    assert plugin_errors(board) == []


def _first(board: Dashboard, kind: str) -> dict[str, Any]:
    return next(p for p in visual_panels(board) if p["type"] == kind)


def _set_grid_string(board: Dashboard) -> None:
    _first(board, "timeseries")["gridPos"] = "0,0,12,8"


def _drop_schema_version(board: Dashboard) -> None:
    del board["schemaVersion"]


def _drop_panel_type(board: Dashboard) -> None:
    del _first(board, "stat")["type"]


def _misspell_field(board: Dashboard) -> None:
    _first(board, "table")["fieldConfig"]["defaults"]["unti"] = "s"


def _threshold_as_text(board: Dashboard) -> None:
    _first(board, "stat")["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] = "1"


def _variable_without_name(board: Dashboard) -> None:
    del board["templating"]["list"][0]["name"]


BREAKAGES: dict[str, Callable[[Dashboard], None]] = {
    "gridPos as a string": _set_grid_string,
    "no schemaVersion": _drop_schema_version,
    "panel without type": _drop_panel_type,
    "misspelled field property": _misspell_field,
    "threshold value as text": _threshold_as_text,
    "variable without name": _variable_without_name,
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_broken_dashboard_fails_the_schema(breakage: str) -> None:
    board = copy.deepcopy(next(iter(built().values())))
    BREAKAGES[breakage](board)
    assert schema_errors(board, "dashboard.schema.json"), breakage


def _stat_graph_mode(panel: dict[str, Any]) -> None:
    panel["options"]["graphMode"] = "sparkline"  # not one of none, line, area


def _legend_incomplete(panel: dict[str, Any]) -> None:
    del panel["options"]["legend"]["showLegend"]


def _heatmap_unknown_option(panel: dict[str, Any]) -> None:
    panel["options"]["colour"] = panel["options"].pop("color")


PLUGIN_BREAKAGES: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "stat graphMode not in its enum": ("stat", _stat_graph_mode),
    "time series legend without showLegend": ("timeseries", _legend_incomplete),
    "heatmap option misspelled": ("heatmap", _heatmap_unknown_option),
}


@pytest.mark.parametrize("breakage", list(PLUGIN_BREAKAGES))
def test_broken_panel_options_fail_their_plugin_schema(breakage: str) -> None:
    kind, damage = PLUGIN_BREAKAGES[breakage]
    board = copy.deepcopy(next(iter(built().values())))
    damage(_first(board, kind))
    assert plugin_errors(board), breakage
    # The dashboard model leaves options open; only the plugin's own schema catches these.
    assert schema_errors(board, "dashboard.schema.json") == []


# --- What the dashboards promise ------------------------------------------------------------


def test_runbook_titles_exist() -> None:
    titles = [p["title"] for _, board in all_boards() for p in visual_panels(board)]
    for wanted in RUNBOOK_TITLES:
        assert any(wanted in title for title in titles), wanted


@pytest.mark.parametrize("name", sorted(build_all()))
def test_every_panel_says_what_it_shows_and_what_to_do(name: str) -> None:
    for panel in visual_panels(built()[name]):
        description = panel.get("description", "")
        # A sentence on what it shows and at least one on what to do about it.
        assert len(description) >= 100 and description.count(". ") >= 1, panel["title"]


@pytest.mark.parametrize("name", sorted(build_all()))
def test_template_variables(name: str) -> None:
    variables = {v["name"]: v for v in built()[name]["templating"]["list"]}
    assert set(variables) == SCOPES[name][0]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in set(variables) - {"datasource"}:
        assert variables[var]["type"] == "query"
        assert variables[var]["datasource"] == DATASOURCE
        assert variables[var]["query"].startswith("label_values(")
    if "instance" in variables:
        assert '{job=~"$job"}' in variables["instance"]["query"]


@pytest.mark.parametrize("name", sorted(build_all()))
def test_every_query_reads_the_chosen_datasource_job_and_instance(name: str) -> None:
    for panel in visual_panels(built()[name]):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(set(ref_ids)) == len(ref_ids) and all(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            selectors = METRIC.findall(target["expr"])
            assert selectors, target["expr"]
            for metric, matchers in selectors:
                assert matchers.startswith(SCOPES[name][1]), (panel["title"], metric)


@pytest.mark.parametrize("name", sorted(build_all()))
def test_every_dashboard_has_a_scope(name: str) -> None:
    assert name in SCOPES


@pytest.mark.parametrize("name", sorted(build_all()))
def test_layout(name: str) -> None:
    """Unique ids; panels inside the 24-column grid; no two panels overlap."""
    all_panels = list(panels(built()[name]))
    ids = [p["id"] for p in all_panels]
    assert len(set(ids)) == len(ids) and all(i > 0 for i in ids)
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]
