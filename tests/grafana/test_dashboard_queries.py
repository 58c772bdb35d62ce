"""Every panel query of every dashboard, run by a real Prometheus that scraped a real
head-of-line scenario.

The stack: gunicorn gthread (2 workers x 1 thread, accept hook on) serving the test app, the
real ``wsgiwatch sidecar`` subprocess, and Debian's Prometheus scraping it every second.
Traffic: a few fast requests (so the request series exist), then twice two slow requests and
six fast ones. Two slow requests make every run block something: either both land on one
worker (the second waits) or both workers are busy and the fast ones wait behind them.
Twice, because a counter series is born at its first non-zero value and rate() cannot see
that first step: only the second run moves series that already exist.

Each target's template variables are replaced the way Grafana would, then the expression
goes through /api/v1/query_range and /api/v1/query; none may fail, and the key panels must
show the scenario.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
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
from support.servers import gunicorn, sidecar

from wsgiwatch.grafana.dashboards import build_all

SLOW = ("/slow/1.5", "/slow/1.2")
FAST_COUNT = 6
WARM_UP = 4
#: Grafana computes $__rate_interval from the scrape interval and the panel's step; a minute
#: is what it gives for the common 15 s scrape, and wide enough to hold the whole scenario.
RATE_INTERVAL = "1m"
STEP_S = 1


@dataclass
class Scenario:
    prom: Prometheus
    start: float
    end: float
    instance: str

    def variables(self, selection: str) -> dict[str, str]:
        """Values Grafana would put in: "all" picks the variables' All value (".*"), "one"
        picks this job and instance, regex-escaped as Grafana's Prometheus data source does."""
        if selection == "all":
            job = instance = ".*"
        else:
            job, instance = grafana_regex_escape("wsgiwatch"), grafana_regex_escape(self.instance)
        return {
            "job": job,
            "instance": instance,
            "__rate_interval": RATE_INTERVAL,
            "__interval": f"{STEP_S}s",
            "__range": f"{math.ceil(self.end - self.start)}s",
        }

    def run(self, expr: str, instant: bool) -> dict[str, Any]:
        """The query's ``data``; raises QueryFailed with Prometheus's error text."""
        return run_query(
            self.prom.url, expr, at=self.end, start=None if instant else self.start, step_s=STEP_S
        )


# --- The scenario ---------------------------------------------------------------------------


