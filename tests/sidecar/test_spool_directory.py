"""The spool directory removed under a real gunicorn and a real sidecar: the sidecar says so
(/healthz ``degraded`` with the reason, a gauge, one log event), keeps answering, and takes
the workers' spools up again once the directory is back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from apps.client import fetch
from structlog.testing import capture_logs
from support.servers import gunicorn
from support.sidecar_support import scrape, value

from wsgiwatch.sidecar.monitor import Monitor
from wsgiwatch.sidecar.server import SidecarServer
from wsgiwatch.spool.reader import list_spools


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def healthz(url: str) -> tuple[int, dict[str, Any]]:
    with urllib.request.urlopen(url + "/healthz", timeout=5) as reply:
        return reply.status, json.loads(reply.read())


def test_the_directory_removed_and_back(spool_dir: str) -> None:
    with gunicorn("apps.probe:application", spool_dir, workers=1) as server:
        pid = fetch(server.port, "/r/before").pid
        monitor = Monitor(spool_dir, use_kernel=False)
        with capture_logs() as logs, SidecarServer(monitor, port=0, poll_interval_s=0.1) as side:
            wait_until(lambda: healthz(side.url)[1]["workers"] == 1, "the worker seen")
            assert healthz(side.url)[1]["status"] == "ok"

            shutil.rmtree(spool_dir)
            wait_until(lambda: healthz(side.url)[1]["status"] == "degraded", "degraded")
            status, facts = healthz(side.url)
            assert status == 200  # polls still succeed: degraded, not stale
            (reason,) = facts["degraded_reasons"]
            assert spool_dir in reason and "no worker is recorded" in reason
            m = scrape(monitor)
            assert value(m, "wsgiwatch_spool_directory_present") == 0
            assert value(m, "wsgiwatch_workers") == 0
            # The app is untouched: it still answers.
            assert fetch(server.port, "/r/during").status == 200

            # A new worker (the old one's spool went with the directory) makes its spool,
            # and the directory with it.
            os.kill(pid, signal.SIGKILL)

            def new_worker() -> bool:
                try:
                    return fetch(server.port, "/r/after").pid != pid
                except OSError:  # accepted by the worker as it was killed: try again
                    return False

            wait_until(new_worker, "a new worker")
            wait_until(lambda: healthz(side.url)[1]["status"] == "ok", "recovered")
            assert len(list_spools(spool_dir)) == 1
            assert value(scrape(monitor), "wsgiwatch_spool_directory_present") == 1
            wait_until(
                lambda: "/r/after" in [r["route"] for r in monitor.recent_requests()["requests"]],
                "the new worker's requests counted",
            )
        names = [e["event"] for e in logs if e["event"].startswith("spool.directory")]
        assert names == ["spool.directory_missing", "spool.directory_back"]  # once each


def test_workers_that_lose_the_directory_are_followed_again(spool_dir: str) -> None:
    """Removed under load: each worker notices its file is gone and makes a new one (the
    directory with it); the sidecar follows the new files and counts their requests."""
    with gunicorn("apps.probe:application", spool_dir, workers=1) as server:
        monitor = Monitor(spool_dir, use_kernel=False)
        with SidecarServer(monitor, port=0, poll_interval_s=0.1) as side:
            fetch(server.port, "/r/before")
            wait_until(lambda: healthz(side.url)[1]["workers"] == 1, "the worker seen")
            shutil.rmtree(spool_dir)
            wait_until(lambda: healthz(side.url)[1]["status"] == "degraded", "degraded")
            n = 0

            def counted_again() -> bool:
                nonlocal n
                n += 1
                assert fetch(server.port, f"/r/after{n}").status == 200
                routes = {r["route"] for r in monitor.recent_requests()["requests"]}
                return any(route.startswith("/r/after") for route in routes)

            wait_until(counted_again, "requests counted from the new spool")
            wait_until(lambda: healthz(side.url)[1]["status"] == "ok", "recovered")
            assert value(scrape(monitor), "wsgiwatch_workers") == 1


def test_every_request_is_counted_or_counted_lost_across_a_removed_spool(spool_dir: str) -> None:
    with gunicorn("apps.probe:application", spool_dir, workers=1) as server:
        monitor = Monitor(spool_dir, use_kernel=False)
        served = 0

        def get() -> None:
            nonlocal served
            assert fetch(server.port, f"/r/n{served}").status == 200
            served += 1

        with SidecarServer(monitor, port=0, poll_interval_s=0.1):
            for _ in range(20):
                get()
            (path,) = list_spools(spool_dir)
            os.unlink(path)  # under the worker, with records the sidecar may not have read

            def told() -> bool:
                get()  # the worker looks for its file at most once a second, as it serves
                return value(scrape(monitor), "wsgiwatch_spools_lost_total") == 1

            wait_until(told, "the loss told by the worker's new spool")
            # It settles the records lost with the old file a second later, as it serves.
            settled = time.monotonic() + 1.5
            while time.monotonic() < settled:
                get()
                time.sleep(0.05)

            def accounted() -> bool:
                m = scrape(monitor)
                counted = sum(s.value for s in m["wsgiwatch_requests_total"])
                dropped = value(m, "wsgiwatch_spool_records_dropped_total")
                return counted + dropped == served

            wait_until(accounted, "served = counted + dropped")
