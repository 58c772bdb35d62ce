"""The forecast against recorded real runs: gunicorn gthread 2 x 2 under the seeded
traffic of tests/e2e/test_remedies.py, before and after ``--worker-connections 2
--keep-alive 0`` (``gthread_2x2_run.json``: the sidecar's ``/api/requests`` and
``/api/state`` of each run, times from 1 s before the first request, and what the clients
saw).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest

from wsgiwatch.remedies.catalog import Deployment, remedies_for
from wsgiwatch.remedies.forecast import MIN_JOBS, forecast, within_tolerance
from wsgiwatch.remedies.model import Shape
from wsgiwatch.remedies.predict import predict
from wsgiwatch.remedies.recorded import deployment_from, jobs_from

with open(os.path.join(os.path.dirname(__file__), "gthread_2x2_run.json")) as f:
    RUNS: dict[str, Any] = json.load(f)


def deployment(run: dict[str, Any]) -> Deployment:
    return deployment_from(run["workers"], 0)


def test_the_recorded_deployment_is_gthread_2x2() -> None:
    d = deployment(RUNS["before"])
    assert (d.kind, d.workers, d.threads) == ("gthread", 2, 2)
    assert d.shape() == Shape(2, 2, gate=False, worker_connections=1000)
    [remedy] = remedies_for(d)
    assert remedy.flags == RUNS["after"]["flags"] == "--worker-connections 2 --keep-alive 0"
    assert remedy.shape == Shape(2, 2, gate=True)


def test_replay_of_today_reproduces_what_was_measured() -> None:
    before = RUNS["before"]
    f = predict(before["requests"], deployment(before), before["threshold_s"])
    assert f.trusted, f.reason
    assert f.measured is not None and f.today is not None
    assert within_tolerance(f.today.p99_s, f.measured.p99_s)
    fast_measured, fast_replayed = f.measured.route("/fast"), f.today.route("/fast")
    assert fast_measured is not None and fast_replayed is not None
    assert within_tolerance(fast_replayed.p99_s, fast_measured.p99_s)
    # The sidecar's blocked count and the replay's agree within a few requests.
    assert abs(f.today.blocked - f.measured.blocked) <= max(3, f.measured.blocked // 10)


def test_the_remedy_predicted_from_before_matches_after() -> None:
    before, after = RUNS["before"], RUNS["after"]
    f = predict(before["requests"], deployment(before), before["threshold_s"])
    [option] = f.options
    assert option.label == after["flags"] and option.blocked == 0
    fast = option.route("/fast")
    assert fast is not None
    assert within_tolerance(fast.p99_s, after["clients"]["fast_p99_s"])
    # And what the sidecar measured after the change, replayed, is what was predicted.
    g = predict(after["requests"], deployment(after), after["threshold_s"], options=[])
    assert g.measured is not None and g.measured.blocked == 0
    fast_after = g.measured.route("/fast")
    assert fast_after is not None and within_tolerance(fast.p99_s, fast_after.p99_s)


def test_a_model_that_does_not_fit_predicts_nothing() -> None:
    """Told the workers had 4 threads where they had 2, the replay misses what was
    measured: no prediction, and the reason says so."""
    before = RUNS["before"]
    wrong = Shape(2, 4, gate=False, worker_connections=1000)
    f = forecast(jobs_from(before["requests"]), wrong, [("x", wrong)], before["threshold_s"])
    assert not f.trusted and f.options == []
    assert "does not fit" in f.reason


def test_too_few_timed_requests_predict_nothing() -> None:
    before = RUNS["before"]
    few = copy.deepcopy(before["requests"][: MIN_JOBS - 1])
    untimed = [dict(r, wait_source="none") for r in before["requests"][MIN_JOBS:]]
    f = predict([*few, *untimed], deployment(before), before["threshold_s"])
    assert not f.trusted and f.recorded.untimed == len(untimed)
    assert f"fewer than the {MIN_JOBS}" in f.reason


@pytest.mark.parametrize("source", ["none", "header"])
def test_requests_without_a_process_time_are_left_out(source: str) -> None:
    r = dict(RUNS["before"]["requests"][0], wait_source=source)
    recorded = jobs_from([r])
    assert (recorded.jobs, recorded.untimed) == ([], 1)
