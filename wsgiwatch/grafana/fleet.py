"""The fleet dashboard: many sidecars (hosts, pods) at once, from recorded series only.

The overview (:mod:`wsgiwatch.grafana.dashboards`) answers "what happens in this server";
this one answers "where in the fleet": which instances block most, where requests go to
the wrong process, which instance has the oldest stall now, and which routes block
requests across the fleet. It reads only the recording rules' series
(:data:`wsgiwatch.grafana.definitions.RECORDINGS`): one series per instance, or per job and
blocker route, so a panel reads about a thousand series at 1,000 instances instead of the
raw per-route and per-bucket ones. A Prometheus without wsgiwatch's rule file shows no data
here (the panel descriptions say so); the overview works without it.

An instance is what Prometheus's ``instance`` label names: a host:port, or a pod's address
under Kubernetes service discovery (relabel it to the pod's name to read it here).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from wsgiwatch.grafana import definitions as d
from wsgiwatch.grafana.panels import (
    DATASOURCE,
    GREEN,
    ORANGE,
    RED,
    Column,
    Query,
    Size,
    bars,
    graph,
    override,
    single,
    steps,
    table_of,
)

FLEET_UID = "wsgiwatch-fleet"
#: The overview's uid: each instance links there (kept here as text, not imported, so the
#: two dashboards' modules stay independent).
OVERVIEW_UID = "wsgiwatch-overview"
#: Rows per "top" panel: enough to act on, few enough to read.
TOP = 10

Section = list[dashboard_builders.Row | Builder[model.Panel]]

STAT = Size(4, 5)
HALF = Size(12, 8)
THIRD = Size(8, 8)
TABLE = PromQueryFormat("table")

NO_RULES = (
    " Needs wsgiwatch's recording rules (grafana/prometheus/wsgiwatch-rules.yml) loaded in "
    "Prometheus: without them this panel is empty."
)
FIX = (
    ' Open the instance on the overview dashboard ("wsgiwatch: head-of-line blocking") to '
    "see who blocks whom there."
)


def rec(key: str) -> str:
    """The recorded series ``key`` of the rule file, for the selected jobs."""
    name = d.record_name(d.RECORDINGS_BY_KEY[key], d.Settings())
    return f'{name}{{job=~"$job"}}'


def _top(expr: str) -> str:
    return f"topk({TOP}, {expr})"


# --- The fleet now --------------------------------------------------------------------------


def _now_row() -> Section:
    up = single(
        "Sidecars down",
        "Sidecars Prometheus cannot scrape now, of the selected jobs. Head-of-line blocking "
        "on those instances goes unseen: check the sidecar runs next to the workers.",
        Query('count(up{job=~"$job"} < 1) or vector(0)', "down"),
        unit="short",
        size=STAT,
        thresholds=steps((None, GREEN), (1, RED)),
    )
    stalled = single(
        "Instances with stalls now",
        "Instances where at least one request is stalled right now: arrived in a busy worker "
        "process, not being served. A few for a moment is a burst; many for long is a "
        "worker layout that does not fit the traffic, fleet-wide." + NO_RULES,
        Query(f"count({rec('stalled_now')} > 0) or vector(0)", "instances"),
        unit="short",
        size=STAT,
        thresholds=steps((None, GREEN), (1, ORANGE), (10, RED)),
    )
    oldest = single(
        "Oldest stall in the fleet",
        'The oldest request stalled right now, on any instance ("Oldest stall by instance" '
        "names it). Over a second, users wait that long for requests that would take "
        "milliseconds." + NO_RULES,
        Query(f"max({rec('oldest_stall')})", "oldest stall"),
        unit="s",
        size=STAT,
        thresholds=steps((None, GREEN), (0.25, ORANGE), (1, RED)),
    )
    share = single(
        "Fleet blocked share",
        "Head-of-line blocked requests as a share of all requests the fleet finished, over "
        f"the rules' {d.DEFAULT_WINDOW} window." + NO_RULES,
        Query(f"sum({rec('fleet_blocked_rate')}) / sum({rec('fleet_requests_rate')})", "share"),
        unit="percentunit",
        size=STAT,
        thresholds=steps((None, GREEN), (0.01, ORANGE), (0.05, RED)),
        no_value="no requests",
    )
    misrouted = single(
        "Fleet misrouted share",
        "Of the blocked requests, the share that waited while a sibling worker process of the "
        "same server had a free slot: the connection went to the wrong process. High here "
        "means greedy accepting (gunicorn gthread, waitress, cheroot) is the cause, not a "
        "lack of workers." + NO_RULES,
        Query(
            f"sum({rec('fleet_misrouted_rate')}) / (sum({rec('fleet_blocked_rate')}) > 0)",
            "misrouted",
        ),
        unit="percentunit",
        size=STAT,
        thresholds=steps((None, GREEN), (0.25, ORANGE), (0.5, RED)),
        no_value="none blocked",
    )
    wait_p99 = single(
        "Fleet queue wait p99",
        "99th percentile of the time requests waited inside their worker process, over every "
        f"instance and the rules' {d.DEFAULT_WINDOW} window. A few milliseconds is healthy."
        + NO_RULES,
        Query(rec("fleet_queue_wait_p99"), "p99"),
        unit="s",
        size=STAT,
        thresholds=steps((None, GREEN), (0.1, ORANGE), (0.5, RED)),
        no_value="no requests",
    )
    return [
        dashboard_builders.Row("The fleet now"),
        up,
        stalled,
        oldest,
        share,
        misrouted,
        wait_p99,
    ]


# --- Which instances ------------------------------------------------------------------------


def _instances_row() -> Section:
    waiting = bars(
        f"Instances blocking most (top {TOP})",
        "Seconds of waiting per second that head-of-line blocking caused on each instance "
        "(1: one request kept waiting all the time), the worst first. Start with the top "
        "one." + FIX + NO_RULES,
        [Query(_top(rec("blocked_seconds_rate")), "{{instance}}", instant=True)],
        unit="short",
        size=THIRD,
        thresholds=steps((None, GREEN), (0.05, ORANGE), (0.5, RED)),
    )
    share = graph(
        f"Blocked share by instance (top {TOP})",
        "Head-of-line blocked requests as a share of each instance's finished requests, for "
        "the instances with the highest share at each moment. One instance far above the "
        "rest has its own cause (a hot tenant, a slow disk); all of them together share one "
        "(a slow dependency, the worker layout)." + NO_RULES,
        [Query(_top(rec("blocked_share")), "{{instance}}")],
        unit="percentunit",
        size=THIRD,
    )
    misrouted = bars(
        f"Misrouted share by instance (top {TOP})",
        "Of each instance's blocked requests, the share that waited while a sibling worker "
        "had a free slot. A single-process server cannot misroute (0); near 100% means "
        "the server's workers accept greedily: a worker class that accepts only when free, "
        "or fewer connections per worker, cures it." + NO_RULES,
        [Query(_top(rec("misrouted_share")), "{{instance}}", instant=True)],
        unit="percentunit",
        size=THIRD,
        thresholds=steps((None, GREEN), (0.25, ORANGE), (0.5, RED)),
        maximum=1,
    )
    oldest = graph(
        f"Oldest stall by instance (top {TOP})",
        "Age of the oldest request stalled on each instance, for the instances with the "
        "oldest stalls at each moment. A line that climbs is a request waiting behind one "
        "that is still running." + FIX + NO_RULES,
        [Query(_top(rec("oldest_stall")), "{{instance}}")],
        unit="s",
        size=HALF,
    )
    stalled = graph(
        f"Stalled requests by instance (top {TOP})",
        "Requests stalled right now on each instance (summed over its workers), for the "
        "instances with the most at each moment." + NO_RULES,
        [Query(_top(rec("stalled_now")), "{{instance}}")],
        unit="short",
        size=HALF,
    )
    return [
        dashboard_builders.Row("Which instances block most"),
        waiting,
        share,
        misrouted,
        oldest,
        stalled,
    ]


# --- Which routes ---------------------------------------------------------------------------


def _routes_row() -> Section:
    blame = table_of(
        f"Fleet blame: worst blocker routes (top {TOP})",
        "Routes whose requests held other requests up, over every instance: the waiting they "
        "caused (seconds per second), the requests they blocked per second, and on how many "
        "instances. A route that blocks on many instances is slow everywhere (a shared "
        "dependency, a heavy endpoint): move it to its own worker pool, speed it up or put a "
        "timeout on it. One that blocks on a single instance points at that instance." + NO_RULES,
        ("blocker_route", "Blocker route"),
        [
            Column(Query(_top(rec("fleet_blame")), instant=True, fmt=TABLE), "Waiting caused"),
            Column(Query(rec("fleet_blocked_by_route"), instant=True, fmt=TABLE), "Blocked/s"),
            Column(Query(rec("fleet_blocking_instances"), instant=True, fmt=TABLE), "Instances"),
        ],
        unit="short",
        size=HALF,
        sort_by="Waiting caused",
        thresholds=steps((None, GREEN)),
    )
    blame.override_by_name("Blocked/s", [override("unit", "reqps")])
    blame.override_by_name("Instances", [override("decimals", 0)])
    series = graph(
        f"Waiting caused by blocker route, fleet-wide (top {TOP})",
        "Seconds of waiting per second that each route's requests caused in other requests, "
        "summed over the fleet: when a route started hurting (a deploy, a slow dependency) "
        "and whether a fix helped." + NO_RULES,
        [Query(_top(rec("fleet_blame")), "{{blocker_route}}")],
        unit="short",
        size=HALF,
        stack=True,
    )
    return [dashboard_builders.Row("Worst blocker routes across the fleet"), blame, series]


# --- Sidecars -------------------------------------------------------------------------------


def _sidecar_row() -> Section:
    traffic = graph(
        f"Requests per second by instance (top {TOP})",
        "Finished requests per second on the busiest instances: read the blocking panels "
        "against it (a busy instance that blocks little is fine)." + NO_RULES,
        [Query(_top(rec("requests_rate")), "{{instance}}")],
        unit="reqps",
        size=THIRD,
    )
    dropped = graph(
        f"Dropped records by instance (top {TOP})",
        "Request records lost before the sidecar read them, per second. Non-zero makes that "
        "instance's figures an undercount: the sidecar is starved of CPU, stopped, or polls "
        "too seldom for its traffic." + NO_RULES,
        [Query(_top(rec("dropped_rate")), "{{instance}}")],
        unit="short",
        size=THIRD,
    )
    poll = graph(
        f"Sidecar poll time p99 by instance (top {TOP})",
        "How long the slowest sidecars take to poll (read the spools and the kernel), 99th "
        "percentile. Near the poll interval, live stalls show late there." + NO_RULES,
        [Query(_top(rec("poll_p99")), "{{instance}}")],
        unit="s",
        size=THIRD,
    )
    return [dashboard_builders.Row("Sidecars"), traffic, dropped, poll]


# --- Assembly -------------------------------------------------------------------------------


def _variables() -> list[dashboard_builders.QueryVariable | dashboard_builders.DatasourceVariable]:
    datasource = dashboard_builders.DatasourceVariable("datasource")
    datasource.label("Data source").type("prometheus")
    datasource.description("The Prometheus that scrapes the wsgiwatch sidecars.")
    job = dashboard_builders.QueryVariable("job")
    job.label("Job").datasource(DATASOURCE).query("label_values(wsgiwatch_workers, job)")
    job.description("Prometheus jobs that scrape wsgiwatch sidecars: the fleets to show.")
    job.refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
    job.sort(model.VariableSort.ALPHABETICAL_ASC)
    job.multi(True).include_all(True).all_value(".*")
    job.current(model.VariableOption(selected=True, text="All", value="$__all"))
    return [datasource, job]


def fleet() -> model.Dashboard:
    """The fleet dashboard: where, across many sidecars, requests wait behind others."""
    board = dashboard_builders.Dashboard("wsgiwatch: fleet")
    board.uid(FLEET_UID)
    board.description(
        "Head-of-line blocking across many wsgiwatch sidecars: the instances that block "
        "most, misrouted requests, the oldest stalls, the worst blocker routes. Reads "
        "wsgiwatch's recording rules only, so it stays fast at a thousand instances."
    )
    board.tags(["wsgiwatch", "wsgi", "head-of-line-blocking", "fleet"])
    board.time("now-6h", "now").refresh("1m").timezone("browser")
    board.tooltip(model.DashboardCursorSync.CROSSHAIR).editable()
    board.link(
        dashboard_builders.DashboardLink("wsgiwatch: head-of-line blocking")
        .type(model.DashboardLinkType("link"))
        .url(f"/d/{OVERVIEW_UID}")
        .tags([])
        .as_dropdown(False)
        .include_vars(True)
        .keep_time(True)
        .target_blank(False)
        .icon("external link")
        .tooltip("One instance in detail")
    )
    for variable in _variables():
        board.with_variable(variable)
    for row in (_now_row, _instances_row, _routes_row, _sidecar_row):
        for item in row():
            if isinstance(item, dashboard_builders.Row):
                board.with_row(item)
            else:
                board.with_panel(item)
    built: model.Dashboard = board.build()
    return built
