"""One slow request then six fast ones through a front server, with client truth, for the
deployment tests (nginx, Apache mod_wsgi).

Behind a proxy a record has no client port to find it by: every request here carries a
unique token in its path (``apps.stamped``'s ``/r/<token>`` makes the path the route), and
the app answers with its entry time on CLOCK_MONOTONIC, so the client knows exactly how long
each request waited before the app began (``entry_ns - start_ns``: connect, proxy, backlog
and in-process waiting together) and, under mod_wsgi, how much of that the daemon socket's
backlog was (``daemon_start - queue_start``, mod_wsgi's own word).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from apps.client import fetch

from support.middleware_support import wait_for

SLOW_S = 1.5
FAST_COUNT = 6
#: A fast request that began this much later than its client sent it waited behind the slow
#: one (waits here are ~0 or most of the slow request); well above the sidecar's 50 ms
#: threshold, so a shared machine's delays stay out of it.
WAITED_IF_LATE_S = 0.25

_tokens = itertools.count()


@dataclass
class Outcome:
    """One request as its client and the app saw it."""

    route: str
    service_s: float
    start_ns: int = 0
    done_ns: int = 0
    answer: dict[str, Any] = field(default_factory=dict)

    @property
    def entry_ns(self) -> int:
        return int(self.answer["entry_ns"])

    @property
    def wait_s(self) -> float:
        """Client truth: from before the client connected to the app's entry."""
        return (self.entry_ns - self.start_ns) / 1e9

    @property
    def pid(self) -> int:
        return int(self.answer["pid"])

    def mod_wsgi_backlog_s(self) -> float:
        """mod_wsgi's own account of the wait in the daemon socket's backlog."""
        times = self.answer["mod_wsgi"]
        return _mod_wsgi_seconds(times["daemon_start"]) - _mod_wsgi_seconds(times["queue_start"])


def _mod_wsgi_seconds(text: str) -> float:
    """mod_wsgi 4.x passes microsecond strings; 6.x floats of seconds."""
    value = float(text)
    return value / 1e6 if value > 1e11 else value


def _get(port: int, outcome: Outcome, query: str) -> None:
    reply = fetch(port, outcome.route + query, timeout=30)
    assert reply.status == 200, reply
    outcome.start_ns, outcome.done_ns = reply.start_ns, reply.done_ns
    outcome.answer = json.loads(reply.body)


def slow_then_fast(port: int, *, slow_s: float = SLOW_S, fast: int = FAST_COUNT) -> list[Outcome]:
    """One slow request, then ``fast`` fast ones 20 ms apart, each on a fresh connection;
    returns when all have their answers (the slow one first in the list)."""
    run = f"{os.getpid()}-{next(_tokens)}-{time.monotonic_ns() % 10**9}"
    outcomes = [Outcome(f"/r/{run}-slow", slow_s)]
    outcomes += [Outcome(f"/r/{run}-fast{i}", 0.0) for i in range(fast)]
    threads = []
    for i, outcome in enumerate(outcomes):
        query = f"?sleep={slow_s}" if i == 0 else ""
        t = threading.Thread(target=_get, args=(port, outcome, query), daemon=True)
        threads.append(t)
        t.start()
        time.sleep(0.15 if i == 0 else 0.02)
    for t in threads:
        t.join(30)
    assert all(o.answer for o in outcomes), "a request did not finish"
    return outcomes


def run_with_live_look(port: int, sidecar_url: str) -> tuple[list[Outcome], dict[str, Any]]:
    """:func:`slow_then_fast`, and the sidecar's live state (``/api/state``) taken while the
    fast requests wait (0.7 to 0.8 s after they were sent)."""
    result: list[list[Outcome]] = []
    runner = threading.Thread(target=lambda: result.append(slow_then_fast(port)))
    runner.start()
    time.sleep(0.15 + FAST_COUNT * 0.02 + 0.7)
    state = api(sidecar_url, "/api/state")
    runner.join(30)
    (outcomes,) = result
    return outcomes, state


def api(sidecar_url: str, path: str) -> Any:
    with urllib.request.urlopen(sidecar_url + path, timeout=5) as reply:
        return json.load(reply)


def sidecar_views(sidecar_url: str, outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    """The sidecar's view of each request, by route, once it has read all of them."""
    wanted = {o.route for o in outcomes}

    def views() -> dict[str, dict[str, Any]] | None:
        found = {
            v["route"]: v
            for v in api(sidecar_url, "/api/requests?since=120")["requests"]
            if v["route"] in wanted
        }
        return found if set(found) == wanted else None

    result: dict[str, dict[str, Any]] = wait_for("the sidecar read every request", views, 15)
    return result


def report(outcomes: list[Outcome], views: dict[str, dict[str, Any]]) -> str:
    """A table of client truth against the sidecar, one line per request (for failures and
    for the notes)."""
    lines = ["route            client_wait  sidecar_wait source   blocked phases"]
    for o in outcomes:
        v = views.get(o.route, {})
        wait = v.get("wait_s")
        lines.append(
            f"{o.route.rsplit('-', 1)[-1]:<16} {o.wait_s * 1e3:9.1f}ms "
            f"{'-' if wait is None else f'{wait * 1e3:9.1f}ms':>12} "
            f"{v.get('wait_source', '?'):<8} {v.get('blocked')!s:<7} {v.get('phases')}"
        )
    return "\n".join(lines)


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    wait_for(what or "a condition", condition, timeout)
