"""The servers the accuracy tests and ``benchmarks/accuracy.py`` score, each started the
way its users start it, plus the accept truth (:mod:`support.truth_accept`), and one run:
server and sidecar up, the traffic sent, the sidecar's records read back.

``hook=False`` is the default setup (``application = WSGIWatch(application)`` and
``wsgiwatch sidecar`` with its defaults); ``hook=True`` adds the opt-in accept hook where
the server has one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from support import traffic
from support.servers import TESTS_DIR, VENV_BIN, Server, free_port, wait_for_port
from wsgiwatch.cli.process_group import stop_group

APP = "apps.accuracy:application"


@contextlib.contextmanager
def run_logged(argv: list[str], port: int, spool_dir: str, env: dict[str, str]) -> Iterator[Server]:
    """Like ``support.servers.run_server``, but the output goes to a file in the spool
    directory's parent: a sidecar logs one JSON line per incident, and hundreds of them
    would fill a pipe nobody reads and stall it."""
    log_path = os.path.join(os.path.dirname(spool_dir), f"{os.path.basename(spool_dir)}-{port}.log")
    inherited = os.environ.get("PYTHONPATH")
    path = TESTS_DIR + (os.pathsep + inherited if inherited else "")
    full_env = dict(os.environ, WSGIWATCH_DIR=spool_dir, PYTHONPATH=path, **env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=TESTS_DIR,  # ``python -m`` puts the working directory first on sys.path
        )
    try:
        try:
            wait_for_port(port, proc)
        except RuntimeError as exc:
            with open(log_path, errors="replace") as log_text:
                raise RuntimeError(f"{exc}{log_text.read()}") from None
        yield Server(proc, port, spool_dir)
    finally:
        stop_group(proc)
        os.unlink(log_path)


@dataclass(frozen=True)
class Setup:
    name: str
    server: str  # gthread, sync, gevent, waitress, cheroot
    workers: int
    threads: int
    #: Requests one worker runs at once. gevent: 1, because the slow requests block the
    #: loop (nothing else runs meanwhile); the fast ones barely overlap anything.
    capacity: int
    has_hook: bool  # an opt-in accept hook exists for it today
    #: Requests per second. With the default traffic a request keeps a thread busy 58 ms
    #: on average (12% of them 0.46 s), so these keep each server's threads 43% (gthread
    #: 2x2) to 64% busy: queues form behind slow requests and drain again, rather than
    #: grow without end (as 30 requests/s would do to two threads).
    rate: float
    blocking: bool = True  # can a request wait inside a busy process at all?


SETUPS: dict[str, Setup] = {
    s.name: s
    for s in (
        Setup("gthread-2x2", "gthread", 2, 2, 2, True, rate=30),
        Setup("gthread-3x1", "gthread", 3, 1, 1, True, rate=30),
        Setup("waitress-2", "waitress", 1, 2, 2, True, rate=22),
        Setup("cheroot-2", "cheroot", 1, 2, 2, False, rate=22),
        Setup("gevent-1", "gevent", 1, 1, 1, False, rate=11),
        Setup("sync-2", "sync", 2, 1, 1, True, rate=30, blocking=False),
    )
}


def start_server(setup: Setup, spool_dir: str, hook: bool) -> Any:
    port = free_port()
    env = {"ACCURACY_HOOK": "1" if hook else "0"}
    if setup.server in ("gthread", "sync", "gevent"):
        argv = [
            os.path.join(VENV_BIN, "gunicorn"),
            *("--bind", f"127.0.0.1:{port}", "--workers", str(setup.workers)),
            *("--threads", str(setup.threads), "--worker-class", setup.server),
            *("--graceful-timeout", "2", "--log-level", "warning"),
            *("-c", "python:support.truth_gunicorn", APP),
        ]
    else:
        argv = [
            sys.executable,
            *("-m", "support.accuracy_runner", "--server", setup.server),
            *("--port", str(port), "--threads", str(setup.threads)),
            *(["--hook"] if hook else []),
            APP,
        ]
    return run_logged(argv, port, spool_dir, env)


@contextlib.contextmanager
def default_sidecar(spool_dir: str) -> Iterator[str]:
    """``wsgiwatch sidecar`` with its defaults but the listen address: yields its URL."""
    port = free_port()
    argv = [
        os.path.join(VENV_BIN, "wsgiwatch"),
        "sidecar",
        *("--dir", spool_dir, "--listen", f"127.0.0.1:{port}", "--log-format", "json"),
    ]
    with run_logged(argv, port, spool_dir, {}):
        yield f"http://127.0.0.1:{port}"


def api(url: str, path: str) -> Any:
    with urllib.request.urlopen(url + path, timeout=10) as reply:
        return json.load(reply)


def _warm_up(server: Server, url: str, setup: Setup, timeout_s: float = 20.0) -> None:
    """Fast requests until the sidecar knows every worker (spools open at first request)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for _ in range(setup.workers * 2):
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(server.url + "/work/0", timeout=5) as reply,
            ):
                reply.read()
        if len(api(url, "/api/state")["workers"]) >= setup.workers:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the sidecar did not see {setup.workers} workers of {setup.name}")


@dataclass
class Run:
    setup: Setup
    hook: bool
    shots: list[traffic.Shot]
    records: list[dict[str, Any]]
    threshold_s: float
    state: dict[str, Any]

    def score(self, kind: traffic.Kind | None = None) -> traffic.Score:
        return traffic.score(
            self.shots,
            self.records,
            capacity=self.setup.capacity,
            threshold_s=self.threshold_s,
            kind=kind,
        )


def run(setup: Setup, shape: traffic.Shape, spool_dir: str, *, hook: bool) -> Run:
    """One scored run: returns once the sidecar has read every answered request."""
    with start_server(setup, spool_dir, hook) as server, default_sidecar(spool_dir) as url:
        _warm_up(server, url, setup)
        shots = traffic.send(server.port, traffic.plan(shape, setup.rate))
        answered = [s for s in shots if s.status == 200]
        deadline = time.monotonic() + 15
        records: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            records = api(url, "/api/requests?since=300")["requests"]
            # Every request by its own record (pid, port, entry): a kept-alive connection's
            # port is seen at its first request, its last may not be judged yet.
            by_conn = traffic.index_records(records)
            if all(traffic.match(s, by_conn) is not None for s in answered):
                break
            time.sleep(0.25)
        state = api(url, "/api/state")
    return Run(setup, hook, shots, records, float(state["threshold_s"]), state)
