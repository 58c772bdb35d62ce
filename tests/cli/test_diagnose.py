"""``wsgiwatch diagnose``: against a real gunicorn gthread and the real sidecar, then on
fixture JSON for the wording of each case."""

from __future__ import annotations

import copy
import http.server
import json
import os
import subprocess
import threading
from typing import Any

import pytest
from support.fake_monitor import INCIDENTS, RECENT, STATE, FakeMonitor
from support.hol_scenario import (
    WSGIWATCH,
    Stack,
    get,
    run_slow_then_fast,
    truly_blocked,
    wait_until,
)
from support.hol_scenario import Outcome as Got
from support.servers import free_port

from wsgiwatch.cli import build_parser
from wsgiwatch.cli.advice import Situation, advise, situation_of
from wsgiwatch.cli.client import Metrics, SidecarClient, parse_duration
from wsgiwatch.cli.diagnosis import Diagnosis, Snapshot, analyse
from wsgiwatch.cli.diagnosis_text import render as render_text
from wsgiwatch.remedies.catalog import Deployment, server_family
from wsgiwatch.sidecar.monitor import Monitor
from wsgiwatch.sidecar.server import SidecarServer


def diagnose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WSGIWATCH, "diagnose", *args], capture_output=True, text=True, timeout=30
    )


def test_idle_then_healthy_then_blocking_against_real_gthread(live: Stack) -> None:
    url = live.sidecar_url
    idle = diagnose("--url", url, "--since", "1m")
    assert idle.returncode == 0, idle.stderr
    assert "No finished requests in the last 1 min" in flat(idle.stdout)
    assert "2 workers" in idle.stdout

    # One at a time: nothing waits behind anything.
    for _ in range(3):
        get(live.server.port, "/fast", Got("/fast", 0.0))
    wait_until(lambda: len(live.api("/api/requests?since=60")["requests"]) == 3)
    healthy = diagnose("--url", url, "--since", "60s")
    assert healthy.returncode == 0, healthy.stdout
    assert "HEALTHY: none of the 3 requests" in flat(healthy.stdout)
    assert "gunicorn/" in healthy.stdout  # the server, from the workers' SERVER_SOFTWARE

    outcomes = run_slow_then_fast(live)
    truth = truly_blocked(outcomes)
    assert truth  # two slow requests always block something (see hol_scenario)
    text = diagnose("--url", url, "--since", "60s")
    assert text.returncode == 1, text.stdout + text.stderr
    out = flat(text.stdout)
    seen = [(o.path, o.peer_port, round(o.latency_s, 3)) for o in outcomes]
    expected = f"HEAD-OF-LINE BLOCKING: {len(truth)} of {len(outcomes) + 3} requests"
    assert expected in out, (text.stdout, seen, live.api("/api/requests?since=60"))
    assert out.split("what they waited behind):")[1].split()[0] == "/slow/:id"
    # gthread 2 x 1: the proven remedy, exactly; too few requests here to predict it.
    assert "add: --worker-connections 1 --keep-alive 0" in out
    assert "predicted: not predicted:" in out and "fewer than the 20" in out
    assert "proxy_read_timeout" in out and "--threads 4" not in out  # unproven: not given
    assert "accept hook on" in out

    as_json = diagnose("--url", url, "--since", "60s", "--json")
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["verdict"] == "blocking" and data["exit_code"] == 1
    assert data["blocked"] == len(truth)
    assert data["requests"] == len(outcomes) + 3
    assert data["blocking_routes"][0]["route"] == "/slow/:id"
    assert data["blocking_routes"][0]["blocked"] == len(truth)  # all behind a slow one
    # The waits agree with what the client saw (latency minus the app's own time).
    client_wait = max(o.latency_s - o.service_s for o in truth)
    assert abs(data["worst_wait_s"] - client_wait) < 0.05
    assert {w["worker"] for w in data["workers"]} == {0, 1}
    assert data["server"].startswith("gunicorn/")
    # A narrower window than the scenario holds only the last requests.
    narrow = json.loads(diagnose("--url", url, "--since", "0.001s", "--json").stdout)
    assert narrow["requests"] < data["requests"]


