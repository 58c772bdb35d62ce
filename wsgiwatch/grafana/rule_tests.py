"""``promtool test rules`` unit tests for the generated rule file, generated with it.

One test group per alert tells a story on a 1-minute clock: the condition starts, the alert
is pending (not firing yet), fires with the expected labels and annotations, then resolves;
and a second series nearby never fires (below the threshold, too short, or filtered out).
Expectations are written here by hand (the value text as Prometheus formats it), not read
back from Prometheus. Each firing check also runs the alert's condition twice as a PromQL
test, once on the recorded series and once with the recordings expanded (Grafana's form):
both must return the same samples.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wsgiwatch.grafana import definitions as d

APP = "app:9808"


@dataclass(frozen=True)
class Firing:
    labels: Mapping[str, str]  # the alert's series labels besides job
    value: float
    value_text: str  # $value as the annotation template prints it


@dataclass(frozen=True)
class Case:
    alert: str
    story: str
    series: tuple[tuple[str, str], ...]  # (series, promtool expanding notation)
    evals: tuple[tuple[str, tuple[Firing, ...]], ...]  # (eval_time, alerts firing then)


def _s(metric: str, **labels: str) -> str:
    """A series with ``job="$job"`` (filled in later) and the given labels."""
    pairs = ['job="$job"', *(f'{k}="{v}"' for k, v in labels.items())]
    return f"{metric}{{{', '.join(pairs)}}}"


def _fire(value: float, text: str, **labels: str) -> tuple[Firing, ...]:
    return (Firing({"instance": APP, **labels}, value, text),)


NONE: tuple[Firing, ...] = ()

CASES: tuple[Case, ...] = (
    Case(
        "WsgiwatchHeadOfLineBlocking",
        "10% of 10 req/s blocked from 11m to 30m; quiet: 5% blocked but waits 0.02 s/s",
        (
            (
                _s("wsgiwatch_requests_total", instance=APP, route="/", status_class="2xx"),
                "0+600x50",
            ),
            (
                _s("wsgiwatch_hol_blocked_requests_total", instance=APP, blocker_route="/report"),
                "0x10 60+60x19 1200x20",
            ),
            (
                _s("wsgiwatch_hol_blocked_seconds_total", instance=APP, blocker_route="/report"),
                "0x10 12+12x19 240x20",
            ),
            (
                _s(
                    "wsgiwatch_requests_total", instance="quiet:9808", route="/", status_class="2xx"
                ),
                "0+600x50",
            ),
            (
                _s(
                    "wsgiwatch_hol_blocked_requests_total",
                    instance="quiet:9808",
                    blocker_route="/report",
                ),
                "0+30x50",
            ),
            (
                _s(
                    "wsgiwatch_hol_blocked_seconds_total",
                    instance="quiet:9808",
                    blocker_route="/report",
                ),
                "0+1.2x50",
            ),
        ),
        (("10m", NONE), ("16m", NONE), ("18m", _fire(0.1, "10%")), ("36m", NONE)),
    ),
    Case(
        "WsgiwatchRequestsStalled",
        "app stalls 3..7 s from 6m to 10m; blip: one 30 s sample; queue: 1.5 s all along",
        (
            (_s("wsgiwatch_oldest_stall_seconds", instance=APP), "0x5 3 4 5 6 7 0x10"),
            (_s("wsgiwatch_oldest_stall_seconds", instance="blip:9808"), "0x5 30 0x15"),
            (_s("wsgiwatch_oldest_stall_seconds", instance="queue:9808"), "1.5x20"),
        ),
        (("5m", NONE), ("6m", NONE), ("8m", _fire(5, "5s")), ("12m", NONE)),
    ),
    Case(
        "WsgiwatchListenBacklogNearLimit",
        "8000 at 90% from 6m to 10m; 8001 at 70%; 9000 reports no limit",
        (
            (
                _s("wsgiwatch_listen_backlog", instance=APP, listener="0.0.0.0:8000"),
                "10x5 90x4 10x10",
            ),
            (_s("wsgiwatch_listen_backlog_limit", instance=APP, listener="0.0.0.0:8000"), "100x20"),
            (_s("wsgiwatch_listen_backlog", instance=APP, listener="0.0.0.0:8001"), "70x20"),
            (_s("wsgiwatch_listen_backlog_limit", instance=APP, listener="0.0.0.0:8001"), "100x20"),
            (_s("wsgiwatch_listen_backlog", instance=APP, listener="0.0.0.0:9000"), "5x20"),
            (_s("wsgiwatch_listen_backlog_limit", instance=APP, listener="0.0.0.0:9000"), "0x20"),
        ),
        (
            ("5m", NONE),
            ("7m", NONE),
            ("9m", _fire(0.9, "90%", listener="0.0.0.0:8000")),
            ("12m", NONE),
        ),
    ),
    Case(
        "WsgiwatchAcceptImbalance",
        "workers take 9 and 1 conn/s (a replaced worker 2 is ignored), misrouting from 11m to"
        " 30m; even: 5 and 5 conn/s with misrouting",
        (
            (_s("wsgiwatch_worker_accepted_total", instance=APP, worker="0"), "0+540x50"),
            (_s("wsgiwatch_worker_accepted_total", instance=APP, worker="1"), "0+60x50"),
            (_s("wsgiwatch_worker_accepted_total", instance=APP, worker="2"), "300x50"),
            (_s("wsgiwatch_worker_capacity", instance=APP, worker="0"), "1x50"),
            (_s("wsgiwatch_worker_capacity", instance=APP, worker="1"), "1x50"),
            (_s("wsgiwatch_misrouted_requests_total", instance=APP), "0x10 6+6x19 120x20"),
            (_s("wsgiwatch_worker_accepted_total", instance="even:9808", worker="0"), "0+300x50"),
            (_s("wsgiwatch_worker_accepted_total", instance="even:9808", worker="1"), "0+300x50"),
            (_s("wsgiwatch_worker_capacity", instance="even:9808", worker="0"), "1x50"),
            (_s("wsgiwatch_worker_capacity", instance="even:9808", worker="1"), "1x50"),
            (_s("wsgiwatch_misrouted_requests_total", instance="even:9808"), "0+6x50"),
        ),
        (("10m", NONE), ("25m", NONE), ("27m", _fire(1.8, "1.8")), ("36m", NONE)),
    ),
    Case(
        "WsgiwatchSpoolRecordsDropped",
        "app drops 0.5 records/s from 11m to 30m; burst: one drop at 11m",
        (
            (_s("wsgiwatch_spool_records_dropped_total", instance=APP), "0x10 30+30x19 600x20"),
            (_s("wsgiwatch_spool_records_dropped_total", instance="burst:9808"), "0x10 50x30"),
        ),
        (("10m", NONE), ("20m", NONE), ("22m", _fire(0.5, "0.50")), ("36m", NONE)),
    ),
    Case(
        "WsgiwatchWorkersKilled",
        "a worker of app is killed at 11m; calm: its workers only exit (recycled), and a"
        " timeout long before",
        (
            (_s("wsgiwatch_worker_deaths_total", instance=APP, fate="killed"), "0x10 1x30"),
            (_s("wsgiwatch_worker_deaths_total", instance=APP, fate="exited"), "0+1x40"),
            (_s("wsgiwatch_worker_deaths_total", instance="calm:9808", fate="exited"), "0+1x40"),
            (_s("wsgiwatch_worker_deaths_total", instance="calm:9808", fate="timed_out"), "1x40"),
        ),
        (("10m", NONE), ("11m", NONE), ("13m", _fire(1, "1")), ("20m", NONE)),
    ),
    Case(
        "WsgiwatchSidecarDown",
        "app's scrape fails from 6m to 10m; other is up; another job's target is down",
        (
            (_s("up", instance=APP), "1x5 0x4 1x10"),
            (_s("up", instance="other:9808"), "1x20"),
            ('up{job="not-$job", instance="app:9100"}', "0x20"),
        ),
        (("5m", NONE), ("7m", NONE), ("9m", _fire(0, "0")), ("12m", NONE)),
    ),
    Case(
        "WsgiwatchSidecarAbsent",
        "the job's only target is gone from 11m to 24m (stale after 5m); another job stays",
        (
            (_s("up", instance=APP), "1x10 _x14 1x10"),
            ('up{job="not-$job", instance="app:9100"}', "1x40"),
        ),
        (
            ("12m", NONE),
            ("18m", NONE),
            ("23m", (Firing({}, 1, "1"),)),
            ("30m", NONE),
        ),
    ),
)

_LABEL = re.compile(r"\{\{ \$labels\.(\w+) \}\}")
_VALUE = re.compile(r"\{\{[^}]*\$value\b[^}]*\}\}")


def _render(template: str, labels: Mapping[str, str], value_text: str) -> str:
    """Fill an annotation the way Prometheus will, for the few forms our templates use."""
    text = _LABEL.sub(lambda m: labels[m.group(1)], template)
    text = _VALUE.sub(lambda m: value_text, text)
    if "{{" in text:
        raise ValueError(f"cannot predict {template!r}")
    return text


def _labels_text(labels: Mapping[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _group(case: Case, settings: d.Settings) -> dict[str, Any]:
    alert = next(a for a in d.ALERTS if a.name == case.alert)
    job = {"job": settings.job}
    alert_tests: list[dict[str, Any]] = []
    expr_tests: list[dict[str, Any]] = []
    for eval_time, firing in case.evals:
        expected = []
        for f in firing:
            series = {**job, **f.labels}
            expected.append(
                {
                    "exp_labels": {**series, **d.alert_labels(alert)},
                    "exp_annotations": {
                        k: _render(v, series, f.value_text)
                        for k, v in d.alert_annotations(alert, settings).items()
                    },
                }
            )
        alert_tests.append(
            {"eval_time": eval_time, "alertname": alert.name, "exp_alerts": expected}
        )
        if firing:
            samples = [
                {"labels": _labels_text({**job, **f.labels}), "value": f.value} for f in firing
            ]
            for inline in (False, True):
                # "* 1" drops the metric name, which differs between the two forms.
                expr = f"({d.condition(alert, settings, inline=inline)}) * 1"
                expr_tests.append({"expr": expr, "eval_time": eval_time, "exp_samples": samples})
    return {
        "name": f"{alert.name}: {case.story}",
        "interval": "1m",
        "input_series": [
            {"series": d.expand(series, settings, inline=True), "values": values}
            for series, values in case.series
        ],
        "alert_rule_test": alert_tests,
        "promql_expr_test": expr_tests,
    }


def _recordings_group(settings: d.Settings) -> dict[str, Any]:
    """Queue-wait quantiles from two routes' buckets; blame split by blocker route."""
    per_route = {"0.25": "0x10", "0.5": "0+1500x10", "1": "0+2850x10", "2.5": "0+2970x10"}
    per_route |= {"5": "0+3000x10", "+Inf": "0+3000x10"}
    series = [
        (_s("wsgiwatch_queue_wait_seconds_bucket", instance=APP, route=route, le=le), values)
        for route in ("/a", "/b")
        for le, values in per_route.items()
    ]
    series += [
        (
            _s("wsgiwatch_hol_blocked_seconds_total", instance=APP, blocker_route="/report"),
            "0+30x10",
        ),
        (
            _s("wsgiwatch_hol_blocked_seconds_total", instance=APP, blocker_route="/export"),
            "0+15x10",
        ),
    ]
    recs = d.RECORDINGS_BY_KEY
    job = {"job": settings.job, "instance": APP}

    def sample(key: str, value: float, **labels: str) -> dict[str, Any]:
        rec = recs[key]
        name = d.record_name(rec, settings)
        return {
            "labels": name + _labels_text({**job, **dict(rec.labels), **labels}),
            "value": value,
        }

    expect = [
        # 100 waits/s: 50 under 0.5 s, 95 under 1 s, 99 under 2.5 s.
        ("queue_wait_p50", [sample("queue_wait_p50", 0.5)]),
        ("queue_wait_p95", [sample("queue_wait_p95", 1)]),
        ("queue_wait_p99", [sample("queue_wait_p99", 2.5)]),
        (
            "blame",
            [
                sample("blame", 0.25, blocker_route="/export"),
                sample("blame", 0.5, blocker_route="/report"),
            ],
        ),
        ("blocked_seconds_rate", [sample("blocked_seconds_rate", 0.75)]),
    ]
    return {
        "name": "recording rules: queue wait quantiles and blame",
        "interval": "1m",
        "input_series": [
            {"series": d.expand(s, settings, inline=True), "values": v} for s, v in series
        ],
        "promql_expr_test": [
            {
                "expr": d.expand(f"${key}", settings, inline=False),
                "eval_time": "10m",
                "exp_samples": samples,
            }
            for key, samples in expect
        ],
    }


