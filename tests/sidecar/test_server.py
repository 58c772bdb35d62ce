"""The sidecar's HTTP side and poll loop, against a real server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import structlog
from support.fake_monitor import INCIDENTS, RECENT, STATE, FakeMonitor
from support.hol_scenario import wait_until

from wsgiwatch.sidecar.poll_loop import STALE_AFTER_INTERVALS, PollLoop, next_deadline
from wsgiwatch.sidecar.server import SidecarServer, serve

OPENMETRICS = "application/openmetrics-text;version=1.0.0"
# What Prometheus 2.x sends when scraping.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> dict[str, object]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


def request(
    server: SidecarServer,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    timeout: float = 5.0,
) -> Reply:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


@pytest.fixture
def start() -> Iterator[Callable[..., SidecarServer]]:
    servers: list[SidecarServer] = []

    def start(monitor: FakeMonitor, poll_interval_s: float = 0.1, host: str = "127.0.0.1"):
        server = SidecarServer(monitor, host=host, port=0, poll_interval_s=poll_interval_s)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


# -- /metrics -----------------------------------------------------------------------------


def test_metrics_default_is_prometheus_text_004(start):
    server = start(FakeMonitor())
    reply = request(server, "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'wsgiwatch_hol_blocked_requests_total{blocker_route="/slow"} 3.0' in reply.text
    assert "wsgiwatch_sidecar_poll_errors_total 0.0" in reply.text
    assert "# EOF" not in reply.text
    assert "Content-Encoding" not in reply.headers
    # A private registry: none of the global registry's default collectors.
    assert "python_info" not in reply.text
    assert "process_cpu_seconds_total" not in reply.text


@pytest.mark.parametrize("accept", [OPENMETRICS, PROMETHEUS_ACCEPT])
def test_metrics_openmetrics_by_content_negotiation(start, accept):
    server = start(FakeMonitor())
    reply = request(server, "/metrics", {"Accept": accept})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert reply.text.endswith("# EOF\n")
    assert 'wsgiwatch_hol_blocked_requests_total{blocker_route="/slow"} 3.0' in reply.text
    assert "Accept" in reply.headers["Vary"]


def test_metrics_gzip_when_accepted(start):
    server = start(FakeMonitor())
    reply = request(server, "/metrics", {"Accept-Encoding": "gzip"})
    assert reply.status == 200
    assert reply.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in reply.headers["Vary"]
    text = gzip.decompress(reply.body).decode()
    assert 'wsgiwatch_hol_blocked_requests_total{blocker_route="/slow"} 3.0' in text

    refused = request(server, "/metrics", {"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in refused.headers
    assert refused.text.startswith("# HELP")


def test_metrics_head_has_no_body(start):
    server = start(FakeMonitor())
    reply = request(server, "/metrics", method="HEAD")
    assert reply.status == 200
    assert reply.body == b""


def test_scrape_failure_is_500_logged_and_server_survives(start):
    monitor = FakeMonitor()
    monitor.fail_collect = True
    server = start(monitor)
    with structlog.testing.capture_logs() as logs:
        reply = request(server, "/metrics")
    assert reply.status == 500
    assert [e["event"] for e in logs] == ["sidecar.scrape_failed"]
    assert logs[0]["log_level"] == "error"
    monitor.fail_collect = False
    assert request(server, "/metrics").status == 200


# -- /healthz -----------------------------------------------------------------------------


def test_healthz_ok_merges_monitor_health_and_loop_state(start):
    monitor = FakeMonitor("/spools")
    server = start(monitor)
    wait_until(lambda: monitor.polls >= 1)
    reply = request(server, "/healthz")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    facts = reply.json()
    assert facts["status"] == "ok"
    assert facts["built_with"]["spool_dir"] == "/spools"  # from monitor.health()
    assert facts["successful_polls"] >= 1
    assert facts["poll_failures"] == 0
    assert facts["last_poll_error"] is None
    assert 0 <= facts["seconds_since_successful_poll"] < 5


def test_healthz_503_when_polls_keep_failing_then_recovers(start):
    monitor = FakeMonitor(fail_polls=True)
    server = start(monitor, poll_interval_s=0.05)
    wait_until(lambda: request(server, "/healthz").status == 503)
    facts = request(server, "/healthz").json()
    assert facts["status"] == "stale"
    assert facts["last_poll_error"] == "RuntimeError: spool exploded"
    assert facts["poll_failures"] >= STALE_AFTER_INTERVALS
    monitor.fail_polls = False
    wait_until(lambda: request(server, "/healthz").status == 200)


def test_healthz_503_when_health_raises(start):
    monitor = FakeMonitor()
    monitor.fail_health = True
    server = start(monitor)
    wait_until(lambda: monitor.polls >= 1)
    with structlog.testing.capture_logs() as logs:
        reply = request(server, "/healthz")
    assert reply.status == 503
    assert reply.json()["health_error"] == "OSError: health exploded"
    assert [e["event"] for e in logs] == ["sidecar.health_failed"]


def test_staleness_is_three_intervals_since_last_success():
    loop = PollLoop(FakeMonitor(), interval_s=1.0)
    assert not loop.healthy(now=0.0)  # not started
    assert loop.status()["status"] == "stopped"
    loop.started_at = 100.0
    assert loop.healthy(now=102.9)  # still starting: no poll has succeeded yet
    assert not loop.healthy(now=103.1)
    loop.last_success = 200.0
    assert loop.healthy(now=203.0)
    assert not loop.healthy(now=203.01)


# -- /api/incidents and the rest ------------------------------------------------------------


def test_incidents_json_with_limit(start):
    server = start(FakeMonitor())
    assert request(server, "/api/incidents").json() == {"incidents": INCIDENTS}
    assert request(server, "/api/incidents?limit=2").json() == {"incidents": INCIDENTS[:2]}
    assert request(server, "/api/incidents?limit=0").json() == {"incidents": []}
    for bad in ("abc", "-1", "1001", ""):
        reply = request(server, f"/api/incidents?limit={bad}")
        assert reply.status == 400, bad
        assert "limit" in reply.json()["error"]


def test_requests_json_for_a_window(start):
    monitor = FakeMonitor()
    server = start(monitor)
    reply = request(server, "/api/requests")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == {
        "now_ns": STATE["now_ns"],
        "wall_offset_ns": STATE["wall_offset_ns"],
        "requests": RECENT,
    }
    # 0.9995 s back from now_ns (10 s) leaves only the request that ended at 9.001 s.
    narrow = request(server, "/api/requests?since=0.9995").json()
    assert [r["route"] for r in narrow["requests"]] == ["/fast"]  # type: ignore[index]
    assert monitor.since_asked == [60.0, 0.9995]
    for bad in ("abc", "0", "-5", "nan", "inf", "86401", ""):
        reply = request(server, f"/api/requests?since={bad}")
        assert reply.status == 400, bad
        assert "since" in reply.json()["error"]


def test_state_json(start):
    server = start(FakeMonitor())
    reply = request(server, "/api/state")
    assert reply.status == 200
    assert reply.json() == STATE


@pytest.mark.parametrize("path", ["/api/state", "/api/requests?since=5"])
def test_api_failure_is_500_logged_and_server_survives(start, path):
    monitor = FakeMonitor()
    monitor.fail_api = True
    server = start(monitor)
    with structlog.testing.capture_logs() as logs:
        reply = request(server, path)
    assert reply.status == 500
    assert "sidecar's log" in reply.json()["error"]
    assert [e["event"] for e in logs] in (["sidecar.state_failed"], ["sidecar.requests_failed"])
    monitor.fail_api = False
    assert request(server, path).status == 200


def test_unknown_paths_404_and_other_methods_405(start):
    server = start(FakeMonitor())
    for path in ("/", "/metricsx", "/api", "/healthz/x"):
        assert request(server, path).status == 404, path
    reply = request(server, "/metrics", method="POST")
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD"


def test_ipv6_loopback(start):
    server = start(FakeMonitor(), host="::1")
    assert server.url == f"http://[::1]:{server.port}"
    assert request(server, "/metrics").status == 200


# -- the poll loop --------------------------------------------------------------------------


def test_http_stays_responsive_during_a_slow_poll(start):
    monitor = FakeMonitor(poll_sleep_s=1.0)
    server = start(monitor)
    assert monitor.in_poll.wait(5)
    began = time.monotonic()
    metrics = request(server, "/metrics")
    healthz = request(server, "/healthz")
    elapsed = time.monotonic() - began
    assert monitor.in_poll.is_set(), "the poll should still be running"
    assert metrics.status == 200
    assert healthz.status == 200
    assert elapsed < 0.5


def test_poll_errors_are_logged_counted_and_do_not_stop_the_loop(start):
    monitor = FakeMonitor(fail_polls=True)
    with structlog.testing.capture_logs() as logs:
        server = start(monitor, poll_interval_s=0.02)
        wait_until(lambda: server.loop.failures >= 3)
        server.stop()
    failed = [e for e in logs if e["event"] == "sidecar.poll_failed"]
    assert len(failed) == server.loop.failures >= 3
    assert all(e["log_level"] == "error" and e["exc_info"] is True for e in failed)
    assert [e["failures"] for e in failed] == list(range(1, len(failed) + 1))
    stopped = [e for e in logs if e["event"] == "sidecar.stopped"]
    assert stopped[0]["poll_failures"] == server.loop.failures


def test_poll_errors_are_exported(start):
    monitor = FakeMonitor(fail_polls=True)
    server = start(monitor, poll_interval_s=0.02)
    wait_until(lambda: server.loop.failures >= 2)
    monitor.fail_polls = False
    wait_until(lambda: monitor.polls >= 1)
    count = server.loop.failures
    assert f"wsgiwatch_sidecar_poll_errors_total {float(count)}" in request(server, "/metrics").text
    assert request(server, "/healthz").json()["poll_failures"] == count


def test_next_deadline_is_fixed_rate_and_skips_missed_ticks():
    assert next_deadline(10.0, 10.03, 0.5) == 10.5  # poll took 30 ms: no drift
    assert next_deadline(10.0, 10.5, 0.5) == 11.0  # ended exactly on the tick
    assert next_deadline(10.0, 11.2, 0.5) == 11.5  # overran two ticks: skip, no burst


def test_poll_loop_does_not_drift_by_poll_duration(start):
    monitor = FakeMonitor(poll_sleep_s=0.04)
    server = start(monitor, poll_interval_s=0.1)
    wait_until(lambda: len(monitor.poll_starts) >= 9)
    starts = monitor.poll_starts[:9]
    # Drifting (interval after each poll's end) would take 8 * 0.14 = 1.12 s.
    assert 0.75 < starts[8] - starts[0] < 0.95
    assert server.loop.overruns == 0


def test_poll_loop_counts_overruns(start):
    monitor = FakeMonitor(poll_sleep_s=0.25)
    server = start(monitor, poll_interval_s=0.1)
    wait_until(lambda: monitor.polls >= 2)
    assert server.loop.overruns >= 2
    assert "wsgiwatch_sidecar_poll_overruns_total" in request(server, "/metrics").text


def test_stop_shuts_http_down_and_joins_the_poll_thread():
    monitor = FakeMonitor()
    server = SidecarServer(monitor, host="127.0.0.1", port=0, poll_interval_s=0.05)
    server.start()
    wait_until(lambda: monitor.polls >= 1)
    with structlog.testing.capture_logs() as logs:
        server.stop()
        server.stop()  # idempotent
    assert [e["event"] for e in logs] == ["sidecar.stopped"]
    assert not any(t.name in ("wsgiwatch-poll", "wsgiwatch-http") for t in threading.enumerate())
    polls = monitor.polls
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    time.sleep(0.1)
    assert monitor.polls == polls


def test_stop_without_start_closes_the_socket():
    server = SidecarServer(FakeMonitor(), host="127.0.0.1", port=0)
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_serve_stops_on_signal_and_restores_handlers():
    monitor = FakeMonitor()
    server = SidecarServer(monitor, host="127.0.0.1", port=0, poll_interval_s=0.05)
    before = signal.getsignal(signal.SIGUSR1)

    def send_when_polling() -> None:
        # The first poll runs after serve() installed its handler.
        wait_until(lambda: monitor.polls >= 1)
        os.kill(os.getpid(), signal.SIGUSR1)

    sender = threading.Thread(target=send_when_polling)
    sender.start()
    with structlog.testing.capture_logs() as logs:
        assert serve(server, signals=(signal.SIGUSR1,)) == 0
    sender.join(5)
    assert signal.getsignal(signal.SIGUSR1) is before
    events = [e["event"] for e in logs]
    assert events == ["sidecar.started", "sidecar.stopping", "sidecar.stopped"]
    assert logs[1]["signal"] == "SIGUSR1"


def test_a_taken_port_raises_oserror_not_systemexit():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            SidecarServer(FakeMonitor(), host="127.0.0.1", port=taken.getsockname()[1])
