"""The overview's capacity rows: workers, kernel backlog, traffic, and the sidecar's health.

They show the state around the blocking: whether workers are saturated or unevenly loaded,
whether the kernel queues connections, and whether the figures are current at all.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.models import dashboard as model

from wsgiwatch.grafana.overview_kit import (
    HALF,
    PER_WORKER,
    THIRD,
    Section,
    increase,
    quantile,
    quantile_lines,
    rate,
)
from wsgiwatch.grafana.panels import (
    DASHED,
    GREEN,
    NO_FILL,
    ORANGE,
    RED,
    Query,
    Size,
    bars,
    graph,
    sel,
    single,
    steps,
)

# --- Workers --------------------------------------------------------------------------------


def worker_row() -> Section:
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
                f"{rate('wsgiwatch_worker_busy_seconds_total', 'instance, worker')} / "
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
        [Query(rate("wsgiwatch_worker_accepted_total", "instance, worker"), PER_WORKER)],
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
                f"{increase('wsgiwatch_worker_accepted_total', 'instance, worker')} / "
                f"ignoring (worker) group_left "
                f"{increase('wsgiwatch_worker_accepted_total', 'instance')}",
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
        [Query(rate("wsgiwatch_worker_cpu_seconds_total", "instance, worker"), PER_WORKER)],
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
    lost = graph(
        "Requests lost with their worker",
        "Requests that were running in a worker process when it ended, by the worker's fate "
        "(killed: SIGKILL, the OOM killer, a crash; timed_out: aborted by the server after "
        "its timeout; exited), counted since the sidecar started; and the deaths per second. "
        "Their clients got no answer or a broken one, and no access log line. The sidecar's "
        "log names each request (worker.lost).",
        [
            Query(
                f"sum by (instance, fate) ({sel('wsgiwatch_lost_requests_total')})",
                "{{instance}} {{fate}}: requests lost (total)",
            ),
            Query(
                rate("wsgiwatch_worker_deaths_total", "instance, fate"),
                "{{instance}} {{fate}}: deaths per second",
            ),
        ],
        unit="short",
        size=Size(24, 8),
    )
    return [
        dashboard_builders.Row("Workers"),
        busy,
        utilisation,
        accepted,
        accept_share,
        cpu,
        memory,
        lost,
    ]


# --- Kernel backlog -------------------------------------------------------------------------


def backlog_row() -> Section:
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


def traffic_row() -> Section:
    by_status = graph(
        "Requests per second by status class",
        "Finished requests per second by status class (2xx, 4xx, 5xx...). Blocking often "
        "comes with 5xx or 499/504 from a front proxy that gave up waiting: check its timeouts "
        'against "Oldest stall now".',
        [Query(rate("wsgiwatch_requests_total", "status_class"), "{{status_class}}")],
        unit="reqps",
        size=THIRD,
        stack=True,
    )
    duration = graph(
        "Request duration p50 / p95 / p99",
        "Time in the app, from entry to the response's close() (streamed bodies included), "
        "without the queue wait. A request this long holds one thread of its process for all "
        "of it: with one thread per process, everything behind it waits as long.",
        quantile_lines("wsgiwatch_request_duration_seconds"),
        unit="s",
        size=THIRD,
    )
    by_route = graph(
        "Requests per second by route (top 10)",
        'The busiest routes (route templates, not raw paths). Read with "Blame: blocker '
        'routes": a rare but slow route can block more than a busy fast one.',
        [
            Query(
                f"topk(10, {rate('wsgiwatch_requests_total', 'route')})",
                "{{route}}",
            )
        ],
        unit="reqps",
        size=THIRD,
    )
    return [dashboard_builders.Row("Traffic"), by_status, duration, by_route]


# --- Sidecar health -------------------------------------------------------------------------


def sidecar_row() -> Section:
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
                quantile(0.99, "wsgiwatch_sidecar_poll_duration_seconds", by="instance"),
                "{{instance}} p99",
            ),
            Query(
                f"{rate('wsgiwatch_sidecar_poll_duration_seconds_sum', 'instance')} / "
                f"{rate('wsgiwatch_sidecar_poll_duration_seconds_count', 'instance')}",
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
                rate("wsgiwatch_spool_records_dropped_total", "instance"),
                "{{instance}} records dropped",
            ),
            Query(rate("wsgiwatch_spool_errors_total", "instance"), "{{instance}} spool errors"),
            Query(
                rate("wsgiwatch_sidecar_poll_errors_total", "instance"),
                "{{instance}} poll errors",
            ),
            Query(
                rate("wsgiwatch_sidecar_poll_overruns_total", "instance"),
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
        [Query(rate("wsgiwatch_queue_wait_source_total", "source"), "{{source}}")],
        unit="reqps",
        size=Size(6, 8),
        stack=True,
    )
    return [dashboard_builders.Row("Sidecar health"), up, workers, poll, drops, sources]
