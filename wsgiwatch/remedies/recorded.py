"""Recorded requests (the sidecar's ``/api/requests``) as jobs for the model, and what was
measured for them.

A request is usable when the sidecar knew when it reached the worker: from the accept
hook, mod_wsgi's times, or the kernel (``wait_source`` other than ``none``; a proxy's
header time alone says nothing about the process and is left out too). Its arrival is the
earliest of its accept and the arrival of its bytes: before an accept, the kernel backlog;
after it, a kept-alive connection's next request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wsgiwatch.remedies.catalog import Deployment, server_family
from wsgiwatch.remedies.model import Job
from wsgiwatch.sidecar.views import RequestView, WorkerView

#: Timing sources that place a request in its worker (not a proxy's header time).
PROCESS_SOURCES = frozenset({"hook", "mod_wsgi", "kernel"})


@dataclass(frozen=True)
class Recorded:
    """The jobs of a window, and what was left out."""

    jobs: list[Job]
    measured_ns: list[int]  # per job: exit - arrival, as it happened
    blocked: int  # of the jobs, those the sidecar found blocked
    untimed: int  # requests with no usable arrival
    workers: int  # distinct workers that served the jobs

    @property
    def span_s(self) -> float:
        if not self.jobs:
            return 0.0
        first = min(j.arrival_ns for j in self.jobs)
        last = max(j.arrival_ns for j in self.jobs)
        return (last - first) / 1e9


def _arrival(r: RequestView) -> tuple[int, int] | None:
    """(arrival, ready) of a request, or None when unknown."""
    ready = r.get("ready_ns")
    if r.get("wait_source") not in PROCESS_SOURCES or not ready:
        return None
    known = [int(t) for t in (r.get("accept_ns"), r.get("arrival_ns")) if t]
    return min([*known, ready]), ready


def jobs_from(requests: Sequence[RequestView]) -> Recorded:
    jobs: list[Job] = []
    measured: list[int] = []
    blocked = untimed = 0
    for r in requests:
        times = _arrival(r)
        entry, exit_ = int(r["entry_ns"]), int(r["exit_ns"])
        if times is None or exit_ < entry:
            untimed += 1
            continue
        arrival, ready = times
        ready = min(ready, entry)
        jobs.append(Job(str(r["route"]), arrival, ready, exit_ - entry, int(r["worker"])))
        measured.append(exit_ - arrival)
        blocked += bool(r.get("blocked"))
    return Recorded(jobs, measured, blocked, untimed, len({j.worker for j in jobs}))


def deployment_from(workers: Sequence[WorkerView], seen_workers: int) -> Deployment:
    """The server as its live workers report it (``/api/state``'s ``workers``);
    ``seen_workers`` (those that served recorded requests) counts when none is live."""
    server = next((str(w["server"]) for w in workers if w.get("server")), "")
    return Deployment(
        family=server_family(server),
        workers=len(workers) or seen_workers,
        threads=max((int(w.get("capacity") or 1) for w in workers), default=1),
        multithread=any(w.get("multithread") for w in workers),
        cooperative=any(w.get("cooperative") for w in workers),
    )
