"""The one source of wsgiwatch's alerts and recording rules.

Both the Prometheus rule file and the Grafana-managed alert rules are rendered from the
definitions below, so the two cannot drift apart. A definition's PromQL is a template:

- ``$job`` is the scrape job's name (label value, escaped), ``$window`` the rate window;
- ``$<key>`` names a :class:`Recording`. For Prometheus it becomes a selector of the recorded
  series; for Grafana it is replaced by the recording's own expression, in parentheses, so
  that Grafana alerts work on a Prometheus that does not load our rules.

An alert is a *value* (what Grafana's query returns, and what ``$value`` shows), a threshold
on it, and optionally a further condition (``also``) that filters by another series. Only
``>`` and ``<`` are used: they map to Grafana's ``gt`` and ``lt`` threshold types, which
every Grafana 11 release has (``eq`` came later), so ``up == 0`` is written ``up < 1``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

DEFAULT_JOB = "wsgiwatch"
DEFAULT_WINDOW = "5m"
#: The Prometheus data source Grafana provisions and its alert rules query (by uid).
DEFAULT_DATASOURCE_UID = "wsgiwatch-prometheus"
DEFAULT_DATASOURCE_NAME = "Prometheus (wsgiwatch)"
#: Where Prometheus is, as seen from Grafana (a compose service name by default).
DEFAULT_PROMETHEUS_URL = "http://prometheus:9090"
#: The runbook: ``docs/alerts.md``, one section per alert (anchor = lower-cased alert name).
RUNBOOK_BASE = "https://github.com/wsgiwatch/wsgiwatch/blob/main/docs/alerts.md"

_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
_PLACEHOLDER = re.compile(r"\$([a-z][a-z0-9_]*)")


def duration(text: str) -> str:
    """``text`` if it is a Prometheus duration (``5m``, ``1h30m``), else ValueError."""
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a Prometheus duration")
    return text


@dataclass(frozen=True)
class Settings:
    """What a deployment may change: the job label, the rate window, the runbook location,
    and the Prometheus data source in Grafana (its uid, name and URL)."""

    job: str = DEFAULT_JOB
    window: str = DEFAULT_WINDOW
    runbook_base: str = RUNBOOK_BASE
    datasource_uid: str = DEFAULT_DATASOURCE_UID
    datasource_name: str = DEFAULT_DATASOURCE_NAME
    prometheus_url: str = DEFAULT_PROMETHEUS_URL

    def __post_init__(self) -> None:
        if not self.job:
            raise ValueError("the job name must not be empty")
        duration(self.window)


@dataclass(frozen=True)
class Recording:
    """A recording rule; ``key`` is how templates refer to it (``$key``). ``record`` may
    contain ``$window`` (``...:rate$window``), so a test copy's names tell its window."""

    key: str
    record: str
    expr: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Alert:
    """One alert. ``name`` is the alertname in both Prometheus and Grafana (the rule title),
    so one Alertmanager route serves either; its section in docs/alerts.md has it as title.
    ``also`` is a whole clause appended on its own line (``and on (job, instance) ...``):
    set operators bind after the comparison, so it filters ``value op threshold``."""

    name: str
    value: str
    op: Literal[">", "<"]
    threshold: float
    for_: str
    severity: Literal["critical", "warning"]
    #: Go templates with Prometheus's ``$labels`` and ``$value``; ``$window`` is filled in.
    summary: str
    description: str
    also: str = ""

    @property
    def runbook(self) -> str:
        """The anchor of this alert's section in docs/alerts.md (its heading, lower-cased)."""
        return self.name.lower()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def record_name(rec: Recording, settings: Settings) -> str:
    return rec.record.replace("$window", settings.window)


def expand(template: str, settings: Settings, *, inline: bool) -> str:
    """Fill a PromQL template: recordings as recorded series, or ``inline`` as expressions."""

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "job":
            return _escape(settings.job)
        if key == "window":
            return settings.window
        rec = RECORDINGS_BY_KEY.get(key)
        if rec is None:
            raise KeyError(f"unknown placeholder ${key} in {template!r}")
        if inline:
            return f"({expand(rec.expr, settings, inline=True)})"
        matchers = [f'job="{_escape(settings.job)}"']
        matchers += [f'{name}="{_escape(value)}"' for name, value in rec.labels]
        return f"{record_name(rec, settings)}{{{', '.join(matchers)}}}"

    return _PLACEHOLDER.sub(fill, template)


