"""Grafana-managed alert rules (file provisioning, Grafana 11) rendered from the definitions.

Each rule is the same alert as in the Prometheus rule file, in Grafana's three steps:
``A`` runs the definition's query (recording rules expanded inline, so it works without our
rule file), ``B`` reduces each series to its last value, ``C`` applies the threshold and is
the rule's condition. No data means no problem (``noDataState: OK``), as in Prometheus,
where an empty result fires nothing; the absent-sidecar rule covers a job that vanished.
"""

from __future__ import annotations

import re
from typing import Any

from wsgiwatch.grafana import definitions as d
from wsgiwatch.grafana.provisioning import FOLDER

GROUP = "wsgiwatch"
INTERVAL = "1m"
#: How far back query ``A`` may look; its range selectors carry their own windows.
LOOKBACK_S = 600
_THRESHOLD_TYPE = {">": "gt", "<": "lt"}
#: Grafana templates see the reduced value as ``$values.B.Value``; Prometheus's is ``$value``.
_VALUE = re.compile(r"\$value\b")


def uid(alert: d.Alert) -> str:
    """``WsgiwatchSidecarDown`` -> ``wsgiwatch-sidecar-down`` (Grafana allows 40 chars)."""
    words = re.findall(r"[A-Z][a-z]*", alert.name)
    return "-".join(w.lower() for w in words)


def _expression(ref_id: str, model: dict[str, Any]) -> dict[str, Any]:
    return {
        "refId": ref_id,
        "relativeTimeRange": {"from": 0, "to": 0},
        "datasourceUid": "__expr__",
        "model": {"refId": ref_id, "datasource": {"type": "__expr__", "uid": "__expr__"}, **model},
    }


def rule(
    alert: d.Alert, settings: d.Settings, *, for_override: str | None = None
) -> dict[str, Any]:
    query = {
        "refId": "A",
        "relativeTimeRange": {"from": LOOKBACK_S, "to": 0},
        "datasourceUid": settings.datasource_uid,
        "model": {
            "refId": "A",
            "datasource": {"type": "prometheus", "uid": settings.datasource_uid},
            "editorMode": "code",
            "expr": d.query(alert, settings),
            "instant": True,
            "range": False,
            "legendFormat": "__auto",
            "intervalMs": 1000,
            "maxDataPoints": 43200,
        },
    }
    reduce = _expression(
        "B",
        {"type": "reduce", "expression": "A", "reducer": "last", "settings": {"mode": "dropNN"}},
    )
    threshold = _expression(
        "C",
        {
            "type": "threshold",
            "expression": "B",
            "conditions": [
                {
                    "evaluator": {
                        "type": _THRESHOLD_TYPE[alert.op],
                        "params": [alert.threshold],
                    }
                }
            ],
        },
    )
    annotations = {
        key: _VALUE.sub("$values.B.Value", text)
        for key, text in d.alert_annotations(alert, settings).items()
    }
    return {
        "uid": uid(alert),
        "title": alert.name,
        "condition": "C",
        "data": [query, reduce, threshold],
        "noDataState": "OK",
        "execErrState": "Error",
        "for": for_override if for_override is not None else alert.for_,
        "labels": d.alert_labels(alert),
        "annotations": annotations,
        "isPaused": False,
    }


def build(settings: d.Settings | None = None, *, for_override: str | None = None) -> dict[str, Any]:
    """The content of ``provisioning/alerting/wsgiwatch-alerts.yml``."""
    s = settings or d.Settings()
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": GROUP,
                "folder": FOLDER,
                "interval": INTERVAL,
                "rules": [rule(alert, s, for_override=for_override) for alert in d.ALERTS],
            }
        ],
    }