def test_unreachable_sidecar_exits_2() -> None:
    result = diagnose("--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert result.returncode == 2
    assert "cannot read the sidecar" in result.stderr
    assert "Connection refused" in result.stderr


class _NotASidecar(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>hello</html>" if self.path != "/api/requests?since=300" else b"[1, 2]"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_something_else_on_the_port_exits_2() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotASidecar)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        result = diagnose("--url", f"127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.returncode == 2
    assert "expected a JSON object" in result.stderr


@pytest.mark.parametrize("bad", ["0", "-5m", "5 parsecs", "m"])
def test_bad_since_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["diagnose", "--since", bad])
    assert exc.value.code == 2
    assert "--since" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1.5h", 5400.0), ("250ms", 0.25), ("1d", 86400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_url_from_environment_and_json_against_fixture_sidecar() -> None:
    with SidecarServer(FakeMonitor(), port=0, poll_interval_s=0.1) as server:
        result = subprocess.run(
            [WSGIWATCH, "diagnose", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            env=dict(os.environ, WSGIWATCH_URL=server.url),
        )
        client = SidecarClient(server.url)
        assert client.get_json("/api/incidents?limit=2")["incidents"] == INCIDENTS[:2]
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["url"] == server.url
    assert (data["verdict"], data["requests"], data["blocked"]) == ("blocking", 2, 1)
    assert data["stalls_now"] == 1 and data["oldest_stall_s"] == 0.75


def test_from_an_in_process_monitor(spool_dir: str) -> None:
    """What ``wsgiwatch demo`` does: no HTTP, the monitor's own views."""
    monitor = Monitor(spool_dir)
    try:
        monitor.poll()
        d = analyse(Snapshot.from_monitor(monitor, 60.0))
    finally:
        monitor.close()
    assert (d.verdict, d.requests, d.workers_live) == ("idle", 0, 0)


def test_client_url_forms() -> None:
    assert SidecarClient("127.0.0.1:9808").url == "http://127.0.0.1:9808"
    assert SidecarClient("http://h:1/").url == "http://h:1"
    with pytest.raises(ValueError):
        SidecarClient("ftp://h:1")


# -- fixture JSON: the wording of each case ---------------------------------------------------


def snapshot(
    requests: list[dict[str, Any]] | None = None, state: dict[str, Any] | None = None
) -> Snapshot:
    recent = {"now_ns": 10**10, "wall_offset_ns": 0, "requests": requests or []}
    state = copy.deepcopy(state or STATE)
    for worker in state["workers"]:
        worker.setdefault("multithread", True)  # the fixture's gunicorn is gthread
    return Snapshot(300.0, recent, state, Metrics())


def render(d: Diagnosis) -> str:
    """What ``wsgiwatch diagnose`` prints for ``d``, with the advice it would give."""
    return render_text(d, advise(situation_of(d)))


def flat(text: str) -> str:
    """The text with its line wrapping undone."""
    return " ".join(text.split())


def request(**changes: Any) -> dict[str, Any]:
    base = copy.deepcopy(RECENT[0])
    base.update(changes)
    return base


def test_fixture_blocked_request_names_route_worker_and_advice() -> None:
    d = analyse(snapshot(copy.deepcopy(RECENT)))
    assert d.verdict == "blocking" and d.exit_code == 1
    assert (d.requests, d.blocked, d.misrouted) == (2, 1, 0)
    assert d.blocking_routes[0].route == "/slow"
    assert d.example is not None and d.example["blocker_route"] == "/slow"
    text = flat(render(d))
    assert "HEAD-OF-LINE BLOCKING: 1 of 2 requests (50.0%)" in text
    assert "longest 500 ms" in text
    assert "worker 0 (pid 4242): 1 of 2 requests blocked" in text
    assert "add: --worker-connections 1 --keep-alive 0" in text
    assert "cost: no keep-alive" in text
    assert "stalled right now: 1 request, oldest 750 ms" in text


def test_fixture_stall_now_without_finished_victims_is_blocking() -> None:
    d = analyse(snapshot([request()]))
    assert d.verdict == "blocking" and d.blocked == 0
    assert "HEAD-OF-LINE BLOCKING right now: 1 request stalled" in flat(render(d))


def test_fixture_healthy_and_idle() -> None:
    state = copy.deepcopy(STATE)
    state["stalls"] = []
    healthy = analyse(snapshot([request()], state))
    assert healthy.verdict == "healthy" and healthy.exit_code == 0
    assert "HEALTHY: none of the 1 requests of the last 5 min" in flat(render(healthy))
    assert advise(situation_of(healthy)) == []  # the hook is on, nothing waited
    idle = analyse(snapshot([], state))
    assert idle.verdict == "idle" and idle.exit_code == 0
    assert "nothing to judge yet" in render(idle)


def test_fixture_accept_imbalance_among_siblings() -> None:
    state = copy.deepcopy(STATE)
    state["stalls"] = []
    second = copy.deepcopy(state["workers"][0])
    second.update(worker=1, pid=4243, busy=0, slots=[])
    state["workers"].append(second)
    requests = [
        request(worker=0, pid=4242, request=i, peer=f"127.0.0.1:{40000 + i}") for i in range(9)
    ] + [request(worker=1, pid=4243, request=1, peer="127.0.0.1:41000")]
    d = analyse(snapshot(requests, state))
    assert d.imbalance == [(0, 9, 0.9), (1, 1, 0.1)]
    assert "Accept imbalance: connections per worker in the window: worker 0 9 (90%)" in flat(
        render(d)
    )
    # Keep-alive requests share a connection: one connection each is balanced.
    same_peer = [request(worker=0, request=i) for i in range(9)]
    assert analyse(snapshot([*same_peer, requests[-1]], state)).imbalance == []


def test_fixture_keep_alive_victims_and_waitress_advice() -> None:
    state = copy.deepcopy(STATE)
    state["workers"][0]["server"] = "waitress"
    victim = copy.deepcopy(RECENT[1])
    victim["accept_ns"] = 1_000_000_000  # accepted long before its bytes came
    d = analyse(snapshot([RECENT[0], victim], state))
    assert d.keep_alive_victims == 1
    text = flat(render(d))
    assert "Task queue depth" in text and "proven no remedy" in text
    assert "add:" not in text and "--worker-class" not in text


def test_fixture_no_timing_source_says_so() -> None:
    blind = [request(wait_source="none", wait_s=None, ready_ns=None)]
    state = copy.deepcopy(STATE)
    state["stalls"] = []
    state["workers"][0]["accept_hook"] = False
    d = analyse(snapshot(blind, state))
    text = flat(render(d))
    assert "queue waits could not be measured" in text
    assert "The accept hook is off" in text


def test_fixture_pure_python_workers_are_named_once_and_accelerated_ones_not() -> None:
    state = copy.deepcopy(STATE)
    state["workers"][0]["accelerated"] = False
    pure = flat(render(analyse(snapshot(copy.deepcopy(RECENT), state))))
    assert "1 worker records in pure Python" in pure
    state["workers"][0]["accelerated"] = True
    assert "pure Python" not in flat(render(analyse(snapshot(copy.deepcopy(RECENT), state))))


@pytest.mark.parametrize(
    ("software", "family"),
    [
        ("gunicorn/23.0.0", "gunicorn"),
        ("waitress", "waitress"),
        ("Cheroot/10.0.1", "cheroot"),
        ("CherryPy/18", "cheroot"),
        ("uWSGI", "uwsgi"),
        ("Apache/2.4.57 (Debian) mod_wsgi/5.0.0 Python/3.11", "mod_wsgi"),
        ("Werkzeug/3.1.9", "werkzeug"),
        ("", "other"),
        ("bjoern", "other"),
    ],
)
def test_server_family(software: str, family: str) -> None:
    assert server_family(software) == family


def situation(
    family: Any,
    *,
    threads: int = 2,
    multithread: bool = True,
    cooperative: bool = False,
    blocking: bool = True,
    hook: bool = True,
    backlog_mean_s: float | None = None,
) -> Situation:
    deployment = Deployment(family, 2, threads, multithread, cooperative)
    return Situation(deployment, "x", blocking, ("/report",), 1.0, 0, hook, backlog_mean_s)


@pytest.mark.parametrize(
    "family", ["waitress", "cheroot", "uwsgi", "mod_wsgi", "werkzeug", "other"]
)
def test_families_without_a_proven_remedy_get_no_flags(family: Any) -> None:
    advice = advise(situation(family))
    assert len(advice) == 2  # what the server does, then the proxy's timeout
    assert "proxy_read_timeout" in advice[1].text
    assert all(a.flags is None for a in advice)


def test_gthread_remedy_is_exact_for_the_shape() -> None:
    [why, remedy, _proxy] = advise(situation("gunicorn", threads=3))
    assert "accept new connections while all their threads are busy" in why.text
    assert remedy.flags == "--worker-connections 3 --keep-alive 0"
    assert remedy.config == "worker_connections = 3; keepalive = 0"
    assert remedy.cost is not None and "no keep-alive" in remedy.cost
    assert remedy.prediction == "not predicted: no recorded traffic was read"


def test_gevent_advice() -> None:
    advice = advise(situation("gunicorn", threads=1000, cooperative=True))
    text = " ".join(a.text for a in advice)
    assert "event loop" in text and all(a.flags is None for a in advice)


def test_sync_workers_are_already_right() -> None:
    advice = advise(situation("gunicorn", threads=1, multithread=False))
    assert "sync workers accept only when free" in advice[0].text
    assert all(a.flags is None for a in advice)


def test_healthy_but_long_kernel_backlog_suggests_more_workers() -> None:
    advice = advise(situation("gunicorn", blocking=False, backlog_mean_s=0.4))
    assert "400 ms on average in the kernel backlog" in advice[0].text


# -- never advise what is in place ------------------------------------------------------------


def test_hook_on_is_never_advised_and_the_text_agrees() -> None:
    """The header says the hook is on: no line may ask for it, nor call the backlog
    unmeasured for want of it, even when nothing was timed."""
    state = copy.deepcopy(STATE)
    state["stalls"] = []
    blind = [request(wait_source="none", wait_s=None, ready_ns=None)]
    for requests in (copy.deepcopy(RECENT), blind):
        text = flat(render(analyse(snapshot(requests, state))))
        assert "accept hook on)" in text
        assert "The accept hook is off" not in text
        assert "turn on the accept hook" not in text
        assert "(the accept hook measures it)" not in text
    assert "the accept hook is on, yet no request was matched" in flat(
        render(analyse(snapshot(blind, state)))
    )


def test_hook_in_some_workers_is_in_place() -> None:
    state = copy.deepcopy(STATE)
    other = copy.deepcopy(state["workers"][0])
    other.update(worker=1, pid=4243, busy=0, slots=[], accept_hook=False)
    state["workers"].append(other)
    d = analyse(snapshot(copy.deepcopy(RECENT), state))
    assert (d.accept_hook, d.hook_workers) == (False, 1)
    text = flat(render(d))
    assert "accept hook on in 1 of 2 workers" in text
    assert "The accept hook is off" not in text


def test_gevent_workers_without_the_hook_are_told_why_it_is_off() -> None:
    """gevent's accepts are hooked too (on its loop), by default: off means turned off."""
    state = copy.deepcopy(STATE)
    state["workers"][0].update(accept_hook=False, cooperative=True, capacity=1000)
    text = flat(render(analyse(snapshot(copy.deepcopy(RECENT), state))))
    assert "accept hook off" in text and "event loop" in text
    assert "The accept hook is off" in text and "accept_hook=False" in text


def test_wait_sources_are_said_per_worker() -> None:
    state = copy.deepcopy(STATE)
    requests = [
        request(worker=0, pid=4242, request=1, wait_source="hook"),
        request(worker=0, pid=4242, request=2, wait_source="hook"),
        request(worker=0, pid=4242, request=3, wait_source="kernel"),
    ]
    d = analyse(snapshot(requests, state))
    assert d.workers[0].wait_sources == {"hook": 2, "kernel": 1}
    text = render(d)
    assert "Where the queue waits come from, per worker (requests):" in text
    assert "worker 0 (pid 4242): hook 2, kernel 1" in text


@pytest.mark.parametrize("family", ["gunicorn", "waitress", "cheroot", "uwsgi", "mod_wsgi"])
@pytest.mark.parametrize("blocking", [True, False])
def test_no_family_is_told_to_turn_on_a_hook_that_is_on(family: Any, blocking: bool) -> None:
    on = situation(family, blocking=blocking, backlog_mean_s=0.5)
    assert not any("accept hook" in a.text for a in advise(on))
    off = advise(situation(family, blocking=blocking, backlog_mean_s=0.5, hook=False))
    # Off where it is on by default (it was turned off, or the version is untested).
    hookable = ("gunicorn", "waitress", "cheroot")
    assert any("accept hook is off" in a.text for a in off) == (family in hookable)