def threshold_text(alert: Alert) -> str:
    return f"{alert.threshold:g}"


def condition(alert: Alert, settings: Settings, *, inline: bool = False) -> str:
    """The whole alerting expression: ``value op threshold``, then the ``also`` filter."""
    expr = f"{expand(alert.value, settings, inline=inline)} {alert.op} {threshold_text(alert)}"
    if alert.also:
        expr += "\n" + expand(alert.also, settings, inline=inline)
    return expr


def query(alert: Alert, settings: Settings, *, inline: bool = True) -> str:
    """What Grafana queries: the value, filtered by ``also``; the threshold is applied after."""
    expr = expand(alert.value, settings, inline=inline)
    if alert.also:
        expr += "\n" + expand(alert.also, settings, inline=inline)
    return expr


def alert_annotations(alert: Alert, settings: Settings) -> dict[str, str]:
    def fill(text: str) -> str:
        return text.replace("$window", settings.window)

    return {
        "summary": fill(alert.summary),
        "description": fill(alert.description),
        "runbook_url": f"{settings.runbook_base}#{alert.runbook}",
    }


def alert_labels(alert: Alert) -> dict[str, str]:
    return {"severity": alert.severity}


def _rate(metric: str, by: str) -> str:
    return f'sum by ({by}) (rate({metric}{{job="$job"}}[$window]))'


