"""The monitor's look between polls (at_capacity, drain_by, look_interval_s): one cheap read
per worker that still brings a poll forward as soon as a worker is full or a ring fills."""

from __future__ import annotations

import time

from support.sidecar_support import FAKE_PID_BASE, MS, FakeProc, Req, S, finish, make_spool, start
from support.sidecar_support import stop as idle_slot

from wsgiwatch.sidecar.looks import DRAIN_AT, FAST_INTERVAL_S, IDLE_LOOK_S, LOOK_REUSE_S, Look
from wsgiwatch.sidecar.monitor import Monitor
from wsgiwatch.sidecar.poll_loop import PollLoop
from wsgiwatch.spool.reader import SpoolReader

W1, W2 = FAKE_PID_BASE + 31, FAKE_PID_BASE + 32


def fresh(monitor: Monitor) -> None:
    """Forget the last look: the next question reads the spools again."""
    monitor.looks.last = monitor.looks.last._replace(at=time.monotonic() - 10 * LOOK_REUSE_S)


def test_a_worker_that_fills_between_polls_is_at_capacity_at_the_next_look(
    spool_dir: str, proc: FakeProc
) -> None:
    proc.add(W1, 1000)
    proc.add(W2, 1000)
    one = make_spool(spool_dir, W1, capacity=2, slot_count=8)
    make_spool(spool_dir, W2, capacity=2, slot_count=8)
    monitor = Monitor(spool_dir, procfs_root=proc.root, use_kernel=False)
    try:
        monitor.poll()
        assert not monitor.at_capacity()
        assert monitor.look_interval_s() == IDLE_LOOK_S  # nothing runs: look less often
        now = time.monotonic_ns()
        start(one, 5, Req(now, peer_port=1))
        fresh(monitor)
        assert not monitor.at_capacity()  # one of two slots: not full
        assert monitor.look_interval_s() == FAST_INTERVAL_S  # a request runs: look often
        start(one, 7, Req(now, peer_port=2))  # slots anywhere on the board count
        fresh(monitor)
        assert monitor.at_capacity()
        idle_slot(one, 5)
        assert monitor.at_capacity()  # (answered from the look just made)
        fresh(monitor)
        assert not monitor.at_capacity()
    finally:
        monitor.close()


def test_a_slot_found_stuck_does_not_keep_its_worker_full(spool_dir: str, proc: FakeProc) -> None:
    """A server that never calls close() leaves a slot busy for good: the poll calls it
    stuck, and the look does not count it (else it would poll every 50 ms for ever)."""
    proc.add(W1, 1000)
    writer = make_spool(spool_dir, W1, capacity=1)
    start(writer, 0, Req(time.monotonic_ns() - 2 * S, peer_port=1))
    monitor = Monitor(spool_dir, procfs_root=proc.root, use_kernel=False, stuck_after_s=1.0)
    try:
        monitor.poll()
        (worker,) = monitor.registry.live()
        assert len(worker.stuck) == 1
        fresh(monitor)
        assert not monitor.at_capacity()
        start(writer, 1, Req(time.monotonic_ns(), peer_port=2))  # a real one now
        fresh(monitor)
        assert monitor.at_capacity()
    finally:
        monitor.close()


def test_a_ring_filling_out_of_quiet_is_due_at_the_next_look(
    spool_dir: str, proc: FakeProc
) -> None:
    proc.add(W1, 1000)
    writer = make_spool(spool_dir, W1, ring_capacity=64)
    monitor = Monitor(spool_dir, procfs_root=proc.root, use_kernel=False)
    try:
        monitor.poll()
        fresh(monitor)
        assert monitor.drain_by() is None
        base = time.monotonic_ns() - S
        for i in range(int(DRAIN_AT * 64)):
            finish(writer, Req(base + i * MS, base + i * MS + MS, peer_port=i + 1))
        fresh(monitor)
        due = monitor.drain_by()
        assert due is not None and due <= time.monotonic()
    finally:
        monitor.close()


def test_glance_agrees_with_the_header_and_the_scoreboard(spool_dir: str) -> None:
    writer = make_spool(spool_dir, W1, slot_count=9, ring_capacity=16)
    now = time.monotonic_ns()
    for slot in (0, 4, 8):
        start(writer, slot, Req(now, peer_port=slot + 1))
    for i in range(3):
        finish(writer, Req(now, now + MS, peer_port=100 + i))
    with SpoolReader(writer.path, track=False) as reader:
        head, requests = reader.glance()
        assert head == reader.header().ring_head == 3
        assert len(requests) == 9
        busy = {s.index: s.request for s in reader.scoreboard()}
        assert {i: r for i, r in enumerate(requests) if r} == busy
        assert sorted(busy) == [0, 4, 8]
        header, slots = reader.header_and_scoreboard()
        assert header == reader.header() and slots == reader.scoreboard()
    writer.unmap()


def test_the_loop_looks_less_often_while_every_worker_is_idle(
    spool_dir: str, proc: FakeProc
) -> None:
    """The real monitor under the real loop: about 1 / IDLE_LOOK_S looks a second while
    nothing runs, 1 / FAST_INTERVAL_S once a request runs, and a full worker polled at once."""
    proc.add(W1, 1000)
    writer = make_spool(spool_dir, W1, capacity=2)
    monitor = Monitor(spool_dir, procfs_root=proc.root, use_kernel=False, poll_interval_s=5.0)
    looks: list[float] = []
    real_look = monitor.looks.look

    def counted(now: float) -> Look:
        if now - monitor.looks.last.at >= LOOK_REUSE_S:
            looks.append(now)
        return real_look(now)

    monitor.looks.look = counted  # type: ignore[method-assign]
    loop = PollLoop(monitor, interval_s=5.0)
    loop.start()
    try:
        time.sleep(0.1)
        looks.clear()
        time.sleep(1.0)
        idle = len(looks)
        start(writer, 0, Req(time.monotonic_ns(), peer_port=1))
        time.sleep(0.2)
        looks.clear()
        time.sleep(1.0)
        busy = len(looks)
        polls = loop.polls
        start(writer, 1, Req(time.monotonic_ns(), peer_port=2))
        t0 = time.monotonic()
        while loop.polls == polls and time.monotonic() - t0 < 2:
            time.sleep(0.005)
        seen_after = time.monotonic() - t0
    finally:
        loop.stop()
        monitor.close()
    # Generous bounds (a shared machine wakes threads late), yet apart: 10 vs 20 a second.
    assert 5 <= idle <= 11, looks
    assert busy >= 14 and busy > idle + 4, (idle, busy)
    assert seen_after < 0.5  # full: polled at the next look, not at the 5 s tick
