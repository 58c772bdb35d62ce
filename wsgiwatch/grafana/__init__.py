"""Monitoring as code: Prometheus rules, Grafana alert and provisioning files, dashboards.

Everything under the repository's ``grafana/`` directory is generated from this package by
``python -m wsgiwatch.grafana`` (``--check`` fails when a committed file is stale), which
needs the ``grafana`` extra. Alerts and recording rules are defined once, in
:mod:`wsgiwatch.grafana.definitions`; the Prometheus rule file and the Grafana-managed alert
rules are both rendered from those definitions. The package ships the same files, with
placeholders, under ``data/``: ``wsgiwatch grafana export DIR`` (:mod:`.export`) fills them
in and writes them with nothing beyond the package installed.
"""