def _fleet_group(settings: d.Settings) -> dict[str, Any]:
    """The fleet recordings on two instances: busy ``a`` blocks and misroutes, ``b`` blocks
    less, behind two routes, one of which blocks nobody there."""
    a, b = APP, "b:9808"
    blocked = "wsgiwatch_hol_blocked_requests_total"
    seconds = "wsgiwatch_hol_blocked_seconds_total"
    poll = "wsgiwatch_sidecar_poll_duration_seconds_bucket"
    series = [
        (_s("wsgiwatch_requests_total", instance=a, route="/", status_class="2xx"), "0+600x10"),
        (_s("wsgiwatch_requests_total", instance=b, route="/", status_class="2xx"), "0+300x10"),
        (_s(blocked, instance=a, blocker_route="/report"), "0+60x10"),
        (_s(blocked, instance=b, blocker_route="/report"), "0+30x10"),
        (_s(blocked, instance=b, blocker_route="/export"), "0+30x10"),
        (_s(seconds, instance=a, blocker_route="/report"), "0+30x10"),
        (_s(seconds, instance=b, blocker_route="/report"), "0+6x10"),
        (_s(seconds, instance=b, blocker_route="/export"), "0x10"),
        (_s("wsgiwatch_misrouted_requests_total", instance=a), "0+30x10"),
        (_s("wsgiwatch_misrouted_requests_total", instance=b), "0x10"),
        (_s("wsgiwatch_stalled_requests", instance=a, worker="0"), "2x10"),
        (_s("wsgiwatch_stalled_requests", instance=a, worker="1"), "1x10"),
        (_s("wsgiwatch_stalled_requests", instance=b, worker="0"), "0x10"),
        (_s("wsgiwatch_oldest_stall_seconds", instance=a), "1.5x10"),
        (_s("wsgiwatch_oldest_stall_seconds", instance=b), "0x10"),
        (_s("wsgiwatch_spool_records_dropped_total", instance=a), "0+6x10"),
        (_s("wsgiwatch_spool_records_dropped_total", instance=b), "0x10"),
        # 99 of the fleet's 100 waits per second under 0.1 s (49.5 of 50 on each).
        *[
            (_s("wsgiwatch_queue_wait_seconds_bucket", instance=i, route="/", le=le), values)
            for i in (a, b)
            for le, values in (("0.1", "0+2970x10"), ("1", "0+3000x10"), ("+Inf", "0+3000x10"))
        ],
        # a: 99% of its polls under 5 ms, all under 10 ms.
        (_s(poll, instance=a, le="0.005"), "0+2970x10"),
        (_s(poll, instance=a, le="0.01"), "0+3000x10"),
        (_s(poll, instance=a, le="+Inf"), "0+3000x10"),
    ]
    job = settings.job

    def sample(key: str, value: float, **labels: str) -> dict[str, Any]:
        rec = d.RECORDINGS_BY_KEY[key]
        name = d.record_name(rec, settings)
        text = _labels_text({"job": job, **dict(rec.labels), **labels})
        return {"labels": name + text, "value": value}

    expect = [
        (
            "stalled_now",
            [sample("stalled_now", 3, instance=a), sample("stalled_now", 0, instance=b)],
        ),
        (
            "oldest_stall",
            [sample("oldest_stall", 1.5, instance=a), sample("oldest_stall", 0, instance=b)],
        ),
        # b blocked 1 request/s of which none misrouted; a 1/s, half misrouted.
        (
            "misrouted_share",
            [sample("misrouted_share", 0.5, instance=a), sample("misrouted_share", 0, instance=b)],
        ),
        (
            "dropped_rate",
            [sample("dropped_rate", 0.1, instance=a), sample("dropped_rate", 0, instance=b)],
        ),
        ("poll_p99", [sample("poll_p99", 0.005, instance=a)]),
        ("fleet_requests_rate", [sample("fleet_requests_rate", 15)]),
        ("fleet_blocked_rate", [sample("fleet_blocked_rate", 2)]),
        ("fleet_misrouted_rate", [sample("fleet_misrouted_rate", 0.5)]),
        (
            "fleet_blame",
            [
                sample("fleet_blame", 0, blocker_route="/export"),
                sample("fleet_blame", 0.6, blocker_route="/report"),
            ],
        ),
        (
            "fleet_blocked_by_route",
            [
                sample("fleet_blocked_by_route", 0.5, blocker_route="/export"),
                sample("fleet_blocked_by_route", 1.5, blocker_route="/report"),
            ],
        ),
        # /export blocked requests on b but made them wait 0 s: it hurts no instance.
        (
            "fleet_blocking_instances",
            [sample("fleet_blocking_instances", 2, blocker_route="/report")],
        ),
    ]
    expect.append(("fleet_queue_wait_p99", [sample("fleet_queue_wait_p99", 0.1)]))
    tested = {key for key, _ in expect}
    first_fleet = d.RECORDINGS.index(d.RECORDINGS_BY_KEY["stalled_now"])
    fleet_keys = {rec.key for rec in d.RECORDINGS[first_fleet:]}
    missing = fleet_keys - tested - {"fleet_queue_wait_buckets"}  # (read by the p99)
    if missing:
        raise ValueError(f"fleet recordings without a unit test: {sorted(missing)}")
    return {
        "name": "recording rules: the fleet, two instances",
        "interval": "1m",
        "input_series": [
            {"series": d.expand(s, settings, inline=True), "values": v} for s, v in series
        ],
        "promql_expr_test": [
            {
                "expr": d.expand(f"${key}", settings, inline=False),
                "eval_time": "10m",
                "exp_samples": samples,
            }
            for key, samples in expect
        ],
    }


def build(settings: d.Settings | None = None, *, rule_file: str) -> dict[str, Any]:
    """The promtool test file for ``rule_file`` (a path relative to the test file)."""
    s = settings or d.Settings()
    if s.window != d.DEFAULT_WINDOW:
        raise ValueError("the cases' timings assume the default window")
    tested = {case.alert for case in CASES}
    missing = {a.name for a in d.ALERTS} - tested
    if missing:
        raise ValueError(f"alerts without a unit test: {sorted(missing)}")
    return {
        "rule_files": [rule_file],
        "evaluation_interval": "1m",
        "tests": [_group(case, s) for case in CASES] + [_recordings_group(s), _fleet_group(s)],
    }
