"""The fleet dashboard and every recording rule, on a real Prometheus scraping three sidecars.

Three server stacks, each with its own spool directory and its own ``wsgiwatch sidecar``
subprocess: gunicorn gthread (2 workers x 1 thread, accept hook on), waitress (1 thread,
accept hook on) and cheroot (1 thread, kernel view only). Debian's Prometheus scrapes the
three sidecars every second and evaluates the committed rule file
(``grafana/prometheus/wsgiwatch-rules.yml``) every second.

Traffic on each, at once: fast requests (the series exist), one short slow request (the
``/slow/:id`` blame series exist at 0), then twice a slow-then-fast burst that blocks the
fast requests behind the slow ones (twice: a counter series is born at its first value and
rate() cannot see that first step). Then:

- every fleet panel query runs, range and instant, for all jobs and for one;
- every recording rule's series equals its expression with the recordings expanded, at the
  rule's own evaluation times (each rule is checked on the three sidecars' data);
- the key panels name the three instances, and the blocker route they share.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.hol_scenario import wait_until
from support.middleware_support import private_dir
from support.panel_queries import (
    QueryFailed,
    grafana_regex_escape,
    run_query,
    substitute,
    targets,
)
from support.prom import Prometheus, prometheus
from support.servers import Server, cheroot, gunicorn, sidecar, waitress

from wsgiwatch.grafana import artifacts
from wsgiwatch.grafana import definitions as d
from wsgiwatch.grafana.dashboards import to_json
from wsgiwatch.grafana.fleet import FLEET_UID, fleet

RULES = Path(__file__).resolve().parents[2] / "grafana" / artifacts.RULES
APP = "apps.basic:application"
FAST_COUNT = 4
SETTINGS = d.Settings()


def _gunicorn(spool: str) -> contextlib.AbstractContextManager[Server]:
    hook = ["-c", "python:wsgiwatch.gunicorn_config"]
    return gunicorn(APP, spool, worker_class="gthread", workers=2, threads=1, extra=hook)


def _waitress(spool: str) -> contextlib.AbstractContextManager[Server]:
    return waitress(APP, spool, threads=1, hook=True)


def _cheroot(spool: str) -> contextlib.AbstractContextManager[Server]:
    return cheroot(APP, spool, threads=1)


#: name -> (server, slow requests of a burst). gunicorn has two workers: two slow requests
#: make every burst block something (see support/hol_scenario.py); one is enough elsewhere.
STACKS: dict[
    str, tuple[Callable[[str], contextlib.AbstractContextManager[Server]], tuple[str, ...]]
] = {
    "gunicorn": (_gunicorn, ("/slow/2", "/slow/1.5")),
    "waitress": (_waitress, ("/slow/2",)),
    "cheroot": (_cheroot, ("/slow/2",)),
}


@dataclass
class Fleet:
    prom: Prometheus
    start: float
    end: float
    instances: dict[str, str]  # stack name -> instance label (its sidecar's host:port)

    def run(self, expr: str, instant: bool, at: float | None = None) -> list[dict[str, Any]]:
        start = None if instant else self.start
        result = run_query(self.prom.url, expr, at=at or self.end, start=start)["result"]
        assert isinstance(result, list)
        return result


def _get(port: int, path: str, done: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
        done.append(path)
    finally:
        conn.close()


def _burst(port: int, slow: tuple[str, ...]) -> None:
    """The slow requests, then fast ones on fresh connections; returns when all are done."""
    done: list[str] = []
    threads = []
    for path in (*slow, *["/fast"] * FAST_COUNT):
        thread = threading.Thread(target=_get, args=(port, path, done), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(0.05 if path != "/fast" else 0.02)
    for thread in threads:
        thread.join(15)
    assert len(done) == len(threads), f"port {port}: a request did not finish"


def _instance_total(prom: Prometheus, metric: str, instance: str) -> float:
    return prom.value(f'sum({metric}{{instance="{instance}"}})') or 0.0


@pytest.fixture(scope="module")
def scene() -> Iterator[Fleet]:
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        instances: dict[str, str] = {}
        for name, (start_server, _) in STACKS.items():
            spool = stack.enter_context(private_dir())
            servers[name] = stack.enter_context(start_server(spool))
            running, port = sidecar(spool)
            stack.enter_context(running)
            instances[name] = f"127.0.0.1:{port}"
        prom = stack.enter_context(prometheus(list(instances.values()), rule_files=[str(RULES)]))
        start = time.time()
        for server in servers.values():
            for path in ("/fast", "/fast", "/slow/0"):
                _get(server.port, path, [])
        for instance in instances.values():
            prom.wait_for(
                f'sum(wsgiwatch_requests_total{{instance="{instance}"}})', lambda v: v >= 3
            )

        blocked = "wsgiwatch_hol_blocked_requests_total"
        for _ in range(2):
            before = {n: _instance_total(prom, blocked, i) for n, i in instances.items()}
            bursts = [
                threading.Thread(target=_burst, args=(servers[n].port, STACKS[n][1]), daemon=True)
                for n in servers
            ]
            for t in bursts:
                t.start()
            for t in bursts:
                t.join(30)
            for name, instance in instances.items():
                wait_until(
                    lambda i=instance, b=before[name]: _instance_total(prom, blocked, i) > b,
                    20,
                    f"{name}: Prometheus saw the burst's blocked requests",
                )
        time.sleep(3)  # the last gauges scraped, the rules evaluated on them
        yield Fleet(prom, start, time.time(), instances)


# --- Every panel query ----------------------------------------------------------------------

FLEET_TARGETS = targets({f"{FLEET_UID}.json": to_json(fleet())})


def _variables(fleet_: Fleet, selection: str) -> dict[str, str]:
    return {
        "job": ".*" if selection == "all" else grafana_regex_escape(SETTINGS.job),
        "__rate_interval": "1m",
        "__interval": "1s",
        "__range": f"{math.ceil(fleet_.end - fleet_.start)}s",
    }


@pytest.mark.parametrize("selection", ["all", "one"])
def test_every_fleet_panel_query_runs(scene: Fleet, selection: str) -> None:
    failures = []
    for target in FLEET_TARGETS:
        expr = substitute(target.expr, _variables(scene, selection))
        for instant in (False, True):
            try:
                scene.run(expr, instant)
            except QueryFailed as e:
                failures.append(f"{target.panel} {target.ref_id}: {expr}\n  {e}")
    assert not failures, "\n".join(failures)


def _panel(
    scene: Fleet, title: str, ref_id: str = "A", instant: bool | None = None
) -> list[dict[str, Any]]:
    [target] = [t for t in FLEET_TARGETS if t.panel.startswith(title) and t.ref_id == ref_id]
    expr = substitute(target.expr, _variables(scene, "one"))
    return scene.run(expr, target.instant if instant is None else instant)


def _values(series: dict[str, Any]) -> list[float]:
    pairs = series["values"] if "values" in series else [series["value"]]
    return [float(v) for _, v in pairs if not math.isnan(float(v))]


def _by_instance(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Instance label -> its latest value (instant) or its peak (range)."""
    return {row["metric"]["instance"]: max(_values(row)) for row in rows if _values(row)}


