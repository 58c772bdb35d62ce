"""Head-of-line verdicts, as pure functions of request intervals (no I/O, easy to test).

A request that waited inside its process (queue wait = entry - max(accept, arrival)) longer
than the threshold is *blocked* by the requests of the same process that ran during its
wait; the blame goes to them in proportion to how much of the wait each one covered, and
the request counts once, under its *main blocker*: the one that covered most of the wait.
It was *misrouted* when a sibling process of the same server had a free slot at some moment
of that wait: the kernel would have given the connection to that idle sibling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class Interval(Protocol):
    """A request's time in the app: a :class:`Run`, or a finished
    :class:`~wsgiwatch.spool.records.Record` as it is (the sidecar keeps finished records
    in a worker's history without building a Run for each)."""

    @property
    def pid(self) -> int: ...
    @property
    def request(self) -> int: ...
    @property
    def entry_ns(self) -> int: ...
    @property
    def exit_ns(self) -> int: ...
    @property
    def route(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def raised(self) -> bool: ...
    def end(self, now_ns: int) -> int: ...


@dataclass(frozen=True, slots=True)
class Run:
    """A request's time in the app: from entry to exit (exit 0 = still running)."""

    pid: int
    request: int
    entry_ns: int
    exit_ns: int
    route: str
    method: str
    raised: bool = False  # ended by an exception (gunicorn's abort raises SystemExit)

    def end(self, now_ns: int) -> int:
        return self.exit_ns or now_ns


@dataclass(frozen=True, slots=True)
class Blame:
    run: Interval
    overlap_ns: int  # how much of the victim's wait this run covered
    share_s: float  # the victim's wait in seconds apportioned to this run


def blockers(
    ready_ns: int, entry_ns: int, victim: tuple[int, int], runs: Iterable[Interval], now_ns: int
) -> list[Blame]:
    """The runs that overlapped the wait [ready, entry) of the victim (pid, request), with
    the wait split among them by overlap; largest overlap first."""
    wait_ns = entry_ns - ready_ns
    if wait_ns <= 0:
        return []
    found: list[tuple[Interval, int]] = []
    for run in runs:
        if (run.pid, run.request) == victim:
            continue
        overlap = min(run.end(now_ns), entry_ns) - max(run.entry_ns, ready_ns)
        if overlap > 0:
            found.append((run, overlap))
    total = sum(o for _, o in found)
    found.sort(key=lambda item: (-item[1], item[0].entry_ns))
    wait_s = wait_ns / 1e9
    return [Blame(run, overlap, wait_s * overlap / total) for run, overlap in found]


def had_free_slot(
    start_ns: int,
    end_ns: int,
    runs: Sequence[Interval],
    capacity: int,
    now_ns: int,
    alive_since_ns: int = 0,
) -> bool:
    """Whether a process running ``runs`` had fewer than ``capacity`` requests in flight at
    some moment of [start, end). A process that did not exist yet had no slot to offer."""
    start_ns = max(start_ns, alive_since_ns)
    if end_ns <= start_ns:
        return False
    events: list[tuple[int, int]] = []
    busy = 0
    for run in runs:
        run_start, run_end = run.entry_ns, run.end(now_ns)
        if run_end <= start_ns or run_start >= end_ns:
            continue
        if run_start <= start_ns:
            busy += 1
        else:
            events.append((run_start, +1))
        if run_end < end_ns:
            events.append((run_end, -1))
    if busy < capacity:
        return True
    # Starts before ends at the same instant: a slot freed and taken in the same nanosecond
    # was never free for anyone else.
    events.sort(key=lambda e: (e[0], -e[1]))
    for _, delta in events:
        busy += delta
        if busy < capacity:
            return True
    return False


def time_at_capacity(
    start_ns: int, end_ns: int, runs: Iterable[Interval], capacity: int, now_ns: int
) -> int:
    """Nanoseconds of [start, end) during which ``runs`` filled ``capacity`` slots or more.

    A request counts as blocked only for time its process was full: one that waited while a
    slot stood free was held up by something else (a slow thread pool, the GIL), and blaming
    the requests that happened to run then would be wrong.
    """
    if end_ns <= start_ns:
        return 0
    events: list[tuple[int, int]] = []
    for run in runs:
        run_start, run_end = max(run.entry_ns, start_ns), min(run.end(now_ns), end_ns)
        if run_end > run_start:
            events.append((run_start, +1))
            events.append((run_end, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    busy = 0
    full_since = 0
    total = 0
    for at, delta in events:
        if delta > 0:
            busy += 1
            if busy == capacity:
                full_since = at
        else:
            if busy == capacity:
                total += at - full_since
            busy -= 1
    return total
