"""The overview's blocking rows: head-of-line blocking (stalls, blame) and queue wait.

Panel titles are referred to by the alert runbooks (``docs/alerts.md``): rename one there too.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders

from wsgiwatch.grafana.overview_kit import (
    HALF,
    HEATMAP,
    PER_WORKER,
    RANGE,
    RATE,
    RIGHT_AXIS,
    STAT,
    TABLE,
    Section,
    increase,
    quantile,
    quantile_lines,
    rate,
)
from wsgiwatch.grafana.panels import (
    GREEN,
    ORANGE,
    RED,
    Column,
    Query,
    buckets,
    graph,
    override,
    sel,
    single,
    steps,
    table_of,
)

# --- Head-of-line blocking ------------------------------------------------------------------

TO_DO = (
    ' To fix: find the blocker on "Blame: blocker routes"; give slow routes their own worker '
    "pool, or more threads per worker, or a worker class that does not accept while busy "
    "(gunicorn sync); put timeouts on slow calls. Runbooks: docs/alerts.md."
)


def hol_row() -> Section:
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
        Query(increase("wsgiwatch_hol_blocked_requests_total"), "blocked", instant=True),
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
            f"{increase('wsgiwatch_hol_blocked_requests_total')} / "
            f"{increase('wsgiwatch_requests_total')}",
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
        Query(increase("wsgiwatch_misrouted_requests_total"), "misrouted", instant=True),
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
            quantile(0.99, "wsgiwatch_queue_wait_seconds", window=RANGE, fn="increase"),
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
                rate("wsgiwatch_hol_blocked_requests_total", "blocker_route"),
                "blocked by {{blocker_route}}",
            ),
            Query(
                f"{rate('wsgiwatch_hol_blocked_requests_total')} / "
                f"{rate('wsgiwatch_requests_total')}",
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
                    increase("wsgiwatch_hol_blocked_seconds_total", "blocker_route"),
                    instant=True,
                    fmt=TABLE,
                ),
                "Victims' wait",
            ),
            Column(
                Query(
                    increase("wsgiwatch_hol_blocked_requests_total", "blocker_route"),
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
                rate("wsgiwatch_hol_blocked_seconds_total", "blocker_route"),
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


def wait_row() -> Section:
    quantiles = graph(
        "Queue wait p50 / p95 / p99",
        "How long requests waited inside their worker process before the app was entered "
        "(from accept, or from the request's arrival on a kept-alive connection). Healthy: "
        "p99 within a few milliseconds. A p99 that tracks your slowest route's duration "
        'means fast requests queue behind slow ones (see "Blame: blocker routes"); a p50 '
        "that rises too means every worker is saturated: add workers.",
        quantile_lines("wsgiwatch_queue_wait_seconds"),
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
                quantile(0.95, "wsgiwatch_queue_wait_seconds", by="route"),
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
        [Query(quantile(0.95, "wsgiwatch_wait_seconds", by="phase"), "{{phase}}")],
        unit="s",
        size=HALF,
    )
    return [dashboard_builders.Row("Queue wait"), quantiles, heat, by_route, phases]
