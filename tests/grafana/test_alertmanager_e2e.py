"""End to end: a real head-of-line stall reaches a webhook through Prometheus and Alertmanager.

gunicorn gthread (2 workers x 1 thread) serves the test app; the real ``wsgiwatch sidecar``
watches it; Debian's Prometheus scrapes the sidecar every second and evaluates a test copy
of our rules (generated from the same definitions, with ``for: 1s`` and a 10 s rate window
so that the alert fires and resolves in seconds); Debian's Alertmanager groups and sends
to a webhook served by this test. The blocking alert must arrive FIRING, then RESOLVED.

The stack and the load are tests/hol_scenario.py's: gthread 2 x 1 with the accept hook, two
slow requests then six fast ones, which blocks some request in every run.

A counter series is born at its first non-zero value and ``rate()`` cannot see that first
step (Prometheus 2.42 has no created timestamps), so a first run of the scenario creates
the blocked-requests series. Once its increments have left the rate window and its alert
(if any) has ended, the second run is the one measured: from the moment the first request
that ended up blocked was sent to the webhook's receipt of the FIRING notification.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from support.hol_scenario import BLOCKED_IF_LATE_S, Outcome, stack, start_slow_then_fast, wait_until
from support.prom import Prometheus, prometheus
from support.servers import free_port

from wsgiwatch.cli.process_group import stop_group
from wsgiwatch.grafana import artifacts, prometheus_rules
from wsgiwatch.grafana.definitions import RECORDINGS_BY_KEY, Settings, record_name

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
ALERT = "WsgiwatchHeadOfLineBlocking"
TEST_WINDOW = "10s"
TEST_FOR = "1s"
TEST_SETTINGS = Settings(window=TEST_WINDOW)
BLOCKED_RATE = record_name(RECORDINGS_BY_KEY["blocked_rate"], TEST_SETTINGS)


@dataclass
class Notification:
    received: float  # time.monotonic()
    payload: dict[str, Any]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.payload["alerts"] if a["labels"]["alertname"] == name]


@dataclass
class Webhook:
    url: str
    notifications: list[Notification] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(
        self, match: Callable[[Notification], bool], after: float, timeout: float
    ) -> Notification:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for n in self.notifications:
                    if n.received >= after and match(n):
                        return n
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [
                        (n.payload["status"], n.payload["groupLabels"]) for n in self.notifications
                    ]
                    raise AssertionError(f"no matching notification in {timeout} s; got {seen}")
                self.arrived.wait(left)


@contextlib.contextmanager
def webhook() -> Iterator[Webhook]:
    """A webhook receiver on 127.0.0.1 that keeps every notification with its arrival time."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received = time.monotonic()
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with hook.arrived:
                hook.notifications.append(Notification(received, json.loads(body)))
                hook.arrived.notify_all()
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook = Webhook(f"http://127.0.0.1:{server.server_address[1]}/alerts")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def alertmanager(workdir: Path, receiver_url: str) -> Iterator[str]:
    """Debian's Alertmanager on 127.0.0.1 (no cluster port), sending everything to the
    webhook at once: 1 s group wait, group interval and repeat interval. Yields host:port."""
    port = free_port()
    config = {
        "global": {"resolve_timeout": "5s"},
        "route": {
            "receiver": "webhook",
            "group_by": ["alertname", "instance"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1s",
        },
        "receivers": [
            {"name": "webhook", "webhook_configs": [{"url": receiver_url, "send_resolved": True}]}
        ],
    }
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={path}",
            f"--storage.path={workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"alertmanager exited {proc.returncode}: {err[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(proc)
        if proc.stderr:
            proc.stderr.close()


def slow_then_fast(port: int) -> list[Outcome]:
    """hol_scenario's load, returning when all its requests have finished."""
    return start_slow_then_fast(port).join()


def blocked(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.latency_s - o.service_s > BLOCKED_IF_LATE_S]


def alert_state(prom: Prometheus) -> str:
    """inactive, pending or firing: the blocking alert as Prometheus sees it now."""
    states = [
        a["state"]
        for a in prom.api("/api/v1/alerts")["alerts"]
        if a["labels"]["alertname"] == ALERT
    ]
    return "firing" if "firing" in states else (states[0] if states else "inactive")


def evaluated_after(prom: Prometheus, wall_time: float) -> bool:
    """Every rule group of ours has been evaluated since ``wall_time`` (time.time())."""
    groups = prom.api("/api/v1/rules")["groups"]
    stamps = [
        # RFC 3339 with nanoseconds; fromisoformat takes at most microseconds.
        re.sub(r"(\.\d{6})\d*", r"\1", g["lastEvaluation"]).replace("Z", "+00:00")
        for g in groups
    ]
    return bool(stamps) and all(
        datetime.fromisoformat(stamp).timestamp() > wall_time for stamp in stamps
    )


def test_blocking_alert_reaches_the_webhook_then_resolves(spool_dir: str, tmp_path: Path) -> None:
    rules = tmp_path / "wsgiwatch-rules.yml"
    test_copy = prometheus_rules.build(TEST_SETTINGS, for_override=TEST_FOR)
    rules.write_text(artifacts.to_yaml(test_copy))
    with (
        webhook() as hook,
        alertmanager(tmp_path, hook.url) as am,
        stack(spool_dir) as s,
        prometheus(
            [s.sidecar_url.removeprefix("http://")], rule_files=[str(rules)], alertmanager=am
        ) as prom,
    ):
        prom.wait_for("up", lambda v: v == 1)
        loaded = {g["name"]: g["rules"] for g in prom.api("/api/v1/rules")["groups"]}
        assert {r["name"] for r in loaded["wsgiwatch-alerts"]} >= {ALERT}

        # First run: creates the series (see the module docstring). Then wait until the
        # rules have seen its final counts, its increments have left the rate window and
        # its alert (if any) has ended, so that only the second run can fire the alert.
        first = slow_then_fast(s.server.port)
        assert blocked(first), "the first run blocked nothing"
        prom.wait_for("sum(wsgiwatch_requests_total)", lambda v: v == len(first))
        counted = time.time()
        wait_until(lambda: evaluated_after(prom, counted + 1), 10, "rules ran on final counts")
        wait_until(
            lambda: alert_state(prom) == "inactive" and prom.value(f"sum({BLOCKED_RATE})") == 0,
            30,
            "the first run's blocking left the rate window",
        )

        # Second run: measured. Prometheus is watched while the requests run.
        runs: list[list[Outcome]] = []
        load = threading.Thread(target=lambda: runs.append(slow_then_fast(s.server.port)))
        load.start()
        firing_seen: list[float] = []

        def firing() -> bool:
            if alert_state(prom) != "firing":
                return False
            firing_seen.append(time.monotonic())
            return True

        wait_until(firing, 30, "Prometheus fires the alert")
        load.join(20)
        [sent] = runs
        victims = blocked(sent)
        assert victims, "the second run blocked nothing"
        stall_start = min(v.started for v in victims)
        fired = hook.wait_for(
            lambda n: n.payload["status"] == "firing" and bool(n.alerts(ALERT)),
            after=stall_start,
            timeout=30,
        )
        [alert] = fired.alerts(ALERT)
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["instance"] == s.sidecar_url.removeprefix("http://")
        assert alert["annotations"]["runbook_url"].endswith("#wsgiwatchheadoflineblocking")
        assert "head-of-line blocked" in alert["annotations"]["description"]

        resolved = hook.wait_for(
            lambda n: n.payload["status"] == "resolved" and bool(n.alerts(ALERT)),
            after=fired.received,
            timeout=40,
        )
        last_victim_done = max(v.started + v.latency_s for v in victims)
        print(
            f"\nstall start -> webhook FIRING: {fired.received - stall_start:.2f} s"
            f" (victims all answered after {last_victim_done - stall_start:.2f} s;"
            f" Prometheus firing after {firing_seen[0] - stall_start:.2f} s);"
            f" RESOLVED {resolved.received - fired.received:.2f} s later"
            f" (rate window {TEST_WINDOW}, for {TEST_FOR}); {len(victims)} of {len(sent)}"
            " requests blocked"
        )