RECORDINGS: tuple[Recording, ...] = (
    Recording(
        "requests_rate",
        "job_instance:wsgiwatch_requests:rate$window",
        _rate("wsgiwatch_requests_total", "job, instance"),
    ),
    Recording(
        "blocked_rate",
        "job_instance:wsgiwatch_hol_blocked_requests:rate$window",
        _rate("wsgiwatch_hol_blocked_requests_total", "job, instance"),
    ),
    Recording(
        "blocked_share",
        "job_instance:wsgiwatch_hol_blocked_requests:ratio_rate$window",
        "$blocked_rate / $requests_rate",
    ),
    # The blame table: waiting time caused, per blocker route.
    Recording(
        "blame",
        "job_instance_blocker_route:wsgiwatch_hol_blocked_seconds:rate$window",
        _rate("wsgiwatch_hol_blocked_seconds_total", "job, instance, blocker_route"),
    ),
    Recording(
        "blocked_seconds_rate",
        "job_instance:wsgiwatch_hol_blocked_seconds:rate$window",
        "sum by (job, instance) ($blame)",
    ),
    Recording(
        "misrouted_rate",
        "job_instance:wsgiwatch_misrouted_requests:rate$window",
        _rate("wsgiwatch_misrouted_requests_total", "job, instance"),
    ),
    # Live workers only: a replaced worker's counter stays behind with a zero rate.
    Recording(
        "accepted_rate",
        "job_instance_worker:wsgiwatch_worker_accepted:rate$window",
        _rate("wsgiwatch_worker_accepted_total", "job, instance, worker")
        + ' and on (job, instance, worker) wsgiwatch_worker_capacity{job="$job"}',
    ),
    # Queue wait quantiles: the histogram has a series per route and bucket; sum it once.
    Recording(
        "queue_wait_buckets",
        "job_instance_le:wsgiwatch_queue_wait_seconds_bucket:rate$window",
        _rate("wsgiwatch_queue_wait_seconds_bucket", "job, instance, le"),
    ),
    *(
        Recording(
            f"queue_wait_p{percent}",
            "job_instance_quantile:wsgiwatch_queue_wait_seconds:histogram_quantile_rate$window",
            f"histogram_quantile({quantile}, $queue_wait_buckets)",
            (("quantile", quantile),),
        )
        for percent, quantile in (("50", "0.5"), ("95", "0.95"), ("99", "0.99"))
    ),
    # --- The fleet dashboard (wsgiwatch/grafana/fleet.py) reads only what follows, and the
    # per-instance series above: one series per instance, or per job and blocker route. At
    # 1,000 instances a panel then reads about a thousand series, not the hundred thousand
    # of the raw per-route and per-bucket series.
    Recording(
        "stalled_now",
        "job_instance:wsgiwatch_stalled_requests:sum",
        'sum by (job, instance) (wsgiwatch_stalled_requests{job="$job"})',
    ),
    Recording(
        "oldest_stall",
        "job_instance:wsgiwatch_oldest_stall_seconds:max",
        'max by (job, instance) (wsgiwatch_oldest_stall_seconds{job="$job"})',
    ),
    # Of the blocked requests, the share that waited while a sibling had a free slot (an
    # instance that blocked nothing has no share, rather than 0/0).
    Recording(
        "misrouted_share",
        "job_instance:wsgiwatch_misrouted_requests:ratio_rate$window",
        "$misrouted_rate / ($blocked_rate > 0)",
    ),
    Recording(
        "dropped_rate",
        "job_instance:wsgiwatch_spool_records_dropped:rate$window",
        _rate("wsgiwatch_spool_records_dropped_total", "job, instance"),
    ),
    Recording(
        "poll_p99",
        "job_instance_quantile:wsgiwatch_sidecar_poll_duration_seconds:"
        "histogram_quantile_rate$window",
        "histogram_quantile(0.99, "
        + _rate("wsgiwatch_sidecar_poll_duration_seconds_bucket", "job, instance, le")
        + ")",
        (("quantile", "0.99"),),
    ),
    Recording(
        "fleet_requests_rate",
        "job:wsgiwatch_requests:rate$window",
        "sum by (job) ($requests_rate)",
    ),
    Recording(
        "fleet_blocked_rate",
        "job:wsgiwatch_hol_blocked_requests:rate$window",
        "sum by (job) ($blocked_rate)",
    ),
    Recording(
        "fleet_misrouted_rate",
        "job:wsgiwatch_misrouted_requests:rate$window",
        "sum by (job) ($misrouted_rate)",
    ),
    Recording(
        "fleet_blame",
        "job_blocker_route:wsgiwatch_hol_blocked_seconds:rate$window",
        "sum by (job, blocker_route) ($blame)",
    ),
    Recording(
        "fleet_blocked_by_route",
        "job_blocker_route:wsgiwatch_hol_blocked_requests:rate$window",
        _rate("wsgiwatch_hol_blocked_requests_total", "job, blocker_route"),
    ),
    # How many instances each blocker route hurts (a count of the rates above zero): one
    # slow route everywhere (a shared dependency) reads differently from one instance's bad
    # luck.
    Recording(
        "fleet_blocking_instances",
        "job_blocker_route:wsgiwatch_hol_blocked_seconds:count_rate$window",
        "count by (job, blocker_route) ($blame > 0)",
    ),
    Recording(
        "fleet_queue_wait_buckets",
        "job_le:wsgiwatch_queue_wait_seconds_bucket:rate$window",
        "sum by (job, le) ($queue_wait_buckets)",
    ),
    Recording(
        "fleet_queue_wait_p99",
        "job_quantile:wsgiwatch_queue_wait_seconds:histogram_quantile_rate$window",
        "histogram_quantile(0.99, $fleet_queue_wait_buckets)",
        (("quantile", "0.99"),),
    ),
)
RECORDINGS_BY_KEY: Mapping[str, Recording] = {rec.key: rec for rec in RECORDINGS}

