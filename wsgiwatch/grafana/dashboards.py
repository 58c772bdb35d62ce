"""wsgiwatch's Grafana dashboards, generated from code (grafana-foundation-sdk, Grafana 11).

:func:`build_all` returns every dashboard as the JSON model Grafana imports, keyed by file
name; ``python -m wsgiwatch.grafana`` writes them to ``grafana/dashboards/`` and a test checks
the committed files equal what this module builds. Panel titles are referred to by the alert
runbooks (``docs/alerts.md``): rename one there too.

Metric names and labels are the sidecar's contract (``wsgiwatch/sidecar/collector.py``).
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from wsgiwatch.grafana.fleet import FLEET_UID, fleet
from wsgiwatch.grafana.panels import (
    DASHED,
    DATASOURCE,
    GREEN,
    NO_FILL,
    ORANGE,
    RED,
    Column,
    Query,
    Size,
    bars,
    buckets,
    graph,
    override,
    sel,
    single,
    steps,
    table_of,
)

OVERVIEW_UID = "wsgiwatch-overview"

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


def _rate(metric: str, by: str = "") -> str:
    """``sum [by (labels)] (rate(metric{filter}[$__rate_interval]))``."""
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate({sel(metric)}{RATE}))"


def _increase(metric: str, by: str = "") -> str:
    """``sum [by (labels)] (increase(metric{filter}[$__range]))``: over the time range."""
    group = f" by ({by})" if by else ""
    return f"sum{group} (increase({sel(metric)}{RANGE}))"


def _quantile(q: float, histogram: str, by: str = "", window: str = RATE, fn: str = "rate") -> str:
    """``histogram_quantile`` over a histogram's ``_bucket`` series, summed ``by (le, ...)``."""
    labels = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({labels}) ({fn}({sel(histogram + '_bucket')}{window})))"
    )


def _quantiles(histogram: str) -> list[Query]:
    return [Query(_quantile(q, histogram), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)]


# --- Head-of-line blocking ------------------------------------------------------------------

TO_DO = (
    ' To fix: find the blocker on "Blame: blocker routes"; give slow routes their own worker '
    "pool, or more threads per worker, or a worker class that does not accept while busy "
    "(gunicorn sync); put timeouts on slow calls. Runbooks: docs/alerts.md."
)


