"""The sidecar's HTTP side and poll loop, against a real server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
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


# -- floods, slow clients, bad requests ------------------------------------------------------


def _partial_requests(server_port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each holding half a request (no blank line ends it)."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", server_port), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: flood\r\n")
        socks.append(s)
    return socks


def test_metrics_answers_within_a_second_during_a_flood_of_partial_requests(start):
    server = start(FakeMonitor())
    assert request(server, "/metrics").status == 200
    threads_before = threading.active_count()
    flood = _partial_requests(server.port, 1000)
    try:
        for _ in range(5):
            began = time.monotonic()
            reply = request(server, "/metrics", timeout=5)
            assert reply.status == 200
            assert time.monotonic() - began < 1.0
            assert "wsgiwatch_hol_blocked_requests_total" in reply.text
        # Threads stay bounded (the flood made 1,004 with a thread per connection); the
        # answering pool may have grown to its size since the first scrape.
        assert threading.active_count() <= threads_before + 2
        assert server._http.connections <= 256
        assert server._http.evicted >= 1000 - 256
    finally:
        for s in flood:
            s.close()
    wait_until(lambda: server._http.connections == 0)
    assert request(server, "/healthz").status == 200


def test_a_partial_request_is_closed_after_the_header_timeout(start):
    server = start(FakeMonitor())
    server._http.header_timeout_s = 0.3
    (slow,) = _partial_requests(server.port, 1)
    began = time.monotonic()
    slow.settimeout(5)
    assert slow.recv(100) == b""  # closed by the server, without an answer
    assert 0.25 < time.monotonic() - began < 2.0
    assert server._http.timed_out == 1
    slow.close()


def test_an_idle_connection_is_closed_and_a_kept_alive_one_reused(start):
    server = start(FakeMonitor())
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    for _ in range(3):  # one connection, three requests
        conn.request("GET", "/healthz")
        assert conn.getresponse().read()
    assert server._http.connections == 1
    conn.close()
    idle = socket.create_connection((server.host, server.port), timeout=5)
    server._http.header_timeout_s = 0.2  # also the limit before a first byte
    wait_until(lambda: server._http.timed_out >= 1)
    assert idle.recv(10) == b""
    idle.close()


def test_a_client_that_does_not_read_is_dropped_and_others_are_served():
    from wsgiwatch.sidecar.bounded_http import BoundedHTTPServer

    body = b"x" * (32 << 20)  # far more than socket buffers hold

    def big(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body if environ["PATH_INFO"] == "/big" else b"small"]

    listener = socket.create_server(("127.0.0.1", 0))
    http_server = BoundedHTTPServer(listener, big, write_timeout_s=0.5)
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        stuck = socket.create_connection(("127.0.0.1", port), timeout=5)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        began = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/small")
        assert conn.getresponse().read() == b"small"
        assert time.monotonic() - began < 1.0
        conn.close()
        wait_until(lambda: http_server.timed_out >= 1)
        assert http_server.connections == 0
        stuck.close()
    finally:
        http_server.shutdown()
        http_server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /" + b"a" * 9000, 414),  # still arriving: refused before it ends
        (b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n", 431),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
    ],
)
def test_bad_requests_get_the_usual_codes_and_the_server_goes_on(start, raw, status):
    server = start(FakeMonitor())
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(raw)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:80]
    assert b"Connection: close" in reply
    assert request(server, "/metrics").status == 200


def test_a_request_with_a_body_is_answered_and_the_connection_closed(start):
    server = start(FakeMonitor())
    reply = request(server, "/metrics", method="POST", headers={"Content-Length": "0"})
    assert reply.status == 405
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        assert s.recv(65536).startswith(b"HTTP/1.1 405 ")
        assert s.recv(10) == b""  # closed: the body is never read as a request


# -- client addresses ------------------------------------------------------------------------


def test_peer_addresses_can_be_hidden_everywhere_in_the_api(start):
    shown = start(FakeMonitor())
    assert "127.0.0.1:50000" in request(shown, "/api/requests").text
    hidden = SidecarServer(FakeMonitor(), host="127.0.0.1", port=0, peer_addresses=False)
    with hidden:
        for path in ("/api/requests", "/api/incidents", "/api/state"):
            text = request(hidden, path).text
            assert "127.0.0.1:5000" not in text, path  # the clients' (the server's stays)
        state = request(hidden, "/api/state").json()
        (stall,) = state["stalls"]  # type: ignore[misc]
        requests = request(hidden, "/api/requests").json()["requests"]
        names = [r["peer"] for r in requests]  # type: ignore[union-attr,index]
        # One name per connection, stable across calls, different per connection.
        assert all(re.fullmatch(r"peer-[0-9a-f]{12}", n) for n in names)
        assert len(set(names)) == len({r["peer"] for r in RECENT})
        again = request(hidden, "/api/requests").json()["requests"]
        assert [r["peer"] for r in again] == names  # type: ignore[union-attr,index]
        # 127.0.0.1:50001 is the second request's connection: the same name in every view.
        assert stall["peer"] == names[1]
