"""``wsgiwatch grafana export DIR``: the dashboards, rules and provisioning from the package.

Writes the files shipped in the package (:mod:`wsgiwatch.grafana.export`) with the scrape job
and the Grafana data source filled in, and says where each one goes. Needs nothing beyond
the package: generating the files from code (``python -m wsgiwatch.grafana``) is what needs
the ``grafana`` extra.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from wsgiwatch.grafana import definitions as d
from wsgiwatch.grafana import export


def register(subparsers: Any) -> None:
    grafana = subparsers.add_parser(
        "grafana",
        help="the Grafana dashboards, Prometheus rules and provisioning wsgiwatch ships",
        description="The monitoring files that come with wsgiwatch.",
    )
    commands = grafana.add_subparsers(title="commands", dest="grafana_command", metavar="COMMAND")
    grafana.set_defaults(handler=lambda args, environ: _usage(grafana))
    parser = commands.add_parser(
        "export",
        help="write the dashboards, rules, rule tests and provisioning files into DIR",
        description="Write wsgiwatch's Grafana dashboards, Prometheus recording and alerting "
        "rules with their unit tests, Grafana-managed alerts and Grafana provisioning files "
        "into DIR, and say where each one goes. Exit status: 0, or 2 when a value cannot be "
        "used or DIR cannot be written.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="where to write (created)")
    parser.add_argument(
        "--job",
        default=d.DEFAULT_JOB,
        help="the Prometheus job (its job label) that scrapes the sidecars "
        f"(default: {d.DEFAULT_JOB})",
    )
    parser.add_argument(
        "--datasource-uid",
        default=d.DEFAULT_DATASOURCE_UID,
        help="the uid of the Prometheus data source in Grafana that the alert rules query "
        f"(default: {d.DEFAULT_DATASOURCE_UID}, which the provisioning file creates)",
    )
    parser.add_argument(
        "--datasource-name",
        default=d.DEFAULT_DATASOURCE_NAME,
        help="the name of the data source the provisioning file creates "
        f"(default: {d.DEFAULT_DATASOURCE_NAME})",
    )
    parser.add_argument(
        "--prometheus-url",
        default=d.DEFAULT_PROMETHEUS_URL,
        help="where Grafana reaches Prometheus, for the provisioned data source "
        f"(default: {d.DEFAULT_PROMETHEUS_URL})",
    )
    parser.set_defaults(handler=command)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def command(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        for option in export.OPTIONS:
            export.check_value(option, getattr(args, option.field))
        settings = d.Settings(**{o.field: getattr(args, o.field) for o in export.OPTIONS})
        written = export.write(args.dir, export.render(settings))
    except (export.ExportError, OSError) as exc:
        print(f"wsgiwatch grafana export: error: {exc}", file=sys.stderr)
        return 2
    for path, where in written:
        out.write(f"{path}\n    -> {where}\n")
    out.write(
        f"{len(written)} files. Prometheus must scrape the sidecars as job {args.job!r}; "
        "the dashboards pick the job and data source in their variables.\n"
    )
    return 0