def _hol_row() -> Section:
    stalled_now = single(
        "Stalled now",
        "Requests that have arrived in a worker process but are not being served right now, "
        "because every thread of that process is busy: they wait behind other requests in "
        "the same process, even if other workers are idle. Healthy is 0; a few for a moment "
        "under a burst is tolerable, a value that stays up is head-of-line blocking." + TO_DO,
        Query(f"sum({sel('wsgiwatch_stalled_requests')})", "stalled"),
        unit="short",
        size=STAT,
        thresholds=steps((None, GREEN), (1, ORANGE), (5, RED)),
    )
    oldest = single(
        "Oldest stall now",
        "Age of the oldest request stalled right now (0: none). It grows for as long as the "
        "request that blocks it runs: compare it with the slowest routes' durations on "
        '"Request duration". Over a second means users wait that long for a request that '
        "would take milliseconds." + TO_DO,
        Query(f"max({sel('wsgiwatch_oldest_stall_seconds')})", "oldest stall"),
        unit="s",
        size=STAT,
        thresholds=steps((None, GREEN), (0.25, ORANGE), (1, RED)),
    )
    blocked_total = single(
        "Head-of-line blocked requests (time range)",
        "Finished requests that waited behind other requests in the same worker process "
        "longer than the sidecar's blocking threshold, in the selected time range. Each is "
        "also a hol.incident event in the sidecar's log (victim and blockers) and listed at "
        "its /api/incidents." + TO_DO,
        Query(_increase("wsgiwatch_hol_blocked_requests_total"), "blocked", instant=True),
        unit="short",
        size=STAT,
        thresholds=steps((None, GREEN), (1, ORANGE)),
        sparkline=False,
    )
    share = single(
        "Blocked share of traffic (time range)",
        "Head-of-line blocked requests as a share of all finished requests in the selected "
        "time range. A small share with a long wait hurts a few users badly; a large share "
        "means the worker layout does not fit the traffic: too few threads per process, or "
        "slow and fast routes mixed in one pool." + TO_DO,
        Query(
            f"{_increase('wsgiwatch_hol_blocked_requests_total')} / "
            f"{_increase('wsgiwatch_requests_total')}",
            "share",
            instant=True,
        ),
        unit="percentunit",
        size=STAT,
        thresholds=steps((None, GREEN), (0.01, ORANGE), (0.05, RED)),
        sparkline=False,
        no_value="no requests",
    )
    misrouted = single(
        "Misrouted requests (time range)",
        "Blocked requests that waited while a sibling worker process of the same server had a "
        "free slot: pure waste, the connection went to the wrong process. It comes from "
        "servers that accept greedily (gunicorn gthread, waitress, cheroot). To fix: a server "
        "or worker class that only accepts when it has a free thread, more threads per "
        "process, or a front proxy that balances on free capacity.",
        Query(_increase("wsgiwatch_misrouted_requests_total"), "misrouted", instant=True),
        unit="short",
        size=STAT,
        thresholds=steps((None, GREEN), (1, ORANGE)),
        sparkline=False,
    )
    wait_p99 = single(
        "Queue wait p99 (time range)",
        "99th percentile of the time requests waited inside their worker process (accept or "
        "arrival to the app's entry) over the selected time range. Healthy is a few "
        "milliseconds; the heatmap below shows how the waits are spread." + TO_DO,
        Query(
            _quantile(0.99, "wsgiwatch_queue_wait_seconds", window=RANGE, fn="increase"),
            "p99",
            instant=True,
        ),
        unit="s",
        size=STAT,
        thresholds=steps((None, GREEN), (0.1, ORANGE), (0.5, RED)),
        sparkline=False,
        no_value="no requests",
    )
    for panel in (blocked_total, misrouted):
        panel.decimals(0)
    stalled_series = graph(
        "Stalled requests per worker",
        "Requests stalled in each worker process over time (left axis) and the age of the "
        "oldest stall (right axis, dashed). Stalls on one worker while others show none on "
        '"Workers: busy vs capacity" are the pathology this tool exists for: the busy '
        "process accepted connections it could not serve." + TO_DO,
        [
            Query(f"sum by (instance, worker) ({sel('wsgiwatch_stalled_requests')})", PER_WORKER),
            Query(
                f"max by (instance) ({sel('wsgiwatch_oldest_stall_seconds')})",
                "{{instance}} oldest stall",
            ),
        ],
        unit="short",
        size=HALF,
        overrides=[(".*oldest stall$", [override("unit", "s"), *RIGHT_AXIS])],
    )
    blocked_rate = graph(
        "Head-of-line blocked requests per second",
        "Requests per second that waited behind another request in the same process, by the "
        "route of the request that blocked them most (left axis), and their share of all "
        "requests (right axis, dashed). A route that shows up here again and again is slow "
        "enough to hold fast requests hostage." + TO_DO,
        [
            Query(
                _rate("wsgiwatch_hol_blocked_requests_total", "blocker_route"),
                "blocked by {{blocker_route}}",
            ),
            Query(
                f"{_rate('wsgiwatch_hol_blocked_requests_total')} / "
                f"{_rate('wsgiwatch_requests_total')}",
                "share of all requests",
            ),
        ],
        unit="reqps",
        size=HALF,
        overrides=[("share of all requests", [override("unit", "percentunit"), *RIGHT_AXIS])],
    )
    blame = table_of(
        "Blame: blocker routes",
        "Routes whose requests held other requests up, in the selected time range: the "
        "seconds their victims waited (a victim's wait is split among the requests that were "
        "running while it waited) and the number of victims (each counted once, under its "
        "main blocker). The top rows are the routes to move to their own worker pool, speed "
        "up, put a timeout on, or hand to a background job.",
        ("blocker_route", "Blocker route"),
        [
            Column(
                Query(
                    _increase("wsgiwatch_hol_blocked_seconds_total", "blocker_route"),
                    instant=True,
                    fmt=TABLE,
                ),
                "Victims' wait",
            ),
            Column(
                Query(
                    _increase("wsgiwatch_hol_blocked_requests_total", "blocker_route"),
                    instant=True,
                    fmt=TABLE,
                ),
                "Blocked requests",
            ),
        ],
        unit="s",
        size=HALF,
        sort_by="Victims' wait",
        thresholds=steps((None, GREEN)),
    )
    blame.override_by_name("Blocked requests", [override("unit", "short"), override("decimals", 0)])
    blame_series = graph(
        "Blame: waiting caused, by blocker route",
        "Seconds of waiting per second that each route's requests caused in other requests "
        "of the same process: 1 means one request was kept waiting, on average, all the time. "
        "Use it to see when a blocker route started hurting (a deploy, a slow dependency) "
        "and whether a fix helped.",
        [
            Query(
                _rate("wsgiwatch_hol_blocked_seconds_total", "blocker_route"),
                "{{blocker_route}}",
            )
        ],
        unit="short",
        size=HALF,
        stack=True,
    )
    return [
        dashboard_builders.Row("Head-of-line blocking"),
        stalled_now,
        oldest,
        blocked_total,
        share,
        misrouted,
        wait_p99,
        stalled_series,
        blocked_rate,
        blame,
        blame_series,
    ]


