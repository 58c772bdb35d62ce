"""The generated Prometheus rules and Grafana alert rules: valid, tested, current, in step.

promtool (Debian's, with Prometheus 2.42) checks the rule file and runs the generated unit
tests. The Grafana provisioning is read back as YAML and held to the Prometheus rule file:
expanding the recorded series in a Prometheus alert must give exactly Grafana's query and
threshold, and the unit tests run Grafana's query too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from wsgiwatch.grafana import artifacts, definitions, grafana_alerts, prometheus_rules
from wsgiwatch.grafana.definitions import Settings

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
ALERT_NAMES = [a.name for a in definitions.ALERTS]
OPS = {"gt": ">", "lt": "<"}


def load(rel: str) -> Any:
    return yaml.safe_load((GRAFANA / rel).read_text())


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def alert_rules(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_committed_files_are_current() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wsgiwatch.grafana", "--check", "--out", str(GRAFANA)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_mode_names_a_stale_file_and_writing_fixes_it(tmp_path: Path) -> None:
    out = tmp_path / "grafana"
    shutil.copytree(GRAFANA, out)
    rules = out / artifacts.RULES
    rules.write_text(rules.read_text().replace("for: 5m", "for: 1m"))
    (out / artifacts.DATASOURCES).unlink()
    check = [sys.executable, "-m", "wsgiwatch.grafana", "--check", "--out", str(out)]
    stale = subprocess.run(check, capture_output=True, text=True, timeout=60, check=False)
    assert stale.returncode == 1
    assert f"{rules} (committed)" in stale.stderr and "-    for: 1m" in stale.stderr
    assert f"{out / artifacts.DATASOURCES}: missing" in stale.stderr
    write = [sys.executable, "-m", "wsgiwatch.grafana", "--out", str(out)]
    subprocess.run(write, capture_output=True, timeout=60, check=True)
    assert subprocess.run(check, capture_output=True, timeout=60, check=False).returncode == 0


def test_promtool_checks_the_rule_file_and_the_test_copy(tmp_path: Path) -> None:
    committed = promtool("check", "rules", GRAFANA / artifacts.RULES)
    assert committed.returncode == 0, committed.stdout + committed.stderr
    assert f"SUCCESS: {len(definitions.RECORDINGS) + len(ALERT_NAMES)} rules found" in (
        committed.stdout
    )
    copy = tmp_path / "test-copy.yml"
    copy.write_text(
        artifacts.to_yaml(prometheus_rules.build(Settings(window="10s"), for_override="1s"))
    )
    checked = promtool("check", "rules", copy)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", GRAFANA / artifacts.RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_show_every_alert_before_during_and_after() -> None:
    """Each alert: not firing before, while pending, firing, not firing after; and the
    Grafana form of its query checked against the recorded form at the firing time."""
    tests = load(artifacts.RULE_TESTS)["tests"]
    for name in ALERT_NAMES:
        [group] = [t for t in tests if t["name"].startswith(name + ":")]
        evals = [(t["eval_time"], bool(t["exp_alerts"])) for t in group["alert_rule_test"]]
        assert all(t["alertname"] == name for t in group["alert_rule_test"])
        firing = [i for i, (_, fires) in enumerate(evals) if fires]
        assert firing, f"{name} never fires in its test"
        assert firing[0] >= 2, f"{name}: no quiet and pending checks before it fires: {evals}"
        assert not evals[-1][1], f"{name}: does not resolve in its test"
        assert len(group["promql_expr_test"]) == 2 * len(firing)


def test_unit_tests_fail_without_for(tmp_path: Path) -> None:
    """The "pending, not firing yet" checks mean something: with every ``for:`` removed,
    every alert's test fails."""
    (tmp_path / "tests").mkdir()
    test_file = tmp_path / "tests" / "rules.test.yml"
    shutil.copy(GRAFANA / artifacts.RULE_TESTS, test_file)
    no_for = prometheus_rules.build(for_override="0s")
    (tmp_path / Path(artifacts.RULES).name).write_text(artifacts.to_yaml(no_for))
    result = promtool("test", "rules", test_file)
    assert result.returncode != 0
    for name in ALERT_NAMES:
        assert f"alertname: {name}," in result.stdout + result.stderr, name


def _inline(expr: str, recordings: dict[tuple[str, frozenset[tuple[str, str]]], str]) -> str:
    """Replace each recorded series selector by its rule's expression, in parentheses."""
    selector = re.compile(r"\b([a-z_]+:[a-z0-9_:]+)\{([^}]*)\}")

    def sub(match: re.Match[str]) -> str:
        matchers = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        labels = frozenset((k, v) for k, v in matchers if k != "job")
        return "(" + _inline(recordings[(match.group(1), labels)], recordings) + ")"

    return selector.sub(sub, expr)


