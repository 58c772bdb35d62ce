"""The sidecar's poll loop: ``monitor.poll()`` on a fixed-rate schedule, in a thread.

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
        self._stop = threading.Event()
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
        drain_by = getattr(self.monitor, "drain_by", None)  # optional: see Monitor.drain_by
        if not callable(drain_by):
            drain_by = None
        while not self._stop.is_set():
            self.poll_once()
            now = time.monotonic()
            following = next_deadline(deadline, now, self.interval_s)
            self.overruns += round((following - deadline) / self.interval_s) - 1
            deadline = following
            if drain_by is None:
                if self._stop.wait(deadline - now):
                    break
                continue
            # Until the scheduled poll, ask a few times whether a ring fills faster than
            # the schedule drains it: if so, poll early (and keep the schedule).
            while not self._stop.is_set():
                due = drain_by()
                now = time.monotonic()  # (after the call: "due now" is due by then)
                if now >= deadline:
                    break
                if due is not None and due <= now:
                    self.early_polls += 1
                    self.poll_once()
                    continue
                # At the rate seen, the monitor says when; a few times per interval it
                # looks at the rings themselves (a burst, or a rate that jumped).
                wake = min(deadline, now + self.interval_s / DRAIN_CHECKS)
                if due is not None:
                    wake = min(wake, due)
                if self._stop.wait(wake - now):
                    return

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
        age = self.seconds_since_success()
        if age is None:
            state = "stopped"
        elif not self.healthy():
            state = "stale"
        else:
            state = "ok" if self.last_success is not None else "starting"
        return {
            "status": state,
            "successful_polls": self.polls,
            "poll_failures": self.failures,
            "poll_overruns": self.overruns,
            "early_polls": self.early_polls,
            "seconds_since_successful_poll": None if self.last_success is None else age,
            "last_poll_error": self.last_error,
        }