# --- Queue wait -----------------------------------------------------------------------------


def _wait_row() -> Section:
    quantiles = graph(
        "Queue wait p50 / p95 / p99",
        "How long requests waited inside their worker process before the app was entered "
        "(from accept, or from the request's arrival on a kept-alive connection). Healthy: "
        "p99 within a few milliseconds. A p99 that tracks your slowest route's duration "
        'means fast requests queue behind slow ones (see "Blame: blocker routes"); a p50 '
        "that rises too means every worker is saturated: add workers.",
        _quantiles("wsgiwatch_queue_wait_seconds"),
        unit="s",
        size=HALF,
    )
    heat = buckets(
        "Queue wait heatmap",
        "Finished requests per queue-wait bucket over time (color: how many). A band near the "
        "bottom is normal; a second band at the duration of a slow route is head-of-line "
        "blocking. Cells above a second are requests that sat unserved while a worker was "
        "busy with something else.",
        Query(
            f"sum by (le) (increase({sel('wsgiwatch_queue_wait_seconds_bucket')}{RATE}))",
            "{{le}}",
            fmt=HEATMAP,
        ),
        unit="s",
        size=HALF,
    )
    by_route = graph(
        "Queue wait p95 by route",
        "95th percentile queue wait per route: which routes' users pay for the blocking. Fast "
        'routes with a high p95 are the victims; compare with "Blame: blocker routes" for '
        "who made them wait.",
        [
            Query(
                _quantile(0.95, "wsgiwatch_queue_wait_seconds", by="route"),
                "{{route}}",
            )
        ],
        unit="s",
        size=HALF,
    )
    phases = graph(
        "Wait by phase p95: proxy, kernel backlog, in process",
        "Where requests waited, 95th percentile: proxy (front proxy's request start to "
        "accept), backlog (in the kernel's accept queue) and process (accepted, waiting "
        "inside a busy worker). Backlog waiting is healthy queueing: the next free worker "
        "takes the connection; fix it with more workers. Process waiting is head-of-line "
        "blocking: fix the worker layout instead.",
        [Query(_quantile(0.95, "wsgiwatch_wait_seconds", by="phase"), "{{phase}}")],
        unit="s",
        size=HALF,
    )
    return [dashboard_builders.Row("Queue wait"), quantiles, heat, by_route, phases]


# --- Workers --------------------------------------------------------------------------------