def test_grafana_alerts_are_the_prometheus_alerts() -> None:
    prom = load(artifacts.RULES)
    recordings = {
        (r["record"], frozenset(r.get("labels", {}).items())): r["expr"]
        for g in prom["groups"]
        for r in g["rules"]
        if "record" in r
    }
    prom_alerts = alert_rules(prom)
    grafana = load(artifacts.ALERTING)
    assert grafana["apiVersion"] == 1
    [group] = grafana["groups"]
    rules = {r["title"]: r for r in group["rules"]}
    assert list(rules) == list(prom_alerts) == ALERT_NAMES
    [datasource] = load(artifacts.DATASOURCES)["datasources"]
    equivalence_tests = {
        t["expr"]
        for g in load(artifacts.RULE_TESTS)["tests"]
        for t in g.get("promql_expr_test", [])
    }
    uids = set()
    for name, rule in rules.items():
        ours = prom_alerts[name]
        assert rule["for"] == ours["for"]
        assert rule["labels"] == ours["labels"]
        assert rule["annotations"]["runbook_url"] == ours["annotations"]["runbook_url"]
        assert rule["annotations"]["summary"] == ours["annotations"]["summary"].replace(
            "$value", "$values.B.Value"
        )
        assert rule["noDataState"] == "OK" and rule["condition"] == "C"
        uids.add(rule["uid"])
        assert re.fullmatch(r"[a-z0-9-]{1,40}", rule["uid"])
        query, reduce, threshold = rule["data"]
        assert query["datasourceUid"] == datasource["uid"] == query["model"]["datasource"]["uid"]
        assert datasource["type"] == query["model"]["datasource"]["type"] == "prometheus"
        assert query["model"]["instant"] is True
        assert (reduce["refId"], reduce["model"]["type"], reduce["model"]["expression"]) == (
            "B",
            "reduce",
            "A",
        )
        assert (threshold["refId"], threshold["model"]["expression"]) == ("C", "B")
        [cond] = threshold["model"]["conditions"]
        op, [limit] = OPS[cond["evaluator"]["type"]], cond["evaluator"]["params"]
        # Grafana: the value (first line), then any filter; Prometheus: value op threshold.
        value, _, also = query["model"]["expr"].partition("\n")
        expected = f"{value} {op} {limit:g}" + (f"\n{also}" if also else "")
        assert _inline(ours["expr"], recordings) == expected, name
        assert f"({expected}) * 1" in equivalence_tests, name
    assert len(uids) == len(rules)


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_to_its_runbook_section() -> None:
    doc = (REPO / "docs" / "alerts.md").read_text()
    anchors = {_github_anchor(h) for h in re.findall(r"^## (.+)$", doc, re.MULTILINE)}
    for name, rule in alert_rules(load(artifacts.RULES)).items():
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base.endswith("/docs/alerts.md") and anchor in anchors, (name, url)
        for key in ("summary", "description"):
            assert rule["annotations"][key], (name, key)


def test_test_copy_changes_only_for_and_window() -> None:
    normal = prometheus_rules.build()
    copy = prometheus_rules.build(Settings(window="10s"), for_override="1s")
    for ours, theirs in zip(normal["groups"], copy["groups"], strict=True):
        for a, b in zip(ours["rules"], theirs["rules"], strict=True):
            assert b.get("for", "1s") == "1s"
            assert a.get("record", "").replace("rate5m", "rate10s") == b.get("record", "")
            assert a["expr"].replace("5m", "10s") == b["expr"]
    with pytest.raises(ValueError):
        prometheus_rules.build(for_override="soon")


def test_job_label_is_configurable() -> None:
    shop = Settings(job="shop")
    rules = prometheus_rules.build(shop)
    grafana = grafana_alerts.build(shop)
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    exprs += [r["data"][0]["model"]["expr"] for r in grafana["groups"][0]["rules"]]
    for expr in exprs:
        jobs = re.findall(r'job="([^"]*)"', expr)
        assert jobs and set(jobs) == {"shop"}, expr
    assert 'absent(up{job="shop"})' in alert_rules(rules)["WsgiwatchSidecarAbsent"]["expr"]
    odd = Settings(job='a"b')
    down = next(a for a in definitions.ALERTS if a.name == "WsgiwatchSidecarDown")
    assert 'up{job="a\\"b"}' in definitions.condition(down, odd)
