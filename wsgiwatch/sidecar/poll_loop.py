"""The sidecar's poll loop: ``monitor.poll()`` on a fixed-rate schedule, in a thread, and
sooner while some worker is at capacity (when the monitor can say so cheaply: it is then
that requests queue inside a worker, and a stall should be on /metrics within moments).

A poll that raises is logged (``sidecar.poll_failed``, with the traceback) and counted, and
the loop goes on: one bad spool or a kernel hiccup must not stop the metrics. The loop
also knows when a poll last succeeded, which is what ``/healthz`` reports on.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import structlog

from wsgiwatch.sidecar.contract import MonitorProtocol

log = structlog.get_logger("wsgiwatch.sidecar")

#: /healthz turns 503 when no poll has succeeded for this many poll intervals.
STALE_AFTER_INTERVALS = 3
#: How often per poll interval the loop asks a monitor with ``drain_by`` whether a ring fills
#: faster than the schedule drains it (the monitor keeps the answer cheap).
DRAIN_CHECKS = 5
#: Polls brought forward because a worker is at capacity take at most this share of a core
#: (wall time, which a starved sidecar also backs off on): a poll that dumps 10,000
#: connections takes about 25 ms, so then one every 125 ms rather than every 50 ms.
CAPACITY_POLL_SHARE = 0.2
#: How long stop() waits for a poll in progress before leaving its (daemon) thread behind.
STOP_JOIN_TIMEOUT_S = 10.0


def next_deadline(deadline: float, now: float, interval: float) -> float:
    """The first tick of the schedule ``deadline + k * interval`` (k >= 1) later than ``now``.

    Ticks are computed from the previous tick, not from when a poll ended, so the rate does
    not drift by the poll's own duration; ticks missed by an overrunning poll are skipped
    rather than made up in a burst.
    """
    deadline += interval
    if deadline <= now:
        deadline += (math.floor((now - deadline) / interval) + 1) * interval
    return deadline


class StopSignal:
    """``threading.Event``'s ``set``/``is_set``/``wait``, for threads that wait on it with a
    timeout many times a second: the poll thread wakes ten to twenty times a second, and
    ``Event.wait`` builds a condition waiter (a new lock, a deque entry) each time, a third
    of what the wake-up costs. Here the waiter blocks on one lock held until ``set()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        try:
            self._lock.release()
        except RuntimeError:  # (released by a concurrent set() meanwhile)
            pass

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds or until ``set()``; whether it is set."""
        if not self._set and self._lock.acquire(timeout=min(timeout, threading.TIMEOUT_MAX)):
            self._lock.release()  # (for whichever waiter comes next)
        return self._set


class PollLoop:
    """Calls ``monitor.poll()`` every ``interval_s`` seconds in a daemon thread.

    A failing poll is logged (``sidecar.poll_failed``) and counted; the loop goes on.
    """

    def __init__(self, monitor: MonitorProtocol, interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"poll interval must be positive, got {interval_s!r}")
        self.monitor = monitor
        self.interval_s = interval_s
        self.polls = 0
        self.failures = 0
        self.overruns = 0  # ticks skipped because a poll took longer than the interval
        self.early_polls = 0  # polls before the schedule's, so that no ring overflowed
        self.started_at: float | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._stop = StopSignal()
        #: No poll for a worker at capacity before this (CAPACITY_POLL_SHARE of the last).
        self._capacity_not_before = 0.0
        self._thread = threading.Thread(target=self._run, name="wsgiwatch-poll", daemon=True)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float = STOP_JOIN_TIMEOUT_S) -> bool:
        """Stop after the poll in progress; False if it did not finish within ``timeout``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def poll_once(self) -> bool:
        try:
            self.monitor.poll()
        except Exception as exc:  # a broken poll must never end the loop
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("sidecar.poll_failed", failures=self.failures)
            return False
        self.polls += 1
        self.last_success = time.monotonic()
        return True

    def _run(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll_once()
            now = time.monotonic()
            self._capacity_not_before = now + (now - started) * (1 / CAPACITY_POLL_SHARE - 1)
            if deadline <= now:  # a poll on the grid (not one brought forward): the next tick
                following = next_deadline(deadline, now, self.interval_s)
                self.overruns += round((following - deadline) / self.interval_s) - 1
                deadline = following
            if self._wait_for_next_poll(deadline):
                break

    def _wait_for_next_poll(self, deadline: float) -> bool:
        """Sleep until ``deadline``, or less when the monitor asks for a poll sooner; True
        when asked to stop.

        Two optional, cheap questions (reads of the spools' scoreboards and ring heads) bring
        a poll forward: ``at_capacity()``, every ``fast_interval_s``: some worker is full, so
        requests may queue inside it and a stall should be on /metrics within moments; and
        ``drain_by()``, a few times per interval: when, at the rate seen, a ring would be
        lapped before the scheduled poll (see ``Monitor.drain_by``). Polls for a worker at
        capacity are spaced so that they take at most ``CAPACITY_POLL_SHARE`` of a core
        (they are the expensive ones: the kernel's connections are dumped then); polls for
        a filling ring are not, records being worth more than a moment of the live view.

        A monitor may also say, with ``look_interval_s()``, how soon it wants to be asked
        again (``Monitor``: while every worker is idle, less often than while one runs a
        request): each wake-up costs about as much as the look itself, on a VM more.
        """
        at_capacity = getattr(self.monitor, "at_capacity", None)
        fast = float(getattr(self.monitor, "fast_interval_s", 0) or 0)
        if not callable(at_capacity) or not 0 < fast < self.interval_s:
            at_capacity = None
        drain_by = getattr(self.monitor, "drain_by", None)
        if not callable(drain_by):
            drain_by = None
        look_interval = getattr(self.monitor, "look_interval_s", None)
        if not callable(look_interval):
            look_interval = None
        if at_capacity is None and drain_by is None:
            return self._stop.wait(max(0.0, deadline - time.monotonic()))
        while True:
            now = time.monotonic()
            wake = deadline
            if drain_by is not None:
                try:
                    due: float | None = drain_by()
                except Exception:  # the poll itself will report what is wrong
                    return False
                now = time.monotonic()  # (after the call: "due now" is due by then)
                if due is not None and due <= now < deadline:
                    self.early_polls += 1
                    return False
                wake = min(wake, now + self.interval_s / DRAIN_CHECKS)
                if due is not None:
                    wake = min(wake, due)
            if at_capacity is not None:
                pace = fast
                if look_interval is not None:
                    try:
                        pace = min(max(fast, float(look_interval())), self.interval_s)
                    except Exception:  # (the poll itself will report what is wrong)
                        pace = fast
                wake = min(wake, max(now + pace, self._capacity_not_before))
            if self._stop.wait(max(0.0, wake - now)):
                return True
            if wake >= deadline:
                return False
            if at_capacity is not None and time.monotonic() >= self._capacity_not_before:
                try:
                    if at_capacity():
                        return False
                except Exception:  # the poll itself will report what is wrong
                    return False

    def seconds_since_success(self, now: float | None = None) -> float | None:
        """Age of the last successful poll (before the first: time since start)."""
        since = self.last_success if self.last_success is not None else self.started_at
        if since is None:
            return None
        return (time.monotonic() if now is None else now) - since

    def healthy(self, now: float | None = None) -> bool:
        age = self.seconds_since_success(now)
        return age is not None and age <= STALE_AFTER_INTERVALS * self.interval_s

    def status(self) -> dict[str, Any]:
        """``status``: ``ok``; ``degraded`` (polls succeed, but what they see is incomplete:
        ``degraded_reasons`` says why); ``starting``; ``stale`` (no successful poll lately,
        /healthz answers 503); ``stopped``."""
        age = self.seconds_since_success()
        reasons: list[str] = []
        if age is None:
            state = "stopped"
        elif not self.healthy():
            state = "stale"
        elif self.last_success is None:
            state = "starting"
        else:
            reasons = self.monitor.degraded()
            state = "degraded" if reasons else "ok"
        return {
            "status": state,
            "degraded_reasons": reasons,
            "successful_polls": self.polls,
            "poll_failures": self.failures,
            "early_polls": self.early_polls,
            "poll_overruns": self.overruns,
            "seconds_since_successful_poll": None if self.last_success is None else age,
            "last_poll_error": self.last_error,
        }
