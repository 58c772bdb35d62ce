"""nginx in front of gunicorn gthread (2 workers x 1 thread), as it is deployed: on a unix
socket (without help, with nginx's ``X-Request-Start``, with the accept hook) and over TCP
with the header. Debian's nginx, the real sidecar, one slow request then six fast ones.

Client truth per request: the app answers with its entry time (CLOCK_MONOTONIC, one clock
for every process here), so the client knows how long each request waited before the app
began. A fast request that waited more than ``WAITED_IF_LATE_S`` waited behind the slow one,
inside the busy worker (gthread accepts greedily; nginx and the kernel backlog add
microseconds). The sidecar's verdict, wait and phases must match, request by request; its
live view must show the stalls at their true ages while they happen.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from apps.client import fetch
from support.deploy_scenario import (
    WAITED_IF_LATE_S,
    Outcome,
    api,
    report,
    run_with_live_look,
    sidecar_views,
    wait_until,
)
from support.nginx import Nginx, gunicorn_behind, nginx, uwsgi_behind
from support.servers import VENV_BIN, sidecar

POLL_S = 0.25


@dataclass(frozen=True)
class Variant:
    unix: bool
    header: bool
    hook: bool
    source: str  # what the sidecar should name as the source of a blocked request's wait
    wait_tolerance_s: float  # sidecar wait against the client's
    stall_tolerance_s: float  # live stall age against the truth


VARIANTS = {
    # No time exists in the kernel for a unix connection: it arrived between two dumps.
    "unix-plain": Variant(True, False, False, "kernel", POLL_S / 2 + 0.03, POLL_S / 2 + 0.03),
    # nginx's time (ms resolution) plus its own and the connect's ~1 ms.
    "unix-header": Variant(True, True, False, "header", 0.010, POLL_S / 2 + 0.03),
    # The hook's accept is exact; the client's clock starts before its connect to nginx.
    "unix-hook": Variant(True, False, True, "hook", 0.010, 0.03),
    # The kernel's arrival or nginx's time, whichever the sidecar had. The kernel's is at
    # jiffy resolution against the middle of its dump, which on a busy machine can take
    # tens of ms (seen: 17 ms off on a shared 2-core machine).
    "tcp-header": Variant(False, True, False, "kernel|header", 0.025, 0.03),
}


@dataclass
class Stack:
    front: Nginx
    sidecar_url: str


@pytest.fixture(params=sorted(VARIANTS))
def stack(request: pytest.FixtureRequest, spool_dir: str) -> Iterator[tuple[Variant, Stack]]:
    variant = VARIANTS[request.param]
    extra = ["-c", "python:wsgiwatch.gunicorn_config"] if variant.hook else []
    with (
        gunicorn_behind(
            "apps.stamped:application",
            spool_dir,
            unix=variant.unix,
            extra=extra,
            # Without the hook (on by default), what the kernel or nginx's stamp give alone.
            env=None if variant.hook else {"TEST_ACCEPT_HOOK": "0"},
        ) as upstream,
        nginx(upstream.address, request_start=variant.header) as front,
    ):
        running, port = sidecar(spool_dir, "--poll-interval", str(POLL_S))
        with running:
            url = f"http://127.0.0.1:{port}"
            warm(front, url)
            yield variant, Stack(front, url)


def warm(front: Nginx, url: str) -> None:
    """Requests until both workers have served one (a worker opens its spool on its first
    request, or at start with the hook); two at a time, so both are taken."""
    sent = 0
    for _ in range(10):
        pair = [
            threading.Thread(target=fetch, args=(front.port, "/r/warm?sleep=0.2")) for _ in range(2)
        ]
        for t in pair:
            t.start()
        for t in pair:
            t.join(10)
        sent += 2
        with contextlib.suppress(AssertionError):
            wait_until(lambda: len(api(url, "/api/state")["workers"]) == 2, 1.0, "two workers")
            break
    else:
        raise AssertionError("one of the two workers never served a request")

    def all_read() -> bool:
        recent = api(url, "/api/requests?since=120")["requests"]
        return sum(r["route"] == "/r/warm" for r in recent) == sent

    wait_until(all_read, what="the sidecar read the warm-up requests")


def accepted_total(url: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in _metrics(url).splitlines()
        if line.startswith("wsgiwatch_worker_accepted_total{")
    )


def _metrics(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def check_live_stalls(variant: Variant, outcomes: list[Outcome], state: dict[str, Any]) -> None:
    now = state["now_ns"]
    # Waiting at the sidecar's last poll, and for long enough to have shown in a dump.
    waiting = [
        o for o in outcomes[1:] if o.entry_ns > now - POLL_S * 1e9 and o.start_ns < now - 0.4e9
    ]
    stalls = state["stalls"]
    assert len(stalls) >= len(waiting) > 0 or not waiting, (stalls, waiting)
    for stall in stalls:
        if variant.unix:
            assert stall["peer"].startswith("unix inode "), stall
        true_ages = [(now - o.start_ns) / 1e9 for o in outcomes[1:] if o.entry_ns > now - 1e9]
        assert min(abs(stall["age_s"] - age) for age in true_ages) <= variant.stall_tolerance_s, (
            stall,
            true_ages,
        )


def check_verdicts(variant: Variant, outcomes: list[Outcome], views: dict[str, Any]) -> int:
    """Each request's verdict, wait and phases against the client's; returns how many were
    blocked."""
    table = report(outcomes, views)
    slow = outcomes[0]
    blocked = 0
    for o in outcomes[1:]:
        view = views[o.route]
        truly = o.wait_s > WAITED_IF_LATE_S
        assert view["blocked"] == truly, table
        if not truly:
            assert view["wait_s"] is None or view["wait_s"] < 0.05, table
            continue
        blocked += 1
        assert view["wait_source"] in variant.source.split("|"), table
        assert abs(view["wait_s"] - o.wait_s) <= variant.wait_tolerance_s, table
        # Most to blame first: the slow one (fast ones queued with it ran microseconds).
        assert view["blockers"][0]["route"] == slow.route, table
        phases = view["phases"]
        assert abs(phases["process"] - view["wait_s"]) <= 0.002, table
        if variant.header and view["wait_source"] != "header":
            # The kernel knew when the request reached the worker: nginx's share is apart,
            # and the phases add up to what the client saw (nginx's ms rounding allowed).
            assert 0 <= phases["proxy"] <= 0.010, table
            assert abs(sum(phases.values()) - o.wait_s) <= 0.010, table
    return blocked


@pytest.mark.timeout(120)
def test_slow_then_fast_behind_nginx(stack: tuple[Variant, Stack]) -> None:
    variant, s = stack
    blocked = 0
    for _ in range(3):  # a run may send every fast request to the idle worker: bounded retry
        before = accepted_total(s.sidecar_url)
        outcomes, state = run_with_live_look(s.front.port, s.sidecar_url)
        views = sidecar_views(s.sidecar_url, outcomes)
        check_live_stalls(variant, outcomes, state)
        blocked += check_verdicts(variant, outcomes, views)
        # Each request came on its own connection from nginx, counted on its worker.
        wait_until(
            lambda: accepted_total(s.sidecar_url) - before >= len(outcomes),  # noqa: B023
            what="7 accepted connections",
        )
        assert accepted_total(s.sidecar_url) - before == len(outcomes)
        if blocked:
            break
    assert blocked, "no fast request waited in 3 runs"
    diagnosis = subprocess.run(
        [os.path.join(VENV_BIN, "wsgiwatch"), "diagnose", "--url", s.sidecar_url],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert diagnosis.splitlines()[2].startswith("HEAD-OF-LINE BLOCKING"), diagnosis


@pytest.mark.timeout(120)
@pytest.mark.parametrize("processes", [1, 2])
def test_uwsgi_behind_uwsgi_pass_queues_in_the_backlog(processes: int, spool_dir: str) -> None:
    """uWSGI as it is usually deployed: nginx's ``uwsgi_pass`` to forked workers on a unix
    socket. A uWSGI worker accepts only when free, so the fast requests wait in the socket's
    backlog (the sidecar sees it there, live) and none is called blocked, though nginx's
    stamp times each wait to the millisecond."""
    with (
        uwsgi_behind("apps.stamped:application", spool_dir, processes=processes) as upstream,
        nginx(upstream.address, request_start=True, protocol="uwsgi") as front,
    ):
        running, port = sidecar(spool_dir, "--poll-interval", str(POLL_S))
        with running:
            url = f"http://127.0.0.1:{port}"
            outcomes, state = run_with_live_look(front.port, url)
            views = sidecar_views(url, outcomes)
    table = report(outcomes, views)
    for o in outcomes:
        view = views[o.route]
        assert view["blocked"] is False and view["wait_source"] == "header", table
        assert abs(view["wait_s"] - o.wait_s) <= 0.010, table
    (listener,) = state["listeners"]
    assert listener["listener"] == upstream.address, state
    assert state["stalls"] == []
    late = [o for o in outcomes[1:] if o.wait_s > WAITED_IF_LATE_S]
    if processes == 1:
        assert len(late) == 6 and listener["backlog"] >= 1, (table, state)
    else:
        assert late == [], table
