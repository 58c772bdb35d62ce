"""Prometheus rule groups (recording rules, then alerts) rendered from the definitions."""

from __future__ import annotations

from typing import Any

from wsgiwatch.grafana import definitions as d

RECORDING_GROUP = "wsgiwatch-recording"
ALERT_GROUP = "wsgiwatch-alerts"


def build(settings: d.Settings | None = None, *, for_override: str | None = None) -> dict[str, Any]:
    """The content of a Prometheus rule file.

    ``for_override`` replaces every alert's ``for:`` (a test copy that fires in seconds);
    a short ``Settings.window`` goes with it, so that an alert also resolves in seconds.
    """
    s = settings or d.Settings()
    if for_override is not None:
        d.duration(for_override)
    recordings = []
    for rec in d.RECORDINGS:
        rule: dict[str, Any] = {
            "record": d.record_name(rec, s),
            "expr": d.expand(rec.expr, s, inline=False),
        }
        if rec.labels:
            rule["labels"] = dict(rec.labels)
        recordings.append(rule)
    alerts = [
        {
            "alert": alert.name,
            "expr": d.condition(alert, s),
            "for": for_override if for_override is not None else alert.for_,
            "labels": d.alert_labels(alert),
            "annotations": d.alert_annotations(alert, s),
        }
        for alert in d.ALERTS
    ]
    return {
        "groups": [
            {"name": RECORDING_GROUP, "rules": recordings},
            {"name": ALERT_GROUP, "rules": alerts},
        ]
    }
