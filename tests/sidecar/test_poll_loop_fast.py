"""The poll loop polls sooner while a worker is at capacity, and on its grid otherwise."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from wsgiwatch.sidecar.poll_loop import PollLoop, StopSignal


class BusyFor:
    """A monitor stand-in: at capacity between two moments; polls timed."""

    fast_interval_s = 0.02

    def __init__(self, busy_from: float, busy_until: float) -> None:
        self.busy_from, self.busy_until = busy_from, busy_until
        self.polls: list[float] = []
        self.started = time.monotonic()
        self.done = threading.Event()

    def poll(self) -> None:
        self.polls.append(time.monotonic() - self.started)

    def at_capacity(self) -> bool:
        return self.busy_from <= time.monotonic() - self.started < self.busy_until

    def __getattr__(self, name: str) -> Any:  # the rest of MonitorProtocol: unused here
        raise AttributeError(name)


def test_polls_come_fast_while_at_capacity_and_the_grid_resumes_after() -> None:
    monitor = BusyFor(busy_from=0.5, busy_until=1.0)
    loop = PollLoop(monitor, interval_s=0.4)  # type: ignore[arg-type]
    loop.start()
    time.sleep(2.2)
    loop.stop()
    polls = monitor.polls
    during = [t for t in polls if 0.5 <= t < 1.0]
    after = [t for t in polls if t >= 1.1]
    # At capacity: a poll every fast interval or so (0.02 s; generous for a loaded machine).
    assert len(during) >= 8, polls
    # Then back on the 0.4 s grid: neither stalled nor still fast.
    assert 2 <= len(after) <= 4, polls
    assert max(b - a for a, b in itertools.pairwise(after)) < 0.6, polls
    assert loop.overruns == 0


class SlowPolls(BusyFor):
    """Always at capacity, and each poll takes 40 ms (a dump of 10,000 connections)."""

    def poll(self) -> None:
        super().poll()
        time.sleep(0.04)


def test_expensive_polls_at_capacity_take_at_most_their_share_of_a_core() -> None:
    monitor = SlowPolls(busy_from=0, busy_until=99)
    loop = PollLoop(monitor, interval_s=0.5)  # type: ignore[arg-type]
    loop.start()
    time.sleep(1.0)
    loop.stop()
    # Unbounded, a 40 ms poll after every 20 ms fast interval: 16 polls a second, 67% of a
    # core. At CAPACITY_POLL_SHARE (0.2): one 200 ms after the last began, plus the grid's
    # (0 and 0.5 s, which are not brought forward and so not spaced): 6 or 7.
    assert 4 <= len(monitor.polls) <= 7, monitor.polls
    off_grid = [t for t in monitor.polls if min(t % 0.5, 0.5 - t % 0.5) > 0.02]
    gaps = [b - a for a, b in itertools.pairwise(monitor.polls) if b in off_grid]
    assert gaps and min(gaps) >= 0.09, monitor.polls
    assert loop.overruns == 0


def test_an_idle_monitor_is_polled_on_the_grid_only() -> None:
    monitor = BusyFor(busy_from=99, busy_until=99)
    loop = PollLoop(monitor, interval_s=0.2)  # type: ignore[arg-type]
    loop.start()
    time.sleep(1.05)
    loop.stop()
    assert 5 <= len(monitor.polls) <= 7, monitor.polls


def test_stop_signal_wakes_a_waiter_at_once_and_stays_set() -> None:
    signal = StopSignal()
    assert not signal.wait(0.01) and not signal.is_set()
    woke: list[float] = []

    def waiter() -> None:
        t0 = time.monotonic()
        signal.wait(30)
        woke.append(time.monotonic() - t0)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    signal.set()
    signal.set()  # twice: harmless
    thread.join(5)
    assert woke and woke[0] < 5
    assert signal.wait(30) and signal.is_set()  # set for good: no wait any more
