"""The monitoring files from the installed package alone: ``wsgiwatch grafana export DIR``.

The package carries, under ``wsgiwatch/grafana/data/``, every file that
``python -m wsgiwatch.grafana`` generates, rendered with a placeholder for each value a
deployment sets here: the scrape job, and the uid, name and URL of the Prometheus data source
in Grafana. Exporting puts the values in: neither a YAML library nor the Grafana SDK is
needed at run time. A value is accepted only in a form that YAML reads as the same plain
string wherever it lands, so that what is exported is byte for byte what the code would
generate with that value (tests/grafana/test_export.py holds the two equal for any accepted
value); anything else gets a clear error that says how to generate the files instead.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from wsgiwatch.grafana import definitions as d
from wsgiwatch.grafana.provisioning import DASHBOARDS_PATH

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

#: The values rendered into the shipped files, each replaced on export.
PLACEHOLDERS = d.Settings(
    job="__wsgiwatch_job__",
    datasource_uid="__wsgiwatch_datasource_uid__",
    datasource_name="__wsgiwatch_datasource_name__",
    prometheus_url="__wsgiwatch_prometheus_url__",
)
#: The shipped files' directory inside the package.
DATA = "data"

# What YAML 1.1 (PyYAML, and Go's yaml.v2 in Prometheus) resolves to something other than a
# string: numbers, dates, booleans, null. Wider than needed (1e5 is a string there), never
# narrower: a value it matches would be quoted by the generator, and the export would differ.
_NOT_A_STRING = re.compile(
    r"[-+.0-9_:]+|[-+]?0[xXbBoO][0-9a-fA-F_]+|(?i:y|n|yes|no|true|false|on|off|null)"
)


@dataclass(frozen=True)
class Option:
    """One value the export fills in: its command-line option, its ``Settings`` field, the
    form it must have (YAML plain-safe, no PromQL escaping needed) and that form in words."""

    flag: str
    field: str
    form: re.Pattern[str]
    says: str


OPTIONS = (
    Option(
        "--job",
        "job",
        re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*"),
        "letters, digits and _ . / - (not starting with . / -)",
    ),
    Option(
        "--datasource-uid",
        "datasource_uid",
        # Grafana's own rule for a uid: at most 40 of these characters.
        re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,39}"),
        "up to 40 letters, digits, _ and - (Grafana's rule for uids)",
    ),
    Option(
        "--datasource-name",
        "datasource_name",
        re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.()/ -]*[A-Za-z0-9_.()/-])?"),
        "letters, digits, spaces and _ . ( ) / - (no space at either end)",
    ),
    Option(
        "--prometheus-url",
        "prometheus_url",
        re.compile(r"https?://[A-Za-z0-9_.~/:?&=%,+-]*[A-Za-z0-9_./=%-]"),
        "an http:// or https:// URL without spaces, quotes, # or a trailing :",
    ),
)


class ExportError(ValueError):
    """A value that the shipped files cannot take; the message names the option."""


def check(settings: d.Settings) -> None:
    """ExportError unless every value has a form the shipped files can take, and the
    settings the files were rendered with (rate window, runbook) are the defaults."""
    default = d.Settings()
    if (settings.window, settings.runbook_base) != (default.window, default.runbook_base):
        raise ExportError(
            "the shipped files use the default rate window and runbook; for others, generate "
            "them: python -m wsgiwatch.grafana (needs: pip install 'wsgiwatch[grafana]')"
        )
    for option in OPTIONS:
        check_value(option, getattr(settings, option.field))


def check_value(option: Option, value: str) -> None:
    """ExportError unless ``value`` has a form the shipped files can take for ``option``."""
    if not option.form.fullmatch(value) or _NOT_A_STRING.fullmatch(value):
        raise ExportError(
            f"{option.flag} {value!r}: the shipped files take {option.says}, and not a "
            "number, date, yes/no/on/off/true/false or null; for other values generate "
            f"the files: python -m wsgiwatch.grafana {option.flag} VALUE --out DIR "
            "(needs: pip install 'wsgiwatch[grafana]')"
        )


def data_dir() -> Traversable:
    return resources.files("wsgiwatch.grafana") / DATA


def _walk(folder: Traversable, prefix: str = "") -> dict[str, str]:
    files: dict[str, str] = {}
    for entry in folder.iterdir():
        rel = f"{prefix}{entry.name}"
        if entry.is_dir():
            files.update(_walk(entry, rel + "/"))
        elif entry.is_file():
            files[rel] = entry.read_text(encoding="utf-8")
    return files


def shipped() -> dict[str, str]:
    """Relative path -> content of every shipped file, placeholders and all."""
    folder = data_dir()
    files = _walk(folder) if folder.is_dir() else {}
    if not files:
        raise ExportError("this wsgiwatch install has no monitoring files (wsgiwatch/grafana/data)")
    return files


def render(settings: d.Settings | None = None) -> dict[str, str]:
    """Relative path -> content: the shipped files with ``settings``' values filled in."""
    s = settings or d.Settings()
    check(s)
    replacements = {getattr(PLACEHOLDERS, o.field): getattr(s, o.field) for o in OPTIONS}
    pattern = re.compile("|".join(re.escape(p) for p in replacements))
    return {
        rel: pattern.sub(lambda m: replacements[m.group(0)], text)
        for rel, text in shipped().items()
    }


#: Where each kind of file goes, by the folder it is exported to (the first match counts).
DESTINATIONS = (
    ("prometheus/tests/", "unit tests of the rules, not a rule file: promtool test rules FILE"),
    ("prometheus/", "Prometheus: list it under rule_files: in prometheus.yml"),
    (
        "provisioning/alerting/",
        "Grafana: /etc/grafana/provisioning/alerting/ (Grafana-managed alerts, the same as "
        "the Prometheus rules' alerts: use one or the other)",
    ),
    (
        "provisioning/datasources/",
        "Grafana: /etc/grafana/provisioning/datasources/ (leave it out if your Grafana has "
        "its Prometheus: export with --datasource-uid set to that data source's uid)",
    ),
    (
        "provisioning/dashboards/",
        f"Grafana: /etc/grafana/provisioning/dashboards/ (loads the dashboards from "
        f"{DASHBOARDS_PATH})",
    ),
    (
        "dashboards/",
        f"Grafana: {DASHBOARDS_PATH}/ (or import it: Dashboards > New > Import)",
    ),
)


def destination(rel: str) -> str:
    for prefix, where in DESTINATIONS:
        if rel.startswith(prefix):
            return where
    raise LookupError(f"{rel}: no destination known; add its folder to DESTINATIONS")


def write(root: Path, files: Mapping[str, str]) -> list[tuple[Path, str]]:
    """Write every file under ``root``; returns each path with where it goes."""
    written = []
    for rel, text in sorted(files.items()):
        where = destination(rel)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append((path, where))
    return written
