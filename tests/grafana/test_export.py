"""``wsgiwatch grafana export``: the shipped files, equal to what the code generates.

The package's copy (wsgiwatch/grafana/data) holds placeholders; an export fills them in
without YAML or the Grafana SDK. For any value the export accepts, its files must be byte for
byte what ``artifacts.generate`` makes with that value (a property test); with the defaults,
they are the files committed under grafana/. promtool runs an export's rule tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgiwatch.grafana import __main__ as generate_main
from wsgiwatch.grafana import artifacts, export
from wsgiwatch.grafana.definitions import Settings

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
FORMS = {o.field: o.form for o in export.OPTIONS}


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsgiwatch.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_export_with_the_defaults_writes_the_committed_files_and_says_where_each_goes(
    tmp_path: Path,
) -> None:
    result = cli("grafana", "export", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == tree(GRAFANA)
    lines = result.stdout.splitlines()
    for rel in tree(GRAFANA):
        at = lines.index(str(tmp_path / "out" / rel))
        assert lines[at + 1] == f"    -> {export.destination(rel)}"
    assert "under rule_files:" in result.stdout
    assert "/etc/grafana/provisioning/alerting/" in result.stdout


def test_the_package_copy_is_current() -> None:
    """Without --out, the generator checks grafana/ and the package's copy."""
    result = subprocess.run(
        [sys.executable, "-m", "wsgiwatch.grafana", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"under {generate_main.PACKAGE_DATA} are up to date" in result.stdout


def test_a_file_no_longer_generated_in_the_package_copy_is_named(tmp_path: Path) -> None:
    shutil.copytree(generate_main.PACKAGE_DATA, tmp_path / "data")
    (tmp_path / "data" / "dashboards" / "old.json").write_text("{}\n")
    files = artifacts.generate(export.PLACEHOLDERS)
    assert generate_main._unexpected(tmp_path / "data", files) == [
        f"{tmp_path / 'data' / 'dashboards' / 'old.json'}: no longer generated"
    ]


def test_every_generated_file_has_a_destination() -> None:
    for rel in artifacts.generate():
        assert export.destination(rel)


def accepted(field: str) -> st.SearchStrategy[str]:
    def ok(value: str) -> bool:
        try:
            export.check(Settings(**{field: value}))
        except export.ExportError:
            return False
        return True

    return st.from_regex(FORMS[field], fullmatch=True).filter(ok)


@settings(max_examples=150, deadline=None)
@given(
    job=accepted("job"),
    uid=accepted("datasource_uid"),
    name=accepted("datasource_name"),
    url=accepted("prometheus_url"),
)
def test_any_accepted_value_exports_what_the_code_generates(
    job: str, uid: str, name: str, url: str
) -> None:
    s = Settings(job=job, datasource_uid=uid, datasource_name=name, prometheus_url=url)
    assert export.render(s) == artifacts.generate(s)


@pytest.mark.parametrize(
    "values",
    [
        # What deployments use: a Prometheus Operator job, Grafana's own uids, a URL with a path.
        {"job": "serviceMonitor/web/app-0", "datasource_uid": "PBFA97CFB590B2093"},
        {"job": "kubernetes-pods", "datasource_uid": "8sQ2hwK4k", "datasource_name": "Mimir"},
        {"prometheus_url": "https://mimir.example:8080/prometheus", "job": "app.v2"},
    ],
)
def test_real_world_values_export_what_the_code_generates(values: dict[str, str]) -> None:
    s = Settings(**values)
    assert export.render(s) == artifacts.generate(s)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--job", "yes"),  # YAML 1.1 reads a boolean
        ("--job", "2024"),  # a number
        ("--job", 'a"b'),  # would need PromQL escaping
        ("--job", ""),
        ("--datasource-uid", "0x1f"),
        ("--datasource-uid", "a" * 41),  # longer than Grafana allows
        ("--datasource-name", "Prometheus: prod"),  # ": " is YAML syntax
        ("--prometheus-url", "prometheus:9090"),  # no scheme
    ],
)
def test_a_value_the_shipped_files_cannot_take_is_refused_in_one_line(
    tmp_path: Path, flag: str, value: str
) -> None:
    result = cli("grafana", "export", tmp_path / "out", flag, value)
    assert result.returncode == 2
    assert result.stderr.startswith(f"wsgiwatch grafana export: error: {flag} {value!r}: ")
    assert result.stderr.count("\n") == 1
    assert "python -m wsgiwatch.grafana" in result.stderr and "wsgiwatch[grafana]" in result.stderr
    assert not (tmp_path / "out").exists()


def test_promtool_runs_the_rule_tests_of_an_export_for_another_job(tmp_path: Path) -> None:
    result = cli("grafana", "export", tmp_path, "--job", "shop-web")
    assert result.returncode == 0, result.stderr
    rules = (tmp_path / artifacts.RULES).read_text()
    assert 'job="shop-web"' in rules and 'job="wsgiwatch"' not in rules
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(tmp_path / artifacts.RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", str(tmp_path / artifacts.RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
