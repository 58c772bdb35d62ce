"""A small queueing model of a pool of WSGI worker processes, to replay recorded traffic.

Each request (:class:`Job`) reached the server at a known time and needed a known service
time (entry to response close, as recorded). :func:`simulate` replays the jobs through a
:class:`Shape` (workers x threads and how a worker decides to accept) and says when each
would have entered the app, and where it would have waited: in the kernel backlog, shared
by all workers (healthy: the next free worker takes it), or inside a busy worker.

Assumptions, each a reason a prediction can miss:

- **Service times do not depend on the shape.** A request takes as long as it took when
  recorded, whatever else runs beside it (no CPU or GIL contention, no shared-lock
  effects). True of requests that wait on I/O; CPU-bound work slows when more runs at once.
- **Arrivals do not depend on latency** (open loop): a user does not wait for one reply
  before the next request arrives. Closed-loop clients would send less when slowed.
- **Inside a worker, requests start in the order accepted** (one FIFO per process, as
  gunicorn gthread's thread pool and waitress's task queue do) on the first free thread.
- **A greedy worker accepts whenever it holds fewer than ``worker_connections``
  connections**, whatever its threads are doing; when several may accept, which one wins
  is random (they all wait on the same listening socket). A connection is held from accept
  to the end of its response (keep-alive off: idle kept-alive connections are not modelled).
- **A gated worker accepts only with a free thread**; connections wait in one FIFO kernel
  backlog, so the pool behaves as one queue served by workers x threads slots.
- **Handing over is instant**: no time is charged for accept, wake-ups or parsing.

``dispatch="recorded"`` replays today's configuration with the worker and accept time each
request really had, so only the in-process queue is modelled; checking that replay against
what was measured is how a caller knows the service times and shapes are right before
trusting a prediction.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Dispatch = Literal["recorded", "policy"]


@dataclass(frozen=True)
class Job:
    """One recorded request, as the model needs it."""

    route: str
    arrival_ns: int  # when it reached the server (before any kernel backlog)
    ready_ns: int  # when its worker had it: max(accept, arrival) as recorded
    service_ns: int  # entry to the response's close
    worker: int  # the worker that served it (recorded dispatch only)


@dataclass(frozen=True)
class Shape:
    """A configuration to replay through."""

    workers: int
    threads: int
    #: Accept only with a free thread (gunicorn gthread with --worker-connections equal to
    #: --threads, sync workers, uWSGI, mod_wsgi); False: accept greedily.
    gate: bool
    #: A greedy worker stops accepting at this many connections (gunicorn's
    #: --worker-connections, default 1000); None: never.
    worker_connections: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads < 1:
            raise ValueError(f"a shape needs at least 1 worker and 1 thread, not {self}")

    @property
    def accept_limit(self) -> int:
        """Connections a worker holds before it stops accepting."""
        if self.gate:
            return self.threads
        return self.worker_connections or 2**31

    def describe(self) -> str:
        gate = "accepts only with a free thread" if self.gate else "accepts greedily"
        return f"{self.workers} x {self.threads} threads, {gate}"


@dataclass(frozen=True)
class Outcome:
    """Where one job waited, and when it would have run."""

    job: Job
    worker: int
    accept_ns: int
    entry_ns: int

    @property
    def exit_ns(self) -> int:
        return self.entry_ns + self.job.service_ns

    @property
    def latency_ns(self) -> int:
        """From reaching the server to the end of the response: what a client waits."""
        return self.exit_ns - self.job.arrival_ns

    @property
    def process_wait_ns(self) -> int:
        """Waiting inside the worker for a thread: head-of-line blocking when long."""
        return self.entry_ns - max(self.accept_ns, self.job.ready_ns)

    @property
    def backlog_wait_ns(self) -> int:
        return max(0, self.accept_ns - self.job.arrival_ns)


def _recorded(jobs: Sequence[Job], threads: int) -> list[Outcome]:
    free: dict[int, list[int]] = {}
    out = []
    for job in sorted(jobs, key=lambda j: (j.ready_ns, j.arrival_ns)):
        slots = free.setdefault(job.worker, [0] * threads)
        entry = max(job.ready_ns, heapq.heappop(slots))
        heapq.heappush(slots, entry + job.service_ns)
        out.append(Outcome(job, job.worker, job.ready_ns, entry))
    return out


def _policy(jobs: Sequence[Job], shape: Shape, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    limit = shape.accept_limit
    threads: list[list[int]] = [[0] * shape.threads for _ in range(shape.workers)]
    held: list[list[int]] = [[] for _ in range(shape.workers)]  # exit times of connections
    backlog_head = 0  # the kernel backlog is FIFO: nobody is accepted before the one ahead
    out = []
    for job in sorted(jobs, key=lambda j: j.arrival_ns):
        now = max(job.arrival_ns, backlog_head)
        for conns in held:
            while conns and conns[0] <= now:
                heapq.heappop(conns)
        open_ = [w for w in range(shape.workers) if len(held[w]) < limit]
        if not open_:
            # The first moment a worker drops below its limit: its (held - limit + 1)-th
            # connection to end frees it.
            def frees_at(w: int) -> int:
                return heapq.nsmallest(len(held[w]) - limit + 1, held[w])[-1]

            now = min(frees_at(w) for w in range(shape.workers))
            for conns in held:
                while conns and conns[0] <= now:
                    heapq.heappop(conns)
            open_ = [w for w in range(shape.workers) if len(held[w]) < limit]
        worker = open_[0] if len(open_) == 1 else rng.choice(open_)
        backlog_head = now
        entry = max(now, heapq.heappop(threads[worker]))
        heapq.heappush(threads[worker], entry + job.service_ns)
        heapq.heappush(held[worker], entry + job.service_ns)
        out.append(Outcome(job, worker, now, entry))
    return out


def simulate(
    jobs: Sequence[Job], shape: Shape, dispatch: Dispatch = "policy", seed: int = 1
) -> list[Outcome]:
    """Replay ``jobs`` through ``shape``: ``recorded`` keeps each job's worker and accept
    time (today's configuration); ``policy`` lets the shape's accept rule decide."""
    if dispatch == "recorded":
        return _recorded(jobs, shape.threads)
    return _policy(jobs, shape, seed)


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1); 0.0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
