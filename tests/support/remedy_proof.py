"""One run of a remedy proof: gunicorn gthread with the accept hook, the real sidecar, the
seeded traffic of :mod:`support.poisson_load`, and what ``wsgiwatch diagnose`` said after.

Used by ``tests/e2e/test_remedies.py`` (the proof) and ``benchmarks/remedies.py`` (the
figures of docs/fixing.md, with timeline pictures).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from support.poisson_load import Summary, Traffic, plan, send
from support.servers import VENV_BIN, free_port, gunicorn, run_server

WSGIWATCH = os.path.join(VENV_BIN, "wsgiwatch")


@contextlib.contextmanager
def sidecar(spool_dir: str) -> Iterator[str]:
    """The real sidecar, its log to a file: under this traffic it logs an incident per
    blocked request, more than a pipe nobody reads holds (its writes would then block)."""
    port = free_port()
    log = os.path.join(spool_dir, "sidecar.log")
    listen = f"127.0.0.1:{port}"
    script = f'exec "$0" sidecar --dir "$1" --listen {listen} --poll-interval 0.25 >"$2" 2>&1'
    with run_server(["sh", "-c", script, WSGIWATCH, spool_dir, log], port, spool_dir):
        yield f"http://127.0.0.1:{port}"


def api(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + path, timeout=5) as reply:
        data = json.load(reply)
    assert isinstance(data, dict)
    return data


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.1)


@dataclass
class Run:
    clients: Summary
    diagnose_text: str
    diagnose: dict[str, Any]


def diagnose(url: str) -> tuple[str, dict[str, Any]]:
    """``wsgiwatch diagnose`` of the run, as text and as JSON."""
    common = [WSGIWATCH, "diagnose", "--url", url, "--since", "120s"]
    text = subprocess.run(common, capture_output=True, text=True, timeout=60)
    data = subprocess.run([*common, "--json"], capture_output=True, text=True, timeout=60)
    assert text.returncode in (0, 1) and data.returncode == text.returncode, text.stderr
    return text.stdout, json.loads(data.stdout)


def run(
    spool_dir: str,
    extra: list[str],
    traffic: Traffic,
    *,
    workers: int = 2,
    threads: int = 2,
    timeline: str | None = None,
) -> Run:
    """gunicorn gthread ``workers`` x ``threads`` with ``extra`` flags under ``traffic``;
    ``timeline``: where to write ``wsgiwatch timeline``'s page of the run."""
    os.makedirs(spool_dir, mode=0o700)
    with (
        gunicorn(
            "apps.basic:application",
            spool_dir,
            worker_class="gthread",
            workers=workers,
            threads=threads,
            extra=["-c", "python:wsgiwatch.gunicorn_config", *extra],
        ) as server,
        sidecar(spool_dir) as url,
    ):
        wait_for("the workers", lambda: len(api(url, "/api/state")["workers"]) == workers)
        shots = send(server.port, plan(traffic))
        wait_for(
            "the sidecar to read every request",
            lambda: len(api(url, "/api/requests?since=120")["requests"]) >= len(shots),
        )
        if timeline:
            command = [WSGIWATCH, "timeline", "--url", url, "--since", "120s", "-o", timeline]
            subprocess.run(command, check=True, capture_output=True, timeout=60)
        return Run(Summary.of(shots), *diagnose(url))


def predicted_p99(data: dict[str, Any], flags: str, route: str) -> float:
    """The p99 of ``route`` that ``diagnose --json`` predicted for the remedy ``flags``."""
    forecast = data["forecast"]
    assert forecast["trusted"], forecast["reason"]
    [option] = [o for o in forecast["options"] if o["label"] == flags]
    [figures] = [r for r in option["routes"] if r["route"] == route]
    return float(figures["p99_s"])
