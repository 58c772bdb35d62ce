"""End to end: real servers, the real sidecar, a real Prometheus reading its figures.

Scenario (DESIGN.md's): one slow request, then several fast ones on fresh connections. The
client knows the truth: a fast request that took longer than half the slow one's duration
waited behind it. The sidecar's verdict, read back through Prometheus's HTTP API and from
its incident log, must match that request by request; each server runs with the accept hook
and without it (the kernel's view alone must reach the same verdicts).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from support.prom import prometheus
from support.servers import Server, cheroot, gunicorn, waitress
from support.servers import sidecar as start_sidecar

SLOW_S = 1.5
FAST_COUNT = 6
#: Kernel arrival estimates are at jiffy resolution (4 ms here) against the middle of a
#: dump; the hook's accept time is exact but the client's clock starts before connect().
WAIT_TOLERANCE_S = 0.010


@dataclass
class Sidecar:
    port: int

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()

    def incidents(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/incidents?limit=1000"
        with urllib.request.urlopen(url, timeout=5) as r:
            return list(json.load(r)["incidents"])

    def gauge(self, name: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


@contextlib.contextmanager
def sidecar(spool_dir: str) -> Iterator[Sidecar]:
    running, port = start_sidecar(spool_dir)
    with running:
        yield Sidecar(port)


@dataclass
class Outcome:
    route: str
    latency_s: float
    peer_port: int


def timed_get(
    port: int, path: str, out: list[Outcome], conn: http.client.HTTPConnection | None = None
) -> None:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    if c.sock is None:
        c.connect()
    peer_port = c.sock.getsockname()[1]  # our port is the server's REMOTE_PORT
    started = time.monotonic()  # from sending: the request's bytes arrive now
    c.request("GET", path)
    response = c.getresponse()  # the status line is in: the server has answered
    latency = time.monotonic() - started
    response.read()
    out.append(Outcome(path, latency, peer_port))
    if own:
        c.close()


def slow_then_fast(server: Server, side: Sidecar) -> tuple[list[Outcome], float]:
    """Run the scenario; returns the fast outcomes and the stall gauge seen mid-way."""
    outcomes: list[Outcome] = []
    slow = threading.Thread(target=timed_get, args=(server.port, f"/slow/{SLOW_S}", outcomes))
    slow.start()
    time.sleep(0.1)
    fast = [
        threading.Thread(target=timed_get, args=(server.port, "/fast", outcomes))
        for _ in range(FAST_COUNT)
    ]
    for t in fast:
        t.start()
        time.sleep(0.02)
    time.sleep(0.7)  # > two poll intervals into the stall, well before the slow one ends
    stalled_midway = side.gauge("wsgiwatch_stalled_requests")
    slow.join(10)
    for t in fast:
        t.join(10)
    return [o for o in outcomes if o.route == "/fast"], stalled_midway


def check_verdicts(side: Sidecar, fast: list[Outcome], prom_value: float) -> int:
    """Per request: blocked iff the client saw it wait; wait agrees with the client."""
    truly_blocked = {o.peer_port: o for o in fast if o.latency_s > SLOW_S / 2}
    incidents = side.incidents()
    by_port = {int(str(i["victim"]["peer"]).rsplit(":", 1)[1]): i for i in incidents}
    assert set(by_port) == set(truly_blocked), (by_port.keys(), truly_blocked.keys())
    for port, outcome in truly_blocked.items():
        incident = by_port[port]
        victim = incident["victim"]
        assert incident["blockers"][0]["route"] == "/slow/:id"
        # The client waited for the queue plus the request's own service time.
        truth = outcome.latency_s - victim["duration_s"]
        print(
            f"{victim['peer']}: queue wait {victim['queue_wait_s'] * 1000:.1f} ms "
            f"({victim['wait_source']}), client truth {truth * 1000:.1f} ms"
        )
        assert abs(victim["queue_wait_s"] - truth) < WAIT_TOLERANCE_S, (victim, truth)
    assert prom_value == len(truly_blocked)
    return len(truly_blocked)


#: The app's own switch: without the hook, the kernel's view is all the sidecar has.
NO_HOOK = {"TEST_ACCEPT_HOOK": "0"}
HOOK_CONFIG = ["-c", "python:wsgiwatch.gunicorn_config"]


def _env(hook: bool) -> dict[str, str] | None:
    return None if hook else NO_HOOK


SERVERS = {
    "gthread": lambda d, hook: gunicorn(
        "apps.basic:application",
        d,
        worker_class="gthread",
        workers=2,
        threads=1,
        extra=["--keep-alive", "5", *(HOOK_CONFIG if hook else [])],
        env=_env(hook),
    ),
    "waitress-1": lambda d, hook: waitress(
        "apps.basic:application", d, threads=1, hook=hook, env=_env(hook)
    ),
    "waitress-2": lambda d, hook: waitress(
        "apps.basic:application", d, threads=2, hook=hook, env=_env(hook)
    ),
    "sync": lambda d, hook: gunicorn(
        "apps.basic:application",
        d,
        worker_class="sync",
        workers=2,
        extra=HOOK_CONFIG if hook else [],
        env=_env(hook),
    ),
    # cheroot has no opt-in hook: with it, the one WSGIWatch installs by default.
    "cheroot-1": lambda d, hook: cheroot("apps.basic:application", d, threads=1, env=_env(hook)),
}
# Greedy servers may block; waitress with a free thread and gunicorn sync must not.
MAY_BLOCK = {
    "gthread": True,
    "waitress-1": True,
    "waitress-2": False,
    "sync": False,
    "cheroot-1": True,
}
# One thread behind an acceptor: every fast request queues behind the slow one.
ALL_BLOCKED = {"waitress-1", "cheroot-1"}
CASES = [
    pytest.param(name, hook, id=f"{name}-{'hook' if hook else 'kernel-only'}")
    for name in SERVERS
    for hook in (True, False)
]


@pytest.mark.parametrize(("name", "hook"), CASES)
def test_slow_then_fast(name: str, hook: bool, spool_dir: str) -> None:
    with (
        SERVERS[name](spool_dir, hook) as server,
        sidecar(spool_dir) as side,
        prometheus([f"127.0.0.1:{side.port}"]) as prom,
    ):
        prom.wait_for("up", lambda v: v == 1)
        time.sleep(0.5)  # the workers' spools exist and the sidecar knows them
        fast, stalled_midway = slow_then_fast(server, side)
        # Every request shows up in Prometheus, then the blocked count is final.
        prom.wait_for('sum(wsgiwatch_requests_total{route="/fast"})', lambda v: v == FAST_COUNT)
        time.sleep(1.2)
        blocked = prom.value("sum(wsgiwatch_hol_blocked_requests_total)") or 0.0
        count = check_verdicts(side, fast, blocked)
        if not MAY_BLOCK[name]:
            assert count == 0 and stalled_midway == 0
        elif name in ALL_BLOCKED:
            assert count == FAST_COUNT  # the acceptor queues them all, every time
        if count:
            # The live gauge saw the stall before the slow request ended, and so did
            # Prometheus; the blame went to the slow route.
            assert stalled_midway > 0
            assert prom.value("max_over_time(wsgiwatch_oldest_stall_seconds[1m])") > 0.2
            assert (
                prom.value('sum(wsgiwatch_hol_blocked_seconds_total{blocker_route="/slow/:id"})')
                > 0.5 * count
            )
        per_worker = prom.query("wsgiwatch_worker_capacity")
        assert per_worker and all(
            set(s["metric"]) <= {"__name__", "worker", "instance", "job"} for s in per_worker
        )


def test_keep_alive_request_waits_behind_slow_one(spool_dir: str) -> None:
    """A kept-alive connection stays bound to its worker: its next request waits there."""
    with (
        gunicorn(
            "apps.basic:application",
            spool_dir,
            worker_class="gthread",
            workers=1,
            threads=1,
            extra=["--keep-alive", "10"],
        ) as server,
        sidecar(spool_dir) as side,
        prometheus([f"127.0.0.1:{side.port}"]) as prom,
    ):
        prom.wait_for("up", lambda v: v == 1)
        outcomes: list[Outcome] = []
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        timed_get(server.port, "/fast", outcomes, conn)  # the connection is now kept alive
        slow = threading.Thread(target=timed_get, args=(server.port, f"/slow/{SLOW_S}", outcomes))
        slow.start()
        time.sleep(0.2)
        timed_get(server.port, "/fast", outcomes, conn)
        slow.join(10)
        conn.close()
        second = outcomes[-1] if outcomes[-1].route == "/fast" else outcomes[-2]
        assert second.latency_s > SLOW_S / 2
        prom.wait_for("sum(wsgiwatch_hol_blocked_requests_total)", lambda v: v == 1)
        [incident] = side.incidents()
        assert incident["blockers"][0]["route"] == "/slow/:id"
        truth = second.latency_s - incident["victim"]["duration_s"]
        assert abs(incident["victim"]["queue_wait_s"] - truth) < WAIT_TOLERANCE_S


def test_sync_overload_shows_kernel_backlog_not_blocking(spool_dir: str) -> None:
    """gunicorn sync, both workers busy: new connections wait in the kernel backlog, which
    is healthy queueing, reported per listener, and no request counts as blocked."""
    with (
        gunicorn("apps.basic:application", spool_dir, worker_class="sync", workers=2) as server,
        sidecar(spool_dir) as side,
        prometheus([f"127.0.0.1:{side.port}"]) as prom,
    ):
        prom.wait_for("up", lambda v: v == 1)
        time.sleep(0.5)
        outcomes: list[Outcome] = []
        threads = [
            threading.Thread(target=timed_get, args=(server.port, f"/slow/{SLOW_S}", outcomes))
            for _ in range(2)
        ]
        threads += [
            threading.Thread(target=timed_get, args=(server.port, "/fast", outcomes))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
            time.sleep(0.05)
        time.sleep(0.8)
        backlog_midway = side.gauge("wsgiwatch_listen_backlog")
        for t in threads:
            t.join(10)
        assert backlog_midway >= 1
        prom.wait_for("sum(wsgiwatch_requests_total)", lambda v: v == 5)
        time.sleep(1.0)
        assert (prom.value("sum(wsgiwatch_hol_blocked_requests_total)") or 0) == 0
        assert prom.value("max_over_time(sum(wsgiwatch_listen_backlog)[1m:1s])") >= 1
        assert side.incidents() == []


if __name__ == "__main__":  # pragma: no cover
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", __file__, "-v"]))
