"""The verdict on one finished request: was it blocked behind others in its process, by
which requests, and was a sibling worker free meanwhile (misrouted)?

The rules (DESIGN.md's definitions): a request is head-of-line blocked when its queue wait
exceeds the threshold *while its process ran at capacity*; the requests running then are
its blockers, each blamed for the share of the wait it covered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wsgiwatch.sidecar.detect import Blame, blockers, had_free_slot, time_at_capacity
from wsgiwatch.sidecar.workers import Worker
from wsgiwatch.spool.records import Record, queue_wait_ns


@dataclass(frozen=True, slots=True)
class Verdict:
    blames: list[Blame]  # most to blame first
    misrouted: bool  # a sibling worker had a free slot while this request waited


def judge(
    worker: Worker,
    record: Record,
    ready_ns: int,
    inside: bool,
    workers: Sequence[Worker],
    *,
    threshold_ns: int,
    now_ns: int,
) -> Verdict | None:
    """The verdict on ``record``, which became ready at ``ready_ns``; ``inside``: the source
    knows the wait was inside the worker. None when it was not blocked."""
    if queue_wait_ns(record.entry_ns, ready_ns) <= threshold_ns:
        return None
    if not inside and not worker.accepts_when_full:
        # A proxy's time alone also covers the proxy and the kernel backlog, where waiting
        # is healthy (a gunicorn sync worker's queue is all backlog). It counts only for a
        # worker seen holding waiting connections while at capacity (gthread, waitress),
        # and only for the time the worker was at capacity, below.
        return None
    me = (record.pid, record.request)
    others = [r for r in worker.recent_runs() if (r.pid, r.request) != me]
    full_ns = time_at_capacity(ready_ns, record.entry_ns, others, worker.blocking_capacity, now_ns)
    if full_ns <= threshold_ns:
        return None  # it waited while a slot stood free: not behind these requests
    blames = blockers(ready_ns, record.entry_ns, me, others, now_ns)
    if not blames:
        return None
    siblings = [w for w in workers if w is not worker and w.alive and w.ppid == worker.ppid]
    misrouted = any(
        had_free_slot(
            ready_ns,
            record.entry_ns,
            s.recent_runs(),
            s.capacity,
            now_ns,
            s.header.created_mono_ns,
        )
        for s in siblings
    )
    return Verdict(blames, misrouted)