def _worker_row() -> Section:
    busy = graph(
        "Workers: busy vs capacity",
        "Requests running in each worker process (solid) against how many it can run at "
        "once (dashed). A worker at its capacity while another sits idle, with stalls on "
        '"Stalled now", is head-of-line blocking: the busy one accepted work it could not '
        "start. All workers at capacity is plain saturation: add workers or capacity. "
        "Sampled at each scrape, so short bursts may not show; see utilisation.",
        [
            Query(
                f"sum by (instance, worker) ({sel('wsgiwatch_worker_busy')})",
                PER_WORKER + " busy",
            ),
            Query(
                f"sum by (instance, worker) ({sel('wsgiwatch_worker_capacity')})",
                PER_WORKER + " capacity",
            ),
        ],
        unit="short",
        size=HALF,
        overrides=[(".* capacity$", [DASHED, NO_FILL])],
    )
    utilisation = graph(
        "Workers: utilisation",
        "Share of each worker's capacity spent running requests (busy seconds per second "
        "over capacity). Uneven bars with a blocked-request rate above zero mean the load "
        "balancing between processes is poor; all near 100% means too few workers.",
        [
            Query(
                f"{_rate('wsgiwatch_worker_busy_seconds_total', 'instance, worker')} / "
                f"sum by (instance, worker) ({sel('wsgiwatch_worker_capacity')})",
                PER_WORKER,
            )
        ],
        unit="percentunit",
        size=HALF,
    )
    accepted = graph(
        "Accepted connections per worker",
        "Connections each worker process accepted per second. Servers that accept greedily "
        "let one process take many connections while a sibling takes few: together with "
        'blocked requests that is the imbalance behind "Misrouted requests". Fix: a worker '
        "class that accepts only when free, SO_REUSEPORT (gunicorn --reuse-port), or fewer "
        "connections per worker (keep-alive off behind a proxy).",
        [Query(_rate("wsgiwatch_worker_accepted_total", "instance, worker"), PER_WORKER)],
        unit="cps",
        size=HALF,
    )
    accept_share = bars(
        "Accepted connections per worker: share of the time range",
        "Each worker's share of the connections its server accepted in the selected time "
        "range. Even shares (1 / number of workers) are ideal; one worker far above the "
        'others during blocking is the imbalance to fix (see "Accepted connections per '
        'worker").',
        [
            Query(
                f"{_increase('wsgiwatch_worker_accepted_total', 'instance, worker')} / "
                f"ignoring (worker) group_left "
                f"{_increase('wsgiwatch_worker_accepted_total', 'instance')}",
                PER_WORKER,
                instant=True,
            )
        ],
        unit="percentunit",
        size=HALF,
        thresholds=steps((None, GREEN)),
        maximum=1,
    )
    cpu = graph(
        "Workers: CPU",
        "CPU time each worker process used per second (100% is one core). A blocking route "
        "with high CPU is compute-bound: optimise it or move it off the request path; a "
        "blocking route with low CPU waits on I/O: give it timeouts, its own pool, or an "
        "async worker.",
        [Query(_rate("wsgiwatch_worker_cpu_seconds_total", "instance, worker"), PER_WORKER)],
        unit="percentunit",
        size=HALF,
    )
    memory = graph(
        "Workers: resident memory",
        "Resident memory of each worker process. More threads or workers to cure blocking "
        "cost memory: check the headroom here before adding them. A worker that keeps "
        "growing leaks: recycle workers (gunicorn --max-requests with --max-requests-jitter).",
        [
            Query(
                f"sum by (instance, worker) ({sel('wsgiwatch_worker_resident_memory_bytes')})",
                PER_WORKER,
            )
        ],
        unit="bytes",
        size=HALF,
    )
    return [
        dashboard_builders.Row("Workers"),
        busy,
        utilisation,
        accepted,
        accept_share,
        cpu,
        memory,
    ]


# --- Kernel backlog -------------------------------------------------------------------------


def _backlog_row() -> Section:
    backlog = graph(
        "Kernel backlog vs limit",
        "Connections waiting in each listener's kernel accept queue (solid) and the queue's "
        "limit (dashed). This queueing is healthy: the next free worker takes the connection. "
        "A backlog that stays up means every worker is busy: add workers. Near the limit, new "
        "connections are dropped or refused: raise the server's backlog and "
        "net.core.somaxconn, and add capacity.",
        [
            Query(
                f"sum by (instance, listener) ({sel('wsgiwatch_listen_backlog')})",
                "{{instance}} {{listener}} queued",
            ),
            Query(
                f"sum by (instance, listener) ({sel('wsgiwatch_listen_backlog_limit')})",
                "{{instance}} {{listener}} limit",
            ),
        ],
        unit="short",
        size=Size(16, 8),
        overrides=[(".* limit$", [DASHED, NO_FILL])],
    )
    fill = bars(
        "Kernel backlog fill",
        "Each listener's accept queue as a share of its limit, now. Above 80% the kernel is "
        "about to drop or refuse connections: add workers, and raise the backlog (gunicorn "
        "--backlog) with net.core.somaxconn.",
        [
            Query(
                f"max by (instance, listener) ({sel('wsgiwatch_listen_backlog')} / "
                f"{sel('wsgiwatch_listen_backlog_limit')})",
                "{{instance}} {{listener}}",
                instant=True,
            )
        ],
        unit="percentunit",
        size=Size(8, 8),
        thresholds=steps((None, GREEN), (0.5, ORANGE), (0.8, RED)),
        maximum=1,
    )
    return [dashboard_builders.Row("Kernel backlog"), backlog, fill]


# --- Traffic --------------------------------------------------------------------------------


def _traffic_row() -> Section:
    by_status = graph(
        "Requests per second by status class",
        "Finished requests per second by status class (2xx, 4xx, 5xx...). Blocking often "
        "comes with 5xx or 499/504 from a front proxy that gave up waiting: check its timeouts "
        'against "Oldest stall now".',
        [Query(_rate("wsgiwatch_requests_total", "status_class"), "{{status_class}}")],
        unit="reqps",
        size=THIRD,
        stack=True,
    )
    duration = graph(
        "Request duration p50 / p95 / p99",
        "Time in the app, from entry to the response's close() (streamed bodies included), "
        "without the queue wait. A request this long holds one thread of its process for all "
        "of it: with one thread per process, everything behind it waits as long.",
        _quantiles("wsgiwatch_request_duration_seconds"),
        unit="s",
        size=THIRD,
    )
    by_route = graph(
        "Requests per second by route (top 10)",
        'The busiest routes (route templates, not raw paths). Read with "Blame: blocker '
        'routes": a rare but slow route can block more than a busy fast one.',
        [
            Query(
                f"topk(10, {_rate('wsgiwatch_requests_total', 'route')})",
                "{{route}}",
            )
        ],
        unit="reqps",
        size=THIRD,
    )
    return [dashboard_builders.Row("Traffic"), by_status, duration, by_route]


