"""A real stack for the client commands' tests: gunicorn gthread 2x1 with the accept hook,
the real ``wsgiwatch sidecar`` subprocess, and a slow-then-fast load that always blocks.

Why two slow requests: with one, the greedy race may send every fast request to the idle
worker and nothing blocks (DESIGN.md: 0 to 6 stuck per run). With two, either they share a
worker (the second waits behind the first) or both workers are busy and every fast
request is accepted by a busy one: some request is blocked in every run.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from support.middleware_support import wait_for
from support.servers import VENV_BIN, Server, gunicorn, sidecar

WSGIWATCH = os.path.join(VENV_BIN, "wsgiwatch")
SLOW = (("/slow/2", 2.0), ("/slow/1.2", 1.2))
FAST_COUNT = 6
#: A request whose client-side latency exceeds its own service time by this much waited
#: behind another one. Waits here are ~0 or most of a slow request (about 1 s); a margin
#: well above the sidecar's 50 ms threshold keeps a busy machine's delays out of it.
BLOCKED_IF_LATE_S = 0.25


@dataclass
class Stack:
    server: Server
    sidecar_url: str

    def api(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.sidecar_url + path, timeout=5) as reply:
            data = json.load(reply)
        assert isinstance(data, dict)
        return data


@dataclass
class Outcome:
    path: str
    service_s: float  # what the app itself takes
    latency_s: float = 0.0
    peer_port: int = 0
    started: float = 0.0  # time.monotonic() when the client began (connect)


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def join(self) -> list[Outcome]:
        for t in self.threads:
            t.join(15)
        assert all(o.latency_s for o in self.outcomes), "a request did not finish"
        return self.outcomes


def truly_blocked(outcomes: list[Outcome]) -> list[Outcome]:
    """What the client saw: the requests that waited behind another one."""
    return [o for o in outcomes if o.latency_s - o.service_s > BLOCKED_IF_LATE_S]


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """middleware_support.wait_for, condition first (as most callers here read best)."""
    wait_for(what or "a condition", condition, timeout)


@contextlib.contextmanager
def stack(spool_dir: str) -> Iterator[Stack]:
    """gunicorn gthread 2 workers x 1 thread, accept hook on; the sidecar polling every
    0.25 s; yields once the sidecar sees both workers."""
    with gunicorn(
        "apps.basic:application",
        spool_dir,
        worker_class="gthread",
        workers=2,
        threads=1,
        extra=["-c", "python:wsgiwatch.gunicorn_config"],
    ) as server:
        running, port = sidecar(spool_dir, "--log-format", "json")
        with running:
            s = Stack(server, f"http://127.0.0.1:{port}")
            wait_until(lambda: len(s.api("/api/state")["workers"]) == 2, what="two workers")
            yield s


def get(port: int, path: str, outcome: Outcome) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    started = outcome.started = time.monotonic()
    conn.connect()
    assert conn.sock is not None
    outcome.peer_port = conn.sock.getsockname()[1]
    conn.request("GET", path)
    conn.getresponse().read()
    outcome.latency_s = time.monotonic() - started
    conn.close()


def start_slow_then_fast(port: int) -> Load:
    """Two slow requests, then fast ones on fresh connections; returns at once."""
    load = Load()

    def launch(path: str, service_s: float) -> None:
        outcome = Outcome(path, service_s)
        load.outcomes.append(outcome)
        t = threading.Thread(target=get, args=(port, path, outcome), daemon=True)
        load.threads.append(t)
        t.start()

    for path, seconds in SLOW:
        launch(path, seconds)
        time.sleep(0.05)
    time.sleep(0.1)
    for _ in range(FAST_COUNT):
        launch("/fast", 0.0)
        time.sleep(0.02)
    return load


def run_slow_then_fast(s: Stack) -> list[Outcome]:
    """The whole scenario; returns once the sidecar has every request and its verdict."""
    load = start_slow_then_fast(s.server.port)
    outcomes = load.join()
    # Each request by its client's port: requests from before the scenario do not count.
    # (A record is written at close(), a moment after its client has the response.)
    ports = {o.peer_port for o in outcomes}

    def all_read() -> bool:
        seen = {
            int(r["peer"].rsplit(":", 1)[1]) for r in s.api("/api/requests?since=60")["requests"]
        }
        return ports <= seen

    wait_until(all_read, what="the sidecar read every request")
    return outcomes
