"""``wsgiwatch whatif``: the forecast printed from a sidecar that serves a recorded real run
(gunicorn gthread 2 x 2 before the remedy, ``tests/remedies/gthread_2x2_run.json``)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from support.fake_monitor import STATE, FakeMonitor
from support.hol_scenario import WSGIWATCH

from wsgiwatch.cli import build_parser
from wsgiwatch.sidecar.server import SidecarServer

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FILE = os.path.join(TESTS, "remedies", "gthread_2x2_run.json")
with open(RUN_FILE) as f:
    BEFORE: dict[str, Any] = json.load(f)["before"]


class RecordedRun(FakeMonitor):
    """A sidecar's views of the recorded run (the request times as they were kept)."""

    def recent_requests(self, since_s: float = 60.0) -> dict[str, Any]:
        return {"now_ns": 10**12, "wall_offset_ns": 0, "requests": BEFORE["requests"]}

    def state(self) -> dict[str, Any]:
        state = dict(STATE, stalls=[], threshold_s=BEFORE["threshold_s"])
        state["workers"] = [dict(w, pid=100 + i) for i, w in enumerate(BEFORE["workers"])]
        return state


@contextlib.contextmanager
def recorded_sidecar() -> Iterator[str]:
    with SidecarServer(RecordedRun(), port=0, poll_interval_s=0.1) as server:
        yield server.url


def whatif(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WSGIWATCH, "whatif", "--url", url, *args], capture_output=True, text=True, timeout=60
    )


def test_whatif_predicts_the_proven_remedy() -> None:
    with recorded_sidecar() as url:
        result = whatif(url)
        data = json.loads(whatif(url, "--json").stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert "(2 x 2 threads, accepts greedily)" in text
    assert "Model check: today's configuration replayed gives p99" in text
    assert "[1] --worker-connections 2 --keep-alive 0: 2 x 2 threads, accepts only" in text
    assert "nothing blocked" in text
    assert data["kind"] == "gthread" and data["trusted"]
    [option] = data["options"]
    assert option["label"] == "--worker-connections 2 --keep-alive 0" and option["blocked"] == 0
    fast_before = next(r for r in data["measured"]["routes"] if r["route"] == "/fast")
    fast_after = next(r for r in option["routes"] if r["route"] == "/fast")
    assert fast_after["p99_s"] < fast_before["p99_s"]
    # The table's /fast row carries the measured and predicted p99 as printed above.
    row = next(line for line in result.stdout.splitlines() if line.startswith("/fast "))
    assert f"{fast_before['p99_s'] * 1000:.0f} ms" in row
    assert f"{fast_after['p99_s'] * 1000:.0f} ms" in row


def test_whatif_tries_the_shape_asked_for() -> None:
    with recorded_sidecar() as url:
        data = json.loads(whatif(url, "--json", "--threads", "4").stdout)
        more = json.loads(whatif(url, "--json", "--workers", "4", "--gate", "on").stdout)
    [option] = data["options"]
    assert option["shape"] == {
        "workers": 2,
        "threads": 4,
        "gate": False,
        "worker_connections": 1000,
    }
    assert option["label"] == "2 x 4 threads, accepts greedily"
    [gated] = more["options"]
    assert gated["shape"]["gate"] and gated["blocked"] == 0


def test_whatif_says_why_it_cannot_predict() -> None:
    with SidecarServer(FakeMonitor(), port=0, poll_interval_s=0.1) as server:
        result = whatif(server.url)
    assert result.returncode == 1
    assert "No prediction: 2 timed requests in the window, fewer than the 20" in " ".join(
        result.stdout.split()
    )


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_counts_must_be_whole_and_positive(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["whatif", "--threads", bad])
    assert exc.value.code == 2
    assert "--threads" in capsys.readouterr().err
