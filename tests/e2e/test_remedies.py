"""Proof of each remedy ``wsgiwatch diagnose`` can print: on the real server, the same
seeded traffic before and after the change, taken exactly as printed.

Before: gunicorn gthread 2 workers x 2 threads (accept hook on), seeded Poisson traffic
(30 requests/s for 10 s, 12% slow requests of 120 to 800 ms, each on its own connection),
the real sidecar. ``diagnose`` must find head-of-line blocking and print a remedy with its
flags (``add: ...``) and a prediction. After: the same server started with those flags,
the same traffic. Then, per the promise the advice makes:

- nothing waits inside a busy worker any more (the sidecar finds no blocked request);
- the fast route's p99, as its clients saw it, drops;
- throughput holds (within 5%; no request fails);
- the p99 predicted for the fast route before the change is within 25% (or 20 ms) of the
  one measured after it.

The figures print with ``-s``; docs/fixing.md quotes a run of record.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from support.poisson_load import Summary, Traffic, plan, send
from support.servers import VENV_BIN, Server, free_port, gunicorn, run_server

from wsgiwatch.remedies.forecast import within_tolerance

TRAFFIC = Traffic(rate=30.0, duration_s=10.0, slow_share=0.12, slow_s=(0.12, 0.8), seed=7)
WSGIWATCH = os.path.join(VENV_BIN, "wsgiwatch")


@contextlib.contextmanager
def sidecar(spool_dir: str) -> Iterator[str]:
    """The real sidecar, its log to a file: under this traffic it logs an incident per
    blocked request, more than a pipe nobody reads holds (its writes would then block)."""
    port = free_port()
    log = os.path.join(spool_dir, "sidecar.log")
    argv = [
        "sh",
        "-c",
        f'exec "$0" sidecar --dir "$1" --listen 127.0.0.1:{port} --poll-interval 0.25 > "$2" 2>&1',
        WSGIWATCH,
        spool_dir,
        log,
    ]
    with run_server(argv, port, spool_dir):
        yield f"http://127.0.0.1:{port}"


def api(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + path, timeout=5) as reply:
        data = json.load(reply)
    assert isinstance(data, dict)
    return data


def wait_for(what: str, condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.1)


@dataclass
class Run:
    clients: Summary
    diagnose_text: str
    diagnose: dict[str, Any]


def run(spool_dir: str, extra: list[str]) -> Run:
    os.makedirs(spool_dir, mode=0o700)
    with (
        gunicorn(
            "apps.basic:application",
            spool_dir,
            worker_class="gthread",
            workers=2,
            threads=2,
            extra=["-c", "python:wsgiwatch.gunicorn_config", *extra],
        ) as server,
        sidecar(spool_dir) as url,
    ):
        wait_for("two workers", lambda: len(api(url, "/api/state")["workers"]) == 2)
        shots = send(server.port, plan(TRAFFIC))
        wait_for(
            "the sidecar to read every request",
            lambda: len(api(url, "/api/requests?since=120")["requests"]) >= len(shots),
        )
        return Run(Summary.of(shots), *diagnose(server, url))


def diagnose(server: Server, url: str) -> tuple[str, dict[str, Any]]:
    common = ["--url", url, "--since", "120s"]
    text = subprocess.run(
        [WSGIWATCH, "diagnose", *common], capture_output=True, text=True, timeout=60
    )
    data = subprocess.run(
        [WSGIWATCH, "diagnose", *common, "--json"], capture_output=True, text=True, timeout=60
    )
    assert text.returncode in (0, 1) and data.returncode == text.returncode, text.stderr
    return text.stdout, json.loads(data.stdout)


def predicted_p99(data: dict[str, Any], flags: str, route: str) -> float:
    forecast = data["forecast"]
    assert forecast["trusted"], forecast["reason"]
    [option] = [o for o in forecast["options"] if o["label"] == flags]
    [figures] = [r for r in option["routes"] if r["route"] == route]
    return float(figures["p99_s"])


def test_gthread_worker_connections_remedy(tmp_path: Any) -> None:
    before = run(os.path.join(tmp_path, "before"), [])
    assert before.diagnose["verdict"] == "blocking", before.diagnose_text
    assert before.clients.errors == 0
    printed = re.findall(r"^\s+add: (.+)$", before.diagnose_text, re.MULTILINE)
    assert printed == ["--worker-connections 2 --keep-alive 0"], before.diagnose_text
    flags = printed[0]
    predicted = predicted_p99(before.diagnose, flags, "/fast")

    after = run(os.path.join(tmp_path, "after"), flags.split())
    print(
        f"\ngthread 2x2, {TRAFFIC}:\n"
        f"  before: blocked {before.diagnose['blocked']}, /fast p50 "
        f"{before.clients.fast_p50_s * 1000:.0f} ms p99 {before.clients.fast_p99_s * 1000:.0f} ms,"
        f" {before.clients.throughput:.2f} req/s\n"
        f"  predicted with {flags}: /fast p99 {predicted * 1000:.0f} ms\n"
        f"  after:  blocked {after.diagnose['blocked']}, /fast p50 "
        f"{after.clients.fast_p50_s * 1000:.0f} ms p99 {after.clients.fast_p99_s * 1000:.0f} ms,"
        f" {after.clients.throughput:.2f} req/s"
    )
    assert after.diagnose["verdict"] == "healthy", after.diagnose_text
    assert after.diagnose["blocked"] == 0 and after.clients.errors == 0
    assert after.clients.fast_p99_s < before.clients.fast_p99_s
    assert abs(after.clients.throughput / before.clients.throughput - 1) <= 0.05
    assert within_tolerance(predicted, after.clients.fast_p99_s), (predicted, after.clients)
    # The remedy is in place now: diagnose must not print it again.
    assert "add:" not in after.diagnose_text
