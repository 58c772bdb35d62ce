"""A real Prometheus (Debian's package) for tests: scrapes given targets, answers queries."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from support.servers import free_port
from wsgiwatch.cli.process_group import stop_group

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@dataclass
class Prometheus:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; a list of {metric, value}."""
        return list(self.api("/api/v1/query", query=expr)["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when it has no series."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, predicate: Any, timeout: float = 30.0) -> float:
        """Poll an expression until ``predicate(value)``; return the value."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            last = self.value(expr)
            if last is not None and predicate(last):
                return last
            time.sleep(0.25)
        raise AssertionError(f"{expr} never satisfied the condition; last value {last}")

    def targets_up(self) -> bool:
        active = self.api("/api/v1/targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)


@contextlib.contextmanager
def prometheus(
    targets: Sequence[str],
    *,
    scrape_interval: str = "1s",
    rule_files: Sequence[str] = (),
    alertmanager: str | None = None,
) -> Iterator[Prometheus]:
    """Run Prometheus on 127.0.0.1 scraping ``targets`` (host:port) until the block ends."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="wsgiwatch-prom-") as tmp:
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "wsgiwatch", "static_configs": [{"targets": list(targets)}]}
            ],
            "rule_files": list(rule_files),
        }
        if alertmanager:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]
            }
        path = os.path.join(tmp, "prometheus.yml")
        with open(path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        prom = Prometheus(port, proc)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"prometheus exited {proc.returncode}: {err[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield prom
        finally:
            stop_group(proc)
            if proc.stderr:
                proc.stderr.close()