def test_the_fleet_panels_name_the_three_instances(scene: Fleet) -> None:
    every = set(scene.instances.values())
    by_name = {v: k for k, v in scene.instances.items()}
    assert set(_values(_panel(scene, "Sidecars down")[0])) == {0.0}
    assert max(_values(_panel(scene, "Instances with stalls now")[0])) >= 1
    assert max(_values(_panel(scene, "Oldest stall in the fleet")[0])) > 0.1
    [share] = _panel(scene, "Fleet blocked share")
    assert 0 < max(_values(share)) <= 1
    [misrouted] = _panel(scene, "Fleet misrouted share")
    assert all(0 <= v <= 1 for v in _values(misrouted))
    assert max(_values(_panel(scene, "Fleet queue wait p99")[0])) > 0.25

    # Every stack blocked requests behind its slow ones: all three are ranked.
    blocking = _by_instance(_panel(scene, "Instances blocking most"))
    assert set(blocking) == every and all(v > 0 for v in blocking.values()), blocking
    assert set(_by_instance(_panel(scene, "Blocked share by instance"))) == every
    # Only gunicorn has a sibling process to have been misrouted from.
    misrouted_by = _by_instance(_panel(scene, "Misrouted share by instance"))
    assert set(misrouted_by) == every, misrouted_by
    assert all(0 <= v <= 1 for v in misrouted_by.values())
    for name in ("waitress", "cheroot"):
        assert misrouted_by[scene.instances[name]] == 0, name
    oldest = _by_instance(_panel(scene, "Oldest stall by instance"))
    assert set(oldest) == every
    stalled_somewhere = [by_name[i] for i, v in oldest.items() if v > 0.1]
    assert len(stalled_somewhere) >= 2, oldest
    assert set(_by_instance(_panel(scene, "Stalled requests by instance"))) == every
    assert set(_by_instance(_panel(scene, "Requests per second by instance"))) == every
    assert set(_by_instance(_panel(scene, "Dropped records by instance"))) == every
    assert set(_by_instance(_panel(scene, "Sidecar poll time p99 by instance"))) == every