ALERTS: tuple[Alert, ...] = (
    Alert(
        name="WsgiwatchHeadOfLineBlocking",
        value="$blocked_share",
        op=">",
        threshold=0.01,
        also="and on (job, instance) $blocked_seconds_rate > 0.05",
        for_="5m",
        severity="warning",
        summary="Requests wait behind other requests inside busy workers on {{ $labels.instance }}",
        description=(
            "{{ $value | humanizePercentage }} of the requests finished on {{ $labels.instance }}"
            " over the last $window were head-of-line blocked: accepted by a worker process that"
            " was already running at capacity, they waited for a request there to finish while"
            " a sibling may have been idle. Together they waited more than 0.05 s per second."
        ),
    ),
    Alert(
        name="WsgiwatchRequestsStalled",
        value='max by (job, instance) (wsgiwatch_oldest_stall_seconds{job="$job"})',
        op=">",
        threshold=2,
        for_="1m",
        severity="critical",
        summary="Requests are stalled right now inside busy workers on {{ $labels.instance }}",
        description=(
            "The oldest request stalled on {{ $labels.instance }} has waited"
            " {{ $value | humanizeDuration }} inside a worker process that is busy with other"
            " requests, and requests have stayed stalled over 2 s for a minute."
        ),
    ),
    Alert(
        name="WsgiwatchListenBacklogNearLimit",
        value=(
            'max by (job, instance, listener) (wsgiwatch_listen_backlog{job="$job"}'
            ' / (wsgiwatch_listen_backlog_limit{job="$job"} > 0))'
        ),
        op=">",
        threshold=0.8,
        for_="2m",
        severity="warning",
        summary="The kernel accept queue of {{ $labels.listener }} is nearly full",
        description=(
            "The accept queue of listener {{ $labels.listener }} on {{ $labels.instance }} is"
            " {{ $value | humanizePercentage }} full. Every worker is busy; when the queue is"
            " full the kernel drops new connections and clients see timeouts."
        ),
    ),
    Alert(
        name="WsgiwatchAcceptImbalance",
        value=("max by (job, instance) ($accepted_rate) / avg by (job, instance) ($accepted_rate)"),
        op=">",
        threshold=1.5,
        also="and on (job, instance) $misrouted_rate > 0",
        for_="15m",
        severity="warning",
        summary="One worker takes most connections while requests wait on {{ $labels.instance }}",
        description=(
            "The busiest worker on {{ $labels.instance }} accepts {{ $value | humanize }} times"
            " the average worker's connections, and requests are blocked in busy workers while"
            " a sibling has a free slot (misrouted)."
        ),
    ),
    Alert(
        name="WsgiwatchSpoolRecordsDropped",
        value=(
            "sum by (job, instance) "
            '(rate(wsgiwatch_spool_records_dropped_total{job="$job"}[$window]))'
        ),
        op=">",
        threshold=0,
        for_="10m",
        severity="warning",
        summary="wsgiwatch is losing request records on {{ $labels.instance }}",
        description=(
            '{{ printf "%.2f" $value }} request records per second are lost before the sidecar on'
            " {{ $labels.instance }} reads them (ring overwritten, torn or not written), so its"
            " figures undercount."
        ),
    ),
    Alert(
        name="WsgiwatchWorkersKilled",
        value=(
            "sum by (job, instance) "
            '(increase(wsgiwatch_worker_deaths_total{job="$job", fate=~"killed|timed_out"}'
            "[$window]))"
        ),
        op=">",
        threshold=0,
        for_="1m",
        severity="warning",
        summary="Worker processes were killed or timed out on {{ $labels.instance }}",
        description=(
            "{{ $value | humanize }} worker processes on {{ $labels.instance }} ended without"
            " exiting cleanly over the last $window: killed (SIGKILL, the OOM killer, a crash)"
            " or aborted after the server's timeout. The requests running in them got no"
            " answer or a broken one: wsgiwatch_lost_requests_total counts them by route."
        ),
    ),
    Alert(
        name="WsgiwatchSidecarDown",
        value='up{job="$job"}',
        op="<",
        threshold=1,
        for_="2m",
        severity="warning",
        summary="Prometheus cannot scrape the wsgiwatch sidecar {{ $labels.instance }}",
        description=(
            "The scrape of {{ $labels.instance }} (job {{ $labels.job }}) fails: the sidecar is"
            " down or unreachable, and head-of-line blocking there goes unseen."
        ),
    ),
    Alert(
        name="WsgiwatchSidecarAbsent",
        value='absent(up{job="$job"})',
        op=">",
        threshold=0,
        for_="5m",
        severity="warning",
        summary="No wsgiwatch sidecar is scraped by job {{ $labels.job }}",
        description=(
            "Prometheus has no target for job {{ $labels.job }}: the scrape configuration or"
            " service discovery lost the sidecars, and no wsgiwatch alert can fire."
        ),
    ),
)