def _get(port: int, path: str, latencies: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    started = time.monotonic()
    try:
        conn.request("GET", path)
        conn.getresponse().read()
        latencies.append(time.monotonic() - started)
    finally:
        conn.close()


def slow_then_fast(port: int) -> None:
    """Two slow requests, then fast ones on fresh connections; returns when all are done."""
    latencies: list[float] = []
    threads = []
    for path in (*SLOW, *["/fast"] * FAST_COUNT):
        thread = threading.Thread(target=_get, args=(port, path, latencies), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(0.05 if path != "/fast" else 0.02)
    for thread in threads:
        thread.join(15)
    assert len(latencies) == len(threads), "a request did not finish"


def metric_total(sidecar_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def kill_mid_request(port: int, master_pid: int, sidecar_port: int) -> None:
    """SIGKILL gunicorn's workers (children of our server, by pid) while one runs a slow
    request: the request dies with its worker, as with the OOM killer. The arbiter forks
    new workers."""

    def doomed() -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            _get(port, "/slow/5", [])

    thread = threading.Thread(target=doomed, daemon=True)
    thread.start()
    wait_until(
        lambda: metric_total(sidecar_port, "wsgiwatch_worker_busy") >= 1,
        10,
        "the slow request running",
    )
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    wait_until(
        lambda: metric_total(sidecar_port, "wsgiwatch_lost_requests_total") >= 1,
        15,
        "the lost request counted",
    )
    thread.join(10)


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    with contextlib.ExitStack() as stack:
        spool = stack.enter_context(private_dir())
        server = stack.enter_context(
            gunicorn(
                "apps.basic:application",
                spool,
                worker_class="gthread",
                workers=2,
                threads=1,
                extra=["-c", "python:wsgiwatch.gunicorn_config"],
            )
        )
        running, side_port = sidecar(spool)
        stack.enter_context(running)
        instance = f"127.0.0.1:{side_port}"
        prom = stack.enter_context(prometheus([instance]))
        start = time.time()
        prom.wait_for("up", lambda v: v == 1)
        wait_until(lambda: metric_total(side_port, "wsgiwatch_workers") == 2, 15, "two workers")

        # Fast requests first, so the request series exist before anything blocks.
        for _ in range(WARM_UP):
            _get(server.port, "/fast", [])
        prom.wait_for("sum(wsgiwatch_requests_total)", lambda v: v >= WARM_UP)

        # Run until a run blocked requests under a blocker series that already existed
        # (the two-slow design blocks in every run, so that is normally the second).
        blocked = "wsgiwatch_hol_blocked_requests_total"
        history = [0.0]
        requests = WARM_UP
        while not (len(history) > 2 and history[-1] > history[-2] > 0):
            assert len(history) <= 4, f"blocked requests after each run: {history[1:]}"
            slow_then_fast(server.port)
            requests += len(SLOW) + FAST_COUNT
            wait_until(
                lambda n=requests: metric_total(side_port, "wsgiwatch_requests_total") >= n,
                15,
                "the sidecar counted every request",
            )
            history.append(metric_total(side_port, blocked))
            if history[-1]:  # (no series at all until something blocked)
                prom.wait_for(f"sum({blocked})", lambda v, n=history[-1]: v == n)
        kill_mid_request(server.port, server.proc.pid, side_port)
        prom.wait_for("sum(wsgiwatch_lost_requests_total)", lambda v: v >= 1)
        time.sleep(1.5)  # one more scrape of the final gauges
        yield Scenario(prom, start, time.time(), instance)


# --- The tests ------------------------------------------------------------------------------

ALL_TARGETS = targets(build_all())


def _series(data: dict[str, Any]) -> list[dict[str, Any]]:
    result = data["result"]
    assert isinstance(result, list)
    return result


def _values(series: dict[str, Any]) -> list[float]:
    pairs = series["values"] if "values" in series else [series["value"]]
    return [float(v) for _, v in pairs if not math.isnan(float(v))]


@pytest.mark.parametrize("selection", ["all", "one"])
def test_every_panel_query_runs(scenario: Scenario, selection: str) -> None:
    failures = []
    for target in ALL_TARGETS:
        expr = substitute(target.expr, scenario.variables(selection))
        for instant in (False, True):
            try:
                scenario.run(expr, instant)
            except QueryFailed as e:
                kind = "instant" if instant else "range"
                failures.append(f"{target.panel} {target.ref_id} ({kind}): {expr}\n  {e}")
    assert not failures, "\n".join(failures)


def _data(scenario: Scenario, panel: str, ref_id: str = "A") -> list[dict[str, Any]]:
    [target] = [t for t in ALL_TARGETS if t.panel == panel and t.ref_id == ref_id]
    expr = substitute(target.expr, scenario.variables("one"))
    return _series(scenario.run(expr, target.instant))


def _peak(scenario: Scenario, panel: str, ref_id: str = "A") -> float:
    values = [v for s in _data(scenario, panel, ref_id) for v in _values(s)]
    assert values, f"{panel} {ref_id}: no data"
    return max(values)


def test_key_panels_show_the_scenario(scenario: Scenario) -> None:
    # Live gauges: the stalls were seen while the slow requests ran.
    assert _peak(scenario, "Stalled now") >= 1
    assert _peak(scenario, "Oldest stall now") > 0.1
    assert _peak(scenario, "Stalled requests per worker") >= 1
    # Finished requests: blocked, their share, and the blame on the slow route.
    assert _peak(scenario, "Head-of-line blocked requests per second") > 0
    assert 0 < _peak(scenario, "Head-of-line blocked requests per second", "B") <= 1
    assert _peak(scenario, "Head-of-line blocked requests (time range)") >= 1
    assert 0 < _peak(scenario, "Blocked share of traffic (time range)") <= 1
    for ref_id in ("A", "B"):
        rows = _data(scenario, "Blame: blocker routes", ref_id)
        blame = {row["metric"]["blocker_route"]: _values(row)[0] for row in rows}
        assert max(blame, key=lambda route: blame[route]) == "/slow/:id", blame
    assert _peak(scenario, "Blame: waiting caused, by blocker route") > 0
    # Queue wait: the blocked requests waited most of a slow request.
    for ref_id in ("A", "B", "C"):
        assert _data(scenario, "Queue wait p50 / p95 / p99", ref_id)
    assert _peak(scenario, "Queue wait p50 / p95 / p99", "C") > 0.25
    assert _peak(scenario, "Queue wait p99 (time range)") > 0.25
    le = {s["metric"]["le"] for s in _data(scenario, "Queue wait heatmap")}
    assert {"0.001", "1.0", "+Inf"} <= le
    assert _peak(scenario, "Queue wait heatmap") > 0
    # Workers of capacity one, each busy at some scrape; connections accepted. Two, and
    # the replacements forked after the kill at the end (a new index, or a dead one's).
    capacity = _data(scenario, "Workers: busy vs capacity", "B")
    assert 2 <= len(capacity) <= 4
    assert all(_values(s) and set(_values(s)) == {1.0} for s in capacity)
    assert _peak(scenario, "Workers: busy vs capacity", "A") == 1
    assert _peak(scenario, "Accepted connections per worker") > 0
    # A greedy server may leave one worker without a single connection: shares, not a count.
    share_panel = "Accepted connections per worker: share of the time range"
    shares = [v for s in _data(scenario, share_panel) for v in _values(s)]
    assert shares and all(0 <= v <= 1 for v in shares) and abs(sum(shares) - 1) < 1e-6
    assert _peak(scenario, "Kernel backlog vs limit", "B") > 0
    assert _peak(scenario, "Requests per second by status class") > 0
    assert _peak(scenario, "Sidecar health: up") == 1
    assert _peak(scenario, "Sidecar health: workers seen") == 2
    # The workers killed at the end: a lost request and the deaths, by fate.
    lost = _data(scenario, "Requests lost with their worker")
    assert {s["metric"]["fate"] for s in lost if max(_values(s), default=0) > 0} == {"killed"}
    assert _peak(scenario, "Requests lost with their worker", "B") > 0


def test_the_harness_reports_failures(scenario: Scenario) -> None:
    """So that "every query runs" means something: a bad query or an unknown variable fails."""
    with pytest.raises(QueryFailed, match="parse error"):
        scenario.run("sum(rate(wsgiwatch_requests_total[$__rate_interval]))", instant=False)
    with pytest.raises(QueryFailed, match="parse error"):
        scenario.run("sum(", instant=True)
    with pytest.raises(AssertionError, match=r"\$__unknown"):
        substitute("rate(up[$__unknown])", scenario.variables("all"))


def test_legends_name_labels_the_series_have(scenario: Scenario) -> None:
    missing = []
    for target in ALL_TARGETS:
        wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.legend or ""))
        if not wanted:
            continue
        expr = substitute(target.expr, scenario.variables("one"))
        for series in _series(scenario.run(expr, target.instant)):
            if not wanted <= set(series["metric"]):
                missing.append(f"{target.panel} {target.ref_id}: {wanted - set(series['metric'])}")
    assert not missing, missing


def test_every_metric_exists_in_prometheus(scenario: Scenario) -> None:
    known = set(scenario.prom.api("/api/v1/label/__name__/values"))
    used = {
        name
        for t in ALL_TARGETS
        for name in re.findall(r"\b(wsgiwatch_[a-z_]+|up)\b(?=\s*\{)", t.expr)
    }
    assert used and used <= known, sorted(used - known)


def test_template_variables_find_the_sidecar(scenario: Scenario) -> None:
    for board in build_all().values():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
            assert match, variable["query"]
            selector = substitute(match.group(1), {"job": ".*"})
            values = scenario.prom.api(
                f"/api/v1/label/{match.group(2)}/values", **{"match[]": selector}
            )
            expected = {"job": "wsgiwatch", "instance": scenario.instance}[variable["name"]]
            assert expected in values, (variable["name"], values)