def test_the_fleet_blame_names_the_shared_blocker_route(scene: Fleet) -> None:
    columns = {}
    for ref_id in ("A", "B", "C"):
        rows = _panel(scene, "Fleet blame", ref_id)
        columns[ref_id] = {row["metric"]["blocker_route"]: _values(row)[0] for row in rows}
    waiting, blocked, instances = columns["A"], columns["B"], columns["C"]
    assert max(waiting, key=lambda route: waiting[route]) == "/slow/:id", waiting
    assert blocked["/slow/:id"] > 0
    assert instances["/slow/:id"] == 3  # every stack's fast requests waited behind it
    series = _panel(scene, "Waiting caused by blocker route")
    assert "/slow/:id" in {s["metric"]["blocker_route"] for s in series}


def test_fleet_legends_name_labels_the_series_have(scene: Fleet) -> None:
    missing = []
    for target in FLEET_TARGETS:
        wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.legend or ""))
        expr = substitute(target.expr, _variables(scene, "one"))
        for series in scene.run(expr, target.instant):
            if not wanted <= set(series["metric"]):
                missing.append(f"{target.panel} {target.ref_id}: {wanted - set(series['metric'])}")
    assert not missing, missing


# --- Every recording rule -------------------------------------------------------------------

#: Evaluation times compared per rule. A scrape that lands while the rules are evaluated
#: is in Prometheus's storage for a later query but was not for the rule: such a time may
#: differ by that one sample, so a majority of the times must match exactly, not all.
EVALUATIONS = 8


def _key(series: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in series["metric"].items() if k != "__name__"))


@pytest.mark.parametrize("key", [rec.key for rec in d.RECORDINGS])
def test_recorded_series_equal_their_expression(scene: Fleet, key: str) -> None:
    rec = d.RECORDINGS_BY_KEY[key]
    recorded = d.expand(f"${key}", SETTINGS, inline=False)
    inline = d.expand(f"${key}", SETTINGS, inline=True)
    raw = scene.run(f"{recorded}[{EVALUATIONS + 4}s]", instant=True)
    assert raw, f"{d.record_name(rec, SETTINGS)}: no series recorded"
    times = sorted({float(t) for s in raw for t, _ in s["values"]})[-EVALUATIONS:]
    matched = []
    for at in times:
        got = {_key(s): float(s["value"][1]) for s in scene.run(recorded, True, at=at)}
        # (a rule's own labels, such as quantile, are added to its expression's result)
        want = {
            _key({"metric": {**s["metric"], **dict(rec.labels)}}): float(s["value"][1])
            for s in scene.run(inline, True, at=at)
        }
        assert set(got) == set(want), (at, sorted(got), sorted(want))
        matched.append(
            all(
                got[k] == want[k]
                or (math.isnan(got[k]) and math.isnan(want[k]))
                or math.isclose(got[k], want[k], rel_tol=1e-9)
                for k in got
            )
        )
    assert sum(matched) * 2 > len(matched), (key, matched)


def test_recordings_cover_the_three_instances(scene: Fleet) -> None:
    every = set(scene.instances.values())
    for rec in d.RECORDINGS:
        if not rec.record.startswith("job_instance"):
            continue
        series = scene.run(d.expand(f"${rec.key}", SETTINGS, inline=False), instant=True)
        assert {s["metric"]["instance"] for s in series} == every, rec.record
