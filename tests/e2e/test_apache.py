"""Apache + mod_wsgi in daemon mode (Debian's apache2 and libapache2-mod-wsgi-py3), threads=1,
with the real sidecar running as www-data like the daemons, as examples/apache/ sets it up.

A mod_wsgi daemon accepts a request from Apache only when a thread is free, so a burst
waits in the daemon socket's kernel backlog: healthy queueing, never head-of-line blocking.
Client truth per request: the app answers with its entry time (CLOCK_MONOTONIC), so the
client knows how long each request waited in all; the sidecar must call none of them
blocked, and its phases (Apache, backlog, in-process) must add up to that wait.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from support.apache import Apache, apache, daemon_owned_dir, daemon_sidecar, sidecar_argv
from support.deploy_scenario import (
    WAITED_IF_LATE_S,
    Outcome,
    api,
    report,
    run_with_live_look,
    sidecar_views,
    slow_then_fast,
    wait_until,
)
from support.servers import VENV_BIN, free_port, sidecar

POLL_S = 0.25
WARM = "/r/warm?sleep=0.3"  # long enough that each daemon process takes one


@pytest.fixture
def daemon_spool() -> Iterator[str]:
    """A spool directory of www-data's, mode 0700, removed afterwards."""
    path = daemon_owned_dir("wsgiwatch-apache-spool-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def warm(front: Apache, processes: int, url: str) -> None:
    """One request per daemon process (each opens its spool on its first request); waits
    until the sidecar sees them all."""
    threads = [
        threading.Thread(
            target=lambda: urllib.request.urlopen(
                front.url + "/r/warm?sleep=0.3", timeout=10
            ).read()
        )
        for _ in range(processes)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    wait_until(
        lambda: len(api(url, "/api/state")["workers"]) == processes, what="every daemon process"
    )


def check_verdicts(outcomes: list[Outcome], views: dict[str, Any]) -> None:
    table = report(outcomes, views)
    for o in outcomes:
        view = views[o.route]
        assert not view["blocked"], table
        assert view["wait_source"] == "mod_wsgi", table
        assert view["wait_s"] < 0.005, table  # in the daemon: it began at once
        phases = view["phases"]
        # mod_wsgi's own account of the backlog, and the client's of the whole wait.
        assert abs(phases["backlog"] - o.mod_wsgi_backlog_s()) <= 0.001, table
        # The client's clock also runs through its connect and Apache's accept, before
        # Apache's request_start: a few ms on a busy machine (7 ms seen on 2 shared cores).
        assert 0 <= o.wait_s - sum(phases.values()) <= 0.015, table


def diagnose(url: str) -> str:
    return subprocess.run(
        [os.path.join(VENV_BIN, "wsgiwatch"), "diagnose", "--url", url],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("processes", [1, 2])
def test_daemon_backlog_is_never_head_of_line(processes: int, daemon_spool: str) -> None:
    with (
        apache(daemon_spool, processes=processes, dumpable=True) as front,
        daemon_sidecar(daemon_spool, "--poll-interval", str(POLL_S)) as (_, port),
    ):
        url = f"http://127.0.0.1:{port}"
        warm(front, processes, url)
        # SetEnv WSGIWATCH_DIR reached the daemons through the WSGI environ.
        assert len([n for n in os.listdir(daemon_spool) if n.endswith(".spool")]) == processes
        outcomes, state = run_with_live_look(front.port, url)
        views = sidecar_views(url, outcomes)
        check_verdicts(outcomes, views)
        late = [o for o in outcomes[1:] if o.wait_s > WAITED_IF_LATE_S]
        (listener,) = state["listeners"]  # the daemon socket, seen as www-data
        assert listener["listener"].startswith("unix:") and listener["listener"].endswith(".sock")
        assert state["stalls"] == []  # the request being served is no stall of its own
        assert state["kernel_unseen_workers"] == []
        if processes == 1:
            # Every fast request waited behind the slow one, in the backlog (where the
            # sidecar saw them queue) and never inside the daemon.
            assert len(late) == 6, report(outcomes, views)
            assert listener["backlog"] >= 1, state
            assert all(views[o.route]["phases"]["backlog"] > WAITED_IF_LATE_S for o in late)
        else:
            assert late == [], report(outcomes, views)  # the other daemon took them
        text = diagnose(url)
        assert text.splitlines()[2].startswith("HEALTHY"), text


@pytest.mark.timeout(120)
def test_non_dumpable_daemons_are_named_as_unseen(daemon_spool: str) -> None:
    """Without CoreDumpDirectory the daemons' /proc/PID/fd is root's: the www-data sidecar
    cannot see their sockets, and says which workers, why and what to do; its verdicts,
    from mod_wsgi's own times, stay right."""
    with (
        apache(daemon_spool, processes=1) as front,
        daemon_sidecar(daemon_spool, "--poll-interval", str(POLL_S)) as (_, port),
    ):
        url = f"http://127.0.0.1:{port}"
        warm(front, 1, url)
        (pid,) = [w["pid"] for w in api(url, "/api/state")["workers"]]
        health = api(url, "/healthz")
        (unseen,) = health["kernel_unseen_workers"]
        assert (unseen["pid"], unseen["reason"]) == (pid, "not_dumpable")
        assert "CoreDumpDirectory" in unseen["remedy"]
        with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        assert 'wsgiwatch_kernel_unseen_workers{reason="not_dumpable"} 1.0' in metrics
        assert 'wsgiwatch_kernel_unseen_workers{reason="other_user"} 0.0' in metrics
        outcomes = slow_then_fast(front.port)
        check_verdicts(outcomes, sidecar_views(url, outcomes))
        text = diagnose(url)
        assert "CoreDumpDirectory" in text, text


@pytest.mark.timeout(60)
def test_a_refused_spool_directory_shows_on_the_sidecar_side(tmp_path: Any) -> None:
    """A spool directory the daemons refuse (root's, as www-data's sidecar would refuse it
    too): the daemons record nothing and say so once in Apache's error log; a sidecar run as
    www-data will not start on it, and one run as root says why no worker shows."""
    refused = tmp_path / "spool"
    refused.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    with apache(str(refused), processes=1) as front:
        with urllib.request.urlopen(front.url + "/r/refused", timeout=10) as reply:
            assert reply.status == 200  # the app is served all the same
        wait_until(lambda: "recording_disabled" in front.error_log(), what="Apache's error log")
        failed = subprocess.run(
            sidecar_argv(str(refused), free_port()), capture_output=True, text=True, timeout=30
        )
        assert failed.returncode == 1 and "sidecar.spool_dir_refused" in failed.stderr, failed
        running, port = sidecar(str(refused))
        with running:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: api(url, "/healthz")["polls"] > 0, what="a poll")
            health = api(url, "/healthz")
            assert health["workers"] == 0
            assert "belongs to root" in health["spool_dir_problem"], health
            with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
                assert "wsgiwatch_spool_dir_refused 1.0" in reply.read().decode()


@pytest.mark.timeout(60)
def test_a_daemons_capacity_is_its_threads(daemon_spool: str) -> None:
    with (
        apache(daemon_spool, processes=1, threads=3) as front,
        daemon_sidecar(daemon_spool, "--poll-interval", str(POLL_S)) as (_, port),
    ):
        url = f"http://127.0.0.1:{port}"
        warm(front, 1, url)
        ((worker),) = api(url, "/api/state")["workers"]
        assert worker["capacity"] == 3


@pytest.mark.timeout(60)
def test_a_sub_interpreter_records_in_python_and_diagnose_says_why(daemon_spool: str) -> None:
    """An application group other than %{GLOBAL} is a sub-interpreter, which the C path
    does not serve: the worker records in Python, and diagnose names the cause (not a
    missing compiler)."""
    with (
        apache(daemon_spool, processes=1, application_group="app") as front,
        daemon_sidecar(daemon_spool, "--poll-interval", str(POLL_S)) as (_, port),
    ):
        url = f"http://127.0.0.1:{port}"
        warm(front, 1, url)
        ((worker),) = api(url, "/api/state")["workers"]
        assert worker["accelerated"] is False
        text = diagnose(url)
        assert "sub-interpreter" in text and "WSGIApplicationGroup %{GLOBAL}" in text, text
        assert "compiler" not in text.split("sub-interpreter")[0], text
