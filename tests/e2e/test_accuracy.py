"""Accuracy, request by request: every server, seeded open-loop traffic, fresh and kept-alive
connections, each sidecar verdict scored against the client's own truth.

Truth and scoring are in ``support.traffic``; the servers in ``support.accuracy_setups``.
A run sends 10 s of Poisson traffic (12% slow requests of 120 to 800 ms, at about half the
rate the server can take), half of it on fresh connections and half on kept-alive ones, and
both halves must each reach recall and precision >= 0.99 with a median wait error within
5 ms. *default* is ``application = WSGIWatch(application)`` and ``wsgiwatch sidecar`` with
its defaults; *hook* adds the opt-in accept hook where the server has one.
``benchmarks/accuracy.py`` runs the same for longer and prints the table.
"""

from __future__ import annotations

import pytest
from support import accuracy_setups, traffic

SHAPE = traffic.Shape(duration_s=10.0, seed=7)
MIN_RECALL = MIN_PRECISION = 0.99
MAX_MEDIAN_ERROR_MS = 5.0
#: Fewer truly blocked requests than this and a run proves too little (the traffic failed
#: to make any blocking): the run itself fails rather than passing on nothing.
MIN_BLOCKED = 5

CASES = [
    pytest.param(setup, mode, id=f"{name}-{mode}")
    for name, setup in accuracy_setups.SETUPS.items()
    for mode in ("default", "hook")
    if setup.has_hook or mode == "default"
]


@pytest.mark.parametrize(("setup", "mode"), CASES)
def test_every_blocked_request_is_found_and_timed(
    setup: accuracy_setups.Setup, mode: str, spool_dir: str
) -> None:
    run = accuracy_setups.run(setup, SHAPE, spool_dir, hook=mode == "hook")
    failed = [s for s in run.shots if s.status != 200]
    assert not failed, f"{len(failed)} requests failed, e.g. {failed[0].error}"
    for kind in ("fresh", "kept"):
        score = run.score(kind)  # type: ignore[arg-type]
        report = f"{setup.name} {mode} {kind}: {score.row()}\n" + "\n".join(score.misses())
        assert score.unmatched == 0, report
        assert score.precision >= MIN_PRECISION, report
        if not setup.blocking:
            # The control: requests did wait (in the kernel's backlog), none inside a worker.
            assert score.positives == 0, report
            assert score.false_pos == 0, report
            continue
        assert score.positives >= MIN_BLOCKED, report
        assert score.recall >= MIN_RECALL, report
        assert score.median_error_ms is not None, report
        assert score.median_error_ms <= MAX_MEDIAN_ERROR_MS, report
    if not setup.blocking:
        backlog_waits = [s for s in run.shots if s.done_ns - s.send_ns - s.work_ms * 1e6 > 1e8]
        assert backlog_waits, "the control run never queued: it proves nothing"
