"""Grafana provisioning files for the Prometheus data source and the dashboards folder.

Grafana reads these from ``/etc/grafana/provisioning/{datasources,dashboards}/`` at start.
The alert rules (:mod:`wsgiwatch.grafana.grafana_alerts`) query the data source by its uid,
so the uid is fixed here; the dashboards pick theirs with a ``$datasource`` variable.
"""

from __future__ import annotations

from typing import Any

#: The Prometheus data source's uid: Grafana-managed alert rules name it.
DATASOURCE_UID = "wsgiwatch-prometheus"
DATASOURCE_NAME = "Prometheus (wsgiwatch)"
#: Where Prometheus is, as seen from Grafana (a compose service name by default).
PROMETHEUS_URL = "http://prometheus:9090"
#: Where the committed ``grafana/dashboards/*.json`` are mounted in the Grafana container.
DASHBOARDS_PATH = "/var/lib/grafana/dashboards/wsgiwatch"
FOLDER = "wsgiwatch"


def datasources(url: str = PROMETHEUS_URL) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": DATASOURCE_NAME,
                "uid": DATASOURCE_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": url,
                # The scrape interval of examples/prometheus.yml: Grafana's smallest query step.
                "jsonData": {"httpMethod": "POST", "timeInterval": "5s"},
            }
        ],
    }


def dashboards(path: str = DASHBOARDS_PATH) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "wsgiwatch",
                "orgId": 1,
                "folder": FOLDER,
                "type": "file",
                "disableDeletion": False,
                # The JSON is generated: edits in the UI would be lost on the next deploy.
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {"path": path, "foldersFromFilesStructure": False},
            }
        ],
    }
