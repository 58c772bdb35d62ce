"""Running dashboard panel queries the way Grafana would, against a real Prometheus.

Shared by the overview's and the fleet's query tests: the targets of a dashboard, Grafana's
template variable substitution (with its regex escaping of multi-value variables), and one
query through Prometheus's HTTP API that fails loudly (with Prometheus's error text).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class Target:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    legend: str | None
    instant: bool


def targets(boards: Mapping[str, dict[str, Any]]) -> list[Target]:
    """Every query target of ``boards`` (file name -> JSON model), rows' panels included."""
    found = []
    for name, board in sorted(boards.items()):
        for panel in board["panels"]:
            for inner in [panel, *panel.get("panels", [])]:
                for t in inner.get("targets", []):
                    found.append(
                        Target(
                            name,
                            inner["title"],
                            t["refId"],
                            t["expr"],
                            t.get("legendFormat"),
                            bool(t.get("instant")),
                        )
                    )
    return found


class QueryFailed(Exception):
    pass


def grafana_regex_escape(value: str) -> str:
    """Grafana's Prometheus data source escapes regex metacharacters in a multi-value
    variable with a doubled backslash (one for the regex, one for the PromQL string)."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise AssertionError(f"the test does not know the variable ${name} in {expr}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def run_query(
    prom_url: str, expr: str, *, at: float, start: float | None = None, step_s: int = 1
) -> dict[str, Any]:
    """The query's ``data``: instant at ``at``, or a range from ``start`` to ``at``. Raises
    QueryFailed with Prometheus's error text (warnings count as failures too)."""
    if start is None:
        path, params = "/api/v1/query", {"query": expr, "time": f"{at:.3f}"}
    else:
        path = "/api/v1/query_range"
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{at:.3f}", "step": f"{step_s}s"}
    url = f"{prom_url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
    except urllib.error.HTTPError as e:
        raise QueryFailed(e.read().decode(errors="replace")) from None
    if body.get("status") != "success" or body.get("warnings"):
        raise QueryFailed(json.dumps(body)[:500])
    data = body["data"]
    assert isinstance(data, dict)
    return data