# --- Sidecar health -------------------------------------------------------------------------


def _sidecar_row() -> Section:
    up = single(
        "Sidecar health: up",
        "Whether Prometheus can scrape the wsgiwatch sidecar (the worst of the selected "
        "instances). Down means no figure on this dashboard is current: check that "
        "`wsgiwatch sidecar` runs next to the workers and listens where Prometheus scrapes.",
        Query(f"min({sel('up')})", "up"),
        unit="short",
        size=Size(3, 8),
        thresholds=steps((None, RED), (1, GREEN)),
        sparkline=False,
        no_value="absent",
    )
    up.mappings(
        [
            model.ValueMap(
                options={
                    "0": model.ValueMappingResult(text="down", color=RED, index=0),
                    "1": model.ValueMappingResult(text="up", color=GREEN, index=1),
                }
            )
        ]
    )
    workers = single(
        "Sidecar health: workers seen",
        "Worker processes whose spool the sidecar reads. 0 while the server runs means the "
        "middleware and the sidecar do not share a spool directory (WSGIWATCH_DIR), or the "
        "app is not wrapped in WSGIWatch: every other panel will stay empty.",
        Query(f"sum({sel('wsgiwatch_workers')})", "workers"),
        unit="short",
        size=Size(3, 8),
        thresholds=steps((None, RED), (1, GREEN)),
        sparkline=False,
    )
    poll = graph(
        "Sidecar health: poll time",
        "How long one sidecar poll (read every spool, dump the kernel's sockets) takes: p99 "
        "and mean. Near the poll interval, polls overrun and live stalls show late; raise "
        "--poll-interval or give the sidecar more CPU.",
        [
            Query(
                _quantile(0.99, "wsgiwatch_sidecar_poll_duration_seconds", by="instance"),
                "{{instance}} p99",
            ),
            Query(
                f"{_rate('wsgiwatch_sidecar_poll_duration_seconds_sum', 'instance')} / "
                f"{_rate('wsgiwatch_sidecar_poll_duration_seconds_count', 'instance')}",
                "{{instance}} mean",
            ),
        ],
        unit="s",
        size=Size(6, 8),
    )
    drops = graph(
        "Sidecar health: dropped records and errors",
        "Per second: request records lost before the sidecar read them (the spool ring "
        "overflowed), spool files it could not read, polls that failed or overran. Dropped "
        "records make every count here an undercount: poll more often or enlarge the ring. "
        "Errors are in the sidecar's log (sidecar.poll_failed).",
        [
            Query(
                _rate("wsgiwatch_spool_records_dropped_total", "instance"),
                "{{instance}} records dropped",
            ),
            Query(_rate("wsgiwatch_spool_errors_total", "instance"), "{{instance}} spool errors"),
            Query(
                _rate("wsgiwatch_sidecar_poll_errors_total", "instance"),
                "{{instance}} poll errors",
            ),
            Query(
                _rate("wsgiwatch_sidecar_poll_overruns_total", "instance"),
                "{{instance}} poll overruns",
            ),
        ],
        unit="short",
        size=Size(6, 8),
    )
    sources = graph(
        "Sidecar health: where queue waits came from",
        "Finished requests per second by the source of their queue wait: hook (the opt-in "
        "accept hook, exact), environ or header (the server or a front proxy), kernel "
        "(socket state), none (unknown: not counted as blocked). Mostly none means blocking "
        "goes unseen: enable the accept hook, or have the proxy send X-Request-Start.",
        [Query(_rate("wsgiwatch_queue_wait_source_total", "source"), "{{source}}")],
        unit="reqps",
        size=Size(6, 8),
        stack=True,
    )
    return [dashboard_builders.Row("Sidecar health"), up, workers, poll, drops, sources]


# --- Assembly -------------------------------------------------------------------------------


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
    for row in (_hol_row, _wait_row, _worker_row, _backlog_row, _traffic_row, _sidecar_row):
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
