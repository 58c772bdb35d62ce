"""The queueing model, on cases small enough to work out by hand, and on its promises."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wsgiwatch.remedies.model import Job, Shape, percentile, simulate

MS = 1_000_000


def job(at_ms: int, service_ms: int, worker: int = 0, route: str = "/fast") -> Job:
    return Job(route, at_ms * MS, at_ms * MS, service_ms * MS, worker)


#: A slow request in worker 0, then a fast one that worker 0 accepted while worker 1 idled.
SLOW_THEN_FAST = [job(0, 1000, 0, "/slow"), job(100, 10, 0)]


def test_recorded_dispatch_keeps_the_fast_request_behind_the_slow_one() -> None:
    slow, fast = simulate(SLOW_THEN_FAST, Shape(2, 1, gate=False), "recorded")
    assert (slow.entry_ns, slow.latency_ns) == (0, 1000 * MS)
    assert fast.worker == 0 and fast.entry_ns == 1000 * MS
    assert fast.process_wait_ns == 900 * MS and fast.backlog_wait_ns == 0
    assert fast.latency_ns == 910 * MS


def test_a_gate_sends_the_fast_request_to_the_idle_worker() -> None:
    slow, fast = simulate(SLOW_THEN_FAST, Shape(2, 1, gate=True))
    assert fast.worker != slow.worker
    assert fast.latency_ns == 10 * MS and fast.process_wait_ns == 0


def test_a_gated_pool_leaves_the_wait_in_the_kernel_backlog() -> None:
    """Both workers busy: the third request waits in the backlog for the first to finish,
    whichever worker that is."""
    jobs = [job(0, 500, route="/slow"), job(0, 300, route="/slow"), job(100, 10)]
    outcomes = simulate(jobs, Shape(2, 1, gate=True))
    third = outcomes[2]
    assert third.accept_ns == 300 * MS and third.backlog_wait_ns == 200 * MS
    assert third.process_wait_ns == 0 and third.worker == outcomes[1].worker


def test_greedy_workers_stop_accepting_at_worker_connections() -> None:
    """One worker, one thread, at most 2 connections: the third waits in the backlog until
    the first ends, then waits inside for the second."""
    jobs = [job(0, 100), job(10, 100), job(20, 100)]
    _, second, third = simulate(jobs, Shape(1, 1, gate=False, worker_connections=2))
    assert second.accept_ns == 10 * MS and second.process_wait_ns == 90 * MS
    assert third.accept_ns == 100 * MS and third.backlog_wait_ns == 80 * MS
    assert third.entry_ns == 200 * MS and third.process_wait_ns == 100 * MS


def test_greedy_dispatch_is_seeded() -> None:
    jobs = [job(i * 7, 50 + (i * 37) % 400, route=f"/r{i % 3}") for i in range(200)]
    shape = Shape(3, 2, gate=False)
    one = [o.worker for o in simulate(jobs, shape, seed=5)]
    assert one == [o.worker for o in simulate(jobs, shape, seed=5)]
    assert one != [o.worker for o in simulate(jobs, shape, seed=6)]


jobs_strategy = st.lists(
    st.tuples(st.integers(0, 2000), st.integers(1, 800)), min_size=1, max_size=60
).map(lambda pairs: [job(at, service) for at, service in pairs])


@given(jobs_strategy, st.integers(1, 3), st.integers(1, 3))
def test_a_gated_pool_never_leaves_a_slot_idle_while_one_waits(
    jobs: list[Job], workers: int, threads: int
) -> None:
    """Work conserving: nothing waits inside a worker, and a request waits in the backlog
    only while every slot of every worker is busy."""
    outcomes = simulate(jobs, Shape(workers, threads, gate=True))
    assert len(outcomes) == len(jobs)
    for o in outcomes:
        assert o.process_wait_ns == 0
        if o.backlog_wait_ns:
            t = o.job.arrival_ns
            running = sum(1 for x in outcomes if x.entry_ns <= t < x.exit_ns)
            assert running == workers * threads


@given(jobs_strategy, st.integers(1, 3))
def test_recorded_replay_never_runs_more_than_the_threads(jobs: list[Job], threads: int) -> None:
    outcomes = simulate(jobs, Shape(1, threads, gate=False), "recorded")
    for o in outcomes:
        assert o.entry_ns >= o.job.ready_ns
        running = sum(1 for x in outcomes if x.entry_ns <= o.entry_ns < x.exit_ns)
        assert running <= threads


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.99) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 99.0 and percentile(values, 1.0) == 100.0
